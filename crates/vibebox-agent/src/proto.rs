//! The exec agent's wire protocol, shared by the guest's agent and the host's
//! client (standard library only: the guest binary is built with plain rustc).
//!
//! One TCP connection per command, to [`PORT`] in the box (forwarded from a
//! host loopback port by the network engine). Both ways, frames: a kind byte,
//! a 4-byte big-endian length, the payload. The client sends [`REQUEST`]
//! first (the session's token, then the shell command line), then
//! [`STDIN`] data and one [`STDIN_END`]; the agent sends [`STDOUT`] and
//! [`STDERR`] data, then [`EXIT`] — or [`REFUSED`] and closes. A client that
//! closes the connection early has its command hung up on (`SIGHUP` to its
//! process group).
//!
//! Each side reads the other's bytes as attacker input: a frame longer than
//! its kind allows, or of an unknown kind, ends the connection.

use std::io::{self, Read, Write};

/// The box's TCP port the agent listens on (privileged in the box: only its
/// root can take it).
pub const PORT: u16 = 1023;

/// Client → agent: `token NUL command-line` (once, first).
pub const REQUEST: u8 = 1;
/// Client → agent: bytes for the command's standard input.
pub const STDIN: u8 = 2;
/// Client → agent: the standard input ended (empty payload).
pub const STDIN_END: u8 = 3;
/// Agent → client: bytes the command wrote to its standard output.
pub const STDOUT: u8 = 16;
/// Agent → client: bytes the command wrote to its standard error.
pub const STDERR: u8 = 17;
/// Agent → client: the command ended; 4 bytes, its exit code (128 + the
/// signal's number when a signal ended it).
pub const EXIT: u8 = 18;
/// Agent → client: the request was refused; why, in a few words.
pub const REFUSED: u8 = 19;

/// The longest data frame either side sends or accepts.
pub const MAX_DATA: usize = 64 * 1024;
/// The longest request (token and command line).
pub const MAX_REQUEST: usize = 1024 * 1024;
/// The longest refusal message.
pub const MAX_REFUSAL: usize = 1024;

/// The most bytes a frame of `kind` may carry; `None` for an unknown kind.
pub fn max_len(kind: u8) -> Option<usize> {
    match kind {
        REQUEST => Some(MAX_REQUEST),
        STDIN | STDOUT | STDERR => Some(MAX_DATA),
        STDIN_END => Some(0),
        EXIT => Some(4),
        REFUSED => Some(MAX_REFUSAL),
        _ => None,
    }
}

/// Writes one frame (the caller keeps `payload` within its kind's limit).
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&head);
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame: `Ok(None)` at a clean end of the stream (between frames).
/// A frame of an unknown kind, longer than its kind allows, or cut short is
/// an `InvalidData` error; nothing bigger than that limit is ever allocated.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(bad("the stream ended inside a frame")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = head[0];
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let max = max_len(kind).ok_or_else(|| bad("a frame of an unknown kind"))?;
    if len > max {
        return Err(bad("a frame longer than its kind allows"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad("the stream ended inside a frame")
        } else {
            e
        }
    })?;
    Ok(Some((kind, payload)))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A request's payload: the token, a NUL, the command line.
pub fn request(token: &str, line: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(token.len() + 1 + line.len());
    p.extend_from_slice(token.as_bytes());
    p.push(0);
    p.extend_from_slice(line.as_bytes());
    p
}

/// Splits a request's payload into the token and the command line; `None`
/// when it is not one (no NUL, a NUL in the line, not UTF-8).
pub fn parse_request(payload: &[u8]) -> Option<(&[u8], &str)> {
    let at = payload.iter().position(|&b| b == 0)?;
    let (token, rest) = payload.split_at(at);
    let line = std::str::from_utf8(&rest[1..]).ok()?;
    if line.contains('\0') {
        return None;
    }
    Some((token, line))
}

/// Whether two tokens are equal, in time that does not depend on where they
/// differ.
pub fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token is 64 lowercase hex digits.
pub fn valid_token(t: &[u8]) -> bool {
    t.len() == 64
        && t.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}
