//! Rewriting the database into a fresh file. redb is copy-on-write and never clears freed
//! pages, so deleted documents and data keys wrapped under a retired master key stay in
//! the file until the space is reused. A vacuum copies only the live entries into a new
//! file and swaps it in atomically; afterwards nothing freed is left on disk.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, Value};

use super::tables::{
    AUDIT, CHUNKS, DEVICE_THUMBPRINTS, DEVICES, DOCUMENTS, ENROLMENTS, ERP_KEYS, ERP_RECORDS, LOGINS, META, SECRETS,
    SESSIONS, STAGING, USER_NAMES, USERS,
};
use super::{Store, StoreError, StoreOptions, create_private_database};

/// Where a vacuum builds its copy of the database at `path`.
pub(super) fn leftover_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".vacuum");
    PathBuf::from(name)
}

/// Entries copied per commit into the new file (chunks are ~64 KiB: ~16 MiB a commit).
const COPY_BATCH: usize = 256;

/// Sizes before and after a vacuum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VacuumReport {
    /// File size before.
    pub bytes_before: u64,
    /// File size after.
    pub bytes_after: u64,
}

impl Store {
    /// Copies every live entry into `path.vacuum` (owner-only, created new), makes it
    /// durable and renames it over `path`; this store then works on the new file. Needs
    /// the only handle to the database: with a read or upload in progress it answers
    /// [`StoreError::Busy`].
    pub fn vacuum(&mut self, path: &Path, options: StoreOptions) -> Result<VacuumReport, StoreError> {
        let io = |e: std::io::Error| StoreError::Db(redb::Error::Io(e));
        if std::sync::Arc::strong_count(&self.db) != 1 {
            return Err(StoreError::Busy);
        }
        // Work beside the real file: if `path` is a symlink (say into an encrypted volume),
        // the copy must replace the file it points to, not the link.
        let real = std::fs::canonicalize(path).map_err(io)?;
        let path = real.as_path();
        let bytes_before = std::fs::metadata(path).map_err(io)?.len();
        let tmp = leftover_path(path);
        // A leftover from an interrupted vacuum is garbage: the live file was never replaced.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let fresh = match self.copy_into(&tmp, options) {
            Ok(db) => db,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // The copy is durable: give it the live name. If that fails, the old file is still
        // the live one and this store keeps using it. No other handle exists (checked
        // above), so nothing writes to the old file after the rename.
        if let Err(e) = std::fs::rename(&tmp, path) {
            drop(fresh);
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        drop(std::mem::replace(&mut self.db, fresh.into()));
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let bytes_after = std::fs::metadata(path).map_err(io)?.len();
        Ok(VacuumReport {
            bytes_before,
            bytes_after,
        })
    }

    fn copy_into(&self, tmp: &Path, options: StoreOptions) -> Result<Database, StoreError> {
        let dst = create_private_database(tmp, options)?;
        {
            let src = self.db.begin_read()?;
            copy_table(&src, &dst, META)?;
            copy_table(&src, &dst, DOCUMENTS)?;
            copy_table(&src, &dst, CHUNKS)?;
            copy_table(&src, &dst, STAGING)?;
            copy_table(&src, &dst, USERS)?;
            copy_table(&src, &dst, USER_NAMES)?;
            copy_table(&src, &dst, DEVICES)?;
            copy_table(&src, &dst, DEVICE_THUMBPRINTS)?;
            copy_table(&src, &dst, SECRETS)?;
            copy_table(&src, &dst, SESSIONS)?;
            copy_table(&src, &dst, LOGINS)?;
            copy_table(&src, &dst, ENROLMENTS)?;
            copy_table(&src, &dst, ERP_RECORDS)?;
            copy_table(&src, &dst, ERP_KEYS)?;
            copy_table(&src, &dst, AUDIT)?;
        }
        // One durable commit makes every batch before it durable.
        let mut txn = dst.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(dst)
    }
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let table = src.open_table(def)?;
    let mut entries = table.iter()?;
    loop {
        let mut txn = dst.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut done = false;
        {
            let mut out = txn.open_table(def)?;
            for _ in 0..COPY_BATCH {
                match entries.next() {
                    Some(entry) => {
                        let (k, v) = entry?;
                        out.insert(k.value(), v.value())?;
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
        }
        txn.commit()?;
        if done {
            return Ok(());
        }
    }
}
