//! What the first bytes of a connection say about its destination: the TLS
//! SNI of a ClientHello, or the Host header of an HTTP/1 request.

/// The host name the first bytes of a connection claim, if they claim one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// Neither TLS nor HTTP: nothing to check.
    None,
    /// A TLS ClientHello or an HTTP request naming this host (lower case, no port).
    Host(String),
    /// TLS or HTTP without a usable name (e.g. a ClientHello without SNI).
    Unnamed,
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

fn tls_sni(b: &[u8]) -> Claim {
    // Record header (5) + handshake header (4) + version (2) + random (32).
    let Some(record_len) = be16(b, 3) else {
        return Claim::Incomplete;
    };
    if b.len() < 5 + record_len {
        return Claim::Incomplete;
    }
    let hs = &b[5..5 + record_len];
    if hs.first() != Some(&1) {
        return Claim::Unnamed;
    }
    let mut at = 4 + 2 + 32;
    let Some(&sid_len) = hs.get(at) else {
        return Claim::Unnamed;
    };
    at += 1 + usize::from(sid_len);
    let Some(cs_len) = be16(hs, at) else {
        return Claim::Unnamed;
    };
    at += 2 + cs_len;
    let Some(&comp_len) = hs.get(at) else {
        return Claim::Unnamed;
    };
    at += 1 + usize::from(comp_len);
    let Some(ext_total) = be16(hs, at) else {
        return Claim::Unnamed;
    };
    at += 2;
    let end = (at + ext_total).min(hs.len());
    while at + 4 <= end {
        let (Some(kind), Some(len)) = (be16(hs, at), be16(hs, at + 2)) else {
            break;
        };
        at += 4;
        if kind == 0 {
            // server_name list: length (2), then entries of type (1) + length (2) + name.
            let mut p = at + 2;
            while p + 3 <= (at + len).min(end) {
                let name_type = hs[p];
                let Some(name_len) = be16(hs, p + 1) else {
                    break;
                };
                let Some(name) = hs.get(p + 3..p + 3 + name_len) else {
                    break;
                };
                if name_type == 0 {
                    return match std::str::from_utf8(name) {
                        Ok(n) => Claim::Host(n.trim_end_matches('.').to_ascii_lowercase()),
                        Err(_) => Claim::Unnamed,
                    };
                }
                p += 3 + name_len;
            }
            return Claim::Unnamed;
        }
        at += len;
    }
    Claim::Unnamed
}

const METHODS: &[&str] = &[
    "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];

fn http_host(b: &[u8]) -> Claim {
    let text = String::from_utf8_lossy(b);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return if b.len() > 16 * 1024 {
            Claim::Unnamed
        } else {
            Claim::Incomplete
        };
    };
    let mut hosts = text[..head_end].split("\r\n").skip(1).filter_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("host")
            .then(|| v.trim().to_string())
    });
    let first = hosts.next();
    if hosts.next().is_some() {
        // Two Host headers: a smuggling attempt; name nothing we could trust.
        return Claim::Unnamed;
    }
    match first {
        Some(h) => {
            let host = match h.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
                None => h
                    .rsplit_once(':')
                    .map_or(h.as_str(), |(n, _)| n)
                    .to_string(),
            };
            Claim::Host(host.trim_end_matches('.').to_ascii_lowercase())
        }
        None => Claim::Unnamed,
    }
}

/// What the first bytes of a connection claim.
pub fn claim(first: &[u8]) -> Claim {
    match first.first() {
        None => Claim::Incomplete,
        Some(0x16) => tls_sni(first),
        Some(_) => {
            let probe = String::from_utf8_lossy(&first[..first.len().min(8)]);
            let is_http = METHODS
                .iter()
                .any(|m| m.starts_with(&*probe) || probe.starts_with(m));
            if !is_http {
                Claim::None
            } else if METHODS.iter().any(|m| probe.starts_with(m)) || first.len() >= 8 {
                http_host(first)
            } else {
                Claim::Incomplete
            }
        }
    }
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

    #[test]
    fn tls_sni_is_read() {
        assert_eq!(
            claim(&client_hello("GitHub.com")),
            Claim::Host("github.com".into())
        );
        let full = client_hello("github.com");
        assert_eq!(claim(&full[..20]), Claim::Incomplete);
    }

    #[test]
    fn http_host_is_read_and_smuggling_is_refused() {
        assert_eq!(
            claim(b"GET / HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n"),
            Claim::Host("example.com".into())
        );
        assert_eq!(claim(b"GET / HTTP/1.1\r\nHost: a\r\n"), Claim::Incomplete);
        assert_eq!(
            claim(b"GET / HTTP/1.1\r\nHost: good.com\r\nhost: evil.com\r\n\r\n"),
            Claim::Unnamed
        );
        assert_eq!(claim(b"GET / HTTP/1.0\r\n\r\n"), Claim::Unnamed);
        assert_eq!(claim(b"GE"), Claim::Incomplete);
    }

    #[test]
    fn other_protocols_claim_nothing() {
        assert_eq!(claim(b"SSH-2.0-OpenSSH_9.2\r\n"), Claim::None);
        assert_eq!(claim(&[0u8, 1, 2]), Claim::None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = claim(&bytes);
            let mut tls = vec![0x16u8];
            tls.extend_from_slice(&bytes);
            let _ = claim(&tls);
        }
    }
}
