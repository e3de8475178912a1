//! Building a base image with mmdebstrap.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::manifest::{sha256_file, Manifest, IMAGE_FILES};
use crate::{io_err, ImageError};

const VIBEBOX_INIT: &str = include_str!("../guest/vibebox-init");
const INITRD_INIT: &str = include_str!("../guest/initrd-init");
const SSHD_CONF: &str = include_str!("../guest/sshd.conf");
const FINISH: &str = include_str!("../guest/finish.sh");
const PROFILE: &str = include_str!("../guest/profile.sh");
/// The exec agent, a static executable (built by build.rs from
/// crates/vibebox-agent).
const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vibebox-agent"));

/// A fingerprint of the guest files this vibebox puts in its images (init,
/// initrd init, sshd config, profile, build hook, exec agent's source,
/// package list). An image
/// built by another version of these files is out of date.
pub fn guest_version() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [VIBEBOX_INIT, INITRD_INIT, SSHD_CONF, FINISH, PROFILE] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    // The agent's source, not its bytes: the same source builds the same
    // agent, wherever the checkout is.
    for (name, text) in vibebox_agent::GUEST_SOURCES {
        h.update(name.as_bytes());
        h.update(text.as_bytes());
        h.update([0]);
    }
    h.update(PACKAGES.join(",").as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The packages of the guest, besides Debian's minimal base.
pub const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "openssh-server",
    "sudo",
    "git",
    "curl",
    "ca-certificates",
    "build-essential",
    "python3",
    "iproute2",
    "procps",
    "less",
    "busybox-static",
    "tmux",
];

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Image name (directory under `images_dir`).
    pub name: vibebox_core::image::ImageName,
    /// `$VIBEBOX_HOME/images`.
    pub images_dir: PathBuf,
    /// Debian suite.
    pub suite: String,
    /// The apt mirror; `None` uses mmdebstrap's default (the host's Debian mirror).
    pub mirror: Option<String>,
}

fn step_err(step: &str, detail: impl Into<String>) -> ImageError {
    ImageError::Step {
        step: step.to_string(),
        detail: detail.into(),
    }
}

/// Removes build directories left by interrupted builds of `name`.
fn remove_stale_builds(images_dir: &Path, name: &str) {
    let prefix = format!(".build-{name}-");
    if let Ok(rd) = fs::read_dir(images_dir) {
        for e in rd.flatten() {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let pid_alive = file_name
                .strip_prefix(&prefix)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if file_name.starts_with(&prefix) && !pid_alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Where the customize hooks work inside the guest tree: a tmpfs, so that
/// nothing in it ends up in the root disk (made from a non-recursive view of
/// the tree), and `/run` is a tmpfs in the running guest anyway.
const HOOK_WORK: &str = "/run/vibebox-work";

/// mmdebstrap's customize hooks, in order. They never touch a host path
/// directly: in unshare mode they run as the root of a user namespace, a
/// subordinate uid that can neither read nor write the invoking user's files.
/// The guest files go in with `sync-in` and the image comes out with
/// `sync-out`, both done by mmdebstrap as the invoking user.
fn customize_hooks(guest: &Path, out: &Path) -> Vec<String> {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    vec![
        format!("mkdir -p \"$1{HOOK_WORK}\" && mount -t tmpfs -o mode=0700 vibebox-work \"$1{HOOK_WORK}\" && mkdir \"$1{HOOK_WORK}/guest\""),
        format!("sync-in {} {HOOK_WORK}/guest", quote(guest)),
        format!("sh \"$1{HOOK_WORK}/guest/finish.sh\" \"$1\""),
        format!("sync-out {HOOK_WORK}/image {}", quote(out)),
        format!("umount \"$1{HOOK_WORK}\" && rmdir \"$1{HOOK_WORK}\""),
    ]
}

/// Builds the image, reporting each phase to `progress`, and returns its manifest.
///
/// The image appears at `images_dir/name` only once complete and verified;
/// an existing image of that name is replaced.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Manifest, ImageError> {
    let started = Instant::now();
    fs::create_dir_all(&opts.images_dir).map_err(io_err("cannot create", &opts.images_dir))?;
    remove_stale_builds(&opts.images_dir, opts.name.as_str());
    let work = opts
        .images_dir
        .join(format!(".build-{}-{}", opts.name, std::process::id()));
    fs::create_dir_all(&work).map_err(io_err("cannot create", &work))?;
    let result = build_in(opts, &work, started, progress);
    if result.is_err() {
        let _ = fs::remove_dir_all(&work);
    }
    result
}

fn build_in(
    opts: &BuildOptions,
    work: &Path,
    started: Instant,
    progress: &mut dyn FnMut(&str),
) -> Result<Manifest, ImageError> {
    let guest = work.join("guest");
    fs::create_dir_all(&guest).map_err(io_err("cannot create", &guest))?;
    for (name, text, mode) in [
        ("vibebox-init", VIBEBOX_INIT.as_bytes(), 0o755),
        ("initrd-init", INITRD_INIT.as_bytes(), 0o755),
        ("sshd.conf", SSHD_CONF.as_bytes(), 0o644),
        ("finish.sh", FINISH.as_bytes(), 0o755),
        ("profile.sh", PROFILE.as_bytes(), 0o644),
        ("vibebox-agent", AGENT, 0o755),
    ] {
        let p = guest.join(name);
        fs::write(&p, text).map_err(io_err("cannot write", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot chmod", &p))?;
    }
    let out = work.join("out");
    fs::create_dir_all(&out).map_err(io_err("cannot create", &out))?;

    progress(&format!(
        "bootstrapping Debian {} with mmdebstrap (about a minute from a nearby mirror)",
        opts.suite
    ));
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")));
    for hook in customize_hooks(&guest, &out) {
        cmd.arg(format!("--customize-hook={hook}"));
    }
    if !rustix::process::geteuid().is_root() {
        cmd.arg("--mode=unshare");
    }
    cmd.arg(&opts.suite).arg("/dev/null");
    if let Some(m) = &opts.mirror {
        cmd.arg(m);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        step_err(
            "mmdebstrap",
            format!("cannot run mmdebstrap ({e}); install it with `apt-get install mmdebstrap` or scripts/install-deps"),
        )
    })?;
    // mmdebstrap logs on stderr, and the hook's phase lines end up there too.
    let stdout = child.stdout.take();
    let drain = std::thread::spawn(move || {
        if let Some(s) = stdout {
            for _ in BufReader::new(s).lines().map_while(Result::ok) {}
        }
    });
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("vibebox-phase: ") {
                progress(p);
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
    }
    let _ = drain.join();
    let status = child
        .wait()
        .map_err(|e| step_err("mmdebstrap", e.to_string()))?;
    if !status.success() {
        return Err(step_err(
            "mmdebstrap",
            format!(
                "it exited with {status}; its last lines:\n{}",
                tail.join("\n")
            ),
        ));
    }

    // The disk image came out through a tar stream, which wrote its holes as
    // zeros: make it sparse again.
    let disk = out.join("disk.img");
    let _ = Command::new("fallocate")
        .arg("--dig-holes")
        .arg(&disk)
        .status();

    progress("extracting the uncompressed kernel (direct PVH boot)");
    extract_vmlinux(&out.join("vmlinuz"), &out.join("vmlinux"))?;

    progress("writing the manifest and verifying");
    let kernel_file = out.join("kernel");
    let kernel = fs::read_to_string(&kernel_file)
        .map_err(io_err("cannot read", &kernel_file))?
        .trim()
        .to_string();
    let packages_file = out.join("packages.tsv");
    let packages: BTreeMap<String, String> = fs::read_to_string(&packages_file)
        .map_err(io_err("cannot read", &packages_file))?
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect();
    let _ = fs::remove_file(&kernel_file);
    let _ = fs::remove_file(&packages_file);
    let mut sha256 = BTreeMap::new();
    for f in IMAGE_FILES {
        sha256.insert(f.to_string(), sha256_file(&out.join(f))?);
    }
    let manifest = Manifest {
        name: opts.name.to_string(),
        guest_version: guest_version(),
        suite: opts.suite.clone(),
        kernel,
        built: jiff::Timestamp::now().to_string(),
        build_seconds: started.elapsed().as_secs(),
        sha256,
        packages,
    };
    let text = toml::to_string(&manifest).map_err(|e| step_err("manifest", e.to_string()))?;
    let mpath = out.join("manifest.toml");
    fs::write(&mpath, text).map_err(io_err("cannot write", &mpath))?;
    check_structure(&out)?;

    let target = opts.images_dir.join(opts.name.as_str());
    if target.exists() {
        let old = opts
            .images_dir
            .join(format!(".old-{}-{}", opts.name, std::process::id()));
        fs::rename(&target, &old).map_err(io_err("cannot move", &target))?;
        let _ = vibebox_core::subids::remove_tree(&old);
    }
    fs::rename(&out, &target).map_err(io_err("cannot install", &target))?;
    let _ = fs::remove_dir_all(work);
    Ok(manifest)
}

/// Writes the uncompressed kernel (`vmlinux`, an ELF with a PVH entry) held in
/// the bzImage `vmlinuz`. QEMU boots it directly, which is faster than going
/// through the firmware's Linux loader.
pub fn extract_vmlinux(vmlinuz: &Path, vmlinux: &Path) -> Result<(), ImageError> {
    let step = "extracting vmlinux";
    let data = fs::read(vmlinuz).map_err(io_err("cannot read", vmlinuz))?;
    let field = |at: usize| -> Option<usize> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(step_err(step, "vmlinuz is not a bzImage (no HdrS header)"));
    }
    let setup_sects = match data.get(0x1f1) {
        Some(0) | None => 4,
        Some(n) => usize::from(*n),
    };
    let start = (setup_sects + 1) * 512;
    let (Some(offset), Some(len)) = (field(0x248), field(0x24c)) else {
        return Err(step_err(step, "vmlinuz has no payload fields"));
    };
    let payload = data
        .get(start + offset..start + offset + len)
        .ok_or_else(|| step_err(step, "the payload lies outside vmlinuz"))?;
    let tool: &[&str] = match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => &["lz4", "-dc"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dc"],
        [0xfd, b'7', b'z', b'X', b'Z', ..] => &["xz", "-dc"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        _ => {
            return Err(step_err(
                step,
                "the kernel's compression is not one of lz4, zstd, xz, gzip",
            ))
        }
    };
    let out = fs::File::create(vmlinux).map_err(io_err("cannot create", vmlinux))?;
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| step_err(step, format!("cannot run {} ({e}); install it", tool[0])))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| step_err(step, "no stdin"))?;
    let payload = payload.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // The decompressor stops reading at the end of its frame: ignore EPIPE.
        let _ = stdin.write_all(&payload);
    });
    let res = child
        .wait_with_output()
        .map_err(|e| step_err(step, e.to_string()))?;
    let _ = writer.join();
    let mut head = [0u8; 4];
    let read =
        fs::File::open(vmlinux).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    if read.is_err() || &head != b"\x7fELF" {
        return Err(step_err(
            step,
            format!(
                "{} did not produce an ELF kernel: {}",
                tool[0],
                String::from_utf8_lossy(&res.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// A system administration tool (e2fsck, debugfs): on PATH, else in the sbin
/// directories, which an ordinary user's PATH often lacks on Debian.
fn admin_tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin"].map(|d| Path::new(d).join(name)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Checks what a finished image must be before it is installed: a clean ext4
/// root disk holding our init, an ELF kernel, a page-aligned initrd.
fn check_structure(dir: &Path) -> Result<(), ImageError> {
    let step = "verifying the image";
    let fsck = Command::new(admin_tool("e2fsck"))
        .args(["-n", "-f"])
        .arg(dir.join("disk.img"))
        .output()
        .map_err(|e| step_err(step, format!("cannot run e2fsck ({e})")))?;
    if !fsck.status.success() {
        return Err(step_err(
            step,
            format!(
                "the root disk is damaged: {}",
                String::from_utf8_lossy(&fsck.stdout).trim()
            ),
        ));
    }
    let init = Command::new(admin_tool("debugfs"))
        .args(["-R", "stat /sbin/vibebox-init"])
        .arg(dir.join("disk.img"))
        .output()
        .map_err(|e| step_err(step, format!("cannot run debugfs ({e})")))?;
    if !String::from_utf8_lossy(&init.stdout).contains("Mode:  0755") {
        return Err(step_err(
            step,
            "the root disk has no executable /sbin/vibebox-init",
        ));
    }
    let initrd_len = fs::metadata(dir.join("initrd.img"))
        .map_err(io_err("cannot read", &dir.join("initrd.img")))?
        .len();
    if initrd_len == 0 || initrd_len % 4096 != 0 {
        return Err(step_err(
            step,
            "the initrd is empty or not padded to 4096 bytes",
        ));
    }
    Ok(())
}
