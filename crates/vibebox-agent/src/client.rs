//! The host's side: runs one command through the box's agent, relaying this
//! process's standard streams. Everything the agent sends is attacker input:
//! frames are bounded ([`crate::proto::read_frame`]) and a refusal's text is
//! escaped before anyone prints it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use crate::proto;

/// Why a command could not run, or its end was not learned.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The forwarded port did not accept the connection.
    #[error("cannot reach the box's exec agent at {addr}: {source}")]
    Connect {
        /// The host loopback address of the forward.
        addr: SocketAddr,
        /// What connect(2) said.
        source: io::Error,
    },
    /// The agent refused the request (its words, escaped).
    #[error("the box refused the command: {0}")]
    Refused(String),
    /// The agent sent something that is not the protocol.
    #[error("the box's exec agent sent a malformed reply ({0})")]
    Protocol(String),
    /// The connection ended before the command's exit status came.
    #[error(
        "the box closed the connection before the command ended (was its exec agent stopped?)"
    )]
    Closed,
    /// Reading or writing the connection failed.
    #[error("the connection to the box failed: {0}")]
    Io(#[source] io::Error),
}

/// The exit code reported when this process's output is closed early (as a
/// shell reports a command that a SIGPIPE ended).
pub const BROKEN_OUTPUT: i32 = 141;

/// Runs `line` (a shell command line) as the box's user through the agent
/// forwarded to `addr`, with `token`: this process's standard input goes to
/// it, its output and errors come here. Returns its exit code.
pub fn run(addr: SocketAddr, token: &str, line: &str) -> Result<i32, AgentError> {
    let stream = TcpStream::connect(addr).map_err(|source| AgentError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone().map_err(AgentError::Io)?;
    proto::write_frame(&mut out, proto::REQUEST, &proto::request(token, line))
        .map_err(AgentError::Io)?;
    // The input is read on its own thread until it ends; the process exits
    // when the command does, whatever that thread is blocked on.
    let _ = std::thread::Builder::new().spawn(move || {
        let _ = relay_input(&mut io::stdin().lock(), &mut out);
    });
    relay_output(stream, &mut io::stdout(), &mut io::stderr())
}

/// Sends what `from` gives as input frames, then the end of the input.
pub fn relay_input(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; proto::MAX_DATA];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An input that cannot be read ends like one that ended.
            Err(_) => break,
        };
        proto::write_frame(to, proto::STDIN, &buf[..n])?;
    }
    proto::write_frame(to, proto::STDIN_END, &[])
}

/// Reads the agent's frames from `conn`, writing the command's output to
/// `stdout` and `stderr`, until its exit code.
pub fn relay_output(
    mut conn: TcpStream,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<i32, AgentError> {
    let result = relay(&mut conn, stdout, stderr);
    // An early end (an output closed, an error) hangs up on the command.
    let _ = conn.shutdown(Shutdown::Both);
    result
}

/// [`relay_output`] on any stream.
pub fn relay(
    conn: &mut impl Read,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<i32, AgentError> {
    loop {
        let frame = proto::read_frame(conn).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => AgentError::Protocol(e.to_string()),
            _ => AgentError::Io(e),
        })?;
        let Some((kind, data)) = frame else {
            return Err(AgentError::Closed);
        };
        let to: &mut dyn Write = match kind {
            proto::STDOUT => stdout,
            proto::STDERR => stderr,
            proto::EXIT => {
                let code: [u8; 4] = data
                    .as_slice()
                    .try_into()
                    .map_err(|_| AgentError::Protocol("a short exit status".into()))?;
                let code = i32::from_be_bytes(code);
                return if (0..=255).contains(&code) {
                    Ok(code)
                } else {
                    Err(AgentError::Protocol(format!("an exit status of {code}")))
                };
            }
            proto::REFUSED => return Err(AgentError::Refused(escape(&data))),
            other => {
                return Err(AgentError::Protocol(format!(
                    "a frame of kind {other} from the box"
                )))
            }
        };
        if to.write_all(&data).and_then(|()| to.flush()).is_err() {
            return Ok(BROKEN_OUTPUT);
        }
    }
}

/// `bytes` as printable ASCII: anything else as `\xHH`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (b' '..=b'~').contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(list: &[(u8, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, p) in list {
            proto::write_frame(&mut v, *k, p).unwrap();
        }
        v
    }

    fn relayed(bytes: Vec<u8>) -> (Result<i32, AgentError>, Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = relay(&mut io::Cursor::new(bytes), &mut out, &mut err);
        (r, out, err)
    }

    #[test]
    fn output_errors_and_the_exit_code_come_apart() {
        let (r, out, err) = relayed(frames(&[
            (proto::STDOUT, b"one "),
            (proto::STDERR, b"oops\n"),
            (proto::STDOUT, b"two\n"),
            (proto::EXIT, &7i32.to_be_bytes()),
            (proto::STDOUT, b"after the end: never read"),
        ]));
        assert_eq!(r.unwrap(), 7);
        assert_eq!(out, b"one two\n");
        assert_eq!(err, b"oops\n");
    }

    #[test]
    fn a_hostile_agent_gets_an_error_not_a_crash() {
        // A huge length: refused before any allocation of that size.
        let mut huge = vec![proto::STDOUT];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(relayed(huge).0, Err(AgentError::Protocol(_))));
        // One byte over the data limit.
        let mut over = vec![proto::STDERR];
        over.extend_from_slice(&((proto::MAX_DATA + 1) as u32).to_be_bytes());
        over.resize(over.len() + proto::MAX_DATA + 1, b'x');
        assert!(matches!(relayed(over).0, Err(AgentError::Protocol(_))));
        // Kinds only a client sends, and unknown ones.
        for kind in [proto::REQUEST, proto::STDIN, 0, 200] {
            let r = relayed(frames(&[(kind, b"")])).0;
            assert!(
                matches!(r, Err(AgentError::Protocol(_))),
                "kind {kind}: {r:?}"
            );
        }
        // Exit statuses that are not.
        assert!(matches!(
            relayed(frames(&[(proto::EXIT, b"\0\0")])).0,
            Err(AgentError::Protocol(_))
        ));
        assert!(matches!(
            relayed(frames(&[(proto::EXIT, &(-1i32).to_be_bytes())])).0,
            Err(AgentError::Protocol(_))
        ));
        // Cut inside a frame, or before any exit status.
        let mut cut = frames(&[(proto::STDOUT, b"abcdef")]);
        cut.truncate(8);
        assert!(matches!(relayed(cut).0, Err(AgentError::Protocol(_))));
        assert!(matches!(
            relayed(frames(&[(proto::STDOUT, b"x")])).0,
            Err(AgentError::Closed)
        ));
    }

    #[test]
    fn a_refusal_is_escaped() {
        let r = relayed(frames(&[(proto::REFUSED, b"no\x1b]0;pwned\x07\n")])).0;
        match r {
            Err(AgentError::Refused(why)) => {
                assert_eq!(why, "no\\x1b]0;pwned\\x07\\x0a");
                assert!(!why.contains('\x1b'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn input_goes_in_bounded_frames_then_ends() {
        let input = vec![b'a'; proto::MAX_DATA * 2 + 10];
        let mut wire = Vec::new();
        relay_input(&mut io::Cursor::new(input.clone()), &mut wire).unwrap();
        let mut r = io::Cursor::new(wire);
        let mut got = Vec::new();
        loop {
            match proto::read_frame(&mut r).unwrap() {
                Some((proto::STDIN, d)) => {
                    assert!(d.len() <= proto::MAX_DATA);
                    got.extend(d)
                }
                Some((proto::STDIN_END, d)) => {
                    assert!(d.is_empty());
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, input);
        assert_eq!(proto::read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn requests_and_tokens() {
        let t = "ab".repeat(32);
        let p = proto::request(&t, "cd /x && exec ls");
        let (token, line) = proto::parse_request(&p).unwrap();
        assert_eq!(token, t.as_bytes());
        assert_eq!(line, "cd /x && exec ls");
        assert!(proto::valid_token(t.as_bytes()));
        assert!(!proto::valid_token(b"AB"));
        assert!(!proto::valid_token("AB".repeat(32).as_bytes()));
        assert!(proto::same_token(t.as_bytes(), t.as_bytes()));
        assert!(!proto::same_token(t.as_bytes(), "ab".repeat(31).as_bytes()));
        assert!(!proto::same_token(b"", b""));
        let other = format!("{}ac", "ab".repeat(31));
        assert!(!proto::same_token(t.as_bytes(), other.as_bytes()));
        assert!(proto::parse_request(b"no separator").is_none());
        assert!(proto::parse_request(b"t\0line\0more").is_none());
        assert!(proto::parse_request(b"t\0\xff").is_none());
    }
}
