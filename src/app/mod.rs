//! Use cases shared by the command line, the HTTP API and the admin socket. A [`Vault`] is
//! an unlocked coffer: the keyring and the open store.

pub mod audit;
pub mod backup;
pub mod dev;
pub mod documents;
pub mod durable;
pub mod enrol;
pub mod erp;
pub mod init;
pub mod keys;
pub mod pki;
pub mod principals;
mod sealing;
pub mod sessions;
pub mod unlock;
pub mod verify;

use std::path::{Path, PathBuf};

use crate::crypto::SealError;
use crate::crypto::keyfile::{Kek, KeyFileError, Keyring, SealFileError};
use crate::secret::Passphrase;
use crate::store::{OpenReport, Store, StoreError, StoreOptions};

/// Name of the key file inside the keys directory.
pub const KEY_FILE: &str = "master.key";
/// Name of the database inside the data directory.
pub const DATABASE_FILE: &str = "coffer.redb";

/// Where coffer keeps its files.
#[derive(Clone, Debug)]
pub struct Paths {
    /// Data directory (database).
    pub data_dir: PathBuf,
    /// Keys directory (key file, later CA and server keys).
    pub keys_dir: PathBuf,
}

impl Paths {
    /// `keys/master.key`.
    pub fn key_file(&self) -> PathBuf {
        self.keys_dir.join(KEY_FILE)
    }

    /// `data/coffer.redb`.
    pub fn database(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }
}

/// Unlocking failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnlockError {
    /// There is no key file.
    #[error("no key file at {0}: run `coffer init` first (or pass the right --keys-dir)")]
    NoKeyFile(String),
    /// The key file cannot be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The passphrase is wrong (or the key file was altered).
    #[error(
        "wrong passphrase for {0} (nothing was changed): check the passphrase (or the file that \
         --passphrase-file or COFFER_PASSPHRASE_FILE names) and retry"
    )]
    WrongPassphrase(String),
    /// The key file is damaged or of another format.
    #[error("{path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        source: KeyFileError,
    },
    /// Another process holds the keys directory's lock.
    #[error(
        "{holder} holds the database and keys in {dir}; stop it first \
         (while `coffer serve` runs, admin commands that need the database must wait for it to stop)"
    )]
    Busy {
        /// The keys directory.
        dir: String,
        /// Who holds it, as that process recorded (e.g. "coffer serve (pid 1234)").
        holder: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file opens, but holds a key the database does not know under that version.
    #[error(
        "the key file does not belong to this database (master key version {0} differs): \
         check --keys-dir and --data-dir"
    )]
    KeyMismatch(u32),
    /// The key file is an old copy: it holds a version a rotation has retired.
    #[error(
        "the key file holds master key version {0}, which a rotation retired: it is an old copy; \
         use the current master.key"
    )]
    RetiredKey(u32),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Name of the lock file in the keys directory. Every process that reads or writes the key
/// file or the database holds it, so no command works from a stale keyring.
pub const LOCK_FILE: &str = "coffer.lock";

/// How long a busy lock is retried before the other process is reported.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

static PROCESS_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names this process (e.g. "coffer serve") in the lock file, so another command that
/// finds the lock taken can say who holds it.
pub fn set_process_name(name: &'static str) {
    let _ = PROCESS_NAME.set(name);
}

/// Who holds the lock, as recorded in the lock file (sanitised for the terminal).
fn lock_holder(file: &mut std::fs::File) -> String {
    use std::io::Read;
    let mut text = String::new();
    let _ = file.take(200).read_to_string(&mut text);
    let clean: String = text.trim().chars().filter(|c| !c.is_control()).collect();
    if clean.is_empty() {
        "another coffer process".to_owned()
    } else {
        format!("`{clean}`")
    }
}

/// Takes the keys directory's lock (exclusive, non-blocking) for as long as the returned
/// file lives.
pub fn lock_keys(paths: &Paths) -> Result<std::fs::File, UnlockError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = paths.keys_dir.join(LOCK_FILE);
    let shown = path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|source| UnlockError::Lock {
            path: shown.clone(),
            source,
        })?;
    // A lock held for a moment only is waited out: between fork and exec, a child process
    // of any thread briefly holds copies of every descriptor, this lock's included.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => {
                use std::io::Write;
                // Best effort: only used to name the holder in another process's message.
                let name = PROCESS_NAME.get().copied().unwrap_or("coffer");
                let _ = file.set_len(0);
                let _ = write!(file, "{name} (pid {})", std::process::id());
                return Ok(file);
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(UnlockError::Busy {
                    dir: paths.keys_dir.display().to_string(),
                    holder: lock_holder(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(UnlockError::Lock { path: shown, source }),
        }
    }
}

/// Errors of operations on an unlocked coffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// No such object (or not visible).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Stored data failed authentication; nothing of it was released.
    #[error("integrity error in {what} {id}: stored data was altered or damaged (restore it from a backup)")]
    Integrity {
        /// Kind of object.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A record refers to a master key version the keyring no longer holds.
    #[error(
        "{what} {id} is wrapped under master key version {version}, which the key file does not hold: \
         check --keys-dir, or restore it from a backup (`coffer restore FILE`)"
    )]
    MissingKeyVersion {
        /// Kind of object.
        what: &'static str,
        /// Its id.
        id: String,
        /// The version.
        version: u32,
    },
    /// The caller may see the object but not do this to it.
    #[error("{0}")]
    NotPermitted(&'static str),
    /// The request is invalid (bad range, field too long, ...).
    #[error("{0}")]
    Invalid(String),
    /// Encryption failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Sealing the key file failed.
    #[error(transparent)]
    SealFile(#[from] SealFileError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// An unlocked coffer.
pub struct Vault {
    paths: Paths,
    /// Swapped whole by a rotation (online too); readers take the current one.
    keyring: std::sync::RwLock<std::sync::Arc<Keyring>>,
    /// Guards the key file: rotations and passphrase changes run one at a time.
    kek: std::sync::Mutex<Kek>,
    store: Store,
    options: StoreOptions,
    _lock: std::fs::File,
    /// Serialises CRL writes and remembers the last CRL number, so a CRL built from an
    /// older snapshot never replaces a newer one and numbers only grow.
    crl: std::sync::Mutex<u64>,
    /// The audit log's keys, once loaded (or made).
    audit: std::sync::OnceLock<audit::AuditKeys>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// Reads the key file and opens it with `passphrase`. Writes nothing.
pub fn unlock_keyring(paths: &Paths, passphrase: &Passphrase) -> Result<(Keyring, Kek), UnlockError> {
    let path = paths.key_file();
    let shown = path.display().to_string();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(UnlockError::NoKeyFile(shown)),
        Err(source) => return Err(UnlockError::Read { path: shown, source }),
    };
    Keyring::open(&bytes, passphrase).map_err(|e| match e {
        KeyFileError::WrongPassphrase => UnlockError::WrongPassphrase(shown),
        source => UnlockError::KeyFile { path: shown, source },
    })
}

impl Vault {
    /// Unlocks the key file, then opens the database (removing abandoned uploads). A wrong
    /// passphrase fails before the database is touched.
    pub fn open(
        paths: &Paths,
        passphrase: &Passphrase,
        options: StoreOptions,
    ) -> Result<(Self, OpenReport), UnlockError> {
        if !path_exists(&paths.key_file()) {
            return Err(UnlockError::NoKeyFile(paths.key_file().display().to_string()));
        }
        let lock = lock_keys(paths)?;
        let (keyring, kek) = unlock_keyring(paths, passphrase)?;
        let (store, report) = Store::open(&paths.database(), options)?;
        for v in keyring.versions() {
            let Some(master) = keyring.version(v) else { continue };
            // Every version the key file holds must be one this database recorded: a key
            // file from another coffer, or with a version the database never saw, is refused
            // before anything could be wrapped under (or retired from) it.
            let matches = store.key_check(v)?.is_some_and(|stored| {
                bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &master.check_value()[..]))
            });
            if !matches {
                return Err(UnlockError::KeyMismatch(v));
            }
            if store.is_retired(v)? {
                return Err(UnlockError::RetiredKey(v));
            }
        }
        Ok((
            Self {
                paths: paths.clone(),
                keyring: std::sync::RwLock::new(std::sync::Arc::new(keyring)),
                kek: std::sync::Mutex::new(kek),
                store,
                options,
                _lock: lock,
                crl: std::sync::Mutex::new(0),
                audit: std::sync::OnceLock::new(),
            },
            report,
        ))
    }

    /// The underlying store (for space accounting, snapshots and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Rewrites the database into a fresh file holding only live data, so deleted
    /// documents and superseded wrapped keys no longer linger in free pages.
    pub fn vacuum(&mut self) -> Result<crate::store::VacuumReport, VaultError> {
        Ok(self.store.vacuum(&self.paths.database(), self.options)?)
    }

    /// The unlocked keyring as it is now (a rotation replaces it whole).
    pub fn keyring(&self) -> std::sync::Arc<Keyring> {
        self.keys()
    }

    pub(crate) fn keys(&self) -> std::sync::Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_keys(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(keyring);
    }

    fn kek(&self) -> std::sync::MutexGuard<'_, Kek> {
        self.kek.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the files are.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }
}

/// Seals `keyring` under `kek` and replaces the key file atomically.
fn write_key_file(paths: &Paths, keyring: &Keyring, kek: &Kek) -> Result<(), VaultError> {
    let bytes = keyring.seal(kek)?;
    let path = paths.key_file();
    durable::write_atomic(&path, &bytes, 0o600).map_err(|source| VaultError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Checks whether `path` exists without following a dangling symlink into "absent".
fn path_exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
