//! What the guest sends on a connection to an allowed name, checked before a
//! single byte of it leaves the host: fail closed.
//!
//! An [`Inspector`] sits on the guest-to-upstream direction of one connection
//! to a synthetic address (one name). Guest bytes go in with
//! [`Inspector::push`]; [`Inspector::take`] hands back only the bytes that
//! were classified and may be forwarded, or a reason to reset. A connection
//! is relayed only as:
//! - **TLS**: a complete ClientHello (reassembled across TCP segments and TLS
//!   records, up to [`MAX_CLIENT_HELLO`]) whose SNI names the connection's
//!   name; then the encrypted rest is relayed as it is.
//! - **HTTP/1**: every request head (up to [`MAX_HTTP_HEAD`]), kept-alive and
//!   pipelined ones included, must carry exactly one Host naming the
//!   connection's name, and an absolute-form target must name it too; bodies
//!   are followed by their framing (Content-Length, chunked) to find the next
//!   head. `CONNECT`, HTTP/2 with prior knowledge, ambiguous framing
//!   (Transfer-Encoding with Content-Length, several lengths), obsolete line
//!   folding and leading blank lines are refused. After an `Upgrade` request
//!   the guest's next bytes wait until the server answered; only a `101`
//!   answer turns the connection opaque, anything else keeps checking.
//! - **git** (`git://`): the first pkt-line's `host=` must name it.
//! - **SSH**: a client version banner: nothing names a host, relayed as is.
//! - **server-first** protocols (SMTP, …): the guest said nothing for
//!   [`SERVER_FIRST_WAIT`]; its bytes are then held until the server spoke,
//!   and classified as above if it sends first after all.
//!
//! Anything else — unrecognised bytes, a name that differs, a head or hello
//! still incomplete at its size limit or after [`CLASSIFY_TIMEOUT`] — is
//! refused. Names are compared after [`normalize_name`], the one function
//! DNS, SNI, Host and the policy use.

use std::time::{Duration, Instant};

use vibebox_core::policy::normalize_name;

/// The largest TLS ClientHello accepted (post-quantum key shares make them
/// a few KiB; 64 KiB is far above any real client).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// The largest HTTP/1 request head accepted.
pub const MAX_HTTP_HEAD: usize = 64 * 1024;
/// How long a connection may take to send a complete first message.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest must stay silent for the connection to be taken as a
/// server-first protocol.
pub const SERVER_FIRST_WAIT: Duration = Duration::from_millis(300);
/// The longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// What the inspector says about the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// These bytes may be forwarded now (possibly none yet).
    Forward(Vec<u8>),
    /// Reset the connection, for this reason.
    Refuse(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Nothing classified yet.
    Start,
    /// Connected as server-first: hold guest bytes until the server speaks.
    ServerFirst,
    /// TLS: reassembling the ClientHello.
    Tls,
    /// HTTP/1: at the start of a request head.
    HttpHead,
    /// HTTP/1: inside a body of this many bytes.
    HttpBody(u64),
    /// HTTP/1: inside a chunked body.
    HttpChunked(Chunked),
    /// HTTP/1: an Upgrade was asked for; hold until the server answers.
    UpgradeWait,
    /// Classified for good: relay everything.
    Opaque,
}

/// Checks the guest's side of one connection to the allowed name `name`.
#[derive(Debug)]
pub struct Inspector {
    name: String,
    state: State,
    pending: Vec<u8>,
    /// When the current message started (for [`CLASSIFY_TIMEOUT`]).
    since: Option<Instant>,
    refused: Option<String>,
}

impl Inspector {
    /// An inspector for a connection to `name` (already normalised).
    pub fn new(name: &str) -> Inspector {
        Inspector {
            name: name.to_string(),
            state: State::Start,
            pending: Vec::new(),
            since: None,
            refused: None,
        }
    }

    /// Whether the guest has sent nothing yet.
    pub fn untouched(&self) -> bool {
        self.state == State::Start && self.pending.is_empty()
    }

    /// The connection was opened without guest bytes (server-first).
    pub fn server_first(&mut self) {
        if self.untouched() {
            self.state = State::ServerFirst;
        }
    }

    /// Bytes the guest sent.
    pub fn push(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() && self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.pending.extend_from_slice(bytes);
    }

    /// Bytes the server sent (only their start matters).
    pub fn server_sent(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.state {
            State::ServerFirst => {
                // A real server-first protocol: the server spoke first.
                self.state = State::Opaque;
            }
            State::UpgradeWait => {
                self.state =
                    if bytes.starts_with(b"HTTP/1.1 101 ") || bytes.starts_with(b"HTTP/1.0 101 ") {
                        State::Opaque
                    } else {
                        // Not switched: keep checking requests.
                        State::HttpHead
                    };
            }
            _ => {}
        }
    }

    /// Whether guest bytes are being held (not yet forwardable).
    pub fn holding(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many guest bytes are being held.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// The bytes that may be forwarded now, or a reason to reset.
    pub fn take(&mut self) -> Decision {
        if let Some(r) = &self.refused {
            return Decision::Refuse(r.clone());
        }
        let mut out = Vec::new();
        loop {
            match self.step(&mut out) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(reason) => {
                    self.refused = Some(reason.clone());
                    return Decision::Refuse(reason);
                }
            }
        }
        if self.holding() && !matches!(self.state, State::ServerFirst | State::UpgradeWait) {
            if let Some(t) = self.since {
                if t.elapsed() > CLASSIFY_TIMEOUT {
                    let r = format!(
                        "incomplete {} after {} s",
                        self.what(),
                        CLASSIFY_TIMEOUT.as_secs()
                    );
                    self.refused = Some(r.clone());
                    return Decision::Refuse(r);
                }
            }
        }
        if self.pending.is_empty() {
            self.since = None;
        }
        Decision::Forward(out)
    }

    fn what(&self) -> &'static str {
        match self.state {
            State::Tls => "TLS ClientHello",
            State::Start => "first message",
            _ => "HTTP request",
        }
    }

    /// Moves classified bytes from `pending` to `out`; `Ok(true)` when it
    /// made progress and may make more.
    fn step(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        match self.state.clone() {
            State::Opaque => {
                out.append(&mut self.pending);
                Ok(false)
            }
            State::ServerFirst | State::UpgradeWait => Ok(false),
            State::Start => {
                let b = &self.pending;
                if b[0] == 0x16 {
                    self.state = State::Tls;
                } else if b.starts_with(b"SSH-") || b"SSH-".starts_with(&b[..b.len().min(4)]) {
                    if b.len() < 4 {
                        return Ok(false);
                    }
                    self.state = State::Opaque;
                } else {
                    match pkt_line_start(b) {
                        None => return Ok(false),
                        Some(true) => return self.git(out),
                        Some(false) => self.state = State::HttpHead,
                    }
                }
                Ok(true)
            }
            State::Tls => self.tls(),
            State::HttpHead => self.http_head(out),
            State::HttpBody(n) => {
                let take = (n as usize).min(self.pending.len());
                out.extend(self.pending.drain(..take));
                let left = n - take as u64;
                self.state = if left == 0 {
                    State::HttpHead
                } else {
                    State::HttpBody(left)
                };
                Ok(left == 0)
            }
            State::HttpChunked(c) => self.chunked(c, out),
        }
    }

    fn check_name(&self, claimed: &str, what: &str) -> Result<(), String> {
        match normalize_name(claimed) {
            Some(n) if n == self.name => Ok(()),
            _ => Err(format!(
                "{what} names {} instead of {}",
                vibebox_core::text::for_terminal(claimed),
                self.name
            )),
        }
    }

    fn tls(&mut self) -> Result<bool, String> {
        match client_hello_sni(&self.pending)? {
            None => {
                if self.pending.len() > MAX_CLIENT_HELLO + 5 * 16 {
                    return Err(format!(
                        "TLS ClientHello larger than {MAX_CLIENT_HELLO} bytes"
                    ));
                }
                Ok(false)
            }
            Some(sni) => {
                let sni =
                    sni.ok_or_else(|| "TLS ClientHello without a server name (SNI)".to_string())?;
                self.check_name(&sni, "TLS SNI")?;
                self.state = State::Opaque;
                Ok(true)
            }
        }
    }

    fn git(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        let b = &self.pending;
        let len = std::str::from_utf8(&b[..4.min(b.len())])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok());
        let Some(len) = len.filter(|_| b.len() >= 4) else {
            return Ok(false);
        };
        if !(5..=65520).contains(&len) {
            return Err("malformed git pkt-line".into());
        }
        if b.len() < len {
            return Ok(false);
        }
        let line = &b[4..len];
        let host = line
            .split(|c| *c == 0)
            .find_map(|p| p.strip_prefix(b"host="))
            .ok_or_else(|| "git request without host=".to_string())?;
        let host = String::from_utf8_lossy(host);
        let host = host.rsplit_once(':').map_or(host.as_ref(), |(h, p)| {
            if p.bytes().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host.as_ref()
            }
        });
        self.check_name(host, "git host=")?;
        self.state = State::Opaque;
        out.append(&mut self.pending);
        Ok(false)
    }

    fn http_head(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        let Some(end) = find(&self.pending, b"\r\n\r\n") else {
            if self.pending.len() > MAX_HTTP_HEAD {
                return Err(format!(
                    "HTTP request head larger than {MAX_HTTP_HEAD} bytes"
                ));
            }
            // Refuse what can never become a request as soon as it shows.
            check_request_line_prefix(&self.pending)?;
            return Ok(false);
        };
        let head_len = end + 4;
        if head_len > MAX_HTTP_HEAD {
            return Err(format!(
                "HTTP request head larger than {MAX_HTTP_HEAD} bytes"
            ));
        }
        let head = parse_head(&self.pending[..end])?;
        if head.method == "CONNECT" {
            return Err("HTTP CONNECT (a tunnel) is refused".into());
        }
        if let Some(authority) = head.target_authority {
            self.check_name(&authority, "HTTP absolute-form target")?;
        }
        let host = head
            .host
            .ok_or_else(|| "HTTP request without exactly one Host header".to_string())?;
        self.check_name(strip_port(&host), "HTTP Host")?;
        out.extend(self.pending.drain(..head_len));
        self.state = if head.upgrade {
            State::UpgradeWait
        } else {
            match head.body {
                Body::None => State::HttpHead,
                Body::Length(0) => State::HttpHead,
                Body::Length(n) => State::HttpBody(n),
                Body::Chunked => State::HttpChunked(Chunked::Size),
            }
        };
        Ok(true)
    }

    fn chunked(&mut self, c: Chunked, out: &mut Vec<u8>) -> Result<bool, String> {
        match c {
            Chunked::Size => {
                let Some(end) = find(&self.pending, b"\r\n") else {
                    if self.pending.len() > MAX_CHUNK_LINE {
                        return Err("chunk size line too long".into());
                    }
                    return Ok(false);
                };
                let line = std::str::from_utf8(&self.pending[..end])
                    .map_err(|_| "malformed chunk size".to_string())?;
                let hex = line
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim_end_matches([' ', '\t']);
                if hex.is_empty() || hex.len() > 15 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("malformed chunk size".into());
                }
                let size =
                    u64::from_str_radix(hex, 16).map_err(|_| "malformed chunk size".to_string())?;
                out.extend(self.pending.drain(..end + 2));
                self.state = State::HttpChunked(if size == 0 {
                    Chunked::Trailer
                } else {
                    Chunked::Data(size)
                });
                Ok(true)
            }
            Chunked::Data(n) => {
                let take = (n as usize).min(self.pending.len());
                out.extend(self.pending.drain(..take));
                let left = n - take as u64;
                self.state = State::HttpChunked(if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                });
                Ok(left == 0)
            }
            Chunked::DataEnd => {
                if self.pending.len() < 2 {
                    return Ok(false);
                }
                if &self.pending[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                out.extend(self.pending.drain(..2));
                self.state = State::HttpChunked(Chunked::Size);
                Ok(true)
            }
            Chunked::Trailer => {
                let Some(end) = find(&self.pending, b"\r\n") else {
                    if self.pending.len() > MAX_CHUNK_LINE {
                        return Err("chunk trailer line too long".into());
                    }
                    return Ok(false);
                };
                out.extend(self.pending.drain(..end + 2));
                if end == 0 {
                    self.state = State::HttpHead;
                }
                Ok(true)
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `b` starts like a git pkt-line (four lowercase hex digits);
/// `None` while too short to tell.
fn pkt_line_start(b: &[u8]) -> Option<bool> {
    let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
    let n = b.len().min(4);
    if !b[..n].iter().all(hex) {
        return Some(false);
    }
    (n == 4).then_some(true)
}

/// Refuses a partial head that can never be an HTTP/1 request line.
fn check_request_line_prefix(b: &[u8]) -> Result<(), String> {
    let line_end = b
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(b.len());
    let line = &b[..line_end];
    let method_end = line.iter().position(|&c| c == b' ').unwrap_or(line.len());
    if line_end == 0 && !b.is_empty() {
        return Err("a blank line before the HTTP request line".into());
    }
    if method_end > 32 || !line[..method_end].iter().all(|&c| is_token_byte(c)) {
        return Err("unrecognised protocol (neither TLS, HTTP/1, SSH nor git)".into());
    }
    Ok(())
}

enum Body {
    None,
    Length(u64),
    Chunked,
}

struct Head {
    method: String,
    target_authority: Option<String>,
    host: Option<String>,
    upgrade: bool,
    body: Body,
}

fn strip_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        // An IPv6 literal never names an allowed domain.
        return v6.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text =
        std::str::from_utf8(head).map_err(|_| "HTTP request head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default();
    if request.is_empty() {
        return Err("a blank line before the HTTP request line".into());
    }
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed HTTP request line".into());
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err("unrecognised protocol (neither TLS, HTTP/1, SSH nor git)".into());
    }
    if method == "PRI" && version == "HTTP/2.0" {
        return Err(
            "HTTP/2 with prior knowledge is refused (its :authority is not checked)".into(),
        );
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!(
            "unsupported HTTP version {}",
            vibebox_core::text::for_terminal(version)
        ));
    }
    let target_authority = if target.starts_with('/') || target == "*" {
        None
    } else {
        let lower = target.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
            .or_else(|| lower.strip_prefix("ws://"))
            .or_else(|| lower.strip_prefix("wss://"));
        match rest {
            Some(rest) => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let authority = authority.rsplit('@').next().unwrap_or_default();
                Some(strip_port(authority).to_string())
            }
            // authority-form (CONNECT) or anything else.
            None if method == "CONNECT" => None,
            None => return Err("malformed HTTP request target".into()),
        }
    };
    let mut host = None;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut upgrade = false;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err("obsolete HTTP header line folding is refused".into());
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| "malformed HTTP header line".to_string())?;
        if k.is_empty() || !k.bytes().all(is_token_byte) {
            return Err("malformed HTTP header name".into());
        }
        let v = v.trim_matches([' ', '\t']);
        match k.to_ascii_lowercase().as_str() {
            "host" => {
                hosts += 1;
                host = Some(v.to_string());
            }
            "content-length" => {
                if v.is_empty() || v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("malformed Content-Length".into());
                }
                let n: u64 = v
                    .parse()
                    .map_err(|_| "malformed Content-Length".to_string())?;
                if length.is_some_and(|l| l != n) {
                    return Err("several different Content-Length headers".into());
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                transfer_encoding = true;
                let last = v.rsplit(',').next().unwrap_or_default().trim();
                chunked = last.eq_ignore_ascii_case("chunked");
                if !chunked {
                    return Err("a Transfer-Encoding other than chunked is refused".into());
                }
            }
            "upgrade" => upgrade = true,
            _ => {}
        }
    }
    if hosts != 1 {
        host = None;
    }
    if transfer_encoding && length.is_some() {
        return Err(
            "both Transfer-Encoding and Content-Length (request smuggling) are refused".into(),
        );
    }
    let body = if chunked {
        Body::Chunked
    } else {
        length.map_or(Body::None, Body::Length)
    };
    Ok(Head {
        method: method.to_string(),
        target_authority,
        host,
        upgrade,
        body,
    })
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// The SNI of the ClientHello at the start of `b` (TLS records).
/// `Ok(None)`: not complete yet; `Ok(Some(None))`: complete, without SNI.
fn client_hello_sni(b: &[u8]) -> Result<Option<Option<String>>, String> {
    // Reassemble the handshake message from consecutive handshake records.
    let mut hs: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut need: Option<usize> = None;
    loop {
        if let Some(n) = need {
            if hs.len() >= n {
                break;
            }
        }
        if b.len() < at + 5 {
            return Ok(None);
        }
        if b[at] != 0x16 {
            return Err("TLS record that is not a handshake before the ClientHello ended".into());
        }
        if b[at + 1] != 3 {
            return Err("not a TLS record".into());
        }
        let len = be16(b, at + 3).unwrap_or(0);
        if len == 0 || len > 16 * 1024 + 2048 {
            return Err("malformed TLS record length".into());
        }
        if b.len() < at + 5 + len {
            return Ok(None);
        }
        hs.extend_from_slice(&b[at + 5..at + 5 + len]);
        at += 5 + len;
        if need.is_none() && hs.len() >= 4 {
            if hs[0] != 1 {
                return Err("the first TLS handshake message is not a ClientHello".into());
            }
            let n =
                4 + ((usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]));
            if n > MAX_CLIENT_HELLO {
                return Err(format!(
                    "TLS ClientHello larger than {MAX_CLIENT_HELLO} bytes"
                ));
            }
            need = Some(n);
        }
        if hs.len() > MAX_CLIENT_HELLO {
            return Err(format!(
                "TLS ClientHello larger than {MAX_CLIENT_HELLO} bytes"
            ));
        }
    }
    let n = need.unwrap_or(0);
    let hello = &hs[4..n];
    let malformed = || "malformed TLS ClientHello".to_string();
    let mut p = 2 + 32;
    let sid = *hello.get(p).ok_or_else(malformed)?;
    p += 1 + usize::from(sid);
    p += 2 + be16(hello, p).ok_or_else(malformed)?;
    let comp = *hello.get(p).ok_or_else(malformed)?;
    p += 1 + usize::from(comp);
    if p == hello.len() {
        return Ok(Some(None));
    }
    let ext_total = be16(hello, p).ok_or_else(malformed)?;
    p += 2;
    let end = p + ext_total;
    if end > hello.len() {
        return Err(malformed());
    }
    let mut sni = None;
    while p + 4 <= end {
        let kind = be16(hello, p).ok_or_else(malformed)?;
        let len = be16(hello, p + 2).ok_or_else(malformed)?;
        p += 4;
        if p + len > end {
            return Err(malformed());
        }
        if kind == 0 {
            if sni.is_some() {
                return Err("two server_name extensions".into());
            }
            let ext = &hello[p..p + len];
            let list = be16(ext, 0).ok_or_else(malformed)?;
            if list + 2 != ext.len() {
                return Err(malformed());
            }
            let mut q = 2;
            let mut names = Vec::new();
            while q + 3 <= ext.len() {
                let name_len = be16(ext, q + 1).ok_or_else(malformed)?;
                let name = ext.get(q + 3..q + 3 + name_len).ok_or_else(malformed)?;
                if ext[q] == 0 {
                    names.push(String::from_utf8_lossy(name).into_owned());
                }
                q += 3 + name_len;
            }
            if names.len() != 1 {
                return Err("a server_name extension without exactly one host name".into());
            }
            sni = names.pop();
        }
        p += len;
    }
    Ok(Some(sni))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello with an SNI extension naming `host`.
    pub fn client_hello(host: &str) -> Vec<u8> {
        let name = host.as_bytes();
        let mut sni = vec![0, 0]; // ext type server_name
        let list_len = 3 + name.len();
        sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        sni.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // compression: null
        body.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        body.extend_from_slice(&sni);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// The same handshake message split over several TLS records.
    fn split_records(hello: &[u8], size: usize) -> Vec<u8> {
        let hs = &hello[5..];
        let mut out = Vec::new();
        for part in hs.chunks(size) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    fn run(name: &str, chunks: &[&[u8]]) -> (Vec<u8>, Option<String>) {
        let mut i = Inspector::new(name);
        let mut out = Vec::new();
        for c in chunks {
            i.push(c);
            match i.take() {
                Decision::Forward(b) => out.extend(b),
                Decision::Refuse(r) => return (out, Some(r)),
            }
        }
        (out, None)
    }

    #[test]
    fn tls_is_forwarded_only_after_a_complete_matching_hello() {
        let hello = client_hello("GitHub.com.");
        let (out, refused) = run("github.com", &[&hello[..20]]);
        assert!(out.is_empty() && refused.is_none());
        let (out, refused) = run(
            "github.com",
            &[&hello[..20], &hello[20..], b"\x17\x03\x03rest"],
        );
        assert_eq!(refused, None);
        assert_eq!(out.len(), hello.len() + 7);
        let (out, refused) = run("github.com", &[&client_hello("evil.test")]);
        assert!(out.is_empty());
        assert!(refused.unwrap().contains("names evil.test"));
        // Split across records: reassembled, then checked.
        let split = split_records(&client_hello("evil.test"), 7);
        let (out, refused) = run("github.com", &[&split]);
        assert!(out.is_empty() && refused.is_some());
        let split = split_records(&client_hello("github.com"), 7);
        assert_eq!(run("github.com", &[&split]).1, None);
    }

    #[test]
    fn every_pipelined_and_kept_alive_request_is_checked() {
        let ok = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let evil = b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n";
        let (out, refused) = run("a.test", &[ok, ok]);
        assert_eq!((out.len(), refused), (2 * ok.len(), None));
        // A refusal discards everything not yet forwarded, good requests
        // pipelined before it included: the connection is reset.
        let both = [&ok[..], &evil[..]].concat();
        let (out, refused) = run("a.test", &[&both]);
        assert!(out.is_empty());
        assert!(refused.unwrap().contains("evil.test"));
        let (out, refused) = run("a.test", &[ok, evil]);
        assert_eq!(out.len(), ok.len(), "only the first request went out");
        assert!(refused.is_some());
        // A body does not hide the next request.
        let post = b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello";
        let (_, refused) = run("a.test", &[post, evil]);
        assert!(refused.is_some());
        let chunked = b"POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let (out, refused) = run("a.test", &[chunked, ok]);
        assert_eq!((out.len(), refused), (chunked.len() + ok.len(), None));
        let (_, refused) = run("a.test", &[chunked, evil]);
        assert!(refused.is_some());
    }

    #[test]
    fn what_used_to_pass_unchecked_is_refused() {
        for bad in [
            &b"\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"CONNECT evil.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: evil.test\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\n x: folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"\x00\x01\x02 binary",
            b"PLAIN-TCP\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
        ] {
            let (out, refused) = run("a.test", &[bad]);
            assert!(out.is_empty(), "{:?} forwarded {out:?}", String::from_utf8_lossy(bad));
            assert!(refused.is_some(), "{:?} not refused", String::from_utf8_lossy(bad));
        }
        // Methods outside a fixed list are checked like any other.
        let (out, refused) = run("a.test", &[b"PROPFIND / HTTP/1.1\r\nHost: a.test\r\n\r\n"]);
        assert!(!out.is_empty() && refused.is_none());
        let (_, refused) = run(
            "a.test",
            &[b"PROPFIND / HTTP/1.1\r\nHost: evil.test\r\n\r\n"],
        );
        assert!(refused.is_some());
        // An absolute-form target naming the host is fine.
        let (_, refused) = run(
            "a.test",
            &[b"GET http://A.test:80/x HTTP/1.1\r\nHost: a.test\r\n\r\n"],
        );
        assert_eq!(refused, None);
    }

    #[test]
    fn incomplete_heads_are_held_then_refused_at_their_limit() {
        let (out, refused) = run("a.test", &[b"GET / HTTP/1.1\r\nHost: a.test\r\n"]);
        assert!(out.is_empty() && refused.is_none(), "held, never forwarded");
        let big = vec![b'a'; MAX_HTTP_HEAD + 10];
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.extend_from_slice(&big);
        let (out, refused) = run("a.test", &[&head]);
        assert!(out.is_empty() && refused.is_some());
        // Time: an incomplete head is refused after CLASSIFY_TIMEOUT, never forwarded.
        let mut i = Inspector::new("a.test");
        i.push(b"GET / HTTP/1.1\r\nHost: a.te");
        i.since = Some(Instant::now() - CLASSIFY_TIMEOUT - Duration::from_secs(1));
        assert!(matches!(i.take(), Decision::Refuse(_)));
        let mut i = Inspector::new("a.test");
        i.push(&client_hello("a.test")[..30]);
        i.since = Some(Instant::now() - CLASSIFY_TIMEOUT - Duration::from_secs(1));
        assert!(matches!(i.take(), Decision::Refuse(_)));
    }

    #[test]
    fn upgrades_turn_opaque_only_on_101() {
        let up = b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let mut i = Inspector::new("a.test");
        i.push(up);
        i.push(b"\x81\x05hello");
        assert_eq!(i.take(), Decision::Forward(up.to_vec()));
        assert!(i.holding(), "frames wait for the server's answer");
        i.server_sent(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(i.take(), Decision::Forward(b"\x81\x05hello".to_vec()));
        // Not switched: the next bytes must be a checked request again.
        let mut i = Inspector::new("a.test");
        i.push(up);
        i.push(b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n");
        let _ = i.take();
        i.server_sent(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert!(matches!(i.take(), Decision::Refuse(_)));
    }

    #[test]
    fn server_first_ssh_and_git() {
        let mut i = Inspector::new("a.test");
        i.server_first();
        i.push(b"EHLO me\r\n");
        assert_eq!(
            i.take(),
            Decision::Forward(Vec::new()),
            "held until the server speaks"
        );
        i.server_sent(b"220 a.test ESMTP\r\n");
        assert_eq!(i.take(), Decision::Forward(b"EHLO me\r\n".to_vec()));
        let (out, refused) = run("a.test", &[b"SSH-2.0-OpenSSH_9.2\r\n"]);
        assert_eq!((out.len(), refused), (21, None));
        let pkt = |body: &str| format!("{:04x}{body}", body.len() + 4).into_bytes();
        let git = pkt("git-upload-pack /demo.git\0host=a.test:9418\0");
        let (out, refused) = run("a.test", &[&git[..10], &git[10..]]);
        assert_eq!((out.len(), refused), (git.len(), None));
        let git = pkt("git-upload-pack /demo.git\0host=evil.test:9418\0");
        assert!(run("a.test", &[&git]).1.is_some());
        let git = pkt("git-upload-pack /demo.git\0");
        assert!(run("a.test", &[&git]).1.is_some());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_forwards_a_wrong_host(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cut in 0usize..600,
        ) {
            let cut = cut.min(bytes.len());
            let _ = run("a.test", &[&bytes[..cut], &bytes[cut..]]);
            let mut tls = vec![0x16u8, 3, 1];
            tls.extend_from_slice(&bytes);
            let _ = run("a.test", &[&tls]);
            let mut req = b"GET / HTTP/1.1\r\nHost: evil.test\r\n".to_vec();
            req.extend_from_slice(&bytes);
            let (out, _) = run("a.test", &[&req]);
            proptest::prop_assert!(out.is_empty());
        }
    }
}
