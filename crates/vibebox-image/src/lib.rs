//! vibebox-image: base images shared by every session.
//!
//! An image is a directory `$VIBEBOX_HOME/images/<name>/` holding
//! `disk.img` (raw ext4 root, made without loop mounts by `mkfs.ext4 -d`),
//! `vmlinuz`, `initrd.img` (our own: busybox and the virtio modules) and
//! `manifest.toml` (package versions, sha256 of every file, build time).
//! A build happens in a temporary directory beside the images and is renamed
//! into place only once verified, so an interrupted build is never used.
#![warn(missing_docs)]

pub mod build;
pub mod manifest;

pub use build::{build, guest_version, BuildOptions};
pub use manifest::{list, read_manifest, remove, verify, ImageInfo, Manifest};

/// Errors of image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A build step's command failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// The step.
        step: String,
        /// What it printed or why it could not run.
        detail: String,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An image is missing or damaged.
    #[error("image `{name}` {problem}")]
    Invalid {
        /// The image name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

pub(crate) fn io_err<'p>(
    action: &'static str,
    path: &'p std::path::Path,
) -> impl FnOnce(std::io::Error) -> ImageError + 'p {
    move |source| ImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
