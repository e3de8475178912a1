//! The store itself: a local directory or an S3 bucket, one code path
//! (`object_store`), used synchronously.
//!
//! Keys are relative to the store's root (the directory, or the bucket's
//! prefix). Objects are only ever added: bundles under unique names, index
//! entries with a conditional put (`If-None-Match: *`), so two machines saving
//! at once cannot overwrite each other's entries and an interrupted upload
//! never replaces anything.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use sha2::Digest as _;
use vibebox_core::store::StoreUrl;

use crate::aws_profile;

/// How long a connection to an S3 server may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take (a part of an upload is at most
/// [`PART_SIZE`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times a failed request is tried again (with backoff).
pub const MAX_RETRIES: usize = 2;
/// How long retries of one request may go on in all.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// Uploads larger than this go in parts of this size.
pub const PART_SIZE: usize = 8 << 20;

/// A store operation that failed, with what a person can do about it.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Nothing answered at the store's address.
    #[error("cannot reach the store {url}: {why}")]
    Unreachable {
        /// The store.
        url: String,
        /// Why.
        why: String,
    },
    /// The store refused the credentials.
    #[error("the store {url} refused the credentials: {why}")]
    Credentials {
        /// The store.
        url: String,
        /// Why.
        why: String,
    },
    /// The bucket does not exist.
    #[error("the bucket `{bucket}` does not exist on {url}")]
    NoBucket {
        /// The bucket.
        bucket: String,
        /// The store.
        url: String,
    },
    /// A key that should exist does not.
    #[error("{key} is not in the store {url}")]
    NotFound {
        /// The key.
        key: String,
        /// The store.
        url: String,
    },
    /// A key written only once already exists.
    #[error("{key} already exists in the store {url}")]
    Exists {
        /// The key.
        key: String,
        /// The store.
        url: String,
    },
    /// Anything else the store said.
    #[error("the store {url} failed to {action} {key}: {why}")]
    Other {
        /// What was being done.
        action: &'static str,
        /// The key.
        key: String,
        /// The store.
        url: String,
        /// Why.
        why: String,
    },
    /// A local file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Local {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A download was longer or shorter than the index said.
    #[error("{key} in the store {url} is damaged: {why}")]
    Damaged {
        /// The key.
        key: String,
        /// The store.
        url: String,
        /// Why.
        why: String,
    },
}

impl RemoteError {
    /// What to do about it, when there is something to say.
    pub fn help(&self) -> Option<String> {
        match self {
            RemoteError::Unreachable { .. } => Some(
                "check that the store's server runs and `[store] endpoint` in vibebox.toml names it; nothing was changed"
                    .into(),
            ),
            RemoteError::Credentials { .. } => Some(
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE and ~/.aws/credentials) to a key the store accepts"
                    .into(),
            ),
            RemoteError::NoBucket { bucket, .. } => Some(format!(
                "create the bucket `{bucket}`, or name another in `[store] url`"
            )),
            _ => None,
        }
    }
}

/// An open store.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: StoreUrl,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key, relative to the store's root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

impl Remote {
    /// Opens `url`. A local store's directory is created (0700); an S3
    /// store takes its credentials and region from the standard AWS
    /// environment variables, else from the profile (`AWS_PROFILE`,
    /// default `default`) in `~/.aws/credentials` and `~/.aws/config`.
    pub fn open(url: &StoreUrl) -> Result<Remote, RemoteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| RemoteError::Local {
                action: "start the I/O runtime for",
                path: "the store".into(),
                source,
            })?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match url {
            StoreUrl::File { path } => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|source| RemoteError::Local {
                        action: "create the store directory",
                        path: path.clone(),
                        source,
                    })?;
                let fs =
                    LocalFileSystem::new_with_prefix(path).map_err(|e| RemoteError::Other {
                        action: "open",
                        key: String::new(),
                        url: url.to_string(),
                        why: e.to_string(),
                    })?;
                (Arc::new(fs), String::new())
            }
            StoreUrl::S3 {
                bucket,
                prefix,
                endpoint,
            } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(CONNECT_TIMEOUT)
                            .with_timeout(REQUEST_TIMEOUT)
                            .with_allow_http(
                                endpoint
                                    .as_deref()
                                    .is_some_and(|e| e.starts_with("http://")),
                            ),
                    )
                    .with_retry(RetryConfig {
                        max_retries: MAX_RETRIES,
                        retry_timeout: RETRY_TIMEOUT,
                        ..RetryConfig::default()
                    });
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                    if let Some(p) = aws_profile::from_files() {
                        b = b
                            .with_access_key_id(p.access_key_id)
                            .with_secret_access_key(p.secret_access_key);
                        if let Some(t) = p.session_token {
                            b = b.with_token(t);
                        }
                        if let Some(r) = p.region {
                            b = b.with_region(r);
                        }
                    }
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                    && aws_profile::region_from_files().is_none()
                {
                    b = b.with_region("us-east-1");
                }
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                let s3 = b.build().map_err(|e| RemoteError::Other {
                    action: "open",
                    key: String::new(),
                    url: url.to_string(),
                    why: e.to_string(),
                })?;
                (Arc::new(s3), prefix.clone())
            }
        };
        Ok(Remote {
            store,
            prefix,
            url: url.clone(),
            runtime,
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn rel(&self, key: &Key) -> String {
        let s = key.as_ref();
        match self.prefix.is_empty() {
            true => s.to_string(),
            false => s
                .strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(s)
                .to_string(),
        }
    }

    fn error(&self, action: &'static str, key: &str, e: object_store::Error) -> RemoteError {
        classify(&self.url, action, key, e)
    }

    /// Every object under `rel_prefix` (a directory-like prefix).
    pub fn list(&self, rel_prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        let key = self.key(rel_prefix.trim_end_matches('/'));
        let stream = self.store.list(Some(&key));
        let metas: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(stream.try_collect())
            .map_err(|e| self.error("list", rel_prefix, e))?;
        Ok(metas
            .iter()
            .map(|m| Listed {
                key: self.rel(&m.location),
                size: m.size,
            })
            .collect())
    }

    /// Whether `rel` exists.
    pub fn exists(&self, rel: &str) -> Result<bool, RemoteError> {
        match self.runtime.block_on(self.store.head(&self.key(rel))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("look up", rel, e)),
        }
    }

    /// Reads `rel`, refusing more than `max` bytes.
    pub fn get_small(&self, rel: &str, max: u64) -> Result<Vec<u8>, RemoteError> {
        let mut out = Vec::new();
        self.get_into(rel, max, &mut |chunk: &[u8]| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    fn get_into(
        &self,
        rel: &str,
        max: u64,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, RemoteError> {
        let key = self.key(rel);
        self.runtime.block_on(async {
            let got = self
                .store
                .get(&key)
                .await
                .map_err(|e| self.error("read", rel, e))?;
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| self.error("read", rel, e))?
            {
                n += chunk.len() as u64;
                if n > max {
                    return Err(RemoteError::Damaged {
                        key: rel.to_string(),
                        url: self.url.to_string(),
                        why: format!("it is longer than the {max} bytes expected"),
                    });
                }
                sink(&chunk).map_err(|source| RemoteError::Local {
                    action: "write what was downloaded from",
                    path: rel.into(),
                    source,
                })?;
            }
            Ok(n)
        })
    }

    /// Downloads `rel` to `dest`, which must come out exactly `size` bytes
    /// long; returns its SHA-256 (hex).
    pub fn download(&self, rel: &str, dest: &Path, size: u64) -> Result<String, RemoteError> {
        let local = |action, source| RemoteError::Local {
            action,
            path: dest.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::create(dest).map_err(|e| local("create", e))?;
        let mut hash = sha2::Sha256::new();
        let n = self.get_into(rel, size, &mut |chunk: &[u8]| {
            hash.update(chunk);
            file.write_all(chunk)
        })?;
        if n != size {
            return Err(RemoteError::Damaged {
                key: rel.to_string(),
                url: self.url.to_string(),
                why: format!("it is {n} bytes long, the index says {size} (truncated?)"),
            });
        }
        file.sync_all().map_err(|e| local("write", e))?;
        Ok(hex(&hash.finalize()))
    }

    /// Writes `bytes` at `rel` only if nothing is there yet.
    pub fn put_new(&self, rel: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.runtime.block_on(self.store.put_opts(
            &self.key(rel),
            PutPayload::from(bytes),
            opts,
        )) {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Err(RemoteError::Exists {
                key: rel.to_string(),
                url: self.url.to_string(),
            }),
            Err(e) => Err(self.error("write", rel, e)),
        }
    }

    /// Uploads the file `src` to `rel` (a new, unique key), in parts when it
    /// is large; `progress` hears the bytes sent so far.
    pub fn upload(
        &self,
        rel: &str,
        src: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), RemoteError> {
        let local = |source| RemoteError::Local {
            action: "read",
            path: src.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(src).map_err(local)?;
        let len = file.metadata().map_err(local)?.len();
        if len <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes).map_err(local)?;
            self.put_new(rel, bytes)?;
            progress(len);
            return Ok(());
        }
        let key = self.key(rel);
        self.runtime.block_on(async {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| self.error("start uploading", rel, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            let mut sent = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(local)?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| self.error("upload", rel, e))?;
                writer.write(&buf[..n]);
                sent += n as u64;
                progress(sent);
            }
            writer
                .finish()
                .await
                .map_err(|e| self.error("finish uploading", rel, e))?;
            Ok(())
        })
    }

    /// Removes `rel` (what a failed save left behind).
    pub fn delete(&self, rel: &str) -> Result<(), RemoteError> {
        self.runtime
            .block_on(self.store.delete(&self.key(rel)))
            .map_err(|e| self.error("delete", rel, e))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names an object_store error for a person: unreachable, credentials, no
/// bucket, or what the store said.
fn classify(
    url: &StoreUrl,
    action: &'static str,
    key: &str,
    e: object_store::Error,
) -> RemoteError {
    let url_s = url.to_string();
    // The whole chain: the interesting part is often a source's source.
    let mut text = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    let text = vibebox_core::text::for_terminal(&text);
    let has = |w: &str| text.contains(w);
    if let object_store::Error::NotFound { .. } = e {
        if !has("NoSuchBucket") {
            return RemoteError::NotFound {
                key: key.to_string(),
                url: url_s,
            };
        }
    }
    if has("NoSuchBucket") {
        let bucket = match url {
            StoreUrl::S3 { bucket, .. } => bucket.clone(),
            StoreUrl::File { .. } => String::new(),
        };
        return RemoteError::NoBucket { bucket, url: url_s };
    }
    if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || has("SignatureDoesNotMatch")
        || has("InvalidAccessKeyId")
        || has("AccessDenied")
        || has("403 Forbidden")
    {
        return RemoteError::Credentials {
            url: url_s,
            why: short(&text),
        };
    }
    if has("Connection refused")
        || has("error sending request")
        || has("dns error")
        || has("timed out")
        || has("tcp connect error")
        || has("connection closed")
    {
        return RemoteError::Unreachable {
            url: url_s,
            why: short(&text),
        };
    }
    RemoteError::Other {
        action,
        key: key.to_string(),
        url: url_s,
        why: short(&text),
    }
}

/// What an S3 error document says (`Code: Message`), else the first 300
/// characters of the message.
fn short(s: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = s.find(&open)? + open.len();
        let len = s[start..].find(&format!("</{name}>"))?;
        Some(s[start..start + len].to_string())
    };
    if let Some(code) = tag("Code") {
        return match tag("Message") {
            Some(m) => format!("{code}: {}", m.chars().take(200).collect::<String>()),
            None => code,
        };
    }
    if s.contains("Connection refused") {
        return "connection refused".into();
    }
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, Remote) {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::File {
            path: dir.path().join("store"),
        };
        let r = Remote::open(&url).unwrap();
        (dir, r)
    }

    #[test]
    fn put_new_never_overwrites() {
        let (_d, r) = local();
        r.put_new("saves/w/a.json", b"one".to_vec()).unwrap();
        let e = r.put_new("saves/w/a.json", b"two".to_vec()).unwrap_err();
        assert!(matches!(e, RemoteError::Exists { .. }), "{e}");
        assert_eq!(r.get_small("saves/w/a.json", 10).unwrap(), b"one");
    }

    #[test]
    fn listing_is_relative_and_reads_are_bounded() {
        let (_d, r) = local();
        r.put_new("saves/w/a.json", b"0123456789".to_vec()).unwrap();
        r.put_new("bundles/x.bundle", b"b".to_vec()).unwrap();
        let l = r.list("saves/").unwrap();
        assert_eq!(
            l,
            vec![Listed {
                key: "saves/w/a.json".into(),
                size: 10
            }]
        );
        assert!(matches!(
            r.get_small("saves/w/a.json", 5).unwrap_err(),
            RemoteError::Damaged { .. }
        ));
        assert!(matches!(
            r.get_small("saves/w/none.json", 5).unwrap_err(),
            RemoteError::NotFound { .. }
        ));
        assert!(r.exists("bundles/x.bundle").unwrap());
        assert!(!r.exists("bundles/y.bundle").unwrap());
    }

    #[test]
    fn uploads_and_downloads_round_trip_with_their_size_checked() {
        let (d, r) = local();
        let src = d.path().join("big");
        let data: Vec<u8> = (0..(PART_SIZE + 12345)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let mut seen = 0;
        r.upload("bundles/big.bundle", &src, &mut |n| seen = n)
            .unwrap();
        assert_eq!(seen, data.len() as u64);
        let dest = d.path().join("back");
        let sum = r
            .download("bundles/big.bundle", &dest, data.len() as u64)
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(sum, hex(&sha2::Sha256::digest(&data)));
        // The index says longer or shorter: damaged, named as such.
        let e = r
            .download("bundles/big.bundle", &dest, data.len() as u64 + 1)
            .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = r
            .download("bundles/big.bundle", &dest, data.len() as u64 - 1)
            .unwrap_err();
        assert!(matches!(e, RemoteError::Damaged { .. }), "{e}");
    }
}
