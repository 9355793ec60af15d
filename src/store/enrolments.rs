//! Enrolment codes: single-use, expiring, found by the SHA-256 of the code (the code itself
//! is never stored). A record holds only ids and times, which the design keeps in clear.
//!
//! A code is consumed in the same commit that registers (or renews) its device, so a code
//! can never make two devices, and a failed enrolment leaves the code usable.

use redb::{Durability, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::ENROLMENTS;
use super::{Store, StoreError};
use crate::model::{DeviceId, Timestamp, UserId};

/// An enrolment code as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnrolment {
    /// The user the new device will belong to.
    pub user: UserId,
    /// For a renewal: the device that gets the new certificate.
    pub device: Option<DeviceId>,
    /// When the code was made.
    pub created: Timestamp,
    /// The code is refused from then on.
    pub expires: Timestamp,
}

#[derive(Serialize, Deserialize)]
enum EnrolmentRecord {
    V1(StoredEnrolment),
}

const WHAT: &str = "an enrolment record";

fn decode_enrolment(bytes: &[u8]) -> Result<StoredEnrolment, StoreError> {
    match decode::<EnrolmentRecord>(bytes, WHAT)? {
        EnrolmentRecord::V1(e) => Ok(e),
    }
}

impl Store {
    /// Stores a new code durably, and removes expired codes in the same commit.
    pub fn insert_enrolment(&self, code_hash: [u8; 32], enrolment: &StoredEnrolment) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut t = txn.open_table(ENROLMENTS)?;
            let mut expired = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                // An unreadable record is dropped rather than kept forever.
                if decode_enrolment(v.value()).map_or(true, |e| e.expires <= enrolment.created) {
                    expired.push(k.value());
                }
            }
            for k in expired {
                t.remove(k)?;
            }
            if t.get(code_hash)?.is_some() {
                return Err(StoreError::Conflict("an enrolment code with this hash"));
            }
            t.insert(code_hash, encode(&EnrolmentRecord::V1(enrolment.clone()))?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Consumes the code with this hash and, in the same commit, runs `register` (which
    /// adds or updates the device in the transaction it is given). An unknown, used or
    /// expired code is `NotFound("enrolment code")` and nothing is written; an error from
    /// `register` leaves the code unused.
    pub fn consume_enrolment<T, E: From<StoreError>>(
        &self,
        code_hash: [u8; 32],
        now: Timestamp,
        register: impl FnOnce(&WriteTransaction, &StoredEnrolment) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.write(Durability::Immediate)?;
        let enrolment = {
            let mut t = txn.open_table(ENROLMENTS).map_err(StoreError::from)?;
            let found = match t.remove(code_hash).map_err(StoreError::from)? {
                Some(g) => Some(decode_enrolment(g.value())?),
                None => None,
            };
            match found {
                Some(e) if e.expires > now => e,
                // Dropping the transaction aborts it: an expired code stays until it is
                // swept, like any other.
                _ => return Err(StoreError::NotFound("enrolment code").into()),
            }
        };
        let out = register(&txn, &enrolment)?;
        txn.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// The code with this hash, if it is stored and unexpired at `now` (a read: wrong
    /// codes never take the write lock).
    pub fn enrolment(&self, code_hash: [u8; 32], now: Timestamp) -> Result<Option<StoredEnrolment>, StoreError> {
        let snap = self.snapshot()?;
        let t = snap.txn.open_table(ENROLMENTS)?;
        let found = t.get(code_hash)?.map(|g| decode_enrolment(g.value())).transpose()?;
        Ok(found.filter(|e| e.expires > now))
    }

    /// Removes every unused code of `user` (when the user is disabled).
    pub fn remove_enrolments_of(&self, user: UserId) -> Result<usize, StoreError> {
        let txn = self.write(Durability::Immediate)?;
        let mut removed = 0;
        {
            let mut t = txn.open_table(ENROLMENTS)?;
            let mut doomed = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                if decode_enrolment(v.value()).is_ok_and(|e| e.user == user) {
                    doomed.push(k.value());
                }
            }
            for k in doomed {
                t.remove(k)?;
                removed += 1;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// The codes not yet used, by expiry (for `coffer device enrolments`).
    pub fn enrolments(&self) -> Result<Vec<StoredEnrolment>, StoreError> {
        let snap = self.snapshot()?;
        let t = snap.txn.open_table(ENROLMENTS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (_, v) = entry?;
            out.push(decode_enrolment(v.value())?);
        }
        out.sort_by_key(|e| e.expires);
        Ok(out)
    }
}
