//! The audit log's table: entries by sequence number, appended in batches, and the anchor
//! that keeps the chain verifiable after old entries are pruned. The chain's keyed hashes
//! and the sealed fields are made in `app::audit`; this layer stores bytes in order.

use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::{AUDIT, META};
use super::{Store, StoreError};

/// META key of the anchor left by pruning.
const ANCHOR_KEY: &str = "audit_anchor";

/// One audit entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAudit {
    /// When, ms since the epoch.
    pub time: i64,
    /// What was done (`GET /v1/documents/{id}`, `admin user add`, ...).
    pub action: String,
    /// HTTP status, or 0 for an admin action.
    pub status: u16,
    /// `ok`, or why it was refused (the problem type's slug, or an admin error).
    pub outcome: String,
    /// Who, from where, on what: sealed under the audit key (postcard fields).
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// Keyed hash chaining this entry to the previous one.
    pub mac: [u8; 32],
}

/// Versioned encoding of [`StoredAudit`].
#[derive(Serialize, Deserialize)]
enum AuditFormat {
    V1(StoredAudit),
}

impl StoredAudit {
    /// Strictly decodes stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match decode::<AuditFormat>(bytes, "an audit entry")? {
            AuditFormat::V1(a) => Ok(a),
        }
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&AuditFormat::V1(self.clone()))
    }
}

/// Where the chain starts after pruning: the last pruned entry's number and hash, with a
/// keyed tag so the anchor cannot be moved without the audit key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// Sequence number of the last pruned entry.
    pub seq: u64,
    /// Its chain hash.
    pub mac: [u8; 32],
    /// Entries older than this (ms since the epoch) were pruned.
    pub pruned_before: i64,
    /// Keyed tag over the fields above.
    pub tag: [u8; 32],
}

#[derive(Serialize, Deserialize)]
enum AnchorFormat {
    V1(AuditAnchor),
}

/// The end of the chain new entries attach to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number of the last entry (0: none yet).
    pub seq: u64,
    /// Its chain hash (zeros before the first entry).
    pub mac: [u8; 32],
}

impl Store {
    /// Appends entries made by `make` from the current head, in one commit. `make` returns
    /// the entries in order; their numbers follow the head's.
    pub fn audit_append<E: From<StoreError>>(
        &self,
        durability: Durability,
        make: impl FnOnce(AuditHead) -> Result<Vec<StoredAudit>, E>,
    ) -> Result<AuditHead, E> {
        let txn = self.write(durability)?;
        let head = {
            let mut t = txn.open_table(AUDIT).map_err(StoreError::from)?;
            let last = t
                .last()
                .map_err(StoreError::from)?
                .map(|(k, v)| (k.value(), StoredAudit::decode(v.value()).map(|a| a.mac)));
            let head = match last {
                Some((seq, Ok(mac))) => AuditHead { seq, mac },
                // The last entry no longer decodes (damage): new entries still attach to
                // something `audit verify` will flag; the damaged one is named there.
                Some((seq, Err(_))) => AuditHead { seq, mac: [0; 32] },
                None => match self.audit_anchor_in(&txn)? {
                    Some(a) => AuditHead { seq: a.seq, mac: a.mac },
                    None => AuditHead { seq: 0, mac: [0; 32] },
                },
            };
            let entries = make(head)?;
            let mut seq = head.seq;
            let mut mac = head.mac;
            for e in entries {
                seq += 1;
                mac = e.mac;
                t.insert(seq, e.encode()?.as_slice()).map_err(StoreError::from)?;
            }
            AuditHead { seq, mac }
        };
        txn.commit().map_err(StoreError::from)?;
        Ok(head)
    }

    fn audit_anchor_in(&self, txn: &redb::WriteTransaction) -> Result<Option<AuditAnchor>, StoreError> {
        let meta = txn.open_table(META)?;
        let guard = meta.get(ANCHOR_KEY)?;
        guard
            .map(|g| match decode::<AnchorFormat>(g.value(), "the audit anchor")? {
                AnchorFormat::V1(a) => Ok(a),
            })
            .transpose()
    }

    /// The anchor left by pruning, if any.
    pub fn audit_anchor(&self) -> Result<Option<AuditAnchor>, StoreError> {
        let snap = self.snapshot()?;
        let meta = snap.txn.open_table(META)?;
        let guard = meta.get(ANCHOR_KEY)?;
        guard
            .map(|g| match decode::<AnchorFormat>(g.value(), "the audit anchor")? {
                AnchorFormat::V1(a) => Ok(a),
            })
            .transpose()
    }

    /// Whether the log holds any entry.
    pub fn audit_has_entries(&self) -> Result<bool, StoreError> {
        let snap = self.snapshot()?;
        let t = snap.txn.open_table(AUDIT)?;
        Ok(t.first()?.is_some())
    }

    /// Calls `f` with every entry from `from` on, in order, with its raw bytes, from one
    /// consistent snapshot (appends meanwhile are not seen). `f` returns false to stop.
    pub fn audit_scan(&self, from: u64, mut f: impl FnMut(u64, &[u8]) -> bool) -> Result<(), StoreError> {
        let snap = self.snapshot()?;
        let t = snap.txn.open_table(AUDIT)?;
        for entry in t.range(from..)? {
            let (k, v) = entry?;
            if !f(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    /// Removes entries up to and including `anchor.seq` and records `anchor`, durably, in
    /// one commit. Returns how many were removed.
    pub fn audit_prune(&self, anchor: &AuditAnchor) -> Result<u64, StoreError> {
        let txn = self.write(Durability::Immediate)?;
        let mut removed = 0u64;
        {
            let mut t = txn.open_table(AUDIT)?;
            t.retain_in(..=anchor.seq, |_, _| {
                removed += 1;
                false
            })?;
            txn.open_table(META)?
                .insert(ANCHOR_KEY, encode(&AnchorFormat::V1(anchor.clone()))?.as_slice())?;
        }
        txn.commit()?;
        Ok(removed)
    }
}
