//! Ask mode's answers: the person's answer reaches the engines through
//! [`Asks`]; "allow always" also adds the name to vibebox.toml and records
//! it as accepted, so the next start neither asks again nor treats it as a
//! grant the box made.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;
use vibebox_core::config::{with_network_entry, Config};
use vibebox_core::policy::NetworkEntry;
use vibebox_core::text::for_terminal;
use vibebox_core::trust::{Grants, TrustStore};
use vibebox_net::ask::{Answer, Asks};

use crate::protocol::Answered;
use crate::server::AnswerFn;

/// The largest vibebox.toml "allow always" edits.
const MAX_CONFIG: u64 = 1024 * 1024;

/// Where an "allow always" is written.
#[derive(Debug, Clone)]
pub struct Keep {
    /// The project's vibebox.toml.
    pub config_file: PathBuf,
    /// The project directory (for the trust record).
    pub project_dir: PathBuf,
    /// `VIBEBOX_HOME` (trust records).
    pub vibebox_home: PathBuf,
    /// The host user's home (the default grants).
    pub host_home: PathBuf,
    /// The session.
    pub session: Uuid,
}

/// What `answer` requests run.
pub fn answerer(asks: Asks, keep: Keep) -> Arc<AnswerFn> {
    Arc::new(move |id, answer| {
        let name = match asks.answer(id, answer) {
            Ok(n) => n,
            Err(e) => {
                return Answered {
                    ok: false,
                    message: e.to_string(),
                }
            }
        };
        let message = match answer {
            Answer::Once => format!("{name} is reachable until the box stops"),
            Answer::Deny => format!("{name} stays unreachable until the box stops"),
            Answer::Quiet => {
                format!("{name} stays unreachable; no more questions until the box stops")
            }
            Answer::Always => match keep.add(&name) {
                Ok(()) => format!(
                    "{name} is reachable; added to the entries in {}",
                    keep.config_file.display()
                ),
                Err(why) => format!(
                    "{name} is reachable until the box stops, but {} was not changed: {}",
                    keep.config_file.display(),
                    for_terminal(&why)
                ),
            },
        };
        eprintln!("[{}] ask: {message}", jiff::Timestamp::now());
        Answered { ok: true, message }
    })
}

impl Keep {
    /// Adds `name` to the entries of vibebox.toml and to the accepted grants.
    ///
    /// The file is in the project, which the box can write: it is read
    /// without following a symlink, only when it is a regular file of sane
    /// size, and written only when the result is a valid config. Only this
    /// one entry is recorded as accepted: whatever else the box put in the
    /// file is still asked about at the next start.
    pub fn add(&self, name: &str) -> Result<(), String> {
        let entry = NetworkEntry::parse(name)
            .map_err(|e| e.to_string())?
            .to_string();
        let text = read_plain_file(&self.config_file, MAX_CONFIG)?;
        let edited = with_network_entry(&text, &entry)?;
        Config::parse(&edited, &self.config_file)
            .map_err(|e| format!("with the entry added it would not be valid: {e}"))?;
        if edited != text {
            vibebox_core::project::write_atomic(&self.config_file, edited.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let store = TrustStore::new(&self.vibebox_home);
        let mut accepted = store
            .accepted(&self.session)
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| Grants::defaults(&self.host_home));
        accepted.accept_entry(&entry);
        store
            .accept(&self.session, &self.project_dir, &accepted)
            .map_err(|e| e.to_string())
    }
}

/// The text of `path` when it is a regular file (not a symlink, FIFO or
/// device) of at most `limit` bytes.
fn read_plain_file(path: &Path, limit: u64) -> Result<String, String> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open it: {e} (a symlink is not followed)"))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("it is not a regular file".into());
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > limit {
        return Err(format!("it is larger than {limit} bytes"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn keep(dir: &Path) -> Keep {
        Keep {
            config_file: dir.join("p/vibebox.toml"),
            project_dir: dir.join("p"),
            vibebox_home: dir.join("home"),
            host_home: dir.join("user"),
            session: Uuid::now_v7(),
        }
    }

    #[test]
    fn always_adds_the_entry_and_accepts_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let k = keep(dir.path());
        fs::create_dir_all(&k.project_dir).unwrap();
        // The box slipped another entry in: it is kept in the file, not accepted.
        fs::write(
            &k.config_file,
            "# mine\n[network]\nmode = \"ask\"\nentries = [\"github.com\", \"evil.example\"]\n",
        )
        .unwrap();
        k.add("asked.example").unwrap();
        let text = fs::read_to_string(&k.config_file).unwrap();
        assert!(text.starts_with("# mine\n"), "{text}");
        let c = Config::parse(&text, &k.config_file).unwrap();
        assert_eq!(c.network.entries.len(), 3);
        let acc = TrustStore::new(&k.vibebox_home)
            .accepted(&k.session)
            .unwrap()
            .unwrap();
        assert!(acc.entries.contains("asked.example"));
        assert!(!acc.entries.contains("evil.example"));
        // Twice: no duplicate.
        k.add("asked.example").unwrap();
        let c =
            Config::parse(&fs::read_to_string(&k.config_file).unwrap(), &k.config_file).unwrap();
        assert_eq!(c.network.entries.len(), 3);
    }

    #[test]
    fn a_file_the_box_tampered_with_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let k = keep(dir.path());
        fs::create_dir_all(&k.project_dir).unwrap();
        // A symlink to a host file: never read, never written through.
        let victim = dir.path().join("victim.toml");
        fs::write(&victim, "[network]\nmode = \"ask\"\n").unwrap();
        std::os::unix::fs::symlink(&victim, &k.config_file).unwrap();
        assert!(k.add("asked.example").unwrap_err().contains("symlink"));
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "[network]\nmode = \"ask\"\n"
        );
        // A FIFO does not hang the supervisor.
        fs::remove_file(&k.config_file).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &k.config_file,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(k.add("asked.example").unwrap_err().contains("regular"));
        // A file that is not a valid config stays as it is.
        fs::remove_file(&k.config_file).unwrap();
        fs::write(&k.config_file, "[network]\nmode = \"nope\"\n").unwrap();
        assert!(k.add("asked.example").is_err());
        assert_eq!(
            fs::read_to_string(&k.config_file).unwrap(),
            "[network]\nmode = \"nope\"\n"
        );
        assert!(TrustStore::new(&k.vibebox_home)
            .accepted(&k.session)
            .unwrap()
            .is_none());
    }
}
