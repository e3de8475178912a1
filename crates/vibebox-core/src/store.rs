//! Where workspace saves go: `[store]` in `vibebox.toml`.
//!
//! A store is a local directory (`file:///path`, the default
//! `~/.vibebox/store/`) or an S3 bucket with a key prefix
//! (`s3://bucket/prefix`, with `endpoint` for S3-compatible servers). This
//! module only parses and names them; `vibebox-store` talks to them.
//!
//! The project's config can name a store, and the box can write that config:
//! a store is a grant (the host uploads the project there), so it is part of
//! what `vibebox trust` accepts.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The rule a store URL follows, for error messages.
pub const STORE_URL_RULE: &str =
    "\"file:///absolute/path\" or \"s3://bucket/prefix\" (bucket: 3-63 of a-z 0-9 . -)";

/// The rule an S3 endpoint follows, for error messages.
pub const ENDPOINT_RULE: &str = "\"http://host:port\" or \"https://host[:port]\", nothing after it";

/// A parsed store location.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreUrl {
    /// A directory on this machine.
    File {
        /// The absolute directory.
        path: PathBuf,
    },
    /// An S3 bucket (or an S3-compatible server's).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/` (may be empty).
        prefix: String,
        /// The server, for S3-compatible stores (`http://127.0.0.1:8333`);
        /// none means AWS.
        endpoint: Option<String>,
    },
}

/// A store URL or endpoint that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreUrlError(pub String);

impl StoreUrl {
    /// The default store: `<vibebox home>/store`.
    pub fn default_for(vibebox_home: &Path) -> StoreUrl {
        StoreUrl::File {
            path: vibebox_home.join("store"),
        }
    }

    /// Parses `url`, with `endpoint` for an S3-compatible server.
    ///
    /// ```
    /// use vibebox_core::store::StoreUrl;
    /// let s = StoreUrl::parse("s3://saves/team/a", Some("http://127.0.0.1:8333")).unwrap();
    /// assert_eq!(s.to_string(), "s3://saves/team/a (endpoint http://127.0.0.1:8333)");
    /// assert!(StoreUrl::parse("file://relative", None).is_err());
    /// ```
    pub fn parse(url: &str, endpoint: Option<&str>) -> Result<StoreUrl, StoreUrlError> {
        if url.chars().any(char::is_control) || url.len() > 1024 {
            return Err(StoreUrlError(
                "the URL has a control character or is longer than 1024 bytes".into(),
            ));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if endpoint.is_some() {
                return Err(StoreUrlError(
                    "`endpoint` is for s3:// stores, not file://".into(),
                ));
            }
            let path = Path::new(rest);
            if !path.is_absolute() {
                return Err(StoreUrlError(format!(
                    "`{url}` is not an absolute path: write file:///absolute/path"
                )));
            }
            if path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(StoreUrlError(format!("`{url}` has a `..` in it")));
            }
            return Ok(StoreUrl::File {
                path: path.to_path_buf(),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                })
                && !bucket.starts_with(['.', '-'])
                && !bucket.ends_with(['.', '-']);
            if !bucket_ok {
                return Err(StoreUrlError(format!(
                    "`{bucket}` is not a valid bucket name (3-63 of a-z 0-9 . -)"
                )));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == ".." || p == ".")
                || prefix.contains("//")
                || !prefix.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(StoreUrlError(format!(
                    "`{prefix}` is not a usable key prefix (printable ASCII, no empty, `.` or `..` parts)"
                )));
            }
            let endpoint = match endpoint {
                None => None,
                Some(e) => Some(parse_endpoint(e)?),
            };
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                endpoint,
            });
        }
        Err(StoreUrlError(format!(
            "`{url}` is not a store URL: allowed {STORE_URL_RULE}"
        )))
    }
}

/// Checks an S3 endpoint: http or https, a host, an optional port, nothing else.
fn parse_endpoint(e: &str) -> Result<String, StoreUrlError> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| StoreUrlError(format!("endpoint `{e}`: allowed {ENDPOINT_RULE}")))?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !ok {
        return Err(StoreUrlError(format!(
            "endpoint `{e}`: allowed {ENDPOINT_RULE}"
        )));
    }
    Ok(e.trim_end_matches('/').to_string())
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File { path } => write!(f, "file://{}", path.display()),
            StoreUrl::S3 {
                bucket,
                prefix,
                endpoint,
            } => {
                write!(f, "s3://{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{prefix}")?;
                }
                if let Some(e) = endpoint {
                    write!(f, " (endpoint {e})")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_absolute_without_dot_dot() {
        assert_eq!(
            StoreUrl::parse("file:///srv/saves", None).unwrap(),
            StoreUrl::File {
                path: "/srv/saves".into()
            }
        );
        assert!(StoreUrl::parse("file://srv", None).is_err());
        assert!(StoreUrl::parse("file:///srv/../etc", None).is_err());
        assert!(StoreUrl::parse("file:///srv", Some("http://x")).is_err());
    }

    #[test]
    fn s3_urls_check_bucket_prefix_and_endpoint() {
        let s = StoreUrl::parse("s3://my-bucket/a/b/", None).unwrap();
        assert_eq!(
            s,
            StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into(),
                endpoint: None
            }
        );
        assert_eq!(s.to_string(), "s3://my-bucket/a/b");
        for bad in [
            "s3://B",
            "s3://ab",
            "s3://-ab/x",
            "s3://abc/../x",
            "s3://abc/a//b",
        ] {
            assert!(StoreUrl::parse(bad, None).is_err(), "{bad}");
        }
        assert!(StoreUrl::parse("s3://abc", Some("ftp://x")).is_err());
        assert!(StoreUrl::parse("s3://abc", Some("http://x/path")).is_err());
        assert!(StoreUrl::parse("s3://abc", Some("http://127.0.0.1:9000/")).is_ok());
        assert!(StoreUrl::parse("https://abc", None).is_err());
        assert!(StoreUrl::parse("s3://abc\n", None).is_err());
    }
}
