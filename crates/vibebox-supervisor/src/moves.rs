//! The index follows a project that moves while its box runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vibebox_core::project::Project;

/// Where the project is, kept current by [`follow_moves`].
#[derive(Debug, Clone)]
pub struct Whereabouts {
    /// Its directory now.
    pub here: std::sync::Arc<std::sync::Mutex<PathBuf>>,
    /// Set once the directory was deleted (the session is gone with it).
    pub gone: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Holds the project directory open and looks every 2 s where it is now:
/// when it moved, the index follows (`vibebox list` shows the new place at
/// once); when it was deleted, `gone` is set.
pub fn follow_moves(
    project: &Project,
    vibebox_home: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Whereabouts {
    use rustix::fs::{Mode, OFlags};
    let found = Whereabouts {
        here: std::sync::Arc::new(std::sync::Mutex::new(project.dir().to_path_buf())),
        gone: Default::default(),
    };
    let Ok(fd) = rustix::fs::open(
        project.dir(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return found;
    };
    let index = vibebox_core::index::Index::new(vibebox_home);
    let shared = found.here.clone();
    let gone = found.gone.clone();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(2));
            // A deleted directory has no links left.
            if rustix::fs::fstat(&fd).is_ok_and(|st| st.st_nlink == 0) {
                gone.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            let Ok(now) = fs::read_link(&link) else {
                continue;
            };
            let mut last = shared.lock().unwrap_or_else(|e| e.into_inner());
            // A deleted directory reads as "<path> (deleted)": nothing to follow.
            if now == *last || !now.is_dir() {
                continue;
            }
            let moved = Project::at(&now);
            match vibebox_core::session::follow_move(&index, &moved, jiff::Timestamp::now()) {
                Ok(_) => eprintln!(
                    "[{}] the project moved from {} to {}: the index follows",
                    jiff::Timestamp::now(),
                    last.display(),
                    now.display()
                ),
                Err(e) => eprintln!(
                    "[{}] the project moved to {}, but the index cannot follow: {e}",
                    jiff::Timestamp::now(),
                    now.display()
                ),
            }
            *last = now;
        }
    });
    found
}
