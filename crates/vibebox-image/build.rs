//! Compiles the guest's exec agent (crates/vibebox-agent/src/main.rs, which
//! uses the standard library only) with plain rustc into a static executable
//! that the image build puts in every image: it must run on the guest's
//! Debian whatever glibc the host has.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let src = manifest.join("../vibebox-agent/src");
    for f in ["main.rs", "proto.rs"] {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
    }
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("vibebox-agent");
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "vibebox_agent",
            "-C",
            "opt-level=2",
        ])
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .arg(format!(
            "--remap-path-prefix={}=vibebox-agent",
            src.display()
        ))
        .arg("-o")
        .arg(&out)
        .arg(src.join("main.rs"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "rustc could not build the guest's exec agent ({s}); a static build needs glibc's static libraries (libc6-dev)"
        ),
        Err(e) => panic!("cannot run rustc for the guest's exec agent: {e}"),
    }
}
