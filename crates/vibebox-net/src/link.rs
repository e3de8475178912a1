//! Where the guest's Ethernet frames come from and go to.
//!
//! - [`StreamLink`]: QEMU's `-netdev stream` — a unix stream, each frame
//!   preceded by its length (4 bytes, big-endian);
//! - [`PacketLink`]: a file descriptor that reads and writes one frame at a
//!   time — a TAP device, or an `AF_PACKET` socket bound to the outer end of a
//!   veth pair whose inner end is the guest's NIC (a container's, which needs
//!   no `/dev/net/tun`).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The largest frame a link accepts (an Ethernet frame is at most 1518
/// bytes; anything claiming more is a broken or hostile peer).
pub const MAX_FRAME: usize = 65536;

/// A source and sink of Ethernet frames, polled by the engine.
pub trait FrameLink {
    /// The descriptor to wait on for incoming frames.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Appends every frame available now to `out` (non-blocking); returns
    /// `false` once the peer is gone.
    fn receive(&mut self, out: &mut Vec<Vec<u8>>) -> io::Result<bool>;
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// QEMU's length-prefixed stream.
pub struct StreamLink {
    stream: UnixStream,
    inbuf: Vec<u8>,
}

impl StreamLink {
    /// Wraps `stream` (made non-blocking).
    pub fn new(stream: UnixStream) -> io::Result<StreamLink> {
        stream.set_nonblocking(true)?;
        Ok(StreamLink {
            stream,
            inbuf: Vec::new(),
        })
    }
}

impl FrameLink for StreamLink {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn receive(&mut self, out: &mut Vec<Vec<u8>>) -> io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut at = 0;
        while self.inbuf.len() - at >= 4 {
            let b = &self.inbuf[at..];
            let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes on the network stream"),
                ));
            }
            if b.len() < 4 + len {
                break;
            }
            out.push(b[4..4 + len].to_vec());
            at += 4 + len;
        }
        self.inbuf.drain(..at);
        Ok(true)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut out = (frame.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(frame);
        let mut data = &out[..];
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the network stream closed",
                    ))
                }
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One frame per read and per write: a TAP fd, or an `AF_PACKET` socket
/// (which should ignore its own outgoing frames: `PACKET_IGNORE_OUTGOING`).
pub struct PacketLink {
    fd: OwnedFd,
}

impl PacketLink {
    /// Wraps `fd` (made non-blocking).
    pub fn new(fd: OwnedFd) -> io::Result<PacketLink> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(PacketLink { fd })
    }
}

impl FrameLink for PacketLink {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn receive(&mut self, out: &mut Vec<Vec<u8>>) -> io::Result<bool> {
        let mut buf = vec![0u8; MAX_FRAME];
        // A bounded batch, so that a flood cannot starve the rest of the loop.
        for _ in 0..256 {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => out.push(buf[..n].to_vec()),
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match rustix::io::write(&self.fd, frame) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => std::thread::sleep(Duration::from_micros(200)),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_link_splits_frames_and_refuses_absurd_lengths() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut link = StreamLink::new(a).unwrap();
        let mut frames = Vec::new();
        b.write_all(&[0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 2, 9]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(link.receive(&mut frames).unwrap());
        assert_eq!(frames, vec![vec![1, 2, 3]]);
        b.write_all(&[9]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(link.receive(&mut frames).unwrap());
        assert_eq!(frames[1], vec![9, 9]);
        b.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(link.receive(&mut frames).is_err());
        drop(b);
    }

    #[test]
    fn a_packet_link_moves_whole_frames() {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let mut a = PacketLink::new(a).unwrap();
        let mut b = PacketLink::new(b).unwrap();
        a.send(&[1; 60]).unwrap();
        a.send(&[2; 1514]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut got = Vec::new();
        assert!(b.receive(&mut got).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].len(), got[1].len()), (60, 1514));
        drop(a);
        std::thread::sleep(Duration::from_millis(20));
        got.clear();
        assert!(!b.receive(&mut got).unwrap(), "the peer is gone");
    }
}
