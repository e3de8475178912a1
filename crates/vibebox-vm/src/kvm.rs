//! Is KVM usable? Measured, not assumed.
//!
//! `/dev/kvm` can exist and still be useless: under nested virtualisation
//! without hardware help a KVM guest can run ~1000x slower than the host. The
//! probe runs the same tight loop on the host and inside a tiny real-mode KVM
//! guest (no kernel, a few bytes of code), in a child process that is killed
//! when it takes too long, and compares the two times.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Iterations of the probe loop (a few milliseconds on a host CPU).
const PROBE_LOOPS: u32 = 20_000_000;
/// KVM is usable when the guest loop is at most this many times slower.
const MAX_SLOWDOWN: f64 = 10.0;

/// The probe's conclusion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvmVerdict {
    /// Whether QEMU should use KVM.
    pub usable: bool,
    /// Why, in one sentence (shown by `explain`).
    pub reason: String,
}

/// Runs the probe loop on the host and returns its time.
pub fn host_loop() -> Duration {
    let start = Instant::now();
    let mut x: u32 = PROBE_LOOPS;
    while std::hint::black_box(x) != 0 {
        x -= 1;
    }
    start.elapsed()
}

/// Runs the probe loop inside a real-mode KVM guest and returns its time.
///
/// This may take very long on a slow KVM: call it in a child process
/// ([`probe`] does) so it can be killed.
pub fn guest_loop() -> Result<Duration, String> {
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit};

    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| format!("cannot create a KVM VM: {e}"))?;
    let size = 0x4000usize;
    // SAFETY: an anonymous private mapping of `size` bytes, unmapped never (the
    // process exits right after the probe).
    let mem = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            size,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )
    }
    .map_err(|e| format!("cannot map guest memory: {e}"))? as *mut u8;
    let n = PROBE_LOOPS.to_le_bytes();
    // mov ecx, N; l: dec ecx; jnz l; hlt   (real mode, 32-bit operands)
    let code = [
        0x66, 0xb9, n[0], n[1], n[2], n[3], 0x66, 0x49, 0x75, 0xfc, 0xf4,
    ];
    // SAFETY: `mem` is a fresh writable mapping larger than 0x1000 + code.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.add(0x1000), code.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region stays mapped for the life of the VM.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("cannot give memory to the VM: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("cannot create a vCPU: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("get_sregs: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("set_sregs: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("get_regs: {e}"))?;
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| format!("set_regs: {e}"))?;
    let start = Instant::now();
    loop {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::Hlt => return Ok(start.elapsed()),
            VcpuExit::Intr => continue,
            other => return Err(format!("unexpected exit from the probe guest: {other:?}")),
        }
    }
}

/// Decides whether KVM is usable, running the guest half of the probe as
/// `exe ARGS…` (a program that calls [`guest_loop`] and prints the nanoseconds).
pub fn probe(exe: &Path, args: &[&str]) -> KvmVerdict {
    if !Path::new("/dev/kvm").exists() {
        return KvmVerdict {
            usable: false,
            reason: "/dev/kvm does not exist".into(),
        };
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return KvmVerdict {
            usable: false,
            reason: format!("/dev/kvm cannot be opened: {e}"),
        };
    }
    let host = (0..3).map(|_| host_loop()).min().unwrap_or_default();
    let limit = Duration::from_millis(250).max(host.mul_f64(MAX_SLOWDOWN * 2.0));
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return KvmVerdict {
                usable: false,
                reason: format!("cannot run the KVM probe: {e}"),
            }
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return KvmVerdict {
                    usable: false,
                    reason: format!(
                        "/dev/kvm exists but is not usable: a loop that takes {:.1} ms on the host had not finished in a KVM guest after {} ms (nested virtualisation without hardware help?)",
                        host.as_secs_f64() * 1e3,
                        limit.as_millis()
                    ),
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => {
                return KvmVerdict {
                    usable: false,
                    reason: format!("the KVM probe failed: {e}"),
                }
            }
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => {
            return KvmVerdict {
                usable: false,
                reason: format!("the KVM probe failed: {e}"),
            }
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(ns) = text.trim().parse::<u64>().ok() else {
        return KvmVerdict {
            usable: false,
            reason: format!(
                "the KVM probe failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
    };
    let guest = Duration::from_nanos(ns);
    let slowdown = guest.as_secs_f64() / host.as_secs_f64().max(1e-6);
    KvmVerdict {
        usable: slowdown <= MAX_SLOWDOWN,
        reason: format!(
            "a loop took {:.1} ms in a KVM guest vs {:.1} ms on the host ({slowdown:.1}x){}",
            guest.as_secs_f64() * 1e3,
            host.as_secs_f64() * 1e3,
            if slowdown <= MAX_SLOWDOWN {
                ""
            } else {
                ": too slow to use"
            }
        ),
    }
}
