//! The network log: one JSON object a line, one line per decision.

use serde::Serialize;
use vibebox_core::policy::Verdict;

/// What a decision was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A DNS query from the guest.
    Dns,
    /// A TCP connection from the guest.
    Tcp,
    /// A UDP datagram that is not DNS.
    Udp,
}

/// One decision of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkEvent {
    /// When (RFC 3339).
    pub time: String,
    /// DNS, TCP or UDP.
    pub kind: EventKind,
    /// The name involved, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The destination (address:port, or the query type for DNS).
    pub destination: String,
    /// Allowed or denied.
    pub verdict: Verdict,
    /// Why, in a few words.
    pub reason: String,
    /// Bytes sent by the guest (connections).
    pub bytes_up: u64,
    /// Bytes received by the guest (connections).
    pub bytes_down: u64,
}

impl NetworkEvent {
    /// The event as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}
