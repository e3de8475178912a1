//! Synthetic addresses: each allowed name gets its own address from a private
//! pool (198.18.0.0/15, reserved for benchmarking, never routed on the
//! internet). A connection to a synthetic address names exactly one host,
//! which the engine resolves itself on the host: the guest's choice of IP is
//! never trusted.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// First address of the pool.
pub const POOL_START: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Number of addresses in 198.18.0.0/15 (minus network and broadcast).
pub const POOL_SIZE: u32 = (1 << 17) - 2;

/// The name ↔ address table of one session.
#[derive(Debug, Clone)]
pub struct SyntheticPool {
    capacity: u32,
    next: u32,
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    order: VecDeque<Ipv4Addr>,
}

impl Default for SyntheticPool {
    fn default() -> Self {
        SyntheticPool::with_capacity(POOL_SIZE)
    }
}

impl SyntheticPool {
    /// A pool of at most `capacity` addresses (the oldest is reused when full).
    pub fn with_capacity(capacity: u32) -> SyntheticPool {
        SyntheticPool {
            capacity: capacity.clamp(1, POOL_SIZE),
            next: 0,
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The address of `name` (normalised by the caller), allocating one if needed.
    ///
    /// ```
    /// use vibebox_net::synthetic::SyntheticPool;
    /// let mut pool = SyntheticPool::default();
    /// let a = pool.address_for("github.com");
    /// assert_eq!(pool.address_for("github.com"), a);
    /// assert_eq!(pool.name_of(a), Some("github.com"));
    /// ```
    pub fn address_for(&mut self, name: &str) -> Ipv4Addr {
        if let Some(a) = self.by_name.get(name) {
            return *a;
        }
        let addr = if (self.order.len() as u32) < self.capacity {
            let a = Ipv4Addr::from(u32::from(POOL_START) + self.next);
            self.next += 1;
            a
        } else {
            // Full: reuse the oldest address; its old name no longer maps to it.
            let a = self.order.pop_front().unwrap_or(POOL_START);
            if let Some(old) = self.by_addr.remove(&a) {
                self.by_name.remove(&old);
            }
            a
        };
        self.by_name.insert(name.to_string(), addr);
        self.by_addr.insert(addr, name.to_string());
        self.order.push_back(addr);
        addr
    }

    /// The name an address was given to, if it is a live synthetic address.
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }

    /// Whether `addr` lies in the synthetic range at all.
    pub fn in_range(addr: Ipv4Addr) -> bool {
        (u32::from(addr) >> 17) == (u32::from(POOL_START) >> 17)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_distinct_stable_addresses_in_range() {
        let mut p = SyntheticPool::default();
        let a = p.address_for("a.example");
        let b = p.address_for("b.example");
        assert_ne!(a, b);
        assert!(SyntheticPool::in_range(a) && SyntheticPool::in_range(b));
        assert_eq!(p.address_for("a.example"), a);
        assert_eq!(p.name_of(b), Some("b.example"));
        assert_eq!(p.name_of(Ipv4Addr::new(198, 18, 200, 1)), None);
        assert!(!SyntheticPool::in_range(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(SyntheticPool::in_range(Ipv4Addr::new(198, 19, 255, 254)));
    }

    #[test]
    fn a_full_pool_reuses_the_oldest_address_for_one_name_only() {
        let mut p = SyntheticPool::with_capacity(2);
        let a = p.address_for("a");
        let _b = p.address_for("b");
        let c = p.address_for("c");
        assert_eq!(c, a);
        assert_eq!(p.name_of(a), Some("c"));
        assert_ne!(p.address_for("a"), a, "a gets a new address, never c's");
    }
}
