//! `manifest.toml`: what an image holds, and checking it still does.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{io_err, ImageError};

/// The files every image has.
pub const IMAGE_FILES: &[&str] = &["disk.img", "vmlinuz", "vmlinux", "initrd.img", "rootfs.tar"];

/// The manifest of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The image name.
    pub name: String,
    /// The [`crate::build::guest_version`] of the vibebox that built it.
    #[serde(default)]
    pub guest_version: String,
    /// Debian suite.
    pub suite: String,
    /// Kernel release (`uname -r` in the guest).
    pub kernel: String,
    /// When the build finished (RFC 3339).
    pub built: String,
    /// How long the build took, in seconds.
    pub build_seconds: u64,
    /// sha256 of each file, by file name.
    pub sha256: BTreeMap<String, String>,
    /// Installed package versions, by package name.
    pub packages: BTreeMap<String, String>,
}

/// One image as `vibebox image list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The name.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Total size of its files (bytes actually used on disk).
    pub disk_usage: u64,
    /// Whether this vibebox built it (else it should be rebuilt).
    pub up_to_date: bool,
}

/// sha256 of a file, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = fs::File::open(path).map_err(io_err("cannot open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the manifest of the image in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let path = dir.join("manifest.toml");
    let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    toml::from_str(&text).map_err(|e| ImageError::Invalid {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        problem: format!("has a broken manifest {}: {}", path.display(), e.message()),
    })
}

/// Checks that every file of the image in `dir` matches its manifest.
pub fn verify(dir: &Path) -> Result<Manifest, ImageError> {
    let m = read_manifest(dir)?;
    for file in IMAGE_FILES {
        let expected = m.sha256.get(*file).ok_or_else(|| ImageError::Invalid {
            name: m.name.clone(),
            problem: format!("has no checksum for {file} in its manifest"),
        })?;
        let actual = sha256_file(&dir.join(file))?;
        if &actual != expected {
            return Err(ImageError::Invalid {
                name: m.name.clone(),
                problem: format!(
                    "{file} does not match its manifest (sha256 {actual}, expected {expected})"
                ),
            });
        }
    }
    Ok(m)
}

/// The complete images in `images_dir` (half-built ones are skipped).
pub fn list(images_dir: &Path) -> Result<Vec<ImageInfo>, ImageError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(images_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("cannot read", images_dir)(e)),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().join("manifest.toml").is_file() {
            continue;
        }
        if let Ok(manifest) = read_manifest(&e.path()) {
            out.push(ImageInfo {
                up_to_date: manifest.guest_version == crate::build::guest_version(),
                disk_usage: vibebox_core::project::allocated_bytes(&e.path()),
                path: e.path(),
                name,
                manifest,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes the image `name` from `images_dir`.
pub fn remove(images_dir: &Path, name: &vibebox_core::image::ImageName) -> Result<(), ImageError> {
    let dir = images_dir.join(name.as_str());
    if !dir.join("manifest.toml").is_file() {
        return Err(ImageError::Invalid {
            name: name.to_string(),
            problem: format!("does not exist in {}", images_dir.display()),
        });
    }
    // Rename first so that no session picks up a half-removed image.
    let doomed = images_dir.join(format!(".removing-{name}-{}", std::process::id()));
    fs::rename(&dir, &doomed).map_err(io_err("cannot move", &dir))?;
    // An unpacked root tree for the container runtime is owned by the user's
    // subordinate ids.
    vibebox_core::subids::remove_tree(&doomed).map_err(io_err("cannot remove", &doomed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(images: &Path, name: &str) -> PathBuf {
        let dir = images.join(name);
        fs::create_dir_all(&dir).unwrap();
        let mut sha256 = BTreeMap::new();
        for f in IMAGE_FILES {
            fs::write(dir.join(f), f.as_bytes()).unwrap();
            sha256.insert(f.to_string(), sha256_file(&dir.join(f)).unwrap());
        }
        let m = Manifest {
            name: name.into(),
            guest_version: String::new(),
            suite: "bookworm".into(),
            kernel: "6.1".into(),
            built: "2026-11-23T00:00:00Z".into(),
            build_seconds: 1,
            sha256,
            packages: BTreeMap::new(),
        };
        fs::write(dir.join("manifest.toml"), toml::to_string(&m).unwrap()).unwrap();
        dir
    }

    #[test]
    fn verify_catches_a_changed_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_image(root.path(), "img");
        verify(&dir).unwrap();
        fs::write(dir.join("vmlinuz"), b"tampered").unwrap();
        let e = verify(&dir).unwrap_err().to_string();
        assert!(e.contains("vmlinuz does not match"), "{e}");
    }

    #[test]
    fn list_skips_half_built_and_remove_removes() {
        let root = tempfile::tempdir().unwrap();
        fake_image(root.path(), "a");
        fs::create_dir_all(root.path().join(".build-b-1")).unwrap();
        fs::create_dir_all(root.path().join("no-manifest")).unwrap();
        let names: Vec<_> = list(root.path())
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, vec!["a"]);
        let name = |s: &str| vibebox_core::image::ImageName::parse(s).unwrap();
        assert!(remove(root.path(), &name("no-manifest")).is_err());
        // `../a` cannot even be named: ImageName refuses it.
        assert!(vibebox_core::image::ImageName::parse("../a").is_err());
        remove(root.path(), &name("a")).unwrap();
        assert!(list(root.path()).unwrap().is_empty());
    }
}
