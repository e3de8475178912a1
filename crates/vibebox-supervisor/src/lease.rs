//! The lease: how many clients hold the session, and when it has been idle
//! for its whole grace period. Pure logic, tested without a machine.

use std::time::{Duration, Instant};

/// Clients and the grace period of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    clients: u32,
    /// Since when nobody holds the session (`None` while someone does).
    zero_since: Option<Instant>,
    grace: Duration,
}

impl Lease {
    /// A lease that nobody holds yet, idle from `now`.
    pub fn new(grace: Duration, now: Instant) -> Lease {
        Lease {
            clients: 0,
            zero_since: Some(now),
            grace,
        }
    }

    /// The number of clients holding the session.
    pub fn clients(&self) -> u32 {
        self.clients
    }

    /// A client attached.
    pub fn attach(&mut self) {
        self.clients += 1;
        self.zero_since = None;
    }

    /// A client went away (closed, crashed or killed); the grace period
    /// starts when the last one goes.
    pub fn release(&mut self, now: Instant) {
        self.clients = self.clients.saturating_sub(1);
        if self.clients == 0 {
            self.zero_since = Some(now);
        }
    }

    /// The machine became ready: a session nobody waited for starts its
    /// grace period now, not from when the start began.
    pub fn ready(&mut self, now: Instant) {
        if self.clients == 0 {
            self.zero_since = Some(now);
        }
    }

    /// Something in the box holds it (a detached terminal runs): with no
    /// client, the grace period starts again from `now`.
    pub fn renew(&mut self, now: Instant) {
        if self.clients == 0 {
            self.zero_since = Some(now);
        }
    }

    /// Whether nobody held the session for the whole grace period.
    pub fn idle(&self, now: Instant) -> bool {
        self.clients == 0
            && self
                .zero_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(20);

    #[test]
    fn idle_only_after_the_last_client_and_the_whole_grace() {
        let t0 = Instant::now();
        let mut l = Lease::new(GRACE, t0);
        assert!(!l.idle(t0 + GRACE - Duration::from_millis(1)));
        assert!(l.idle(t0 + GRACE));
        l.attach();
        l.attach();
        assert!(!l.idle(t0 + GRACE * 10), "held");
        l.release(t0 + GRACE);
        assert_eq!(l.clients(), 1);
        assert!(!l.idle(t0 + GRACE * 10), "still held by one");
        l.release(t0 + GRACE * 2);
        assert!(!l.idle(t0 + GRACE * 3 - Duration::from_millis(1)));
        assert!(l.idle(t0 + GRACE * 3));
    }

    #[test]
    fn a_returning_client_cancels_the_grace_and_releases_never_underflow() {
        let t0 = Instant::now();
        let mut l = Lease::new(GRACE, t0);
        l.attach();
        l.release(t0);
        l.attach();
        assert!(!l.idle(t0 + GRACE * 2));
        l.release(t0);
        l.release(t0);
        assert_eq!(l.clients(), 0);
        assert!(Lease::new(Duration::ZERO, t0).idle(t0));
        // A machine that took long to start gets its whole grace after it.
        let mut l = Lease::new(GRACE, t0);
        l.ready(t0 + GRACE);
        assert!(!l.idle(t0 + GRACE + GRACE / 2));
        assert!(l.idle(t0 + GRACE * 2));
    }

    #[test]
    fn a_running_terminal_renews_the_grace() {
        let t0 = Instant::now();
        let mut l = Lease::new(GRACE, t0);
        assert!(l.idle(t0 + GRACE));
        l.renew(t0 + GRACE);
        assert!(!l.idle(t0 + GRACE + GRACE / 2));
        assert!(l.idle(t0 + GRACE * 2));
        // Renewing never takes a client's place.
        l.attach();
        l.renew(t0 + GRACE * 3);
        assert_eq!(l.clients(), 1);
        assert!(!l.idle(t0 + GRACE * 9));
    }
}
