//! Users and devices. Their sensitive fields are sealed under a per-record data key; the
//! user name and the certificate thumbprint are found through keyed hashes (HMAC-SHA256
//! under the index subkey of the record's master key version).

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::sealing::{open_record, seal_record};
use super::{Vault, VaultError};
use crate::crypto::keyfile::MasterKey;
use crate::crypto::labels::{AAD_META, Purpose};
use crate::model::{DeviceId, Role, Timestamp, UserId};
use crate::secret::{SecretBytes, SecretString};
use crate::store::{Reindex, StoredDevice, StoredUser};

/// A user's sealed fields.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBody {
    /// Login name (unique).
    pub name: String,
    /// Role.
    pub role: Role,
    /// argon2id PHC string of the password.
    pub password_hash: String,
    /// A disabled user cannot log in and their devices are refused.
    pub disabled: bool,
    /// RFC 6238 TOTP seed, if the user enrolled a second factor.
    pub totp: Option<SecretBytes>,
}

impl std::fmt::Debug for UserBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserBody")
            .field("name", &"[redacted]")
            .field("role", &self.role)
            .field("password_hash", &"[redacted]")
            .field("disabled", &self.disabled)
            .field("totp", &self.totp.is_some())
            .finish()
    }
}

/// A device's sealed fields.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBody {
    /// Human-readable name ("Anna's iPhone").
    pub name: String,
    /// SHA-256 of the device certificate (DER).
    pub thumbprint: [u8; 32],
    /// Revoked devices are refused.
    pub revoked: bool,
    /// The SigV4 signing secret (absent on devices issued before signatures existed).
    pub signing_secret: Option<SecretString>,
    /// Serial number of the current certificate (absent on devices issued before the
    /// CRL existed: those cannot be listed in it).
    pub serial: Option<Vec<u8>>,
    /// When the device was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Certificates the device held before a renewal, listed in the CRL until they expire.
    pub retired: Vec<RetiredCert>,
}

/// A certificate replaced by a renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredCert {
    /// Its serial number.
    pub serial: Vec<u8>,
    /// When it was replaced.
    pub at: Timestamp,
    /// Its end of validity (after which no CRL needs to list it).
    pub not_after: Timestamp,
}

impl std::fmt::Debug for DeviceBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and thumbprints are kept off disk; keep them out of logs too.
        f.debug_struct("DeviceBody")
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// Format 1 of a user body (before TOTP).
#[derive(Serialize, Deserialize)]
struct UserBodyV1 {
    name: String,
    role: Role,
    password_hash: String,
    disabled: bool,
}

#[derive(Serialize, Deserialize)]
enum UserBodyRecord {
    V1(UserBodyV1),
    V2(UserBody),
}

impl UserBodyRecord {
    fn into_body(self) -> UserBody {
        match self {
            Self::V1(b) => UserBody {
                name: b.name,
                role: b.role,
                password_hash: b.password_hash,
                disabled: b.disabled,
                totp: None,
            },
            Self::V2(b) => b,
        }
    }
}

/// Format 1 of a device body (before signing secrets).
#[derive(Serialize, Deserialize)]
struct DeviceBodyV1 {
    name: String,
    thumbprint: [u8; 32],
    revoked: bool,
}

/// Format 2 of a device body (before serials and renewals).
#[derive(Serialize, Deserialize)]
struct DeviceBodyV2 {
    name: String,
    thumbprint: [u8; 32],
    revoked: bool,
    signing_secret: Option<SecretString>,
}

#[derive(Serialize, Deserialize)]
enum DeviceBodyRecord {
    V1(DeviceBodyV1),
    V2(DeviceBodyV2),
    V3(DeviceBody),
}

impl DeviceBodyRecord {
    fn into_body(self) -> DeviceBody {
        let old = |name, thumbprint, revoked, signing_secret| DeviceBody {
            name,
            thumbprint,
            revoked,
            signing_secret,
            serial: None,
            revoked_at: None,
            retired: Vec::new(),
        };
        match self {
            Self::V1(b) => old(b.name, b.thumbprint, b.revoked, None),
            Self::V2(b) => old(b.name, b.thumbprint, b.revoked, b.signing_secret),
            Self::V3(b) => b,
        }
    }
}

fn check_device_name(name: &str) -> Result<(), VaultError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(VaultError::Invalid(
            "a device name must be 1 to 255 bytes without control characters".into(),
        ));
    }
    Ok(())
}

/// A user with its decrypted fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// Id.
    pub id: UserId,
    /// Creation time.
    pub created: Timestamp,
    /// Decrypted fields.
    pub body: UserBody,
}

/// A device with its decrypted fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Id.
    pub id: DeviceId,
    /// Owner.
    pub owner: UserId,
    /// Certificate expiry.
    pub expires: Timestamp,
    /// Creation time.
    pub created: Timestamp,
    /// Decrypted fields.
    pub body: DeviceBody,
}

const INDEX_USER_NAME: &[u8] = b"coffer/v1/index/user-name";
const INDEX_DEVICE_CERT: &[u8] = b"coffer/v1/index/device-cert";

/// Keyed hash of a lookup value under one master key version.
pub(crate) fn index_hash(master: &MasterKey, label: &[u8], value: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(master.index_key().expose())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(label);
    mac.update(&[0]);
    mac.update(value);
    mac.finalize().into_bytes().into()
}

fn body_aad(purpose: Purpose, id: u128, bound: &[u8]) -> Vec<u8> {
    let mut aad = AAD_META.to_vec();
    aad.push(0);
    aad.extend_from_slice(purpose.label());
    aad.push(0);
    aad.extend_from_slice(&id.to_be_bytes());
    aad.extend_from_slice(bound);
    aad
}

/// The clear fields of a device that its sealed body authenticates: moving a device to
/// another owner or extending its expiry in the file makes it fail to open.
fn device_bound(owner: UserId, expires: Timestamp) -> Vec<u8> {
    let mut b = owner.to_bytes().to_vec();
    b.extend_from_slice(&expires.0.to_be_bytes());
    b
}

/// A sealed body: (key version, wrapped DEK, sealed bytes).
type Sealed = (u32, Vec<u8>, Vec<u8>);

impl Vault {
    pub(crate) fn seal_body<T: Serialize>(
        &self,
        purpose: Purpose,
        id: u128,
        bound: &[u8],
        body: &T,
    ) -> Result<Sealed, VaultError> {
        let (dek, version, wrapped) = self.new_dek(purpose, id)?;
        Ok((
            version,
            wrapped,
            seal_record(&dek, &body_aad(purpose, id, bound), body)?,
        ))
    }

    pub(crate) fn open_body<T: serde::de::DeserializeOwned>(
        &self,
        purpose: Purpose,
        id: u128,
        bound: &[u8],
        key_version: u32,
        wrapped_dek: &[u8],
        sealed: &[u8],
    ) -> Result<T, VaultError> {
        let dek = self.unwrap_dek(purpose, id, key_version, wrapped_dek)?;
        open_record(&dek, &body_aad(purpose, id, bound), sealed, purpose, id)
    }

    pub(crate) fn user_info(&self, id: UserId, u: &StoredUser) -> Result<UserInfo, VaultError> {
        let body = self
            .open_body::<UserBodyRecord>(Purpose::User, id.0, &[], u.key_version, &u.wrapped_dek, &u.sealed)?
            .into_body();
        Ok(UserInfo {
            id,
            created: u.created,
            body,
        })
    }

    pub(crate) fn device_info(&self, id: DeviceId, d: &StoredDevice) -> Result<DeviceInfo, VaultError> {
        let body = self
            .open_body::<DeviceBodyRecord>(
                Purpose::Device,
                id.0,
                &device_bound(d.owner, d.expires),
                d.key_version,
                &d.wrapped_dek,
                &d.sealed,
            )?
            .into_body();
        Ok(DeviceInfo {
            id,
            owner: d.owner,
            expires: d.expires,
            created: d.created,
            body,
        })
    }

    /// Adds a user; the name must be new.
    pub fn add_user(&self, body: UserBody) -> Result<UserInfo, VaultError> {
        if body.name.is_empty() || body.name.len() > 64 || body.name.chars().any(char::is_control) {
            return Err(VaultError::Invalid(
                "a user name must be 1 to 64 bytes without control characters".into(),
            ));
        }
        if self.user_by_name(&body.name)?.is_some() {
            return Err(crate::store::StoreError::Conflict("a user with this name").into());
        }
        let id = UserId::random().map_err(crate::crypto::SealError::from)?;
        let (key_version, wrapped_dek, sealed) =
            self.seal_body(Purpose::User, id.0, &[], &UserBodyRecord::V2(body.clone()))?;
        let now = Timestamp::now();
        let stored = StoredUser {
            created: now,
            updated: now,
            key_version,
            wrapped_dek,
            sealed,
        };
        let index = index_hash(self.keys().current().1, INDEX_USER_NAME, body.name.as_bytes());
        self.store.insert_user(id, &stored, index)?;
        Ok(UserInfo { id, created: now, body })
    }

    /// Finds a user by name (under any master key version the keyring holds, so lookups
    /// keep working while a rotation is under way).
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserInfo>, VaultError> {
        let keys = self.keys();
        let snap = self.store.snapshot()?;
        for v in keys.versions() {
            let Some(master) = keys.version(v) else {
                continue;
            };
            if let Some(id) = snap.user_id_by_name_index(index_hash(master, INDEX_USER_NAME, name.as_bytes()))? {
                let stored = snap.user(id)?.ok_or(VaultError::NotFound("user"))?;
                let info = self.user_info(id, &stored)?;
                if info.body.name == name {
                    return Ok(Some(info));
                }
            }
        }
        Ok(None)
    }

    /// One user by id.
    pub fn user(&self, id: UserId) -> Result<UserInfo, VaultError> {
        let stored = self.store.snapshot()?.user(id)?.ok_or(VaultError::NotFound("user"))?;
        self.user_info(id, &stored)
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<UserInfo>, VaultError> {
        self.store
            .snapshot()?
            .users()?
            .iter()
            .map(|(id, u)| self.user_info(*id, u))
            .collect()
    }

    /// Changes a user's sealed fields (not the name), atomically with respect to other
    /// updates of the same user.
    pub fn update_user(&self, id: UserId, change: impl FnOnce(&mut UserBody)) -> Result<UserInfo, VaultError> {
        let mut updated = None;
        self.store.update_user(id, |old: StoredUser| {
            let mut info = self.user_info(id, &old)?;
            let name = info.body.name.clone();
            change(&mut info.body);
            info.body.name = name;
            let (key_version, wrapped_dek, sealed) =
                self.seal_body(Purpose::User, id.0, &[], &UserBodyRecord::V2(info.body.clone()))?;
            let reindex = self.reindex(old.key_version, key_version, INDEX_USER_NAME, info.body.name.as_bytes());
            let stored = StoredUser {
                updated: Timestamp::now(),
                key_version,
                wrapped_dek,
                sealed,
                ..old
            };
            updated = Some(info);
            Ok::<_, VaultError>((stored, reindex))
        })?;
        let info = updated.ok_or(VaultError::NotFound("user"))?;
        if info.body.disabled {
            // A disabled user's sessions and unused enrolment codes end with it
            // (re-enabling revives neither).
            self.end_user_sessions(id)?;
            self.store.remove_enrolments_of(id)?;
        }
        Ok(info)
    }

    /// Registers a device for `owner` with its certificate thumbprint, under a new id.
    pub fn add_device(&self, owner: UserId, body: DeviceBody, expires: Timestamp) -> Result<DeviceInfo, VaultError> {
        let id = DeviceId::random().map_err(crate::crypto::SealError::from)?;
        self.register_device(id, owner, body, expires)
    }

    /// Registers a device under `id` (the id its certificate names).
    pub fn register_device(
        &self,
        id: DeviceId,
        owner: UserId,
        body: DeviceBody,
        expires: Timestamp,
    ) -> Result<DeviceInfo, VaultError> {
        let (stored, index, info) = self.seal_new_device(id, owner, body, expires)?;
        self.store.insert_device(id, &stored, index)?;
        Ok(info)
    }

    /// Checks and seals a new device record: the record, its thumbprint index entry, and
    /// what the caller gets back once it is stored.
    pub(crate) fn seal_new_device(
        &self,
        id: DeviceId,
        owner: UserId,
        body: DeviceBody,
        expires: Timestamp,
    ) -> Result<(StoredDevice, [u8; 32], DeviceInfo), VaultError> {
        check_device_name(&body.name)?;
        self.user(owner)?;
        if self.device_by_thumbprint(&body.thumbprint)?.is_some() {
            return Err(crate::store::StoreError::Conflict("a device with this certificate").into());
        }
        let (key_version, wrapped_dek, sealed) = self.seal_body(
            Purpose::Device,
            id.0,
            &device_bound(owner, expires),
            &DeviceBodyRecord::V3(body.clone()),
        )?;
        let now = Timestamp::now();
        let stored = StoredDevice {
            owner,
            expires,
            created: now,
            updated: now,
            key_version,
            wrapped_dek,
            sealed,
        };
        let index = index_hash(self.keys().current().1, INDEX_DEVICE_CERT, &body.thumbprint);
        let info = DeviceInfo {
            id,
            owner,
            expires,
            created: now,
            body,
        };
        Ok((stored, index, info))
    }

    /// Reseals device `old` (as stored) with `body` and a new expiry: the new record and
    /// the index move from its old thumbprint to the body's.
    pub(crate) fn reseal_device(
        &self,
        id: DeviceId,
        old: &StoredDevice,
        old_thumbprint: &[u8; 32],
        body: &DeviceBody,
        expires: Timestamp,
    ) -> Result<(StoredDevice, Option<Reindex>), VaultError> {
        let keys = self.keys();
        check_device_name(&body.name)?;
        let (key_version, wrapped_dek, sealed) = self.seal_body(
            Purpose::Device,
            id.0,
            &device_bound(old.owner, expires),
            &DeviceBodyRecord::V3(body.clone()),
        )?;
        // The old entry is under the old record's master key version; if that version is
        // no longer held, there is no entry to find, and removing its would-be key is a no-op.
        let current_master = keys.current().1;
        let old_master = keys.version(old.key_version).unwrap_or(current_master);
        let reindex = Some(Reindex {
            old: index_hash(old_master, INDEX_DEVICE_CERT, old_thumbprint),
            new: index_hash(current_master, INDEX_DEVICE_CERT, &body.thumbprint),
        });
        let stored = StoredDevice {
            expires,
            updated: Timestamp::now(),
            key_version,
            wrapped_dek,
            sealed,
            ..old.clone()
        };
        Ok((stored, reindex))
    }

    /// A device's decrypted fields from its stored record.
    pub(crate) fn open_device(&self, id: DeviceId, stored: &StoredDevice) -> Result<DeviceInfo, VaultError> {
        self.device_info(id, stored)
    }

    /// Finds the device holding the certificate with this SHA-256 thumbprint.
    pub fn device_by_thumbprint(&self, thumbprint: &[u8; 32]) -> Result<Option<DeviceInfo>, VaultError> {
        let keys = self.keys();
        let snap = self.store.snapshot()?;
        for v in keys.versions() {
            let Some(master) = keys.version(v) else {
                continue;
            };
            if let Some(id) = snap.device_id_by_thumbprint_index(index_hash(master, INDEX_DEVICE_CERT, thumbprint))? {
                let stored = snap.device(id)?.ok_or(VaultError::NotFound("device"))?;
                let info = self.device_info(id, &stored)?;
                if &info.body.thumbprint == thumbprint {
                    return Ok(Some(info));
                }
            }
        }
        Ok(None)
    }

    /// One device by id.
    pub fn device(&self, id: DeviceId) -> Result<DeviceInfo, VaultError> {
        let stored = self
            .store
            .snapshot()?
            .device(id)?
            .ok_or(VaultError::NotFound("device"))?;
        self.device_info(id, &stored)
    }

    /// Every device.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, VaultError> {
        self.store
            .snapshot()?
            .devices()?
            .iter()
            .map(|(id, d)| self.device_info(*id, d))
            .collect()
    }

    /// Marks a device revoked, atomically with respect to other updates of it.
    pub fn revoke_device(&self, id: DeviceId) -> Result<DeviceInfo, VaultError> {
        let mut updated = None;
        self.store.update_device(id, |old: StoredDevice| {
            let mut info = self.device_info(id, &old)?;
            if !info.body.revoked {
                info.body.revoked = true;
                info.body.revoked_at = Some(Timestamp::now());
            }
            let (key_version, wrapped_dek, sealed) = self.seal_body(
                Purpose::Device,
                id.0,
                &device_bound(old.owner, old.expires),
                &DeviceBodyRecord::V3(info.body.clone()),
            )?;
            let reindex = self.reindex(old.key_version, key_version, INDEX_DEVICE_CERT, &info.body.thumbprint);
            let stored = StoredDevice {
                updated: Timestamp::now(),
                key_version,
                wrapped_dek,
                sealed,
                ..old
            };
            updated = Some(info);
            Ok::<_, VaultError>((stored, reindex))
        })?;
        let info = updated.ok_or(VaultError::NotFound("device"))?;
        self.end_device_sessions(id)?;
        Ok(info)
    }

    /// The index move for a record re-sealed from version `from` to `to` (None if equal or
    /// if `from` is no longer held, in which case there is no old entry to find).
    fn reindex(&self, from: u32, to: u32, label: &[u8], value: &[u8]) -> Option<Reindex> {
        let keys = self.keys();
        if from == to {
            return None;
        }
        let old = keys.version(from)?;
        let new = keys.version(to)?;
        Some(Reindex {
            old: index_hash(old, label, value),
            new: index_hash(new, label, value),
        })
    }

    /// Rewraps a user's data key under `target` and moves its name index entry.
    pub(crate) fn rewrap_user(
        &self,
        id: u128,
        u: StoredUser,
        target: u32,
    ) -> Result<crate::store::Rewrapped<StoredUser>, VaultError> {
        let info = self.user_info(UserId(id), &u)?;
        let wrapped_dek = self.rewrap_key(Purpose::User, id, u.key_version, &u.wrapped_dek, target)?;
        let reindex = self.reindex(u.key_version, target, INDEX_USER_NAME, info.body.name.as_bytes());
        Ok(crate::store::Rewrapped {
            record: StoredUser {
                key_version: target,
                wrapped_dek,
                ..u
            },
            reindex,
        })
    }

    /// Rewraps a device's data key under `target` and moves its thumbprint index entry.
    pub(crate) fn rewrap_device(
        &self,
        id: u128,
        d: StoredDevice,
        target: u32,
    ) -> Result<crate::store::Rewrapped<StoredDevice>, VaultError> {
        let info = self.device_info(DeviceId(id), &d)?;
        let wrapped_dek = self.rewrap_key(Purpose::Device, id, d.key_version, &d.wrapped_dek, target)?;
        let reindex = self.reindex(d.key_version, target, INDEX_DEVICE_CERT, &info.body.thumbprint);
        Ok(crate::store::Rewrapped {
            record: StoredDevice {
                key_version: target,
                wrapped_dek,
                ..d
            },
            reindex,
        })
    }
}
