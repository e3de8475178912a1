//! The engine against the real Linux TCP/IP stack, without a VM: inside a
//! network namespace of its own (unprivileged: `unshare --user --net`), a
//! helper makes a veth pair — `v0` is the "guest" NIC with the guest's
//! address, `v1` its outer end — opens an `AF_PACKET` socket on `v1` and
//! hands it to this process (`SCM_RIGHTS`), which runs the engine on it as a
//! [`PacketLink`]. The guest's programs then talk through the engine to a
//! stand-in server on 127.0.0.1. This is also how a container gets a NIC
//! without `/dev/net/tun`. Loopback and our own namespace only.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vibebox_core::policy::{NetworkEntry, NetworkMode, Policy};
use vibebox_net::engine::{Engine, EngineConfig};
use vibebox_net::link::PacketLink;
use vibebox_net::log::NetworkEvent;

/// Runs in the namespace: makes the NIC, hands out the packet socket, then
/// plays the guest. `argv[1]` is the fd of the unix socket to the test.
const HELPER: &str = r#"
import array, fcntl, os, socket, struct, subprocess, sys, time
def sh(cmd): subprocess.run(cmd, shell=True, check=True)
sh("ip link set lo up")
sh("ip link add v0 type veth peer name v1")
sh("ip link set v0 address 52:54:00:12:34:56 && ip addr add 10.0.3.15/24 dev v0")
sh("ip link set v0 up && ip link set v1 up && ip route add default via 10.0.3.2")
# On veth the kernel leaves checksums to the "hardware" (partial checksums,
# and TSO segments past the MTU): switch TX checksum offload off on the guest
# end (ethtool's ETHTOOL_STXCSUM through SIOCETHTOOL), which also stops TSO.
ev = array.array("I", [0x17, 0])
ctl_sock = socket.socket()
fcntl.ioctl(ctl_sock.fileno(), 0x8946, struct.pack("16sP", b"v0", ev.buffer_info()[0]))
ctl_sock.close()
p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
p.setsockopt(263, 23, 1)  # SOL_PACKET, PACKET_IGNORE_OUTGOING
p.bind(("v1", 0))
ctl = socket.socket(fileno=int(sys.argv[1]))
socket.send_fds(ctl, [b"nic"], [p.fileno()])
p.close()
def resolve(name):
    q = struct.pack(">HHHHHH", 7, 0x100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    for _ in range(3):
        try:
            s.sendto(q, ("10.0.3.2", 53)); r = s.recv(512); break
        except OSError:
            time.sleep(0.5)
    return ".".join(str(b) for b in r[-4:]) if r[3] & 15 == 0 else None
def get(ip, host):
    try:
        c = socket.create_connection((ip, int(sys.argv[2])), timeout=8)
        c.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            d = c.recv(4096)
            if not d: break
            data += d
        return data.decode(errors="replace").split("\r\n\r\n")[-1] or "EMPTY"
    except OSError as e:
        return type(e).__name__
ip = resolve("allowed.test")
print("resolved:", ip, flush=True)
print("allowed:", get(ip, "allowed.test"), flush=True)
print("smuggled:", get(ip, "evil.test"), flush=True)
print("blocked-name:", resolve("blocked.test"), flush=True)
"#;

fn namespaces_available() -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "true"])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("ip").arg("-V").output().is_ok()
}

#[test]
fn the_engine_drives_a_real_kernel_stack_through_a_packet_socket() {
    if !namespaces_available() {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs unprivileged user and network namespaces and iproute2"
        );
        eprintln!("skipped: no user+network namespaces here");
        return;
    }
    // The stand-in "internet" server.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in server.incoming().take(10) {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 2048];
            let n = c.read(&mut buf).unwrap_or(0);
            seen2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nREACHED",
            );
        }
    });
    // The helper's end of the socket pair must survive exec.
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--user",
        "--map-root-user",
        "--net",
        "python3",
        "-c",
        HELPER,
    ])
    .arg(theirs_fd.to_string())
    .arg(port.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: only fcntl between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(theirs_fd);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().expect("unshare runs");
    drop(theirs);
    // Receive the packet socket.
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 8];
    rustix::net::recvmsg(
        &ours,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut anc,
        rustix::net::RecvFlags::empty(),
    )
    .unwrap();
    let nic: Option<OwnedFd> = anc.drain().find_map(|m| match m {
        rustix::net::RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    let Some(nic) = nic else {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the helper sent no packet socket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let events = Arc::new(Mutex::new(Vec::<NetworkEvent>::new()));
    let ev = events.clone();
    let engine = Engine::new(
        EngineConfig {
            policy: Policy::new(
                NetworkMode::Allowlist,
                vec![NetworkEntry::parse("allowed.test").unwrap()],
            ),
            hosts: [("allowed.test".to_string(), "127.0.0.1".parse().unwrap())]
                .into_iter()
                .collect(),
            max_connections: 64,
        },
        Box::new(move |e: &NetworkEvent| ev.lock().unwrap().push(e.clone())),
    );
    let link = PacketLink::new(nic).unwrap();
    std::thread::spawn(move || engine.run_link(link));
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    let line = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("no {k} in:\n{text}\n{err}"))
            .to_string()
    };
    assert!(line("resolved:").contains("198.18."), "{text}");
    assert_eq!(line("allowed:"), "allowed: REACHED", "{text}");
    assert!(!line("smuggled:").contains("REACHED"), "{text}");
    assert_eq!(line("blocked-name:"), "blocked-name: None", "{text}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("Host: allowed.test"), "{seen:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.reason.contains("names evil.test")));
}
