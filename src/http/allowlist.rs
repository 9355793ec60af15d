//! The IP allowlist (`allow_cidrs`): connections from other addresses are closed before
//! the TLS handshake, so they receive not a single byte of TLS.
//!
//! Refusals are counted; the log gets one line for the first and then at most one line
//! every [`LOG_EVERY`] with the count since the last line, so a scan cannot flood it.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Shortest interval between two log lines about refused connections.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The networks connections may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist(Vec<IpNet>);

/// An entry of `allow_cidrs` does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a network: write it as 203.0.113.0/24, 2001:db8::/32 or a single address")]
pub struct BadCidr(pub String);

impl Allowlist {
    /// Parses CIDR networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses. Host bits
    /// set below the prefix are cleared (`10.1.2.3/8` means `10.0.0.0/8`), and an
    /// IPv4-mapped network (`::ffff:10.0.0.0/104`) means its IPv4 network, as clients are
    /// matched (see [`allows`](Self::allows)).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, BadCidr> {
        items
            .iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpNet>()
                    .map(|n| unmap(n.trunc()))
                    .or_else(|_| s.parse::<IpAddr>().map(|a| unmap(IpNet::from(a))))
                    .map_err(|_| BadCidr(s.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The loopback networks, `127.0.0.0/8` and `::1/128` (what `serve --dev` allows).
    pub fn loopback() -> Self {
        Self(vec![
            IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)),
            IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        ])
    }

    /// Every address, IPv4 and IPv6.
    pub fn everyone() -> Self {
        Self(vec![
            IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(ipnet::Ipv6Net::default()),
        ])
    }

    /// Whether `ip` may connect. An IPv4 client of a dual-stack listener appears as an
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) and is matched as the IPv4 address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

/// An IPv4-mapped IPv6 network (prefix at least 96) as the IPv4 network it maps.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

impl std::fmt::Display for Allowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nets: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&nets.join(", "))
    }
}

/// Open connections per address (IPv6: per /64), capped; a slot is held by a
/// [`ConnectionSlot`] for as long as its connection lives.
#[derive(Debug)]
pub struct PerAddress {
    max: u32,
    open: Mutex<std::collections::HashMap<IpAddr, u32>>,
}

/// One connection's place in [`PerAddress`], given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    counter: std::sync::Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    /// At most `max` connections per address.
    pub fn new(max: u32) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            max: max.max(1),
            open: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when the address has `max` open.
    pub fn admit(self: &std::sync::Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let key = super::ratelimit::ip_key(ip);
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            counter: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s address (or /64).
    pub fn open(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.get(&super::ratelimit::ip_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .counter
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Counts refusals that anyone on the network can cause (connections from outside the
/// allowlist, requests without a client certificate) and logs them sparingly.
#[derive(Debug)]
pub struct Refusals {
    what: &'static str,
    total: AtomicU64,
    logged: Mutex<(Option<Instant>, u64)>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new("allowlist: closed a connection before TLS (not in allow_cidrs)")
    }
}

impl Refusals {
    /// A counter whose log lines start with `what`.
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            total: AtomicU64::new(0),
            logged: Mutex::new((None, 0)),
        }
    }

    /// Records a refusal of `ip`; logs it when no line was written within [`LOG_EVERY`].
    pub fn record(&self, ip: IpAddr) {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last_at, last_total) = *logged;
        if last_at.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::info!(
                "{}, latest from {ip}; {} since the last such line, {total} since start",
                self.what,
                total - last_total
            );
            *logged = (Some(now), total);
        }
    }

    /// Connections refused since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_addresses() {
        let list = Allowlist::parse(&["10.1.2.3/8", " 2001:db8::/32", "192.0.2.7"]).unwrap();
        assert_eq!(list.to_string(), "10.0.0.0/8, 2001:db8::/32, 192.0.2.7/32");
        assert!(list.allows(ip("10.200.0.1")));
        assert!(!list.allows(ip("11.0.0.1")));
        assert!(list.allows(ip("2001:db8:ffff::1")));
        assert!(!list.allows(ip("2001:db9::1")));
        assert!(list.allows(ip("192.0.2.7")));
        assert!(!list.allows(ip("192.0.2.8")));
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0/8", "::/129"] {
            assert!(Allowlist::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn mapped_ipv4_matches_as_ipv4() {
        let mapped = Allowlist::parse(&["::ffff:10.0.0.0/104", "::ffff:192.0.2.7"]).unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8, 192.0.2.7/32");
        assert!(mapped.allows(ip("10.1.2.3")) && mapped.allows(ip("::ffff:10.1.2.3")));
        let list = Allowlist::parse(&["127.0.0.1/32"]).unwrap();
        assert!(list.allows(ip("::ffff:127.0.0.1")));
        assert!(!list.allows(ip("::ffff:127.0.0.2")));
        assert!(!list.allows(ip("::1")));
    }

    #[test]
    fn loopback_and_everyone() {
        let lo = Allowlist::loopback();
        assert!(lo.allows(ip("127.0.0.1")) && lo.allows(ip("127.9.9.9")) && lo.allows(ip("::1")));
        assert!(!lo.allows(ip("10.0.0.1")) && !lo.allows(ip("::2")));
        let all = Allowlist::everyone();
        assert!(all.allows(ip("8.8.8.8")) && all.allows(ip("2001:db8::1")));
        assert!(Allowlist::parse::<&str>(&[]).unwrap().networks().is_empty());
    }

    #[test]
    fn connections_per_address_are_capped_and_given_back() {
        let per = PerAddress::new(2);
        let a = per.admit(ip("192.0.2.1")).unwrap();
        let b = per.admit(ip("192.0.2.1")).unwrap();
        assert!(per.admit(ip("192.0.2.1")).is_none());
        assert!(
            per.admit(ip("192.0.2.2")).is_some(),
            "another address has its own count"
        );
        // One /64 counts as one address.
        let c = per.admit(ip("2001:db8::1")).unwrap();
        let d = per.admit(ip("2001:db8::2")).unwrap();
        assert!(per.admit(ip("2001:db8::ffff")).is_none());
        drop(a);
        assert_eq!(per.open(ip("192.0.2.1")), 1);
        assert!(per.admit(ip("192.0.2.1")).is_some());
        drop((b, c, d));
        assert_eq!(per.open(ip("2001:db8::3")), 0);
    }

    #[test]
    fn refusals_count() {
        let r = Refusals::default();
        r.record(ip("192.0.2.1"));
        r.record(ip("192.0.2.1"));
        assert_eq!(r.total(), 2);
    }
}
