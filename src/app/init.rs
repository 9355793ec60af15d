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
    #[error(
        "{0} already exists: refusing to overwrite a key file (it is the only way to read the data); \
         choose another --keys-dir, or move that directory away first if you mean to start over"
    )]
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
    /// The CA or server certificate could not be made.
    #[error(transparent)]
    Pki(#[from] super::pki::PkiFileError),
    /// The new key file could not be opened again.
    #[error(transparent)]
    Unlock(#[from] super::UnlockError),
    /// Anything else.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// What `coffer init` makes besides the key file and database.
#[derive(Clone, Debug)]
pub struct PkiPlan {
    /// Names of the server certificate.
    pub sans: Vec<crate::pki::San>,
    /// CA lifetime, days.
    pub ca_days: u32,
    /// Server certificate lifetime, days.
    pub server_days: u32,
}

/// [`init`], then the CA, the server key and certificate, and the next server key. On any
/// failure everything made is removed again, so `init` can simply be re-run.
pub fn init_with_pki(
    paths: &Paths,
    passphrase: &Passphrase,
    params: KdfParams,
    options: StoreOptions,
    plan: &PkiPlan,
) -> Result<(), InitError> {
    init(paths, passphrase, params, options)?;
    let made = (|| {
        let (vault, _) = super::Vault::open(paths, passphrase, options)?;
        vault.create_pki(&plan.sans, plan.ca_days, plan.server_days)?;
        Ok::<_, InitError>(())
    })();
    if made.is_err() {
        for f in [
            paths.key_file(),
            paths.database(),
            super::pki::ca_cert_path(paths),
            super::pki::server_cert_path(paths),
            paths.keys_dir.join(super::pki::SERVER_NEXT_PUB_FILE),
        ] {
            let _ = std::fs::remove_file(f);
        }
    }
    made
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
