//! Replay protection for state-changing requests: the signature of every accepted POST,
//! PUT, PATCH and DELETE is remembered until its date falls out of the clock-skew window
//! (after which the date check refuses it anyway).
//!
//! Memory is bounded twice: one device may hold at most [`PER_DEVICE`] live signatures
//! (far more writes than a phone makes in ten minutes; then `429`), and the table at most
//! [`CAPACITY`] (then `503`), rather than forgetting signatures that could then be
//! replayed. Expired entries leave in expiry order, so a claim costs O(log n) however full
//! the table is.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::model::DeviceId;

/// Signatures remembered at most (about 150 bytes each).
pub const CAPACITY: usize = 1_000_000;
/// Live signatures one device may hold.
pub const PER_DEVICE: usize = 10_000;

/// Why a claim failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This signature was already accepted.
    Replayed,
    /// This device has too many recent writes.
    DeviceFull,
    /// The table is full.
    Full,
}

#[derive(Debug, Default)]
struct Table {
    /// Signature → (forgettable after, device).
    seen: HashMap<[u8; 32], (i64, DeviceId)>,
    /// (forgettable after, signature), oldest first.
    order: BTreeSet<(i64, [u8; 32])>,
    per_device: HashMap<DeviceId, usize>,
}

impl Table {
    fn expire(&mut self, now: i64) {
        while let Some(&(until, sig)) = self.order.first() {
            if until >= now {
                break;
            }
            self.order.pop_first();
            if let Some((_, device)) = self.seen.remove(&sig)
                && let Some(n) = self.per_device.get_mut(&device)
            {
                *n -= 1;
                if *n == 0 {
                    self.per_device.remove(&device);
                }
            }
        }
    }
}

/// Accepted signatures and when each may be forgotten (Unix seconds).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    table: Mutex<Table>,
}

impl ReplayGuard {
    /// Records `signature` of `device` (forgettable after `expires`) unless it was seen
    /// before.
    pub fn claim(&self, device: DeviceId, signature: [u8; 32], expires: i64, now: i64) -> Result<(), ReplayError> {
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.expire(now);
        if t.seen.contains_key(&signature) {
            return Err(ReplayError::Replayed);
        }
        if t.per_device.get(&device).copied().unwrap_or(0) >= PER_DEVICE {
            return Err(ReplayError::DeviceFull);
        }
        if t.seen.len() >= CAPACITY {
            return Err(ReplayError::Full);
        }
        t.seen.insert(signature, (expires, device));
        t.order.insert((expires, signature));
        *t.per_device.entry(device).or_insert(0) += 1;
        Ok(())
    }

    /// Forgets a reserved signature that turned out not to match its request (a deferred
    /// upload's): it was never accepted, so the genuine request may still come.
    pub fn release(&self, signature: &[u8; 32]) {
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((until, device)) = t.seen.remove(signature) {
            t.order.remove(&(until, *signature));
            if let Some(n) = t.per_device.get_mut(&device) {
                *n -= 1;
                if *n == 0 {
                    t.per_device.remove(&device);
                }
            }
        }
    }

    /// Signatures remembered now.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seen
            .len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_a_replay_until_expiry() {
        let g = ReplayGuard::default();
        let d = DeviceId(1);
        g.claim(d, [1; 32], 100, 10).unwrap();
        assert_eq!(g.claim(d, [1; 32], 100, 50), Err(ReplayError::Replayed));
        g.claim(d, [2; 32], 100, 50).unwrap();
        // Past its expiry the date check refuses the request; the slot may be reused.
        g.claim(d, [1; 32], 200, 101).unwrap();
        assert_eq!(g.len(), 1, "expired entries left");
    }

    #[test]
    fn one_device_cannot_fill_the_table() {
        let g = ReplayGuard::default();
        for i in 0..PER_DEVICE {
            let mut sig = [0u8; 32];
            sig[..8].copy_from_slice(&(i as u64).to_be_bytes());
            g.claim(DeviceId(7), sig, 1000, 0).unwrap();
        }
        assert_eq!(g.claim(DeviceId(7), [0xff; 32], 1000, 0), Err(ReplayError::DeviceFull));
        g.claim(DeviceId(8), [0xff; 32], 1000, 0).unwrap();
        // Once they expire (all of these at 1000), the device may write again.
        g.claim(DeviceId(7), [0xfe; 32], 2000, 1001).unwrap();
        assert_eq!(g.len(), 1);
    }
}
