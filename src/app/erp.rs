//! Cached ERP records: each sealed under its own data key with its key and value inside,
//! found through a keyed hash of (collection, key) under the index subkey of its master
//! key version, so neither keys nor values can be read or enumerated from the file.
//!
//! The AAD of a record's body binds its id, its collection and its times: a record cannot
//! be moved to another collection or key, nor kept fresh longer, by editing the file.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::principals::index_hash;
use super::{Vault, VaultError};
use crate::crypto::keyfile::MasterKey;
use crate::crypto::labels::Purpose;
use crate::model::Timestamp;
use crate::store::{ErpChange, ErpChanged, ErpUsage, Rewrapped, StoredErpRecord};

const INDEX_ERP_KEY: &[u8] = b"coffer/v1/index/erp-key";
const ERP_ETAG: &[u8] = b"coffer/v1/erp-etag";

/// Length of an entity tag, bytes.
pub const ETAG_LEN: usize = 16;

/// The sealed part of a record.
#[derive(Serialize, Deserialize)]
enum ErpBodyFormat {
    V1 {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        etag: [u8; ETAG_LEN],
    },
}

/// A record as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErpRecord {
    /// The stored record's random id (new with every write).
    pub id: u128,
    /// The record's key.
    pub key: String,
    /// The value: JSON text as pushed or fetched.
    pub value: Vec<u8>,
    /// Entity tag: a keyed hash of collection, key and value (same content, same tag).
    pub etag: [u8; ETAG_LEN],
    /// When coffer stored it.
    pub stored: Timestamp,
    /// Until when it is fresh.
    pub fresh_until: Timestamp,
    /// Until when it may be served stale, as recorded when stored.
    pub stale_until: Timestamp,
}

/// A record to store.
#[derive(Clone, Debug)]
pub struct NewErpRecord {
    /// The record's key (already validated).
    pub key: String,
    /// The value (already validated as JSON within the size limit).
    pub value: Vec<u8>,
    /// Until when it is fresh.
    pub fresh_until: Timestamp,
    /// Until when it may be served stale.
    pub stale_until: Timestamp,
}

/// One operation of an atomic ERP write.
#[derive(Clone, Debug)]
pub enum ErpOp {
    /// Store (insert or replace) a record.
    Put(NewErpRecord),
    /// Remove a record if there is one.
    Delete(String),
}

/// What one operation of [`Vault::erp_write`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// A record was stored.
    Put {
        /// The key had a record before.
        replaced: bool,
        /// The stored record's entity tag.
        etag: [u8; ETAG_LEN],
    },
    /// A delete.
    Deleted {
        /// There was a record.
        removed: bool,
    },
}

fn body_bound(collection: &str, r: &StoredErpRecord) -> Vec<u8> {
    let mut b = Vec::with_capacity(collection.len() + 1 + 24);
    b.extend_from_slice(collection.as_bytes());
    b.push(0);
    b.extend_from_slice(&r.stored.0.to_be_bytes());
    b.extend_from_slice(&r.fresh_until.0.to_be_bytes());
    b.extend_from_slice(&r.stale_until.0.to_be_bytes());
    b
}

fn index_value(collection: &str, key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(collection.len() + 1 + key.len());
    v.extend_from_slice(collection.as_bytes());
    v.push(0);
    v.extend_from_slice(key.as_bytes());
    v
}

fn etag(master: &MasterKey, collection: &str, key: &str, value: &[u8]) -> [u8; ETAG_LEN] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(master.index_key().expose())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(ERP_ETAG);
    mac.update(&[0]);
    mac.update(collection.as_bytes());
    mac.update(&[0]);
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key.as_bytes());
    mac.update(value);
    let full: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = [0u8; ETAG_LEN];
    out.copy_from_slice(&full[..ETAG_LEN]);
    out
}

impl Vault {
    /// The index entries of (collection, key) under every master key version held, the
    /// current one first.
    fn erp_indexes(&self, collection: &str, key: &str) -> Vec<[u8; 32]> {
        let keys = self.keys();
        let value = index_value(collection, key);
        let (current, master) = keys.current();
        let mut out = vec![index_hash(master, INDEX_ERP_KEY, &value)];
        for v in keys.versions().filter(|v| *v != current) {
            if let Some(m) = keys.version(v) {
                out.push(index_hash(m, INDEX_ERP_KEY, &value));
            }
        }
        out
    }

    pub(crate) fn open_erp(
        &self,
        id: u128,
        r: &StoredErpRecord,
    ) -> Result<(String, Vec<u8>, [u8; ETAG_LEN]), VaultError> {
        let ErpBodyFormat::V1 { key, value, etag } = self.open_body::<ErpBodyFormat>(
            Purpose::ErpRecord,
            id,
            &body_bound(&r.collection, r),
            r.key_version,
            &r.wrapped_dek,
            &r.sealed,
        )?;
        Ok((key, value, etag))
    }

    /// The record stored under (collection, key), whatever its age.
    pub fn erp_get(&self, collection: &str, key: &str) -> Result<Option<ErpRecord>, VaultError> {
        Ok(self
            .erp_get_admitted(collection, key, |_, _| true)?
            .and_then(Result::ok))
    }

    /// Like [`Vault::erp_get`], but the record is opened only if `admit` accepts the size
    /// of its sealed body (an upper bound of its value's, as stored) and its value's size
    /// as recorded in clear (a hint only: not authenticated): otherwise `Err(sealed size)`.
    pub fn erp_get_admitted(
        &self,
        collection: &str,
        key: &str,
        admit: impl FnOnce(u64, u64) -> bool,
    ) -> Result<Option<Result<ErpRecord, u64>>, VaultError> {
        let Some((id, r)) = self.store.erp_lookup(&self.erp_indexes(collection, key))? else {
            return Ok(None);
        };
        let sealed = r.sealed.len() as u64;
        if !admit(sealed, r.size) {
            return Ok(Some(Err(sealed)));
        }
        let (stored_key, value, etag) = self.open_erp(id, &r)?;
        // The index entry led to another record (the file was edited): damage, not data.
        if stored_key != key || r.collection != collection {
            return Err(Self::damaged(Purpose::ErpRecord, id));
        }
        Ok(Some(Ok(ErpRecord {
            id,
            key: stored_key,
            value,
            etag,
            stored: r.stored,
            fresh_until: r.fresh_until,
            stale_until: r.stale_until,
        })))
    }

    /// Seals a new record. Its entity tag is `previous`'s when the value is the same, so
    /// a tag stays stable for unchanged content even across master key rotations.
    fn seal_erp(
        &self,
        collection: &str,
        new: &NewErpRecord,
        now: Timestamp,
        previous: Option<&ErpRecord>,
    ) -> Result<(u128, StoredErpRecord, [u8; ETAG_LEN]), VaultError> {
        let keys = self.keys();
        let id = u128::from_be_bytes(crate::crypto::random_bytes()?);
        let master = keys.current().1;
        let tag = match previous {
            Some(p) if p.value == new.value => p.etag,
            _ => etag(master, collection, &new.key, &new.value),
        };
        let mut record = StoredErpRecord {
            collection: collection.to_owned(),
            index: index_hash(master, INDEX_ERP_KEY, &index_value(collection, &new.key)),
            key_version: 0,
            wrapped_dek: Vec::new(),
            stored: now,
            fresh_until: new.fresh_until,
            stale_until: new.stale_until,
            size: new.value.len() as u64,
            sealed: Vec::new(),
        };
        let (version, wrapped, sealed) = self.seal_body(
            Purpose::ErpRecord,
            id,
            &body_bound(collection, &record),
            &ErpBodyFormat::V1 {
                key: new.key.clone(),
                value: new.value.clone(),
                etag: tag,
            },
        )?;
        record.key_version = version;
        record.wrapped_dek = wrapped;
        record.sealed = sealed;
        Ok((id, record, tag))
    }

    /// Applies `ops` to `collection` in one durable commit: all or nothing.
    pub fn erp_write(&self, collection: &str, ops: &[ErpOp], now: Timestamp) -> Result<Vec<Written>, VaultError> {
        let mut changes = Vec::with_capacity(ops.len());
        let mut tags = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                ErpOp::Put(new) => {
                    // Opened only when its size says it could hold the same value; an
                    // unreadable previous record is simply replaced.
                    let previous = self
                        .erp_get_admitted(collection, &new.key, |_, size| size == new.value.len() as u64)
                        .ok()
                        .flatten()
                        .and_then(Result::ok);
                    let (id, record, tag) = self.seal_erp(collection, new, now, previous.as_ref())?;
                    changes.push(ErpChange::Put {
                        indexes: self.erp_indexes(collection, &new.key),
                        id,
                        record,
                        only_if_current: None,
                    });
                    tags.push(Some(tag));
                }
                ErpOp::Delete(key) => {
                    changes.push(ErpChange::Delete {
                        indexes: self.erp_indexes(collection, key),
                        only_if_current: None,
                    });
                    tags.push(None);
                }
            }
        }
        let outcome = self.store.erp_apply(changes, true)?;
        outcome
            .into_iter()
            .zip(tags)
            .map(|(o, tag)| match (o, tag) {
                (ErpChanged::Stored { replaced }, Some(etag)) => Ok(Written::Put { replaced, etag }),
                (ErpChanged::Deleted { removed }, None) => Ok(Written::Deleted { removed }),
                _ => Err(VaultError::Invalid(
                    "the store answered an ERP write out of order".into(),
                )),
            })
            .collect()
    }

    /// Stores a record fetched from the upstream if the key's record is still `seen` (the
    /// record read when the fetch began; `None`: there was none). Otherwise the record stored
    /// meanwhile (pushed by an integration) is kept and returned. The commit is not synced:
    /// a crash loses at most records that can be fetched again.
    pub fn erp_store_fetched(
        &self,
        collection: &str,
        new: NewErpRecord,
        now: Timestamp,
        seen: Option<&ErpRecord>,
    ) -> Result<Option<ErpRecord>, VaultError> {
        let (id, record, tag) = self.seal_erp(collection, &new, now, seen)?;
        let change = ErpChange::Put {
            indexes: self.erp_indexes(collection, &new.key),
            id,
            record: record.clone(),
            only_if_current: Some(seen.map(|r| r.id)),
        };
        match self.store.erp_apply(vec![change], false)?.first() {
            Some(ErpChanged::Stored { .. }) => Ok(Some(ErpRecord {
                id,
                key: new.key,
                value: new.value,
                etag: tag,
                stored: record.stored,
                fresh_until: record.fresh_until,
                stale_until: record.stale_until,
            })),
            _ => self.erp_get(collection, &new.key),
        }
    }

    /// Removes the record of (collection, key); true if there was one. Durable.
    pub fn erp_delete(&self, collection: &str, key: &str) -> Result<bool, VaultError> {
        self.erp_delete_if(collection, key, None)
    }

    /// Removes the record of (collection, key) if it is still `only_if_current` (when
    /// given; see [`Vault::erp_store_fetched`]); true if a record was removed. Durable.
    pub fn erp_delete_if(
        &self,
        collection: &str,
        key: &str,
        only_if_current: Option<Option<u128>>,
    ) -> Result<bool, VaultError> {
        let changes = vec![ErpChange::Delete {
            indexes: self.erp_indexes(collection, key),
            only_if_current,
        }];
        Ok(matches!(
            self.store.erp_apply(changes, true)?.first(),
            Some(ErpChanged::Deleted { removed: true })
        ))
    }

    /// Removes the record of (collection, key) if it is still record `id`, without syncing
    /// (the upstream said it has no such record; like a fetched record, that can be learnt
    /// again). True if it was removed.
    pub fn erp_forget_fetched(&self, collection: &str, key: &str, id: u128) -> Result<bool, VaultError> {
        let changes = vec![ErpChange::Delete {
            indexes: self.erp_indexes(collection, key),
            only_if_current: Some(Some(id)),
        }];
        Ok(matches!(
            self.store.erp_apply(changes, false)?.first(),
            Some(ErpChanged::Deleted { removed: true })
        ))
    }

    /// Removes every record for which `expired(collection, fresh_until, stale_until)` says
    /// so (e.g. past its stale window). Returns how many.
    pub fn erp_sweep(&self, mut expired: impl FnMut(&str, Timestamp, Timestamp) -> bool) -> Result<u64, VaultError> {
        let mut ids = Vec::new();
        self.store.erp_scan(|id, r| {
            if expired(&r.collection, r.fresh_until, r.stale_until) {
                ids.push(id);
            }
        })?;
        let mut removed = 0;
        // Short commits, so requests never wait long behind a large sweep.
        for batch in ids.chunks(1000) {
            removed += self.store.erp_remove(batch)?;
        }
        Ok(removed)
    }

    /// Removes every record of `collection`, or with `key` that one record. Returns how
    /// many.
    pub fn erp_purge(&self, collection: &str, key: Option<&str>) -> Result<u64, VaultError> {
        match key {
            Some(key) => Ok(u64::from(self.erp_delete(collection, key)?)),
            None => self.erp_sweep(|c, _, _| c == collection),
        }
    }

    /// Records and bytes per collection.
    pub fn erp_usage(&self) -> Result<std::collections::BTreeMap<String, ErpUsage>, VaultError> {
        Ok(self.store.erp_usage()?)
    }

    /// Rewraps an ERP record's data key under `target` and moves its index entry.
    pub(crate) fn rewrap_erp(
        &self,
        id: u128,
        r: StoredErpRecord,
        target: u32,
    ) -> Result<Rewrapped<StoredErpRecord>, VaultError> {
        let keys = self.keys();
        let (key, _, _) = self.open_erp(id, &r)?;
        let wrapped_dek = self.rewrap_key(Purpose::ErpRecord, id, r.key_version, &r.wrapped_dek, target)?;
        let new_master = keys.version(target).ok_or_else(|| VaultError::MissingKeyVersion {
            what: Purpose::ErpRecord.noun(),
            id: format!("{id:032x}"),
            version: target,
        })?;
        let new_index = index_hash(new_master, INDEX_ERP_KEY, &index_value(&r.collection, &key));
        let reindex = crate::store::Reindex {
            old: r.index,
            new: new_index,
        };
        Ok(Rewrapped {
            record: StoredErpRecord {
                key_version: target,
                wrapped_dek,
                index: new_index,
                ..r
            },
            reindex: Some(reindex),
        })
    }
}
