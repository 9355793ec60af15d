//! Replay protection for state-changing requests: the signature of every accepted POST,
//! PUT, PATCH and DELETE is remembered until its date falls out of the clock-skew window
//! (after which the date check refuses it anyway). Memory is bounded: when the table is
//! full, further writes are answered `503` until entries expire, rather than forgetting
//! signatures that could then be replayed.

use std::collections::HashMap;
use std::sync::Mutex;

/// Signatures remembered at most (about 80 bytes each).
pub const CAPACITY: usize = 1_000_000;

/// Why a claim failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This signature was already accepted.
    Replayed,
    /// The table is full.
    Full,
}

/// Accepted signatures and when each may be forgotten (Unix seconds).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<[u8; 32], i64>>,
}

impl ReplayGuard {
    /// Records `signature` (forgettable after `expires`) unless it was seen before.
    pub fn claim(&self, signature: [u8; 32], expires: i64, now: i64) -> Result<(), ReplayError> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&until) = seen.get(&signature)
            && until >= now
        {
            return Err(ReplayError::Replayed);
        }
        if seen.len() >= CAPACITY / 2 {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= CAPACITY {
                return Err(ReplayError::Full);
            }
        }
        seen.insert(signature, expires);
        Ok(())
    }

    /// Signatures remembered now.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        g.claim([1; 32], 100, 10).unwrap();
        assert_eq!(g.claim([1; 32], 100, 50), Err(ReplayError::Replayed));
        g.claim([2; 32], 100, 50).unwrap();
        // Past its expiry the date check refuses the request; the slot may be reused.
        g.claim([1; 32], 200, 101).unwrap();
    }
}
