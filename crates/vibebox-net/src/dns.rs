//! The guest's DNS, answered from the policy alone.
//!
//! - An allowed name gets its synthetic address (type A); IPv6 (AAAA) and
//!   other types get an empty answer, so clients fall back to IPv4.
//! - A name outside the policy gets NXDOMAIN.
//! - Nothing is ever forwarded upstream from here: a blocked name (or data
//!   tunnelled in its labels) never leaves the host. Allowed names are
//!   resolved on the host only when the guest connects.

use std::net::Ipv4Addr;

use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};
use vibebox_core::policy::{normalize_name, Policy, Verdict};

use crate::log::{EventKind, NetworkEvent};
use crate::synthetic::SyntheticPool;

/// TTL of synthetic answers, in seconds: short, the table is per session.
pub const TTL: u32 = 60;

/// The reply to one query packet and the decision taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The DNS reply packet.
    pub packet: Vec<u8>,
    /// What was decided, for the log.
    pub event: NetworkEvent,
}

/// Answers `query` (a DNS packet from the guest). `None` when it is not a
/// well-formed query with one question: such packets are dropped.
pub fn answer(query: &[u8], policy: &Policy, pool: &mut SyntheticPool) -> Option<Reply> {
    answer_with(query, pool, |name| match name {
        Some(n) => (policy.decide_name(n, None), ""),
        None => (Verdict::Deny, ""),
    })
}

/// The name a query asks about, checked and normalised: `None` when the
/// packet is not a well-formed query with one question, `Some(None)` when
/// its name is malformed.
pub fn asked_name(query: &[u8]) -> Option<Option<String>> {
    let q = Packet::parse(query).ok()?;
    if q.has_flags(PacketFlag::RESPONSE) || q.questions.len() != 1 {
        return None;
    }
    Some(normalize_name(&q.questions[0].qname.to_string()))
}

/// Answers `query` with what `decide` says about its checked name (`None`:
/// malformed, which must be denied): the verdict and, when not empty, why
/// (else the policy is the reason).
pub fn answer_with<'w>(
    query: &[u8],
    pool: &mut SyntheticPool,
    decide: impl FnOnce(Option<&str>) -> (Verdict, &'w str),
) -> Option<Reply> {
    let q = Packet::parse(query).ok()?;
    if q.has_flags(PacketFlag::RESPONSE) || q.questions.len() != 1 {
        return None;
    }
    let question = &q.questions[0];
    let raw_name = question.qname.to_string();
    let qtype = question.qtype;
    let mut reply = q.clone().into_reply();
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    let normal = normalize_name(&raw_name);
    let (verdict, why) = decide(normal.as_deref());
    // A malformed name is never answered, whatever `decide` said.
    let verdict = if normal.is_none() {
        Verdict::Deny
    } else {
        verdict
    };
    let reason;
    if verdict == Verdict::Deny {
        *reply.rcode_mut() = RCODE::NameError;
        reason = if normal.is_none() {
            "malformed name".to_string()
        } else if why.is_empty() {
            "not allowed by the policy".to_string()
        } else {
            why.to_string()
        };
    } else {
        let name = normal.clone().unwrap_or_default();
        let why = if why.is_empty() {
            String::new()
        } else {
            format!("{why}; ")
        };
        match qtype {
            QTYPE::TYPE(TYPE::A) | QTYPE::ANY => {
                let addr: Ipv4Addr = pool.address_for(&name);
                reply.answers.push(ResourceRecord::new(
                    question.qname.clone(),
                    CLASS::IN,
                    TTL,
                    RData::A(A::from(addr)),
                ));
                reason = format!("{why}synthetic address {addr}");
            }
            _ => reason = format!("{why}allowed; no records of this type"),
        }
    }
    let packet = reply.build_bytes_vec_compressed().ok()?;
    Some(Reply {
        packet,
        event: NetworkEvent {
            time: jiff::Timestamp::now().to_string(),
            kind: EventKind::Dns,
            name: Some(normal.unwrap_or_else(|| raw_name.escape_debug().to_string())),
            destination: format!("{qtype:?}"),
            verdict,
            reason,
            bytes_up: 0,
            bytes_down: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use simple_dns::Question;
    use vibebox_core::policy::{NetworkEntry, NetworkMode};

    fn policy() -> Policy {
        Policy::new(
            NetworkMode::Allowlist,
            ["github.com", "*.npmjs.org"]
                .iter()
                .map(|e| NetworkEntry::parse(e).unwrap())
                .collect(),
        )
    }

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut p = Packet::new_query(0x1234);
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        p.questions.push(Question::new(
            simple_dns::Name::new_unchecked(name),
            qtype.into(),
            CLASS::IN.into(),
            false,
        ));
        p.build_bytes_vec().unwrap()
    }

    /// What a test looks at in a reply.
    struct Seen {
        id: u16,
        rcode: RCODE,
        addrs: Vec<Ipv4Addr>,
        answers: usize,
    }

    fn reply(name: &str, qtype: TYPE, pool: &mut SyntheticPool) -> (Seen, NetworkEvent) {
        let r = answer(&query(name, qtype), &policy(), pool).expect("a reply");
        let p = Packet::parse(&r.packet).unwrap();
        let addrs = p
            .answers
            .iter()
            .filter_map(|a| match &a.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .collect();
        let seen = Seen {
            id: p.id(),
            rcode: p.rcode(),
            addrs,
            answers: p.answers.len(),
        };
        (seen, r.event)
    }

    #[test]
    fn allowed_names_get_their_synthetic_address() {
        let mut pool = SyntheticPool::default();
        let (p, e) = reply("GitHub.com", TYPE::A, &mut pool);
        assert_eq!(p.rcode, RCODE::NoError);
        assert_eq!(p.id, 0x1234);
        let addr = p.addrs[0];
        assert!(SyntheticPool::in_range(addr));
        assert_eq!(pool.name_of(addr), Some("github.com"));
        assert_eq!(e.verdict, Verdict::Allow);
        let (p, _) = reply("registry.npmjs.org", TYPE::A, &mut pool);
        assert_eq!(p.addrs.len(), 1);
    }

    #[test]
    fn ipv6_and_other_types_get_no_records() {
        let mut pool = SyntheticPool::default();
        let (p, _) = reply("github.com", TYPE::AAAA, &mut pool);
        assert_eq!(p.rcode, RCODE::NoError);
        assert_eq!(p.answers, 0);
        let (p, _) = reply("github.com", TYPE::TXT, &mut pool);
        assert_eq!(p.answers, 0);
    }

    #[test]
    fn blocked_names_get_nxdomain_and_no_address() {
        let mut pool = SyntheticPool::default();
        for name in [
            "evil.example",
            "api.github.com",
            "npmjs.org",
            "github.com.evil.example",
        ] {
            let (p, e) = reply(name, TYPE::A, &mut pool);
            assert_eq!(p.rcode, RCODE::NameError, "{name}");
            assert_eq!(p.answers, 0);
            assert_eq!(e.verdict, Verdict::Deny);
        }
        assert_eq!(pool.name_of(crate::synthetic::POOL_START), None);
    }

    #[test]
    fn data_tunnelled_in_labels_of_blocked_domains_goes_nowhere() {
        let mut pool = SyntheticPool::default();
        let secret = "c2VjcmV0LWRhdGEtZXhmaWx0cmF0aW9u";
        let (p, e) = reply(
            &format!("{secret}.tunnel.evil.example"),
            TYPE::TXT,
            &mut pool,
        );
        assert_eq!(p.rcode, RCODE::NameError);
        assert_eq!(e.verdict, Verdict::Deny);
        // The only thing that ever leaves is the reply to the guest.
        assert!(pool.name_of(crate::synthetic::POOL_START).is_none());
    }

    #[test]
    fn responses_and_multi_question_packets_are_dropped() {
        let mut pool = SyntheticPool::default();
        let r = answer(&query("github.com", TYPE::A), &policy(), &mut pool).unwrap();
        assert!(answer(&r.packet, &policy(), &mut pool).is_none());
        assert!(answer(b"", &policy(), &mut pool).is_none());
        assert!(answer(&[0u8; 11], &policy(), &mut pool).is_none());
    }

    #[test]
    fn log_lines_are_json() {
        let mut pool = SyntheticPool::default();
        let (_, e) = reply("evil.example", TYPE::A, &mut pool);
        let v: serde_json::Value = serde_json::from_str(&e.to_line()).unwrap();
        assert_eq!(v["kind"], "dns");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["name"], "evil.example");
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut pool = SyntheticPool::default();
            let _ = answer(&bytes, &policy(), &mut pool);
        }
    }
}
