//! The raw side of backup and restore: every entry of a consistent snapshot as
//! (table, key bytes, value bytes), and a fresh database built from such entries.
//!
//! What a backup holds: everything needed to serve again (metadata, documents and their
//! published chunks, users, devices, service secrets, ERP records, the audit log). What it
//! leaves out on purpose: uploads in progress (never acknowledged), sessions and login
//! state (short-lived; users log in again), and enrolment codes (single-use: a restore
//! must not bring back a code that was spent after the backup).

use std::collections::HashSet;
use std::path::Path;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, Value,
};

use super::tables::{
    AUDIT, CHUNKS, DEVICE_THUMBPRINTS, DEVICES, DOCUMENTS, ERP_KEYS, ERP_RECORDS, META, SCHEMA_KEY, SECRETS,
    USER_NAMES, USERS,
};
use super::{Store, StoreError, StoreOptions, create_private_database};

/// The tables a backup carries, with the byte that names each in the backup stream.
/// Numbers are part of the backup format: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BackupTable {
    /// `meta`.
    Meta = 1,
    /// `documents`.
    Documents = 2,
    /// `chunks` (of published documents only).
    Chunks = 3,
    /// `users`.
    Users = 4,
    /// `user_names`.
    UserNames = 5,
    /// `devices`.
    Devices = 6,
    /// `device_thumbprints`.
    DeviceThumbprints = 7,
    /// `secrets`.
    Secrets = 8,
    /// `erp_records`.
    ErpRecords = 9,
    /// `erp_keys`.
    ErpKeys = 10,
    /// `audit`.
    Audit = 11,
}

impl BackupTable {
    /// Every table, in dump order.
    pub const ALL: [Self; 11] = [
        Self::Meta,
        Self::Documents,
        Self::Chunks,
        Self::Users,
        Self::UserNames,
        Self::Devices,
        Self::DeviceThumbprints,
        Self::Secrets,
        Self::ErpRecords,
        Self::ErpKeys,
        Self::Audit,
    ];

    /// The table named by `byte`, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    /// The table's name in the database.
    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Documents => "documents",
            Self::Chunks => "chunks",
            Self::Users => "users",
            Self::UserNames => "user_names",
            Self::Devices => "devices",
            Self::DeviceThumbprints => "device_thumbprints",
            Self::Secrets => "secrets",
            Self::ErpRecords => "erp_records",
            Self::ErpKeys => "erp_keys",
            Self::Audit => "audit",
        }
    }

    /// Checks that `key` and `value` have the shape this table's types need (fixed widths,
    /// UTF-8 names), so building a database from them cannot fail half-way or panic.
    pub fn check(self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        fn shape<K: Key + 'static, V: Value + 'static>(_: TableDefinition<K, V>, key: &[u8], value: &[u8]) -> bool {
            K::fixed_width().is_none_or(|w| w == key.len()) && V::fixed_width().is_none_or(|w| w == value.len())
        }
        let ok = match self {
            Self::Meta => std::str::from_utf8(key).is_ok() && shape(META, key, value),
            Self::Documents => shape(DOCUMENTS, key, value),
            Self::Chunks => shape(CHUNKS, key, value),
            Self::Users => shape(USERS, key, value),
            Self::UserNames => shape(USER_NAMES, key, value),
            Self::Devices => shape(DEVICES, key, value),
            Self::DeviceThumbprints => shape(DEVICE_THUMBPRINTS, key, value),
            Self::Secrets => shape(SECRETS, key, value),
            Self::ErpRecords => shape(ERP_RECORDS, key, value),
            Self::ErpKeys => shape(ERP_KEYS, key, value),
            Self::Audit => shape(AUDIT, key, value),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::Corrupt("a backup entry of the wrong shape"))
        }
    }
}

/// A consistent snapshot being dumped. Writers go on meanwhile (redb readers never block
/// them); nothing committed after [`Store::dump`] appears in it.
pub struct Dump {
    txn: ReadTransaction,
    _db: std::sync::Arc<Database>,
}

impl Store {
    /// Starts a dump of the database as it is now.
    pub fn dump(&self) -> Result<Dump, StoreError> {
        Ok(Dump {
            txn: self.db.begin_read()?,
            _db: self.db.clone(),
        })
    }
}

impl Dump {
    /// Entries the dump will visit, about (staged chunks are counted but skipped).
    pub fn entry_estimate(&self) -> Result<u64, StoreError> {
        fn len<K: Key + 'static, V: Value + 'static>(
            txn: &ReadTransaction,
            def: TableDefinition<K, V>,
        ) -> Result<u64, StoreError> {
            match txn.open_table(def) {
                Ok(t) => Ok(t.len()?),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(e.into()),
            }
        }
        let t = &self.txn;
        Ok(len(t, META)?
            + len(t, DOCUMENTS)?
            + len(t, CHUNKS)?
            + len(t, USERS)?
            + len(t, USER_NAMES)?
            + len(t, DEVICES)?
            + len(t, DEVICE_THUMBPRINTS)?
            + len(t, SECRETS)?
            + len(t, ERP_RECORDS)?
            + len(t, ERP_KEYS)?
            + len(t, AUDIT)?)
    }

    /// Calls `f` with every entry, table by table in [`BackupTable::ALL`] order, in key
    /// order within a table. Chunks of uploads still in progress are left out.
    pub fn for_each<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(BackupTable, &[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let published: HashSet<u128> = {
            let docs = self.txn.open_table(DOCUMENTS).map_err(StoreError::from)?;
            let mut ids = HashSet::new();
            for entry in docs.iter().map_err(StoreError::from)? {
                ids.insert(entry.map_err(StoreError::from)?.0.value());
            }
            ids
        };
        for table in BackupTable::ALL {
            let f = &mut f;
            match table {
                BackupTable::Meta => each(&self.txn, META, table, |_| true, f)?,
                BackupTable::Documents => each(&self.txn, DOCUMENTS, table, |_| true, f)?,
                BackupTable::Chunks => each(&self.txn, CHUNKS, table, |(id, _)| published.contains(id), f)?,
                BackupTable::Users => each(&self.txn, USERS, table, |_| true, f)?,
                BackupTable::UserNames => each(&self.txn, USER_NAMES, table, |_| true, f)?,
                BackupTable::Devices => each(&self.txn, DEVICES, table, |_| true, f)?,
                BackupTable::DeviceThumbprints => each(&self.txn, DEVICE_THUMBPRINTS, table, |_| true, f)?,
                BackupTable::Secrets => each(&self.txn, SECRETS, table, |_| true, f)?,
                BackupTable::ErpRecords => each(&self.txn, ERP_RECORDS, table, |_| true, f)?,
                BackupTable::ErpKeys => each(&self.txn, ERP_KEYS, table, |_| true, f)?,
                BackupTable::Audit => each(&self.txn, AUDIT, table, |_| true, f)?,
            }
        }
        Ok(())
    }
}

fn each<K, V, E>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    table: BackupTable,
    keep: impl Fn(&K::SelfType<'_>) -> bool,
    f: &mut impl FnMut(BackupTable, &[u8], &[u8]) -> Result<(), E>,
) -> Result<(), E>
where
    K: Key + 'static,
    V: Value + 'static,
    E: From<StoreError>,
{
    let t = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    for entry in t.iter().map_err(StoreError::from)? {
        let (k, v) = entry.map_err(StoreError::from)?;
        let key = k.value();
        if !keep(&key) {
            continue;
        }
        f(table, K::as_bytes(&key).as_ref(), V::as_bytes(&v.value()).as_ref())?;
    }
    Ok(())
}

/// Bytes of entries inserted into the database being built per (non-durable) commit.
const BUILD_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// A new database filled from backup entries. Entries go straight into an open write
/// transaction, committed every [`BUILD_BATCH_BYTES`] without fsync; one durable commit at
/// [`finish`](Self::finish) makes them all durable. Dropped unfinished, it leaves its file
/// behind for the caller to remove.
pub struct Builder {
    db: Database,
    txn: Option<redb::WriteTransaction>,
    txn_bytes: usize,
    saw_schema: bool,
}

impl Builder {
    /// Creates the database file at `path` (owner-only; it must not exist).
    pub fn create(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Ok(Self {
            db: create_private_database(path, options)?,
            txn: None,
            txn_bytes: 0,
            saw_schema: false,
        })
    }

    /// Adds one entry (checked with [`BackupTable::check`]).
    pub fn insert(&mut self, table: BackupTable, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        table.check(key, value)?;
        if table == BackupTable::Meta && key == SCHEMA_KEY.as_bytes() {
            self.saw_schema = true;
        }
        let txn = match self.txn.take() {
            Some(txn) => txn,
            None => {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::None)?;
                txn
            }
        };
        match table {
            BackupTable::Meta => put(&txn, META, key, value)?,
            BackupTable::Documents => put(&txn, DOCUMENTS, key, value)?,
            BackupTable::Chunks => put(&txn, CHUNKS, key, value)?,
            BackupTable::Users => put(&txn, USERS, key, value)?,
            BackupTable::UserNames => put(&txn, USER_NAMES, key, value)?,
            BackupTable::Devices => put(&txn, DEVICES, key, value)?,
            BackupTable::DeviceThumbprints => put(&txn, DEVICE_THUMBPRINTS, key, value)?,
            BackupTable::Secrets => put(&txn, SECRETS, key, value)?,
            BackupTable::ErpRecords => put(&txn, ERP_RECORDS, key, value)?,
            BackupTable::ErpKeys => put(&txn, ERP_KEYS, key, value)?,
            BackupTable::Audit => put(&txn, AUDIT, key, value)?,
        }
        self.txn_bytes += key.len() + value.len();
        if self.txn_bytes >= BUILD_BATCH_BYTES {
            self.txn_bytes = 0;
            txn.commit()?;
        } else {
            self.txn = Some(txn);
        }
        Ok(())
    }

    /// Writes what is pending, creates every table the entries did not, and makes the
    /// database durable. Fails if the entries held no schema version (not a coffer
    /// database).
    pub fn finish(mut self) -> Result<(), StoreError> {
        if !self.saw_schema {
            return Err(StoreError::Corrupt("the backup's schema version"));
        }
        if let Some(txn) = self.txn.take() {
            txn.commit()?;
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        super::open_every_table(&txn)?;
        txn.commit()?;
        Ok(())
    }
}

fn put<K: Key + 'static, V: Value + 'static>(
    txn: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
    key: &[u8],
    value: &[u8],
) -> Result<(), StoreError> {
    // Shapes were checked in `insert`, so `from_bytes` cannot panic.
    txn.open_table(def)?.insert(K::from_bytes(key), V::from_bytes(value))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_keys_are_checked_before_redb_decodes_them() {
        // `from_bytes` of these types indexes or unwraps: the shape check must stop
        // anything of the wrong length first.
        assert_eq!(<(u128, u32) as Value>::fixed_width(), Some(20));
        assert_eq!(<u128 as Value>::fixed_width(), Some(16));
        assert_eq!(<u64 as Value>::fixed_width(), Some(8));
        assert!(BackupTable::Chunks.check(&[0; 19], b"x").is_err());
        assert!(BackupTable::Chunks.check(&[0; 20], b"x").is_ok());
        assert!(BackupTable::UserNames.check(&[0; 32], &[0; 15]).is_err());
        assert!(BackupTable::Meta.check(&[0xff, 0xfe], b"").is_err());
        assert!(BackupTable::Audit.check(&[0; 8], b"").is_ok());
        for t in BackupTable::ALL {
            assert_eq!(BackupTable::from_byte(t as u8), Some(t));
        }
        assert_eq!(BackupTable::from_byte(0), None);
    }
}
