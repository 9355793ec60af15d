//! The database: redb behind a typed layer. Only this module touches tables, and it never
//! sees plaintext content or keys: records arrive sealed from `app`.

mod audit;
mod backup;
mod codec;
mod devices;
mod documents;
mod enrolments;
mod erp;
mod secrets;
mod sessions;
mod tables;
mod users;
mod vacuum;

use std::collections::BTreeMap;
use std::ops::RangeFrom;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

pub use audit::{AuditAnchor, AuditHead, StoredAudit};
pub use backup::{BackupTable, Builder, Dump};
pub use devices::{DeviceRecord, StoredDevice, insert_device_in, update_device_in};
pub use documents::{DocumentRecord, StoredDocument};
pub use enrolments::StoredEnrolment;
pub use erp::{ErpChange, ErpChanged, ErpUsage, StoredErpRecord};
pub use secrets::{SecretRecord, StoredSecret};
pub use sessions::{LoginState, SessionRecord, StoredSession};
pub use tables::SCHEMA_VERSION;
pub use users::{StoredUser, UserRecord};
pub use vacuum::VacuumReport;

use tables::{
    AUDIT, CHUNKS, DEVICE_THUMBPRINTS, DEVICES, DOCUMENTS, ENROLMENTS, ERP_KEYS, ERP_RECORDS, LOGINS, META, SCHEMA_KEY,
    SECRETS, SESSIONS, STAGING, USER_NAMES, USERS,
};

/// META keys marking retired master key versions: `key_retired:<version>`.
const RETIRED_PREFIX: &str = "key_retired:";

/// META key of the version an unfinished rotation is moving to.
const ROTATION_KEY: &str = "rotation_target";

/// META keys of master key check values: `key_check:<version>`.
const KEY_CHECK_PREFIX: &str = "key_check:";

fn key_check_name(v: u32) -> String {
    format!("{KEY_CHECK_PREFIX}{v:010}")
}

/// Default redb page-cache size: 32 MiB. redb's own default (1 GiB) would show up as RSS.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No database at the path.
    #[error("no database at {0}: run `coffer init` first (or pass the right --data-dir)")]
    Missing(String),
    /// Another process (usually the running server) has the database open.
    #[error(
        "the database is in use by another coffer process (is `coffer serve` running?): stop it \
         (e.g. `systemctl stop coffer`) and retry"
    )]
    InUse,
    /// A newer coffer wrote this database.
    #[error("database schema version {0} is newer than this coffer supports ({SCHEMA_VERSION}); upgrade coffer")]
    NewerSchema(u32),
    /// A record or the database structure is damaged.
    #[error(
        "the database is damaged: {0} is unreadable; restore it from a backup (`coffer restore FILE`, with the \
         server stopped)"
    )]
    Corrupt(&'static str),
    /// The operation needs the only handle on the database, and reads or uploads are in
    /// progress.
    #[error("the database is busy (reads or uploads in progress); try again when they are done")]
    Busy,
    /// A unique name or thumbprint is already taken.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The object to update does not exist (or no longer).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// redb failed (I/O, full disk, ...).
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse,
            other => StoreError::Db(other.into()),
        }
    }
}

/// How to open the database.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// redb page cache in bytes.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Counts found when a database is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Abandoned uploads removed.
    pub staged_uploads_removed: u64,
    /// Their chunks removed.
    pub staged_chunks_removed: u64,
}

/// The open database. Cloning shares it (redb serialises writers internally).
#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A handle that does not keep the database open (see [`Store::downgrade`]).
#[derive(Clone)]
pub struct WeakStore(std::sync::Weak<Database>);

impl WeakStore {
    /// The store, if it is still open.
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|db| Store { db })
    }
}

impl Store {
    /// A handle for background work that must not keep the database open by itself.
    pub fn downgrade(&self) -> WeakStore {
        WeakStore(std::sync::Arc::downgrade(&self.db))
    }

    /// Creates a new database at `path`, which must not exist yet.
    pub fn create(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(StoreError::Conflict("a database at this path"));
        }
        let db = create_private_database(path, options)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes().as_slice())?;
        }
        // Create every table so readers never meet a missing one.
        open_every_table(&txn)?;
        txn.commit()?;
        Ok(Self { db: db.into() })
    }

    /// Opens an existing database, checks its schema version, and removes uploads that
    /// were never published (a crash or a dropped connection mid-upload).
    pub fn open(path: &Path, options: StoreOptions) -> Result<(Self, OpenReport), StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let db = Database::builder().set_cache_size(options.cache_bytes).open(path)?;
        let store = Self { db: db.into() };
        store.check_schema()?;
        store.add_missing_tables()?;
        // A copy left by an interrupted vacuum holds data deleted since: remove it. The
        // database lock taken above proves no vacuum is running.
        let leftover =
            vacuum::leftover_path(&std::fs::canonicalize(path).map_err(|e| StoreError::Db(redb::Error::Io(e)))?);
        match std::fs::remove_file(&leftover) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::Db(redb::Error::Io(e))),
            _ => {}
        }
        let report = store.collect_staged()?;
        Ok((store, report))
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn
            .open_table(META)
            .map_err(|_| StoreError::Corrupt("schema version"))?;
        let guard = meta.get(SCHEMA_KEY)?.ok_or(StoreError::Corrupt("schema version"))?;
        let bytes: [u8; 4] = guard
            .value()
            .try_into()
            .map_err(|_| StoreError::Corrupt("schema version"))?;
        match u32::from_be_bytes(bytes) {
            SCHEMA_VERSION => Ok(()),
            v if v > SCHEMA_VERSION => Err(StoreError::NewerSchema(v)),
            _ => Err(StoreError::Corrupt("schema version")),
        }
    }

    /// Tables added after schema 1 was first written are created on open (an additive
    /// change: older coffers never read them).
    fn add_missing_tables(&self) -> Result<(), StoreError> {
        fn missing<K: redb::Key + 'static, V: redb::Value + 'static>(
            read: &ReadTransaction,
            table: TableDefinition<K, V>,
        ) -> Result<bool, StoreError> {
            match read.open_table(table) {
                Ok(_) => Ok(false),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
                Err(e) => Err(e.into()),
            }
        }
        let read = self.db.begin_read()?;
        let todo = missing(&read, SECRETS)?
            || missing(&read, SESSIONS)?
            || missing(&read, LOGINS)?
            || missing(&read, ENROLMENTS)?
            || missing(&read, ERP_RECORDS)?
            || missing(&read, ERP_KEYS)?
            || missing(&read, AUDIT)?;
        drop(read);
        if !todo {
            return Ok(());
        }
        let txn = self.write(Durability::Immediate)?;
        open_every_table(&txn)?;
        txn.commit()?;
        Ok(())
    }

    fn collect_staged(&self) -> Result<OpenReport, StoreError> {
        // Most opens find nothing to collect: don't write then.
        if self.snapshot()?.staged_uploads()? == 0 {
            return Ok(OpenReport::default());
        }
        let txn = self.db.begin_write()?;
        let mut report = OpenReport::default();
        {
            let mut staging = txn.open_table(STAGING)?;
            let mut chunks = txn.open_table(CHUNKS)?;
            let ids: Vec<u128> = staging
                .iter()?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for id in ids {
                report.staged_chunks_removed += remove_chunks(&mut chunks, id)?;
                staging.remove(id)?;
                report.staged_uploads_removed += 1;
            }
        }
        txn.commit()?;
        Ok(report)
    }

    /// Proves the database takes a durable write now (for `/readyz`): the schema version
    /// is written again, unchanged, and committed with an fsync. Nothing new is stored.
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get(SCHEMA_KEY)?.map(|v| v.value().to_vec());
            let Some(version) = version else {
                return Err(StoreError::Corrupt("schema version"));
            };
            meta.insert(SCHEMA_KEY, version.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A consistent read-only view of the whole database.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            txn: self.db.begin_read()?,
            _db: self.db.clone(),
        })
    }

    /// Allocated bytes and stored bytes of the database, for space accounting.
    pub fn space(&self) -> Result<Space, StoreError> {
        let txn = self.db.begin_write()?;
        let stats = txn.stats()?;
        let space = Space {
            allocated_bytes: stats.allocated_pages() * stats.page_size() as u64,
            stored_bytes: stats.stored_bytes(),
            metadata_bytes: stats.metadata_bytes(),
            fragmented_bytes: stats.fragmented_bytes(),
        };
        txn.abort()?;
        Ok(space)
    }

    /// The check value recorded for master key version `v`, if any.
    pub fn key_check(&self, v: u32) -> Result<Option<[u8; 32]>, StoreError> {
        let snap = self.snapshot()?;
        let meta = snap.txn.open_table(META)?;
        let guard = meta.get(key_check_name(v).as_str())?;
        guard
            .map(|g| <[u8; 32]>::try_from(g.value()).map_err(|_| StoreError::Corrupt("a key check value")))
            .transpose()
    }

    /// Highest master key version the database has a check value for.
    pub fn highest_key_check(&self) -> Result<u32, StoreError> {
        let snap = self.snapshot()?;
        let meta = snap.txn.open_table(META)?;
        let mut highest = 0;
        for entry in meta.range(KEY_CHECK_PREFIX..)? {
            let (k, _) = entry?;
            let Some(v) = k.value().strip_prefix(KEY_CHECK_PREFIX) else {
                break;
            };
            highest = highest.max(v.parse::<u32>().map_err(|_| StoreError::Corrupt("a key check value"))?);
        }
        Ok(highest)
    }

    /// The master key version an unfinished rotation is moving to, if any.
    pub fn rotation_target(&self) -> Result<Option<u32>, StoreError> {
        let snap = self.snapshot()?;
        let meta = snap.txn.open_table(META)?;
        let guard = meta.get(ROTATION_KEY)?;
        guard
            .map(|g| {
                <[u8; 4]>::try_from(g.value())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("the rotation marker"))
            })
            .transpose()
    }

    /// Records (or, with `None`, clears) the version a rotation is moving to, durably.
    pub fn set_rotation_target(&self, target: Option<u32>) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            match target {
                Some(v) => meta.insert(ROTATION_KEY, v.to_be_bytes().as_slice())?,
                None => meta.remove(ROTATION_KEY)?,
            };
        }
        txn.commit()?;
        Ok(())
    }

    /// Records that master key versions were retired, durably: a key file still holding
    /// one of them is an old copy.
    pub fn mark_retired(&self, versions: &[u32]) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            for v in versions {
                meta.insert(format!("{RETIRED_PREFIX}{v:010}").as_str(), [].as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Whether master key version `v` was retired.
    pub fn is_retired(&self, v: u32) -> Result<bool, StoreError> {
        let snap = self.snapshot()?;
        let meta = snap.txn.open_table(META)?;
        Ok(meta.get(format!("{RETIRED_PREFIX}{v:010}").as_str())?.is_some())
    }

    /// Records master key version `v`'s check value, durably.
    pub fn set_key_check(&self, v: u32, check: [u8; 32]) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        txn.open_table(META)?
            .insert(key_check_name(v).as_str(), check.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// How many stored objects each master key version wraps.
    /// Records that no longer decode are counted apart instead of failing the count.
    pub fn key_usage(&self) -> Result<KeyUsage, StoreError> {
        let snap = self.snapshot()?;
        let mut usage = KeyUsage::default();
        count_versions::<StoredDocument>(&snap.txn, DOCUMENTS, &mut usage)?;
        count_versions::<StoredUser>(&snap.txn, USERS, &mut usage)?;
        count_versions::<StoredDevice>(&snap.txn, DEVICES, &mut usage)?;
        count_versions::<StoredSecret>(&snap.txn, SECRETS, &mut usage)?;
        count_versions::<StoredErpRecord>(&snap.txn, ERP_RECORDS, &mut usage)?;
        Ok(usage)
    }

    fn write(&self, durability: Durability) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        Ok(txn)
    }
}

/// Space accounting from redb.
#[derive(Clone, Copy, Debug)]
pub struct Space {
    /// Bytes in allocated pages.
    pub allocated_bytes: u64,
    /// Bytes of keys and values stored.
    pub stored_bytes: u64,
    /// Bytes of redb's own metadata.
    pub metadata_bytes: u64,
    /// Bytes lost to fragmentation.
    pub fragmented_bytes: u64,
}

/// A read transaction: everything read through it is from one consistent point in time.
pub struct Snapshot {
    txn: ReadTransaction,
    /// Keeps the store counted as in use while a read goes on (see [`Store::vacuum`]).
    _db: std::sync::Arc<Database>,
}

impl Snapshot {
    /// Calls `f` with every record of `family` as stored (id, bytes), in id order.
    pub fn visit_raw<E: From<StoreError>>(
        &self,
        family: Family,
        mut f: impl FnMut(u128, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let t = self.txn.open_table(family.table()).map_err(StoreError::from)?;
        for entry in t.iter().map_err(StoreError::from)? {
            let (k, v) = entry.map_err(StoreError::from)?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    /// Index entries that name a record which does not exist: (index table, keyed hash
    /// prefix in hex, record id).
    pub fn dangling_index_entries(&self) -> Result<Vec<(&'static str, u128)>, StoreError> {
        let mut out = Vec::new();
        for (name, index, records) in [
            ("user_names", USER_NAMES, USERS),
            ("device_thumbprints", DEVICE_THUMBPRINTS, DEVICES),
            ("erp_keys", ERP_KEYS, ERP_RECORDS),
        ] {
            let idx = self.txn.open_table(index)?;
            let recs = self.txn.open_table(records)?;
            for entry in idx.iter()? {
                let (_, id) = entry?;
                if recs.get(id.value())?.is_none() {
                    out.push((name, id.value()));
                }
            }
        }
        Ok(out)
    }
}

/// Creates a new redb file at `path`, owner-only from its first byte (no window in which
/// another user could open it); fails if anything is already there.
fn create_private_database(path: &Path, options: StoreOptions) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
    let backend = redb::backends::FileBackend::new(file)?;
    Ok(Database::builder()
        .set_cache_size(options.cache_bytes)
        .create_with_backend(backend)?)
}

/// Creates every table that does not exist yet.
fn open_every_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(META)?;
    txn.open_table(DOCUMENTS)?;
    txn.open_table(CHUNKS)?;
    txn.open_table(STAGING)?;
    txn.open_table(USERS)?;
    txn.open_table(USER_NAMES)?;
    txn.open_table(DEVICES)?;
    txn.open_table(DEVICE_THUMBPRINTS)?;
    txn.open_table(SECRETS)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(LOGINS)?;
    txn.open_table(ENROLMENTS)?;
    txn.open_table(ERP_RECORDS)?;
    txn.open_table(ERP_KEYS)?;
    txn.open_table(AUDIT)?;
    Ok(())
}

/// Deletes every chunk of `id` from an open CHUNKS table; returns how many.
fn remove_chunks(chunks: &mut redb::Table<(u128, u32), &[u8]>, id: u128) -> Result<u64, StoreError> {
    let mut n = 0u64;
    chunks.retain_in((id, 0)..=(id, u32::MAX), |_, _| {
        n += 1;
        false
    })?;
    Ok(n)
}

/// A record family that carries a data key wrapped under a master key version.
pub trait WrappedRecord: Sized {
    /// Name used in errors.
    const WHAT: &'static str;
    /// Strictly decodes stored bytes.
    fn decode(bytes: &[u8]) -> Result<Self, StoreError>;
    /// Encodes for storage.
    fn encode(&self) -> Result<Vec<u8>, StoreError>;
    /// The master key version its data key is wrapped under.
    fn key_version(&self) -> u32;
}

/// How many records each master key version wraps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Records per version.
    pub versions: BTreeMap<u32, u64>,
    /// Records that no longer decode (damaged); their version is unknown.
    pub undecodable: u64,
}

fn count_versions<R: WrappedRecord>(
    txn: &ReadTransaction,
    table: TableDefinition<u128, &[u8]>,
    usage: &mut KeyUsage,
) -> Result<(), StoreError> {
    let t = txn.open_table(table)?;
    for entry in t.iter()? {
        let (_, v) = entry?;
        match R::decode(v.value()) {
            Ok(r) => *usage.versions.entry(r.key_version()).or_default() += 1,
            Err(_) => usage.undecodable += 1,
        }
    }
    Ok(())
}

/// Moves an index entry from the keyed hash under one master key version to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reindex {
    /// Keyed hash under the old version.
    pub old: [u8; 32],
    /// Keyed hash under the new version.
    pub new: [u8; 32],
}

/// What a rewrap step produced for one record.
pub struct Rewrapped<R> {
    /// The record with its data key wrapped under the target version.
    pub record: R,
    /// For indexed families: the index entry to move.
    pub reindex: Option<Reindex>,
}

/// Progress of one rewrap batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewrapBatch {
    /// Records rewrapped in this batch.
    pub rewrapped: usize,
    /// Where the next batch starts; `None` once the table is done.
    pub next: Option<u128>,
    /// Ids of records that no longer decode (damaged), left untouched.
    pub undecodable: Vec<u128>,
}

/// The record families that hold wrapped data keys, in rotation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Documents.
    Documents,
    /// Users.
    Users,
    /// Devices.
    Devices,
    /// Service secrets (CA and server keys).
    Secrets,
    /// Cached ERP records.
    ErpRecords,
}

impl Family {
    fn table(self) -> TableDefinition<'static, u128, &'static [u8]> {
        match self {
            Family::Documents => DOCUMENTS,
            Family::Users => USERS,
            Family::Devices => DEVICES,
            Family::Secrets => SECRETS,
            Family::ErpRecords => ERP_RECORDS,
        }
    }
}

impl Store {
    /// Rewraps up to `limit` records of `family` whose key version differs from `target`,
    /// starting at id `from`, in one durable commit. `f` does the cryptography and returns
    /// `None` for a record it cannot rewrap, which is then left untouched.
    pub fn rewrap_batch<R: WrappedRecord, E: From<StoreError>>(
        &self,
        family: Family,
        from: RangeFrom<u128>,
        target: u32,
        limit: usize,
        mut f: impl FnMut(u128, R) -> Result<Option<Rewrapped<R>>, E>,
    ) -> Result<RewrapBatch, E> {
        let (table, index) = match family {
            Family::Documents => (DOCUMENTS, None),
            Family::Users => (USERS, Some(USER_NAMES)),
            Family::Devices => (DEVICES, Some(DEVICE_THUMBPRINTS)),
            Family::Secrets => (SECRETS, None),
            Family::ErpRecords => (ERP_RECORDS, Some(ERP_KEYS)),
        };
        let limit = limit.max(1);
        let txn = self.write(Durability::Immediate)?;
        let mut done = 0usize;
        let mut next = None;
        let mut undecodable = Vec::new();
        {
            let mut t = txn.open_table(table).map_err(StoreError::from)?;
            let mut todo = Vec::new();
            for entry in t.range(from).map_err(StoreError::from)? {
                let (k, v) = entry.map_err(StoreError::from)?;
                if todo.len() == limit {
                    next = Some(k.value());
                    break;
                }
                match R::decode(v.value()) {
                    Ok(rec) if rec.key_version() != target => todo.push((k.value(), rec)),
                    Ok(_) => {}
                    Err(_) => undecodable.push(k.value()),
                }
            }
            let mut idx = match index {
                Some(def) => Some(txn.open_table(def).map_err(StoreError::from)?),
                None => None,
            };
            for (id, rec) in todo {
                // `None`: the caller could not rewrap this record (damaged); leave it as is.
                let Some(out) = f(id, rec)? else { continue };
                t.insert(id, out.record.encode()?.as_slice())
                    .map_err(StoreError::from)?;
                if let (Some(idx), Some(Reindex { old, new })) = (idx.as_mut(), out.reindex) {
                    idx.remove(old).map_err(StoreError::from)?;
                    idx.insert(new, id).map_err(StoreError::from)?;
                }
                done += 1;
            }
        }
        txn.commit().map_err(StoreError::from)?;
        Ok(RewrapBatch {
            rewrapped: done,
            next,
            undecodable,
        })
    }
}
