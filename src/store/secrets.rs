//! Service secrets: the CA's and the server's private keys, each sealed under its own data
//! key like any record. Slots are fixed small ids (see `app::pki`).

use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::SECRETS;
use super::{Snapshot, Store, StoreError, WrappedRecord};
use crate::model::Timestamp;

/// A secret as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// When it was stored.
    pub created: Timestamp,
    /// Master key version wrapping `wrapped_dek`.
    pub key_version: u32,
    /// The record's data key, wrapped.
    pub wrapped_dek: Vec<u8>,
    /// The sealed secret.
    pub sealed: Vec<u8>,
}

/// Versioned encoding of [`StoredSecret`].
#[derive(Serialize, Deserialize)]
pub enum SecretRecord {
    /// Format 1.
    V1(StoredSecret),
}

impl WrappedRecord for StoredSecret {
    const WHAT: &'static str = "a service secret";
    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match decode::<SecretRecord>(bytes, Self::WHAT)? {
            SecretRecord::V1(s) => Ok(s),
        }
    }
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&SecretRecord::V1(self.clone()))
    }
    fn key_version(&self) -> u32 {
        self.key_version
    }
}

impl Store {
    /// Stores secrets durably in one commit. With `replace` false, fails if any slot is
    /// taken.
    pub fn put_secrets(&self, secrets: &[(u128, StoredSecret)], replace: bool) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut t = txn.open_table(SECRETS)?;
            for (slot, secret) in secrets {
                if !replace && t.get(*slot)?.is_some() {
                    return Err(StoreError::Conflict("a service secret in this slot"));
                }
                t.insert(*slot, secret.encode()?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl Snapshot {
    /// The secret in `slot`.
    pub fn secret(&self, slot: u128) -> Result<Option<StoredSecret>, StoreError> {
        let t = self.txn.open_table(SECRETS)?;
        let guard = t.get(slot)?;
        guard.map(|g| StoredSecret::decode(g.value())).transpose()
    }
}
