//! QEMU's command line, built from a validated machine description.
//!
//! Pure: no process is started here, so every argument can be unit-tested.

use std::path::PathBuf;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (only when the probe says it is usable).
    Kvm,
    /// QEMU's emulation.
    Tcg,
}

/// MAC of the guest's only NIC, attached to vibebox's network engine.
pub const GUEST_NIC_MAC: &str = "52:54:00:76:62:0f";

/// Changes with the machine's devices (what a saved state's migration
/// stream describes): a state saved for another set is never loaded.
/// 2: the NIC has no option ROM.
pub const DEVICES_VERSION: u32 = 2;

/// The guest files and the devices of a machine, for the records of saved
/// states and templates.
pub fn machine_version() -> String {
    format!(
        "{}/devices-{DEVICES_VERSION}",
        vibebox_image::guest_version()
    )
}

/// One virtiofs share: a vhost-user socket served by virtiofsd, and its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The virtiofs tag the guest mounts.
    pub tag: String,
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
}

/// Everything QEMU needs to run one session's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The accelerator.
    pub accel: Accel,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub ram_mb: u32,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
    /// The base image (raw, opened read-only).
    pub base_disk: PathBuf,
    /// The instance overlay (qcow2); its backing is `base_disk`, given here
    /// explicitly rather than read from the overlay's header.
    pub overlay: PathBuf,
    /// Host TSC frequency in kHz, for the guest's early clock (TCG).
    pub tsc_khz: Option<u64>,
    /// The network engine's unix socket (the engine listens; QEMU connects).
    /// Everything the guest sends or receives goes through the engine,
    /// including the host's SSH connections (a loopback-only forward).
    pub net_socket: PathBuf,
    /// The control port's unix socket (QEMU listens).
    pub control_socket: PathBuf,
    /// QMP's unix socket (QEMU listens).
    pub qmp_socket: PathBuf,
    /// A unix socket the host listens on: QEMU connects and writes the guest
    /// console there (the host writes it to a capped log).
    pub console_socket: PathBuf,
    /// Guest RAM in this file (shared), so that a suspend saves only the
    /// device state; `None`: an anonymous memfd.
    pub ram_file: Option<PathBuf>,
    /// Wait for a saved state (`-incoming defer`) instead of booting.
    pub incoming: bool,
    /// The VM generation id: a new one after every resume reseeds the guest's RNG.
    pub vmgenid: Option<String>,
    /// virtiofs shares.
    pub shares: Vec<Share>,
}

fn path(p: &std::path::Path) -> String {
    // QEMU option values use `,` as a separator: double it inside values.
    p.display().to_string().replace(',', ",,")
}

impl Machine {
    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut c = vec![
            "console=ttyS0".to_string(),
            "loglevel=4".into(),
            "panic=-1".into(),
            "reboot=t".into(),
            "rdinit=/init".into(),
            "i8042.noaux".into(),
            "i8042.nomux".into(),
            "i8042.nopnp".into(),
            "i8042.dumbkbd".into(),
        ];
        if let Some(khz) = self.tsc_khz {
            c.push(format!("tsc_early_khz={khz}"));
            c.push("tsc=reliable".into());
        }
        c.join(" ")
    }

    /// QEMU's arguments (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));
        // q35, not microvm: on this kind of host microvm's firmware reset the
        // machine before the kernel ran in most boots (see FIELD-NOTES in the
        // session notes), while q35 booted every time, as fast.
        push(&["-M", "q35"]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        }
        // Shared memory: vhost-user (virtiofsd) maps the guest's RAM.
        let mem = match &self.ram_file {
            Some(f) => format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share=on",
                self.ram_mb,
                path(f)
            ),
            None => format!("memory-backend-memfd,id=mem,size={}M,share=on", self.ram_mb),
        };
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &format!("{}M", self.ram_mb),
            "-object",
            &mem,
            "-machine",
            "memory-backend=mem",
            "-kernel",
            &path(&self.kernel),
            "-initrd",
            &path(&self.initrd),
            "-append",
            &self.kernel_cmdline(),
            "-chardev",
            &format!(
                "socket,id=console,path={},server=off",
                path(&self.console_socket)
            ),
            "-serial",
            "chardev:console",
        ]);
        // The backing chain is spelled out: QEMU never follows a backing-file
        // name from the overlay's header, which the guest could have rewritten.
        push(&[
            "-blockdev",
            &format!(
                "driver=file,filename={},node-name=base-file,read-only=on",
                path(&self.base_disk)
            ),
            "-blockdev",
            "driver=raw,file=base-file,node-name=base,read-only=on",
            "-blockdev",
            &format!(
                "driver=file,filename={},node-name=overlay-file",
                path(&self.overlay)
            ),
            "-blockdev",
            "driver=qcow2,file=overlay-file,backing=base,node-name=root",
            "-device",
            "virtio-blk-pci,drive=root",
        ]);
        push(&[
            "-netdev",
            &format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                path(&self.net_socket)
            ),
            // No option ROM: the guest never boots from the network, and
            // the firmware running iPXE's costs every boot (under TCG).
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={GUEST_NIC_MAC},romfile="),
        ]);
        push(&[
            "-chardev",
            &format!(
                "socket,id=ctl,path={},server=on,wait=off",
                path(&self.control_socket)
            ),
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtserialport,chardev=ctl,name=vibebox.ctl",
            "-qmp",
            &format!("unix:{},server=on,wait=off", path(&self.qmp_socket)),
        ]);
        if let Some(id) = &self.vmgenid {
            push(&["-device", &format!("vmgenid,guid={id}")]);
        }
        if self.incoming {
            push(&["-incoming", "defer"]);
        }
        for (i, s) in self.shares.iter().enumerate() {
            push(&[
                "-chardev",
                &format!("socket,id=fs{i},path={}", path(&s.socket)),
                "-device",
                &format!("vhost-user-fs-pci,chardev=fs{i},tag={}", s.tag),
            ]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            accel: Accel::Tcg,
            cpus: 2,
            ram_mb: 1024,
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            base_disk: "/img/disk.img".into(),
            overlay: "/p,x/.vibebox/disk.qcow2".into(),
            tsc_khz: Some(2_000_000),
            net_socket: "/run/net.sock".into(),
            control_socket: "/run/ctl.sock".into(),
            qmp_socket: "/run/qmp.sock".into(),
            console_socket: "/run/v/console.sock".into(),
            ram_file: None,
            incoming: false,
            vmgenid: None,
            shares: vec![Share {
                tag: "m0".into(),
                socket: "/run/fs0.sock".into(),
            }],
        }
    }

    fn value_after(args: &[String], flag: &str, containing: &str) -> String {
        args.windows(2)
            .find(|w| w[0] == flag && w[1].contains(containing))
            .map(|w| w[1].clone())
            .unwrap_or_else(|| panic!("no {flag} with {containing} in {args:?}"))
    }

    #[test]
    fn tcg_uses_cpu_max_and_the_tsc_hint() {
        let a = machine().args();
        assert_eq!(value_after(&a, "-accel", ""), "tcg");
        assert_eq!(value_after(&a, "-cpu", ""), "max");
        assert!(value_after(&a, "-append", "").contains("tsc_early_khz=2000000 tsc=reliable"));
        let mut m = machine();
        m.accel = Accel::Kvm;
        assert_eq!(value_after(&m.args(), "-cpu", ""), "host");
    }

    #[test]
    fn the_backing_chain_is_explicit_and_read_only() {
        let a = machine().args();
        assert!(value_after(&a, "-blockdev", "base-file,").contains("read-only=on"));
        assert_eq!(
            value_after(&a, "-blockdev", "driver=qcow2"),
            "driver=qcow2,file=overlay-file,backing=base,node-name=root"
        );
        // Commas in paths are escaped, so a path cannot inject options.
        assert!(value_after(&a, "-blockdev", "overlay-file").contains("/p,,x/"));
    }

    #[test]
    fn egress_goes_to_the_engine_socket_on_its_own_nic() {
        let a = machine().args();
        assert_eq!(
            value_after(&a, "-netdev", "stream"),
            "stream,id=net0,server=off,addr.type=unix,addr.path=/run/net.sock"
        );
        assert!(value_after(&a, "-device", "netdev=net0").contains(GUEST_NIC_MAC));
        // No QEMU user networking at all: nothing bypasses the engine.
        assert!(!a.iter().any(|x| x.starts_with("user,")));
    }

    #[test]
    fn shares_use_shared_memory_and_vhost_user() {
        let a = machine().args();
        assert!(value_after(&a, "-object", "memfd").contains("share=on"));
        assert_eq!(
            value_after(&a, "-device", "vhost-user-fs"),
            "vhost-user-fs-pci,chardev=fs0,tag=m0"
        );
    }
}
