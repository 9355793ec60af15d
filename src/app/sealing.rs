//! The one place where a record's data key is unwrapped and its sealed part opened or
//! made: documents, users and devices all go through here.

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::{Vault, VaultError};
use crate::crypto::envelope::{self, WrappedKey};
use crate::crypto::labels::Purpose;
use crate::secret::SecretKey;

impl Vault {
    /// Integrity error for object `id` of kind `purpose`.
    pub(crate) fn damaged(purpose: Purpose, id: u128) -> VaultError {
        VaultError::Integrity {
            what: purpose.noun(),
            id: format!("{id:032x}"),
        }
    }

    /// Unwraps an object's data key, stored under master key version `version`.
    pub(crate) fn unwrap_dek(
        &self,
        purpose: Purpose,
        id: u128,
        version: u32,
        wrapped_dek: &[u8],
    ) -> Result<SecretKey, VaultError> {
        let keys = self.keys();
        let master = keys.version(version).ok_or_else(|| VaultError::MissingKeyVersion {
            what: purpose.noun(),
            id: format!("{id:032x}"),
            version,
        })?;
        let wrapped = WrappedKey(wrapped_dek.try_into().map_err(|_| Self::damaged(purpose, id))?);
        envelope::unwrap(master.wrap_key(), version, purpose, id, &wrapped).map_err(|_| Self::damaged(purpose, id))
    }

    /// A fresh data key for a new object, and that key wrapped under the current version.
    pub(crate) fn new_dek(&self, purpose: Purpose, id: u128) -> Result<(SecretKey, u32, Vec<u8>), VaultError> {
        let keys = self.keys();
        let dek = SecretKey::random().map_err(crate::crypto::SealError::from)?;
        let (version, master) = keys.current();
        let wrapped = envelope::wrap(master.wrap_key(), version, purpose, id, &dek)?;
        Ok((dek, version, wrapped.0.to_vec()))
    }

    /// Unwraps a data key stored under version `from` and wraps it under `target`.
    pub(crate) fn rewrap_key(
        &self,
        purpose: Purpose,
        id: u128,
        from: u32,
        wrapped_dek: &[u8],
        target: u32,
    ) -> Result<Vec<u8>, VaultError> {
        let keys = self.keys();
        let dek = self.unwrap_dek(purpose, id, from, wrapped_dek)?;
        let new = keys.version(target).ok_or_else(|| VaultError::MissingKeyVersion {
            what: purpose.noun(),
            id: format!("{id:032x}"),
            version: target,
        })?;
        Ok(envelope::wrap(new.wrap_key(), target, purpose, id, &dek)?.0.to_vec())
    }
}

/// Encodes `record` with postcard and seals it under `dek`; the plaintext is zeroized.
pub(crate) fn seal_record<T: Serialize>(dek: &SecretKey, aad: &[u8], record: &T) -> Result<Vec<u8>, VaultError> {
    let plain =
        Zeroizing::new(postcard::to_stdvec(record).map_err(|_| VaultError::Invalid("record does not encode".into()))?);
    Ok(envelope::seal(dek, aad, &plain)?)
}

/// Opens a record sealed by [`seal_record`] and decodes it strictly (no trailing bytes).
pub(crate) fn open_record<T: DeserializeOwned>(
    dek: &SecretKey,
    aad: &[u8],
    sealed: &[u8],
    purpose: Purpose,
    id: u128,
) -> Result<T, VaultError> {
    let plain = envelope::open(dek, aad, sealed).map_err(|_| Vault::damaged(purpose, id))?;
    match postcard::take_from_bytes::<T>(&plain) {
        Ok((v, [])) => Ok(v),
        _ => Err(Vault::damaged(purpose, id)),
    }
}
