//! Users. The name, role, password hash and disabled flag are sealed; the name is found
//! through a keyed hash, so user names cannot be read or enumerated from the file.

use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::{USER_NAMES, USERS};
use super::{Reindex, Snapshot, Store, StoreError, WrappedRecord};
use crate::model::{Timestamp, UserId};

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUser {
    /// Creation time.
    pub created: Timestamp,
    /// Last change.
    pub updated: Timestamp,
    /// Master key version wrapping `wrapped_dek`.
    pub key_version: u32,
    /// The record's data key, wrapped.
    pub wrapped_dek: Vec<u8>,
    /// Sealed body (name, role, password hash, disabled).
    pub sealed: Vec<u8>,
}

/// Versioned encoding of [`StoredUser`].
#[derive(Serialize, Deserialize)]
pub enum UserRecord {
    /// Format 1.
    V1(StoredUser),
}

impl WrappedRecord for StoredUser {
    const WHAT: &'static str = "a user record";
    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match decode::<UserRecord>(bytes, Self::WHAT)? {
            UserRecord::V1(u) => Ok(u),
        }
    }
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&UserRecord::V1(self.clone()))
    }
    fn key_version(&self) -> u32 {
        self.key_version
    }
}

impl Store {
    /// Adds a user under the keyed hash of its name; fails if the name is taken.
    pub fn insert_user(&self, id: UserId, user: &StoredUser, name_index: [u8; 32]) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut names = txn.open_table(USER_NAMES)?;
            if names.get(name_index)?.is_some() {
                return Err(StoreError::Conflict("a user with this name"));
            }
            let mut users = txn.open_table(USERS)?;
            if users.get(id.0)?.is_some() {
                return Err(StoreError::Conflict("a user with this id"));
            }
            names.insert(name_index, id.0)?;
            users.insert(id.0, user.encode()?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Read-modify-write of a user's record in one write transaction, so concurrent
    /// updates cannot overwrite each other. `change` gets the current record and returns
    /// the new one, plus the index move when its master key version changed.
    pub fn update_user<E: From<StoreError>>(
        &self,
        id: UserId,
        change: impl FnOnce(StoredUser) -> Result<(StoredUser, Option<Reindex>), E>,
    ) -> Result<(), E> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut table = txn.open_table(USERS).map_err(StoreError::from)?;
            let old = match table.get(id.0).map_err(StoreError::from)? {
                Some(g) => StoredUser::decode(g.value())?,
                None => return Err(StoreError::NotFound("user").into()),
            };
            let (new, reindex) = change(old)?;
            table.insert(id.0, new.encode()?.as_slice()).map_err(StoreError::from)?;
            if let Some(Reindex { old, new }) = reindex {
                let mut index = txn.open_table(USER_NAMES).map_err(StoreError::from)?;
                index.remove(old).map_err(StoreError::from)?;
                index.insert(new, id.0).map_err(StoreError::from)?;
            }
        }
        txn.commit().map_err(StoreError::from)?;
        Ok(())
    }
}

impl Snapshot {
    /// One user's record.
    pub fn user(&self, id: UserId) -> Result<Option<StoredUser>, StoreError> {
        let t = self.txn.open_table(USERS)?;
        let guard = t.get(id.0)?;
        guard.map(|g| StoredUser::decode(g.value())).transpose()
    }

    /// The user id under a keyed name hash.
    pub fn user_id_by_name_index(&self, name_index: [u8; 32]) -> Result<Option<UserId>, StoreError> {
        Ok(self
            .txn
            .open_table(USER_NAMES)?
            .get(name_index)?
            .map(|g| UserId(g.value())))
    }

    /// Every user record, in id order.
    pub fn users(&self) -> Result<Vec<(UserId, StoredUser)>, StoreError> {
        let t = self.txn.open_table(USERS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((UserId(k.value()), StoredUser::decode(v.value())?));
        }
        Ok(out)
    }
}
