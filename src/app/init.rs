//! `coffer init`: a new key file and an empty database.

use super::{Paths, VaultError, durable, path_exists};
use crate::crypto::kdf::KdfParams;
use crate::crypto::keyfile::{Kek, Keyring};
use crate::secret::Passphrase;
use crate::store::{Store, StoreError, StoreOptions};

/// Why init refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// A key file is already there; overwriting it would lose every key.
    #[error("{0} already exists: refusing to overwrite a key file (it is the only way to read the data)")]
    KeyFileExists(String),
    /// A database is already there, sealed under keys this init does not have.
    #[error("{0} already exists: move it away or choose another --data-dir")]
    DatabaseExists(String),
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the keys directory.
    #[error("{0}")]
    Locked(String),
    /// Anything else.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<StoreError> for InitError {
    fn from(e: StoreError) -> Self {
        Self::Vault(e.into())
    }
}

/// Creates `keys/master.key` (one fresh master key sealed under `passphrase`) and an empty
/// database. Refuses if either exists. On failure nothing half-made is left behind.
pub fn init(paths: &Paths, passphrase: &Passphrase, params: KdfParams, options: StoreOptions) -> Result<(), InitError> {
    let key_file = paths.key_file();
    let database = paths.database();
    if path_exists(&key_file) {
        return Err(InitError::KeyFileExists(key_file.display().to_string()));
    }
    if path_exists(&database) {
        return Err(InitError::DatabaseExists(database.display().to_string()));
    }
    for dir in [&paths.keys_dir, &paths.data_dir] {
        durable::create_private_dir(dir).map_err(|source| InitError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    // Held until init returns, so two inits cannot interleave.
    let _lock = super::lock_keys(paths).map_err(|e| InitError::Locked(e.to_string()))?;
    if path_exists(&key_file) {
        return Err(InitError::KeyFileExists(key_file.display().to_string()));
    }
    let keyring = Keyring::generate().map_err(VaultError::from)?;
    let kek = Kek::derive(passphrase, params).map_err(VaultError::from)?;
    let store = Store::create(&database, options)?;
    let (v, master) = keyring.current();
    store.set_key_check(v, master.check_value())?;
    drop(store);
    let sealed = keyring.seal(&kek).map_err(VaultError::from);
    let written = sealed.and_then(|bytes| {
        durable::write_new(&key_file, &bytes, 0o600).map_err(|source| VaultError::Write {
            path: key_file.display().to_string(),
            source,
        })
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&database);
        return Err(e.into());
    }
    durable::sync_dir(&paths.data_dir).map_err(|source| VaultError::Write {
        path: paths.data_dir.display().to_string(),
        source,
    })?;
    Ok(())
}
