//! The stage: the runtime's half inside the namespaces, between `unshare` and
//! crun (`vibebox __container-stage ARGS`).
//!
//! `unshare` has made a user namespace (id 0 = the host user, 1..=65535 the
//! user's subordinate ids), a mount, a network and a pid namespace, and runs
//! the stage as root and PID 1 there. The stage
//! 1. checks that every shared and guarded path is still what was planned;
//! 2. mounts the box's root: an overlay of the image's tree (read-only) and the
//!    session's upper layer in `.vibebox/container/`;
//! 3. runs `crun create`;
//! 4. brings the box's loopback up and makes the box's NIC: a veth pair whose
//!    inner end is made in the box's network namespace (and given its
//!    address and default route there: a few ioctls here, where the box's
//!    init would start programs) and whose outer end gets an `AF_PACKET`
//!    socket, handed to the supervisor (`SCM_RIGHTS`) for the network engine;
//! 5. moves the box's first process (created, not started) into the box's
//!    cgroups where the host has them for it, runs `crun start`, and reaps
//!    processes until the box's init ends.
//!
//! It talks to the supervisor over its standard input, a `SOCK_SEQPACKET`
//! socket: it waits for `go` (its arguments are written while `unshare`
//! starts), then says `nic` (with the socket) or `nonic REASON`, then
//! `started` or `failed REASON`. The box's control channel is fd 3, passed on
//! to the box's init by crun (`--preserve-fds 1`); the box's cgroup files
//! (opened by the supervisor) are fds 4 and up, closed before `crun start`.
//! When the stage ends, the kernel ends every process of the pid namespace
//! and drops every mount.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// The name of the box's NIC inside the box (the outer end is [`OUTER_NIC`]).
pub const BOX_NIC: &str = "eth0";
/// The outer end of the veth pair, in the stage's network namespace.
pub const OUTER_NIC: &str = "vbx0";
/// crun's name for the container (one per stage, in its own state root).
pub const CONTAINER_ID: &str = "vibebox";

/// What the runtime tells the stage (a JSON file in the run directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageArgs {
    /// The image's unpacked tree (lower layer, never written).
    pub lower: PathBuf,
    /// `.vibebox/container/` (holds `upper/` and `work/`).
    pub layers: PathBuf,
    /// Where the box's root is mounted (an empty directory).
    pub merged: PathBuf,
    /// The overlay's helper directory (an empty directory).
    pub overlay_dir: PathBuf,
    /// The OCI bundle (holds `config.json`).
    pub bundle: PathBuf,
    /// crun's state directory.
    pub crun_root: PathBuf,
    /// The box NIC's MAC address.
    pub guest_mac: String,
    /// The box's address on it, its prefix length, and the gateway (the
    /// network engine).
    pub guest_address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: std::net::Ipv4Addr,
    /// Paths that must still be exactly themselves (no symlink anywhere).
    pub checks: Vec<PathBuf>,
    /// Inherited `cgroup.procs` files of the box's cgroups (opened by the
    /// supervisor): the box's first process is moved in through them before
    /// `crun start`, and they are closed.
    #[serde(default)]
    pub cgroup_fds: Vec<i32>,
}

/// A step failed.
#[derive(Debug)]
struct Failed(String);

fn failed(what: &str) -> impl Fn(std::io::Error) -> Failed + '_ {
    move |e| Failed(format!("{what}: {e}"))
}

fn errno(what: &str) -> impl Fn(rustix::io::Errno) -> Failed + '_ {
    move |e| Failed(format!("{what}: {e}"))
}

/// Sends one message (and an fd) to the supervisor.
fn tell(sock: BorrowedFd<'_>, msg: &str, fd: Option<BorrowedFd<'_>>) {
    let _ = vibebox_core::fdpass::send(sock, msg.as_bytes(), fd);
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<(), Failed> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failed(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failed(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Every planned path must still be the same path, with no symlink in it.
fn check_paths(checks: &[PathBuf]) -> Result<(), Failed> {
    for p in checks {
        match fs::canonicalize(p) {
            Ok(real) if real == *p => {}
            _ => {
                return Err(Failed(format!(
                    "refusing to share: {} changed since the start was checked (it is gone or became a symlink)",
                    p.display()
                )))
            }
        }
    }
    Ok(())
}

fn bind(from: &Path, to: &Path) -> Result<(), Failed> {
    rustix::mount::mount_bind(from, to).map_err(|e| {
        Failed(format!(
            "cannot bind {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

/// Mounts the overlay. Its options are a comma-separated list, so the layers
/// are first bound to plain names in a directory of ours: a project path with
/// a comma or a colon in it cannot change the options.
fn mount_root(a: &StageArgs) -> Result<(), Failed> {
    let upper = a.layers.join("upper");
    let work = a.layers.join("work");
    for d in [&upper, &work] {
        match fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Failed(format!(
                    "{} is not a directory; refusing to use it",
                    d.display()
                )))
            }
            Err(_) => fs::create_dir(d).map_err(failed("cannot create the upper layer"))?,
        }
    }
    // The root of the box belongs to the box's root (box id 0 is id 1 here).
    rustix::fs::chown(&upper, Some(outer_uid(1)), Some(outer_gid(1)))
        .map_err(errno("cannot give the upper layer to the box's root"))?;
    let l = a.overlay_dir.join("l");
    let c = a.overlay_dir.join("c");
    for d in [&l, &c] {
        fs::create_dir_all(d).map_err(failed("cannot prepare the overlay"))?;
    }
    bind(&a.lower, &l)?;
    bind(&a.layers, &c)?;
    let opts = CString::new(format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        l.display(),
        c.join("upper").display(),
        c.join("work").display()
    ))
    .map_err(|_| Failed("a path has a NUL byte".into()))?;
    rustix::mount::mount(
        "vibebox",
        &a.merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(opts.as_c_str()),
    )
    .map_err(errno("cannot mount the box's root (overlayfs)"))
}

/// An id of the stage's user namespace as a uid.
fn outer_uid(id: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id)
}

/// An id of the stage's user namespace as a gid.
fn outer_gid(id: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id)
}

/// An `ifreq` naming `dev`.
fn ifreq(dev: &str) -> Result<libc::ifreq, Failed> {
    // SAFETY: a zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= req.ifr_name.len() {
        return Err(Failed(format!("interface name {dev} is too long")));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

/// An IPv4 `sockaddr` (as `sockaddr_in`).
fn sockaddr(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; any bytes are a
    // valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The interface ioctls of this thread's network namespace, on one socket.
struct NetIoctl(OwnedFd);

impl NetIoctl {
    fn new() -> Result<NetIoctl, Failed> {
        rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            None,
        )
        .map(NetIoctl)
        .map_err(errno("cannot open a socket"))
    }

    /// One ioctl with `arg`; `what` says what failed.
    fn call<T>(&self, request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), Failed> {
        // SAFETY: each request used here reads (and may write) a value of
        // the type passed, which outlives the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg as *mut T) };
        if r != 0 {
            return Err(Failed(format!(
                "{what}: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Switches TX checksum offload off on `dev`: on veth the kernel
    /// otherwise leaves checksums (and TSO segmentation) to "hardware", and
    /// the engine would get frames with partial checksums.
    fn tx_checksum_off(&self, dev: &str) -> Result<(), Failed> {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        const ETHTOOL_STXCSUM: u32 = 0x17;
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        let mut req = ifreq(dev)?;
        req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        self.call(
            SIOCETHTOOL,
            &mut req,
            &format!("cannot switch TX checksum offload off on {dev}"),
        )
    }

    /// Brings `dev` up.
    fn up(&self, dev: &str) -> Result<(), Failed> {
        let what = format!("cannot bring {dev} up");
        let mut req = ifreq(dev)?;
        self.call(libc::SIOCGIFFLAGS, &mut req, &what)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.call(libc::SIOCSIFFLAGS, &mut req, &what)
    }

    /// Gives `dev` its address and prefix.
    fn address(&self, dev: &str, ip: std::net::Ipv4Addr, prefix: u8) -> Result<(), Failed> {
        let what = format!("cannot give {dev} the address {ip}/{prefix}");
        if prefix > 32 {
            return Err(Failed(what));
        }
        let mut req = ifreq(dev)?;
        req.ifr_ifru.ifru_addr = sockaddr(ip);
        self.call(libc::SIOCSIFADDR, &mut req, &what)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        req.ifr_ifru.ifru_netmask = sockaddr(mask.into());
        self.call(libc::SIOCSIFNETMASK, &mut req, &what)
    }

    /// Routes everything off the link through `gateway` on `dev`.
    fn default_route(&self, gateway: std::net::Ipv4Addr, dev: &str) -> Result<(), Failed> {
        let name = CString::new(dev).map_err(|_| Failed("bad interface name".into()))?;
        // SAFETY: a zeroed rtentry is valid (null pointers, zero fields).
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(std::net::Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(std::net::Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // The kernel only reads the name (`name` outlives the call).
        rt.rt_dev = name.as_ptr().cast_mut();
        self.call(
            libc::SIOCADDRT,
            &mut rt,
            &format!("cannot add the default route via {gateway}"),
        )
    }
}

/// Runs `f` in a thread of ours that joined `box_pid`'s network namespace
/// (`setns` changes only the calling thread's; it ends right after).
fn in_box_netns(
    box_pid: i32,
    f: impl FnOnce() -> Result<(), Failed> + Send + 'static,
) -> Result<(), Failed> {
    let ns = fs::File::open(format!("/proc/{box_pid}/ns/net"))
        .map_err(failed("cannot open the box's network namespace"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on an fd we own, for this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Failed(format!(
                "cannot enter the box's network namespace: {}",
                std::io::Error::last_os_error()
            )));
        }
        f()
    })
    .join()
    .map_err(|_| Failed("the thread setting up the box's network failed".into()))?
}

/// An `AF_PACKET` socket on `dev` that sees the frames arriving there (not
/// those sent).
fn packet_socket(dev: &str) -> Result<OwnedFd, Failed> {
    const ETH_P_ALL: u16 = 3;
    const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
    let name = CString::new(dev).map_err(|_| Failed("bad interface name".into()))?;
    // SAFETY: plain system calls on values we own.
    unsafe {
        // Protocol 0: the socket takes no frames until it is bound to the
        // NIC (with ETH_P_ALL). Opened with ETH_P_ALL it would first listen
        // on every device, and the bind would wait for the kernel to drop
        // that (an RCU grace period: about 8 ms).
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Failed(format!(
                "cannot open a packet socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(Failed(format!(
                "cannot set PACKET_IGNORE_OUTGOING: {}",
                std::io::Error::last_os_error()
            )));
        }
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(Failed(format!("no interface {dev}")));
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = index as i32;
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) != 0
        {
            return Err(Failed(format!(
                "cannot bind the packet socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(fd)
    }
}

/// Makes the veth pair, its inner end made directly in the box's network
/// namespace (`box_pid`'s: making it there takes a few milliseconds, moving
/// it there afterwards about 25), configures the box's side, and returns the
/// packet socket on its outer end.
fn make_nic(a: &StageArgs, box_pid: i32) -> Result<OwnedFd, Failed> {
    let pid = box_pid.to_string();
    run_tool(
        Command::new("ip").args([
            "link",
            "add",
            OUTER_NIC,
            "up",
            "type",
            "veth",
            "peer",
            "name",
            BOX_NIC,
            "address",
            &a.guest_mac,
            "netns",
            &pid,
        ]),
        "cannot make the box's NIC (ip link add … type veth)",
    )?;
    let (ip, prefix, gateway) = (a.guest_address, a.prefix, a.gateway);
    in_box_netns(box_pid, move || {
        let net = NetIoctl::new()?;
        net.tx_checksum_off(BOX_NIC)?;
        net.address(BOX_NIC, ip, prefix)?;
        net.up(BOX_NIC)?;
        net.default_route(gateway, BOX_NIC)
    })?;
    packet_socket(OUTER_NIC)
}

/// Takes the inherited `cgroup.procs` files (fds 4 and up, after the control
/// channel), close-on-exec at once: nothing the stage starts holds them.
fn take_cgroup_files(fds: &[i32]) -> Result<Vec<OwnedFd>, Failed> {
    let mut files = Vec::new();
    for &fd in fds {
        if fd < 4 {
            return Err(Failed(format!("no cgroup file at fd {fd}")));
        }
        // SAFETY: only looked at (F_GETFD) while the borrow lasts.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if rustix::io::fcntl_getfd(borrowed).is_err() {
            return Err(Failed(format!("no cgroup file at fd {fd}")));
        }
        // SAFETY: an open fd the supervisor handed down for us alone; it is
        // owned from here on.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
            .map_err(errno("cannot keep the cgroup files to the stage"))?;
        files.push(owned);
    }
    Ok(files)
}

/// Moves the box's first process (`pid`, created by `crun create`, not
/// started) into the box's cgroups through `files`, and closes them: every
/// process of the box descends from it.
fn enter_cgroups(files: Vec<OwnedFd>, pid: i32) -> Result<(), Failed> {
    let pid = u32::try_from(pid).map_err(|_| Failed(format!("a bad pid {pid}")))?;
    crate::cgroup::enter(&files, pid).map_err(failed("cannot move the box into its cgroup"))
}

fn crun(a: &StageArgs) -> Command {
    let mut c = Command::new("crun");
    c.arg("--root")
        .arg(&a.crun_root)
        .arg("--cgroup-manager=disabled");
    c
}

/// Runs the stage; returns its exit code (the box init's).
pub fn main(args_file: &Path) -> i32 {
    // SAFETY: fd 0 is the socket to the supervisor, which owns nothing else here.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    let sock = match rustix::io::dup(&sock) {
        Ok(d) => {
            // Nothing we start must inherit it as its standard input.
            let _ = rustix::io::fcntl_setfd(&d, rustix::io::FdFlags::CLOEXEC);
            drop(sock);
            d
        }
        Err(_) => sock,
    };
    match run(args_file, sock.as_fd()) {
        Ok(code) => code,
        Err(Failed(why)) => {
            eprintln!("vibebox stage: {why}");
            tell(sock.as_fd(), &format!("failed {why}"), None);
            1
        }
    }
}

fn run(args_file: &Path, sock: BorrowedFd<'_>) -> Result<i32, Failed> {
    // The supervisor writes what we read while unshare made the namespaces;
    // "go" says it is there.
    let mut go = [0u8; 8];
    match rustix::net::recv(sock, &mut go, rustix::net::RecvFlags::empty()) {
        Ok((2, _)) if &go[..2] == b"go" => {}
        _ => return Err(Failed("the supervisor did not say go".into())),
    }
    let text =
        fs::read_to_string(args_file).map_err(failed("cannot read the stage's arguments"))?;
    let a: StageArgs = serde_json::from_str(&text)
        .map_err(|e| Failed(format!("the stage's arguments are not valid: {e}")))?;
    let cgroup_files = take_cgroup_files(&a.cgroup_fds)?;
    check_paths(&a.checks)?;
    // crun would look for cgroups v1 controllers it cannot use here.
    let _ = rustix::mount::mount(
        "none",
        "/sys/fs/cgroup",
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    );
    mount_root(&a)?;
    let pid_file = a.crun_root.join("init.pid");
    // The box's init keeps crun's standard output and error (the container
    // log): crun's own messages go there too, and nothing waits for them to
    // close.
    let status = crun(&a)
        .args(["create", "--preserve-fds", "1", "--bundle"])
        .arg(&a.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(CONTAINER_ID)
        .stdin(Stdio::null())
        .status()
        .map_err(failed("cannot run crun"))?;
    if !status.success() {
        return Err(Failed(format!("crun create failed ({status})")));
    }
    let pid: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| Failed("crun wrote no pid".into()))?;
    // The box's network namespace exists now; its init runs only after
    // `crun start`, with the NIC already there.
    // Loopback up whether or not the NIC comes (crun leaves it down).
    in_box_netns(pid, || NetIoctl::new()?.up("lo"))?;
    match make_nic(&a, pid) {
        Ok(fd) => tell(sock, "nic", Some(fd.as_fd())),
        Err(Failed(why)) => tell(sock, &format!("nonic {why}"), None),
    }
    // The box's first process has run only crun's code so far.
    enter_cgroups(cgroup_files, pid)?;
    run_tool(crun(&a).args(["start", CONTAINER_ID]), "crun start failed")?;
    tell(sock, "started", None);
    // PID 1 of this namespace: the box's init was re-parented to us.
    let code = loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((p, status))) if p.as_raw_nonzero().get() == pid => {
                break status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(1);
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break 1,
        }
    };
    let _ = crun(&a)
        .args(["delete", "--force", CONTAINER_ID])
        .stdin(Stdio::null())
        .status();
    Ok(code)
}
