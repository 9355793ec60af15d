//! `coffer serve --dev`: a zero-setup development instance. Creates what is missing (key
//! file with a development passphrase, database, CA and server certificate for loopback
//! names, a demo member and its device credentials under `keys/dev/`) and reuses what
//! exists on later starts.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::init::{InitError, PkiPlan, init_with_pki};
use super::pki::PkiFileError;
use super::principals::UserBody;
use super::unlock::{PASSPHRASE_ENV, PassphraseError};
use super::{Paths, UnlockError, Vault, VaultError, durable};
use crate::crypto::kdf::KdfParams;
use crate::model::Role;
use crate::secret::Passphrase;
use crate::store::StoreOptions;

/// Directory under the keys directory holding the development credentials.
pub const DEV_DIR: &str = "dev";
/// The demo user's name.
pub const DEMO_USER: &str = "demo";
/// The demo device's certificate (PEM).
pub const CLIENT_CERT: &str = "client.crt";
/// The demo device's private key (PEM).
pub const CLIENT_KEY: &str = "client.key";
/// The sample file the printed curl command uploads.
pub const SAMPLE_FILE: &str = "hello.txt";
/// The demo device's client profile.
pub const PROFILE_FILE: &str = "profile.toml";

/// Setting up the development instance failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// A file could not be written or read.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The passphrase could not be read.
    #[error(transparent)]
    Passphrase(#[from] PassphraseError),
    /// Creating the key file, database or certificates failed.
    #[error(transparent)]
    Init(#[from] InitError),
    /// Unlocking failed.
    #[error(transparent)]
    Unlock(#[from] UnlockError),
    /// A certificate operation failed.
    #[error(transparent)]
    Pki(#[from] PkiFileError),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The keys directory holds a coffer that `serve --dev` did not make.
    #[error(
        "{0} holds a coffer that was not made by `coffer serve --dev` (there is no {0}/dev): \
         `--dev` would add a demo user with a key in clear; run `coffer serve` without --dev"
    )]
    NotDevelopment(String),
}

/// `keys/dev/`.
pub fn dev_dir(paths: &Paths) -> PathBuf {
    paths.keys_dir.join(DEV_DIR)
}

/// `keys/dev/passphrase`.
pub fn passphrase_file(paths: &Paths) -> PathBuf {
    dev_dir(paths).join("passphrase")
}

/// `keys/dev/password`: the demo user's password.
pub fn password_file(paths: &Paths) -> PathBuf {
    password_file_in(&paths.keys_dir)
}

/// `<keys_dir>/dev/password`.
pub fn password_file_in(keys_dir: &Path) -> PathBuf {
    keys_dir.join(DEV_DIR).join("password")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn random_secret() -> Result<String, DevError> {
    let bytes: [u8; 24] = crate::crypto::random_bytes().map_err(VaultError::Seal)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Writes `text` to a new owner-only file (replacing any).
fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    durable::write_atomic(path, text.as_bytes(), 0o600).map_err(io(path))
}

/// The development passphrase: `$COFFER_PASSPHRASE` when set, else `keys/dev/passphrase`,
/// which is created with a random passphrase if absent.
pub fn passphrase(paths: &Paths) -> Result<Passphrase, DevError> {
    if paths.key_file().exists() && !dev_dir(paths).is_dir() {
        return Err(DevError::NotDevelopment(paths.keys_dir.display().to_string()));
    }
    if std::env::var_os(PASSPHRASE_ENV).is_some() {
        return Ok(super::unlock::existing(None)?);
    }
    let file = passphrase_file(paths);
    if !file.exists() {
        if paths.key_file().exists() {
            // A key file made with another passphrase: a new random one cannot open it.
            return Err(PassphraseError::Unavailable.into());
        }
        durable::create_private_dir(&paths.keys_dir).map_err(io(&paths.keys_dir))?;
        let dir = dev_dir(paths);
        durable::create_private_dir(&dir).map_err(io(&dir))?;
        write_private(&file, &random_secret()?)?;
    }
    Ok(super::unlock::from_file(&file)?)
}

/// What [`prepare`] did.
#[derive(Clone, Debug, Default)]
pub struct DevReport {
    /// The key file, database and certificates were created.
    pub initialised: bool,
    /// The demo user was created.
    pub created_user: bool,
    /// New demo device credentials were written.
    pub issued_device: bool,
}

/// The ERP collection `serve --dev` declares when the configuration declares none.
pub const DEMO_COLLECTION: &str = "demo";
/// The record it holds.
pub const DEMO_RECORD: &str = "welcome";

/// The ERP configuration of a development server: the configured one, or, when it has no
/// collection, one pushed-only collection `demo` readable by members and admins.
pub fn demo_erp(base: &crate::config::ErpConfig) -> crate::config::ErpConfig {
    let mut erp = base.clone();
    if erp.collections.is_empty() {
        erp.collections.insert(
            DEMO_COLLECTION.to_owned(),
            crate::config::ErpCollectionConfig {
                read_roles: vec!["member".into(), "admin".into()],
                ttl: "7d".into(),
                stale_if_error: "0s".into(),
                upstream: None,
                upstream_bearer_token_file: None,
                upstream_ca_file: None,
                upstream_client_cert_file: None,
                upstream_client_key_file: None,
                upstream_connect_timeout: "2s".into(),
                upstream_timeout: "10s".into(),
            },
        );
    }
    erp
}

/// Stores the demo record (again, when missing or expired) if `erp` has the demo
/// collection. Returns whether it did.
pub fn seed_demo_record(vault: &Vault, erp: &crate::erp::Erp) -> Result<bool, VaultError> {
    let Some(c) = erp.collection(DEMO_COLLECTION).filter(|c| !c.has_upstream()) else {
        return Ok(false);
    };
    let now = crate::model::Timestamp::now();
    if vault
        .erp_get(DEMO_COLLECTION, DEMO_RECORD)?
        .is_some_and(|r| now < r.fresh_until)
    {
        return Ok(false);
    }
    let fresh_until = crate::model::Timestamp(now.0.saturating_add(c.ttl_ms()));
    let record = super::erp::NewErpRecord {
        key: DEMO_RECORD.into(),
        value: br#"{"message":"Hello from the ERP cache.","stored_by":"coffer serve --dev"}"#.to_vec(),
        fresh_until,
        stale_until: crate::model::Timestamp(fresh_until.0.saturating_add(c.stale_ms())),
    };
    vault.erp_write(DEMO_COLLECTION, &[super::erp::ErpOp::Put(record)], now)?;
    Ok(true)
}

/// Creates whatever of the development instance is missing and returns the open vault.
pub fn prepare(
    paths: &Paths,
    passphrase: &Passphrase,
    params: KdfParams,
    options: StoreOptions,
    pki: crate::config::PkiConfig,
) -> Result<(Vault, DevReport), DevError> {
    let mut report = DevReport::default();
    if paths.key_file().exists() && !dev_dir(paths).is_dir() {
        // Never add a demo user with a key in clear to a coffer someone made for real.
        return Err(DevError::NotDevelopment(paths.keys_dir.display().to_string()));
    }
    if !paths.key_file().exists() {
        let plan = PkiPlan {
            sans: ["localhost", "127.0.0.1", "::1"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            ca_days: pki.ca_days,
            server_days: pki.server_days,
        };
        init_with_pki(paths, passphrase, params, options, &plan)?;
        report.initialised = true;
    }
    let (vault, _) = Vault::open(paths, passphrase, options)?;
    let dir = dev_dir(paths);
    durable::create_private_dir(&dir).map_err(io(&dir))?;
    let user = match vault.user_by_name(DEMO_USER)? {
        Some(u) => u,
        None => {
            let password = random_secret()?;
            let hash = params
                .hash_password(&Passphrase::new(password.clone()))
                .map_err(|e| VaultError::Invalid(e.to_string()))?;
            let u = vault.add_user(UserBody {
                name: DEMO_USER.into(),
                role: Role::Member,
                password_hash: hash,
                disabled: false,
                totp: None,
            })?;
            write_private(&password_file(paths), &password)?;
            report.created_user = true;
            u
        }
    };
    let cert_path = dir.join(CLIENT_CERT);
    let usable = demo_device(paths, &vault)?.is_some() && dir.join(CLIENT_KEY).is_file();
    if !usable {
        let issued = vault.issue_device(user.id, "development device", pki.device_days)?;
        write_private(&dir.join(CLIENT_KEY), &issued.key.to_pem().map_err(PkiFileError::from)?)?;
        durable::write_atomic(&cert_path, crate::pki::to_pem(&issued.cert_der).as_bytes(), 0o644)
            .map_err(io(&cert_path))?;
        report.issued_device = true;
    }
    let sample = dir.join(SAMPLE_FILE);
    if !sample.exists() {
        durable::write_atomic(&sample, b"Hello from coffer.\n", 0o644).map_err(io(&sample))?;
    }
    Ok((vault, report))
}

/// The demo device of `keys/dev/client.crt`, if it is registered, active and has a
/// signing secret.
pub fn demo_device(paths: &Paths, vault: &Vault) -> Result<Option<super::principals::DeviceInfo>, DevError> {
    let Ok(pem) = std::fs::read_to_string(dev_dir(paths).join(CLIENT_CERT)) else {
        return Ok(None);
    };
    let Ok(der) = crate::pki::from_pem(&pem, "CERTIFICATE", "client.crt") else {
        return Ok(None);
    };
    Ok(vault
        .device_by_thumbprint(&crate::pki::thumbprint(&der))?
        .filter(|d| !d.body.revoked && d.expires > crate::model::Timestamp::now() && d.body.signing_secret.is_some()))
}

/// Writes `keys/dev/profile.toml` for the demo device (replacing any), with `endpoint`.
pub fn write_profile(
    paths: &Paths,
    vault: &Vault,
    endpoint: &str,
    region: &str,
) -> Result<crate::client::Profile, DevError> {
    let device = demo_device(paths, vault)?
        .ok_or_else(|| VaultError::Invalid("the demo device is missing; restart `coffer serve --dev`".into()))?;
    let secret = device
        .body
        .signing_secret
        .clone()
        .ok_or_else(|| VaultError::Invalid("the demo device has no signing secret".into()))?;
    let profile = crate::client::Profile {
        endpoint: endpoint.to_owned(),
        region: region.to_owned(),
        service: crate::http::auth::SERVICE.to_owned(),
        access_key_id: device.id.to_string(),
        secret_access_key: secret,
        ca: PathBuf::from("..").join(super::pki::CA_CERT_FILE),
        cert: CLIENT_CERT.into(),
        key: CLIENT_KEY.into(),
        username: DEMO_USER.to_owned(),
        password_file: Some("password".into()),
    };
    let path = dev_dir(paths).join(PROFILE_FILE);
    write_private(&path, &profile.to_toml())?;
    Ok(profile)
}
