//! Authentication-failure budgets: per device first, per source address second.
//!
//! Every failed authentication after the handshake (bad signature, skewed clock, replay,
//! bad session, failed login, unknown or revoked device) spends one token of its device's
//! bucket, when the certificate names a device, and one of its source address's bucket.
//! A device whose bucket is empty is refused until it refills. An address whose bucket is
//! empty refuses only callers that are themselves failing (a device with spent tokens, or a
//! certificate that maps to no active device): phones behind one carrier-grade NAT address
//! share that address, and one phone's failures must not lock out the team.
//!
//! IPv6 addresses count per /64 (one subscriber's prefix). The maps forget full buckets,
//! so memory follows the number of recently failing callers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::model::DeviceId;

/// Entries kept before full buckets are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets<K> {
    per_minute: f64,
    map: HashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            map: HashMap::new(),
        }
    }

    fn refill(&self, b: &Bucket, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + secs * self.per_minute / 60.0).min(self.per_minute)
    }

    /// Tokens left (a key never seen has a full bucket).
    fn tokens(&self, key: &K, now: Instant) -> f64 {
        self.map.get(key).map_or(self.per_minute, |b| self.refill(b, now))
    }

    /// Seconds until one token is back.
    fn wait_secs(&self, key: &K, now: Instant) -> u64 {
        let missing = 1.0 - self.tokens(key, now);
        if missing <= 0.0 {
            0
        } else {
            // Whole seconds, at least one; bounded by a full refill (60 s).
            (missing * 60.0 / self.per_minute).ceil().clamp(1.0, 60.0) as u64
        }
    }

    fn spend(&mut self, key: K, now: Instant) {
        let tokens = self.tokens(&key, now) - 1.0;
        self.map.insert(key, Bucket { tokens, at: now });
        if self.map.len() > SWEEP_AT {
            let per_minute = self.per_minute;
            self.map.retain(|_, b| {
                let secs = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + secs * per_minute / 60.0 < per_minute
            });
        }
    }
}

/// The key an address counts under: IPv4 as is, IPv6 by its /64.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// A budget of attempts per source address (every attempt counts, not only failures),
/// for the one route reachable without a client certificate: enrolment.
#[derive(Debug)]
pub struct AttemptLimiter {
    ips: Mutex<Buckets<IpAddr>>,
}

impl AttemptLimiter {
    /// `per_minute` attempts per address (burst and refill; IPv6 per /64).
    pub fn new(per_minute: u32) -> Self {
        Self {
            ips: Mutex::new(Buckets::new(per_minute)),
        }
    }

    /// Spends one attempt of `ip`'s budget, or `Err(seconds to wait)` when it is empty.
    pub fn attempt(&self, ip: Option<IpAddr>) -> Result<(), u64> {
        // Without a peer address (never over TCP) everyone shares one budget.
        let key = ip.map_or(IpAddr::from([0, 0, 0, 0]), ip_key);
        let now = Instant::now();
        let mut ips = self.ips.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ips.tokens(&key, now) < 1.0 {
            return Err(ips.wait_secs(&key, now));
        }
        ips.spend(key, now);
        Ok(())
    }
}

/// A budget of requests per device (every request counts), against one device flooding
/// the server (`limits.device_requests_per_minute`).
#[derive(Debug)]
pub struct RequestLimiter {
    devices: Mutex<Buckets<DeviceId>>,
}

impl RequestLimiter {
    /// `per_minute` requests per device (burst and refill).
    pub fn new(per_minute: u32) -> Self {
        Self {
            devices: Mutex::new(Buckets::new(per_minute)),
        }
    }

    /// Changes the budget (SIGHUP); buckets keep their tokens, capped to the new size.
    pub fn set_per_minute(&self, per_minute: u32) {
        let mut devices = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        devices.per_minute = f64::from(per_minute.max(1));
    }

    /// The budget per minute now.
    pub fn per_minute(&self) -> u32 {
        let devices = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        devices.per_minute as u32
    }

    /// Spends one request of `device`'s budget, or `Err(seconds to wait)` when it is empty.
    pub fn attempt(&self, device: DeviceId) -> Result<(), u64> {
        let now = Instant::now();
        let mut devices = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if devices.tokens(&device, now) < 1.0 {
            return Err(devices.wait_secs(&device, now));
        }
        devices.spend(device, now);
        Ok(())
    }
}

/// Failure budgets for devices and source addresses.
#[derive(Debug)]
pub struct AuthLimiter {
    devices: Mutex<Buckets<DeviceId>>,
    ips: Mutex<Buckets<IpAddr>>,
}

impl AuthLimiter {
    /// Budgets of `device_per_minute` and `ip_per_minute` failures (burst and refill).
    pub fn new(device_per_minute: u32, ip_per_minute: u32) -> Self {
        Self {
            devices: Mutex::new(Buckets::new(device_per_minute)),
            ips: Mutex::new(Buckets::new(ip_per_minute)),
        }
    }

    /// `Err(seconds to wait)` if this caller may not try now. `device` is the active device
    /// of the certificate, if any.
    pub fn check(&self, device: Option<DeviceId>, ip: Option<IpAddr>) -> Result<(), u64> {
        let now = Instant::now();
        let mut device_failing = true;
        if let Some(d) = device {
            let devices = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let tokens = devices.tokens(&d, now);
            if tokens < 1.0 {
                return Err(devices.wait_secs(&d, now));
            }
            // Failing: three or more failures not yet refilled. One routine failure (a
            // session that ended while the phone slept) does not count.
            device_failing = tokens < devices.per_minute - 2.5;
        }
        if let Some(ip) = ip.map(ip_key)
            && device_failing
        {
            let ips = self.ips.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if ips.tokens(&ip, now) < 1.0 {
                return Err(ips.wait_secs(&ip, now));
            }
        }
        Ok(())
    }

    /// Spends one failure of the device (if any) and of the address (if known).
    pub fn fail(&self, device: Option<DeviceId>, ip: Option<IpAddr>) {
        let now = Instant::now();
        if let Some(d) = device {
            self.devices
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .spend(d, now);
        }
        if let Some(ip) = ip {
            self.ips
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .spend(ip_key(ip), now);
        }
    }
}

/// Login attempts one device may start per minute, successful or not (each costs an
/// argon2id verification).
pub const LOGINS_PER_DEVICE_PER_MINUTE: u32 = 10;

/// Logins: at most one in flight per device (a device cannot queue many argon2id
/// verifications and starve the others of the shared slots), and a per-minute budget of
/// attempts, successes included.
#[derive(Debug)]
pub struct LoginGate {
    budget: Mutex<Buckets<DeviceId>>,
    in_flight: Mutex<std::collections::HashSet<DeviceId>>,
}

/// A login in progress; its device may start another once it is dropped.
#[derive(Debug)]
pub struct LoginTicket<'g> {
    gate: &'g LoginGate,
    device: DeviceId,
}

impl Drop for LoginTicket<'_> {
    fn drop(&mut self) {
        self.gate
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.device);
    }
}

impl LoginGate {
    /// `per_minute` attempts per device.
    pub fn new(per_minute: u32) -> Self {
        Self {
            budget: Mutex::new(Buckets::new(per_minute)),
            in_flight: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Starts a login of `device`, or `Err(seconds to wait)`.
    pub fn begin(&self, device: DeviceId) -> Result<LoginTicket<'_>, u64> {
        let now = Instant::now();
        let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if in_flight.contains(&device) {
            return Err(1);
        }
        let mut budget = self.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if budget.tokens(&device, now) < 1.0 {
            return Err(budget.wait_secs(&device, now));
        }
        budget.spend(device, now);
        in_flight.insert(device);
        Ok(LoginTicket { gate: self, device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_device_is_stopped_and_its_neighbours_are_not() {
        let l = AuthLimiter::new(3, 5);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let bad = DeviceId(1);
        let good = DeviceId(2);
        for _ in 0..3 {
            assert!(l.check(Some(bad), Some(ip)).is_ok());
            l.fail(Some(bad), Some(ip));
        }
        let wait = l.check(Some(bad), Some(ip)).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        // Spend the address's budget with unattributed failures.
        l.fail(None, Some(ip));
        l.fail(None, Some(ip));
        assert!(
            l.check(None, Some(ip)).is_err(),
            "unknown certificates from a spent address"
        );
        assert!(
            l.check(Some(good), Some(ip)).is_ok(),
            "a device without failures behind the same NAT"
        );
    }

    #[test]
    fn one_routine_failure_is_not_failing_behind_a_spent_address() {
        let l = AuthLimiter::new(10, 2);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        l.fail(None, Some(ip));
        l.fail(None, Some(ip));
        assert!(l.check(None, Some(ip)).is_err());
        let d = DeviceId(3);
        l.fail(Some(d), Some(ip));
        assert!(l.check(Some(d), Some(ip)).is_ok(), "one failure locked a device out");
        l.fail(Some(d), Some(ip));
        l.fail(Some(d), Some(ip));
        assert!(
            l.check(Some(d), Some(ip)).is_err(),
            "a failing device behind a spent address"
        );
    }

    #[test]
    fn logins_are_one_at_a_time_and_budgeted_per_device() {
        let g = LoginGate::new(3);
        let t = g.begin(DeviceId(1)).unwrap();
        assert!(g.begin(DeviceId(1)).is_err(), "a second login in flight");
        assert!(g.begin(DeviceId(2)).is_ok(), "another device");
        drop(t);
        drop(g.begin(DeviceId(1)).unwrap());
        drop(g.begin(DeviceId(1)).unwrap());
        assert!(g.begin(DeviceId(1)).is_err(), "over the budget");
    }

    #[test]
    fn ipv6_counts_per_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(ip_key(a), ip_key(c));
    }
}
