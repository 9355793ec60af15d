//! Cached ERP records. A record's key and value are sealed under its own data key; the
//! key is found through a keyed hash (`ERP_KEYS`), so the keys of a collection cannot be
//! read or enumerated from the file. Every write gives the record a fresh random id, so
//! an id seen by a scan is never reused for other content.

use std::collections::BTreeMap;

use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::{ERP_KEYS, ERP_RECORDS};
use super::{Store, StoreError, WrappedRecord};
use crate::model::Timestamp;

/// An ERP record as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredErpRecord {
    /// The collection's name (from the configuration; in clear).
    pub collection: String,
    /// The record's entry in the key index (keyed hash of collection and key).
    pub index: [u8; 32],
    /// Master key version wrapping `wrapped_dek`.
    pub key_version: u32,
    /// The record's data key, wrapped.
    #[serde(with = "serde_bytes")]
    pub wrapped_dek: Vec<u8>,
    /// When coffer stored it (pushed or fetched).
    pub stored: Timestamp,
    /// Until when it is fresh.
    pub fresh_until: Timestamp,
    /// Until when it may be served stale, as configured when it was stored (the sweep
    /// uses it for collections no longer configured).
    pub stale_until: Timestamp,
    /// Length of the value, bytes.
    pub size: u64,
    /// Sealed body (key, value, entity tag). Bytes are read as one buffer (postcard
    /// writes a byte string exactly as a sequence of bytes, so the format is the same).
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// Versioned encoding of [`StoredErpRecord`].
#[derive(Serialize, Deserialize)]
pub enum ErpRecordFormat {
    /// Format 1.
    V1(StoredErpRecord),
}

impl WrappedRecord for StoredErpRecord {
    const WHAT: &'static str = "an ERP record";
    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match decode::<ErpRecordFormat>(bytes, Self::WHAT)? {
            ErpRecordFormat::V1(r) => Ok(r),
        }
    }
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&ErpRecordFormat::V1(self.clone()))
    }
    fn key_version(&self) -> u32 {
        self.key_version
    }
}

/// One change of an atomic ERP write.
#[derive(Debug)]
pub enum ErpChange {
    /// Stores `record` under `id`, replacing whatever any of `indexes` points to.
    Put {
        /// The key's index entries under every master key version (the new record's own
        /// among them).
        indexes: Vec<[u8; 32]>,
        /// The new record's id (fresh, random).
        id: u128,
        /// The record.
        record: StoredErpRecord,
        /// Store only if the key's record is still this one (`Some(None)`: still none):
        /// an upstream fetch must not replace what an integration pushed while it ran.
        /// Every write makes a new id, so an unchanged id means an unchanged record.
        only_if_current: Option<Option<u128>>,
    },
    /// Removes whatever any of `indexes` points to.
    Delete {
        /// The key's index entries under every master key version.
        indexes: Vec<[u8; 32]>,
        /// Remove only if the key's record is still this one (see `Put`).
        only_if_current: Option<Option<u128>>,
    },
}

/// What one change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErpChanged {
    /// A record was stored; `replaced` if the key had one.
    Stored {
        /// The key had a record before.
        replaced: bool,
    },
    /// The record changed since `only_if_current` was read: nothing was done.
    Changed,
    /// A delete; `removed` if there was a record.
    Deleted {
        /// There was a record.
        removed: bool,
    },
}

/// Records and bytes of one collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErpUsage {
    /// Records.
    pub records: u64,
    /// Bytes of their values.
    pub bytes: u64,
}

impl Store {
    /// The record one of `indexes` points to (tried in order), with its id.
    pub fn erp_lookup(&self, indexes: &[[u8; 32]]) -> Result<Option<(u128, StoredErpRecord)>, StoreError> {
        let snap = self.snapshot()?;
        let keys = snap.txn.open_table(ERP_KEYS)?;
        let records = snap.txn.open_table(ERP_RECORDS)?;
        for index in indexes {
            let Some(id) = keys.get(*index)?.map(|g| g.value()) else {
                continue;
            };
            let record = records.get(id)?.ok_or(StoreError::Corrupt("an ERP key index entry"))?;
            return Ok(Some((id, StoredErpRecord::decode(record.value())?)));
        }
        Ok(None)
    }

    /// Applies `changes` in one commit: all of them or none. `durable`: the commit is
    /// synced before this returns (pushed records); otherwise it becomes durable with the
    /// next durable commit (records fetched from the upstream, which can be fetched again).
    pub fn erp_apply(&self, changes: Vec<ErpChange>, durable: bool) -> Result<Vec<ErpChanged>, StoreError> {
        let txn = self.write(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let mut outcome = Vec::with_capacity(changes.len());
        {
            let mut keys = txn.open_table(ERP_KEYS)?;
            let mut records = txn.open_table(ERP_RECORDS)?;
            for change in changes {
                match change {
                    ErpChange::Put {
                        indexes,
                        id,
                        record,
                        only_if_current,
                    } => {
                        let Some(replaced) = take_current(&mut keys, &mut records, &indexes, only_if_current)? else {
                            outcome.push(ErpChanged::Changed);
                            continue;
                        };
                        if records.get(id)?.is_some() {
                            return Err(StoreError::Conflict("an ERP record with this id"));
                        }
                        keys.insert(record.index, id)?;
                        records.insert(id, record.encode()?.as_slice())?;
                        outcome.push(ErpChanged::Stored { replaced });
                    }
                    ErpChange::Delete {
                        indexes,
                        only_if_current,
                    } => {
                        outcome.push(
                            match take_current(&mut keys, &mut records, &indexes, only_if_current)? {
                                Some(removed) => ErpChanged::Deleted { removed },
                                None => ErpChanged::Changed,
                            },
                        );
                    }
                }
            }
        }
        txn.commit()?;
        Ok(outcome)
    }

    /// Calls `f` with every ERP record (id, record); records that no longer decode are
    /// counted and skipped. Returns that count.
    pub fn erp_scan(&self, mut f: impl FnMut(u128, &StoredErpRecord)) -> Result<u64, StoreError> {
        let snap = self.snapshot()?;
        let records = snap.txn.open_table(ERP_RECORDS)?;
        let mut undecodable = 0;
        for entry in records.iter()? {
            let (k, v) = entry?;
            match StoredErpRecord::decode(v.value()) {
                Ok(r) => f(k.value(), &r),
                Err(_) => undecodable += 1,
            }
        }
        Ok(undecodable)
    }

    /// Records and bytes per collection.
    pub fn erp_usage(&self) -> Result<BTreeMap<String, ErpUsage>, StoreError> {
        let mut usage: BTreeMap<String, ErpUsage> = BTreeMap::new();
        self.erp_scan(|_, r| {
            let u = usage.entry(r.collection.clone()).or_default();
            u.records += 1;
            u.bytes = u.bytes.saturating_add(r.size);
        })?;
        Ok(usage)
    }

    /// Removes the records `ids` (those still there) and their index entries, in one
    /// durable commit. Returns how many were removed.
    pub fn erp_remove(&self, ids: &[u128]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let txn = self.write(Durability::Immediate)?;
        let mut removed = 0;
        {
            let mut keys = txn.open_table(ERP_KEYS)?;
            let mut records = txn.open_table(ERP_RECORDS)?;
            for id in ids {
                let Some(old) = records.remove(*id)? else { continue };
                // An undecodable record's index entry cannot be found; it is left to
                // point nowhere, which lookups report as damage.
                if let Ok(r) = StoredErpRecord::decode(old.value()) {
                    drop(old);
                    keys.remove(r.index)?;
                }
                removed += 1;
            }
        }
        txn.commit()?;
        Ok(removed)
    }
}

type RecordTable<'t> = redb::Table<'t, u128, &'static [u8]>;
type KeyTable<'t> = redb::Table<'t, [u8; 32], u128>;

/// Removes the key's current record (and its index entry), unless `only_if_current` says
/// which record it must be and it is another: then `None`, nothing removed. Otherwise
/// whether there was a record.
fn take_current(
    keys: &mut KeyTable<'_>,
    records: &mut RecordTable<'_>,
    indexes: &[[u8; 32]],
    only_if_current: Option<Option<u128>>,
) -> Result<Option<bool>, StoreError> {
    let old = find(keys, records, indexes)?;
    if only_if_current.is_some_and(|expected| expected != old.as_ref().map(|(id, _)| *id)) {
        return Ok(None);
    }
    if let Some((old_id, existing)) = &old {
        records.remove(*old_id)?;
        keys.remove(existing.index)?;
    }
    Ok(Some(old.is_some()))
}

/// The record the key's index entries lead to. An entry that leads nowhere (the file
/// was edited, or damaged) is removed, so the key can be written again.
fn find(
    keys: &mut KeyTable<'_>,
    records: &RecordTable<'_>,
    indexes: &[[u8; 32]],
) -> Result<Option<(u128, StoredErpRecord)>, StoreError> {
    for index in indexes {
        let Some(id) = keys.get(*index)?.map(|g| g.value()) else {
            continue;
        };
        match records.get(id)? {
            Some(v) => return Ok(Some((id, StoredErpRecord::decode(v.value())?))),
            None => {
                keys.remove(*index)?;
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsSequence {
        a: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsBytes {
        #[serde(with = "serde_bytes")]
        a: Vec<u8>,
    }

    #[test]
    fn byte_strings_and_byte_sequences_are_one_format_in_postcard() {
        for len in [0usize, 1, 127, 128, 5000] {
            let a: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let seq = postcard::to_stdvec(&AsSequence { a: a.clone() }).unwrap();
            let bytes = postcard::to_stdvec(&AsBytes { a: a.clone() }).unwrap();
            assert_eq!(seq, bytes);
            assert_eq!(postcard::from_bytes::<AsBytes>(&seq).unwrap().a, a);
        }
    }
}
