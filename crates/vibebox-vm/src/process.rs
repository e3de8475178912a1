//! Child processes that die with the supervisor.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::VmError;

/// A child process that is killed and reaped when dropped (and, through
/// `PR_SET_PDEATHSIG`, when the supervisor dies, even by SIGKILL).
pub struct Tied(pub Child);

impl Drop for Tied {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with its output appended to `log`, so that it dies with the
/// process that spawned it.
pub fn spawn_tied(cmd: &mut Command, log: &Path) -> Result<Tied, VmError> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| VmError::Setup(format!("cannot open {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| VmError::Setup(format!("cannot open {}: {e}", log.display())))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .map(Tied)
        .map_err(|e| VmError::Setup(format!("cannot start {:?}: {e}", cmd.get_program())))
}

/// Waits until `path` exists; fails when a child exits first or at `timeout`.
pub fn wait_for(path: &Path, timeout: Duration, children: &mut [Tied]) -> Result<(), VmError> {
    let start = Instant::now();
    while !path.exists() {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.0.try_wait() {
                return Err(VmError::Setup(format!(
                    "a helper exited ({status}) before creating {}",
                    path.display()
                )));
            }
        }
        if start.elapsed() > timeout {
            return Err(VmError::Setup(format!(
                "{} did not appear within {} s",
                path.display(),
                timeout.as_secs()
            )));
        }
        // A socket appears within milliseconds: look often (a stat each).
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
