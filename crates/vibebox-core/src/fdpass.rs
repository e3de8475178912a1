//! Passing one file descriptor with a short message over a unix socket
//! (`SCM_RIGHTS`): how a NIC made inside a namespace reaches the network
//! engine outside it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Sends `msg`, and `fd` with it when there is one.
pub fn send(sock: impl AsFd, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let fds = fd.map(|f| [f]);
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
    if let Some(fds) = &fds {
        anc.push(rustix::net::SendAncillaryMessage::ScmRights(fds));
    }
    rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(msg)],
        &mut anc,
        rustix::net::SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives one message into `buf`: its length, and the fd sent with it (its
/// close-on-exec flag set). Further fds, if any were sent, are closed.
pub fn recv(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        sock,
        &mut [io::IoSliceMut::new(buf)],
        &mut anc,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    let fd = anc.drain().find_map(|m| match m {
        rustix::net::RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok((got.bytes, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_fd_travels_with_its_message() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        send(&a, b"nic", Some(file.as_fd())).unwrap();
        let mut buf = [0u8; 8];
        let (n, fd) = recv(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"nic");
        assert!(fd.is_some());
        send(&a, b"plain", None).unwrap();
        let (n, fd) = recv(&b, &mut buf).unwrap();
        assert_eq!((&buf[..n], fd.is_none()), (&b"plain"[..], true));
    }
}
