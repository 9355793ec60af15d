//! Devices. The name, certificate thumbprint and revoked flag are sealed; the thumbprint is
//! found through a keyed hash. Owner and expiry stay in clear (an owner id and a timestamp).

use redb::{Durability, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::{DEVICE_THUMBPRINTS, DEVICES};
use super::{Reindex, Snapshot, Store, StoreError, WrappedRecord};
use crate::model::{DeviceId, Timestamp, UserId};

/// A device as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDevice {
    /// The user the device belongs to.
    pub owner: UserId,
    /// Certificate expiry.
    pub expires: Timestamp,
    /// Creation time.
    pub created: Timestamp,
    /// Last change.
    pub updated: Timestamp,
    /// Master key version wrapping `wrapped_dek`.
    pub key_version: u32,
    /// The record's data key, wrapped.
    pub wrapped_dek: Vec<u8>,
    /// Sealed body (name, certificate thumbprint, revoked).
    pub sealed: Vec<u8>,
}

/// Versioned encoding of [`StoredDevice`].
#[derive(Serialize, Deserialize)]
pub enum DeviceRecord {
    /// Format 1.
    V1(StoredDevice),
}

impl WrappedRecord for StoredDevice {
    const WHAT: &'static str = "a device record";
    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match decode::<DeviceRecord>(bytes, Self::WHAT)? {
            DeviceRecord::V1(u) => Ok(u),
        }
    }
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&DeviceRecord::V1(self.clone()))
    }
    fn key_version(&self) -> u32 {
        self.key_version
    }
}

impl Store {
    /// Adds a device under the keyed hash of its certificate thumbprint.
    pub fn insert_device(
        &self,
        id: DeviceId,
        device: &StoredDevice,
        thumbprint_index: [u8; 32],
    ) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        insert_device_in(&txn, id, device, thumbprint_index)?;
        txn.commit()?;
        Ok(())
    }

    /// Read-modify-write of a device's record in one write transaction, so concurrent
    /// updates cannot overwrite each other. `change` gets the current record and returns
    /// the new one, plus the index move when its master key version changed.
    pub fn update_device<E: From<StoreError>>(
        &self,
        id: DeviceId,
        change: impl FnOnce(StoredDevice) -> Result<(StoredDevice, Option<Reindex>), E>,
    ) -> Result<(), E> {
        let txn = self.write(Durability::Immediate)?;
        update_device_in(&txn, id, change)?;
        txn.commit().map_err(StoreError::from)?;
        Ok(())
    }
}

impl Store {
    /// Runs `f` in one durable write transaction (for changes of devices made with
    /// [`insert_device_in`] and [`update_device_in`]); an error aborts it.
    pub fn update_devices_with<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.write(Durability::Immediate)?;
        let out = f(&txn)?;
        txn.commit().map_err(StoreError::from)?;
        Ok(out)
    }
}

/// [`Store::insert_device`] inside a write transaction.
pub fn insert_device_in(
    txn: &WriteTransaction,
    id: DeviceId,
    device: &StoredDevice,
    thumbprint_index: [u8; 32],
) -> Result<(), StoreError> {
    let mut names = txn.open_table(DEVICE_THUMBPRINTS)?;
    if names.get(thumbprint_index)?.is_some() {
        return Err(StoreError::Conflict("a device with this certificate"));
    }
    let mut devices = txn.open_table(DEVICES)?;
    if devices.get(id.0)?.is_some() {
        return Err(StoreError::Conflict("a device with this id"));
    }
    names.insert(thumbprint_index, id.0)?;
    devices.insert(id.0, device.encode()?.as_slice())?;
    Ok(())
}

/// [`Store::update_device`] inside a write transaction. The index move may also change the
/// thumbprint (a renewed certificate); a new entry that already names another device is a
/// conflict.
pub fn update_device_in<E: From<StoreError>>(
    txn: &WriteTransaction,
    id: DeviceId,
    change: impl FnOnce(StoredDevice) -> Result<(StoredDevice, Option<Reindex>), E>,
) -> Result<(), E> {
    let mut table = txn.open_table(DEVICES).map_err(StoreError::from)?;
    let old = match table.get(id.0).map_err(StoreError::from)? {
        Some(g) => StoredDevice::decode(g.value())?,
        None => return Err(StoreError::NotFound("device").into()),
    };
    let (new, reindex) = change(old)?;
    table.insert(id.0, new.encode()?.as_slice()).map_err(StoreError::from)?;
    if let Some(Reindex { old, new }) = reindex {
        let mut index = txn.open_table(DEVICE_THUMBPRINTS).map_err(StoreError::from)?;
        index.remove(old).map_err(StoreError::from)?;
        if index
            .get(new)
            .map_err(StoreError::from)?
            .is_some_and(|g| g.value() != id.0)
        {
            return Err(StoreError::Conflict("a device with this certificate").into());
        }
        index.insert(new, id.0).map_err(StoreError::from)?;
    }
    Ok(())
}

impl Snapshot {
    /// One device's record.
    pub fn device(&self, id: DeviceId) -> Result<Option<StoredDevice>, StoreError> {
        let t = self.txn.open_table(DEVICES)?;
        let guard = t.get(id.0)?;
        guard.map(|g| StoredDevice::decode(g.value())).transpose()
    }

    /// The device id under a keyed thumbprint hash.
    pub fn device_id_by_thumbprint_index(&self, thumbprint_index: [u8; 32]) -> Result<Option<DeviceId>, StoreError> {
        Ok(self
            .txn
            .open_table(DEVICE_THUMBPRINTS)?
            .get(thumbprint_index)?
            .map(|g| DeviceId(g.value())))
    }

    /// Every device record, in id order.
    pub fn devices(&self) -> Result<Vec<(DeviceId, StoredDevice)>, StoreError> {
        let t = self.txn.open_table(DEVICES)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((DeviceId(k.value()), StoredDevice::decode(v.value())?));
        }
        Ok(out)
    }
}
