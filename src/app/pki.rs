//! The service's certificates: the CA and server keys are sealed in the database like
//! any record (and rotate with the master key); only certificates and public keys are
//! files in the keys directory.

use std::path::{Path, PathBuf};

use super::sealing::{open_record, seal_record};
use super::{Paths, Vault, VaultError, durable};
use crate::crypto::labels::{AAD_META, Purpose};
use crate::model::{DeviceId, Timestamp, UserId};
use crate::pki::{
    Ca, CertInfo, KeyDer, PkiError, Revoked, San, cert_info, crl_pem, from_pem, public_key_pem, spki_pin, to_pem,
};
use crate::store::StoredSecret;

/// The CA certificate (PEM): what clients and the server trust.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The server certificate (PEM).
pub const SERVER_CERT_FILE: &str = "server.crt";
/// The public key of the next server key (PEM), for the backup pin.
pub const SERVER_NEXT_PUB_FILE: &str = "server-next.pub";

/// Slot of the CA's private key.
const SLOT_CA_KEY: u128 = 1;
/// Slot of the server's private key.
const SLOT_SERVER_KEY: u128 = 2;
/// Slot of the next server key (its pin ships in apps before it is used).
const SLOT_SERVER_NEXT_KEY: u128 = 3;
/// Slot of the audit log's key (see `app::audit`).
pub(crate) const SLOT_AUDIT_KEY: u128 = 4;

#[derive(serde::Serialize, serde::Deserialize)]
enum SecretBody {
    /// A PKCS#8 private key.
    V1(Vec<u8>),
}

impl Drop for SecretBody {
    fn drop(&mut self) {
        let Self::V1(bytes) = self;
        zeroize::Zeroize::zeroize(bytes);
    }
}

fn secret_aad(slot: u128) -> Vec<u8> {
    let mut aad = AAD_META.to_vec();
    aad.push(0);
    aad.extend_from_slice(Purpose::Secret.label());
    aad.push(0);
    aad.extend_from_slice(&slot.to_be_bytes());
    aad
}

/// A PKI file could not be read or written, or a certificate operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiFileError {
    /// A file is missing or unreadable.
    #[error(
        "cannot read {path}: {source}; check --keys-dir (the directory `coffer init` made), or put the file \
         back from your copy of it"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate operation failed.
    #[error("{0}")]
    Pki(#[from] PkiError),
    /// The database holds no CA or server key (made by a coffer before the PKI existed).
    #[error(
        "the database holds no {0}: this coffer was initialised without a PKI; re-run `coffer init` in a new directory"
    )]
    NoKey(&'static str),
    /// A server key rotation was interrupted (or would repeat an interrupted one).
    #[error("{0}")]
    Interrupted(String),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// The CA certificate file.
pub fn ca_cert_path(paths: &Paths) -> PathBuf {
    paths.keys_dir.join(CA_CERT_FILE)
}

/// The server certificate file.
pub fn server_cert_path(paths: &Paths) -> PathBuf {
    paths.keys_dir.join(SERVER_CERT_FILE)
}

fn read_text(path: &Path) -> Result<String, PkiFileError> {
    std::fs::read_to_string(path).map_err(|source| PkiFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn write_public(path: &Path, text: &str) -> Result<(), VaultError> {
    durable::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| VaultError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a PEM certificate file (first certificate) as DER.
pub fn read_cert(path: &Path, what: &'static str) -> Result<Vec<u8>, PkiFileError> {
    Ok(from_pem(&read_text(path)?, "CERTIFICATE", what)?)
}

/// The SPKI pins of the current and the next server key, read from the keys directory
/// (no passphrase needed: they are public).
pub fn pins(paths: &Paths) -> Result<(String, String), PkiFileError> {
    let current = cert_info(&read_cert(&server_cert_path(paths), "server.crt")?, "server.crt")?;
    let next = from_pem(
        &read_text(&paths.keys_dir.join(SERVER_NEXT_PUB_FILE))?,
        "PUBLIC KEY",
        "server-next.pub",
    )?;
    Ok((spki_pin(&current.spki), spki_pin(&next)))
}

/// The CRL file: the CA's list of revoked device certificates, for TLS terminators other
/// than coffer (coffer itself checks the device record on every request).
pub const CRL_FILE: &str = "crl.pem";

/// The CRL file's path.
pub fn crl_path(paths: &Paths) -> PathBuf {
    paths.keys_dir.join(CRL_FILE)
}

/// What a server key rotation did.
#[derive(Clone, Debug)]
pub struct Rotation {
    /// Pin of the key that was current (apps may drop it).
    pub retired_pin: String,
    /// Pin of the key now current (the former backup pin).
    pub current_pin: String,
    /// Pin of the new next key (ship it as the new backup pin).
    pub next_pin: String,
    /// The new certificate.
    pub cert: CertInfo,
}

/// What a server certificate renewal did.
#[derive(Clone, Debug)]
pub struct Renewal {
    /// The new certificate.
    pub cert: CertInfo,
    /// When the renewal finished an interrupted key rotation: the pins now current and
    /// next (ship the next one before rotating again).
    pub finished_rotation: Option<(String, String)>,
}

/// A device certificate and key made by [`Vault::issue_device`].
#[derive(Debug)]
pub struct IssuedDevice {
    /// The registered device.
    pub device: super::principals::DeviceInfo,
    /// Its certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its private key.
    pub key: KeyDer,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
}

impl Vault {
    pub(crate) fn put_keys(&self, keys: &[(u128, &KeyDer)], replace: bool) -> Result<(), VaultError> {
        let mut records = Vec::with_capacity(keys.len());
        for (slot, key) in keys {
            let (dek, key_version, wrapped_dek) = self.new_dek(Purpose::Secret, *slot)?;
            let body = SecretBody::V1(key.expose().to_vec());
            let sealed = seal_record(&dek, &secret_aad(*slot), &body)?;
            records.push((
                *slot,
                StoredSecret {
                    created: Timestamp::now(),
                    key_version,
                    wrapped_dek,
                    sealed,
                },
            ));
        }
        Ok(self.store.put_secrets(&records, replace)?)
    }

    pub(crate) fn key(&self, slot: u128, what: &'static str) -> Result<KeyDer, PkiFileError> {
        let stored = self
            .store
            .snapshot()
            .map_err(VaultError::from)?
            .secret(slot)
            .map_err(VaultError::from)?;
        let stored = stored.ok_or(PkiFileError::NoKey(what))?;
        let dek = self.unwrap_dek(Purpose::Secret, slot, stored.key_version, &stored.wrapped_dek)?;
        let mut body: SecretBody = open_record(&dek, &secret_aad(slot), &stored.sealed, Purpose::Secret, slot)?;
        let SecretBody::V1(bytes) = &mut body;
        Ok(KeyDer::new(std::mem::take(bytes)))
    }

    /// Creates the CA, the server key and certificate for `sans`, and the next server key.
    /// Keys are sealed in the database; certificates and the next public key are written
    /// to the keys directory.
    pub fn create_pki(&self, sans: &[San], ca_days: u32, server_days: u32) -> Result<(), PkiFileError> {
        let (ca, ca_key) = Ca::generate(ca_days)?;
        let server_key = KeyDer::generate()?;
        let next_key = KeyDer::generate()?;
        let server_cert = ca.issue_server(&server_key, sans, server_days)?;
        self.put_keys(
            &[
                (SLOT_CA_KEY, &ca_key),
                (SLOT_SERVER_KEY, &server_key),
                (SLOT_SERVER_NEXT_KEY, &next_key),
            ],
            false,
        )?;
        write_public(&ca_cert_path(&self.paths), &ca.cert_pem())?;
        write_public(&server_cert_path(&self.paths), &to_pem(&server_cert))?;
        write_public(
            &self.paths.keys_dir.join(SERVER_NEXT_PUB_FILE),
            &public_key_pem(&next_key.spki()?),
        )?;
        Ok(())
    }

    /// The CA, ready to sign.
    pub fn ca(&self) -> Result<Ca, PkiFileError> {
        let cert = read_cert(&ca_cert_path(&self.paths), "ca.crt")?;
        let key = self.key(SLOT_CA_KEY, "CA key")?;
        Ok(Ca::load(&cert, &key)?)
    }

    /// The server's certificate (DER) and private key, for the TLS listener.
    pub fn server_identity(&self) -> Result<(Vec<u8>, KeyDer), PkiFileError> {
        let cert = read_cert(&server_cert_path(&self.paths), "server.crt")?;
        let key = self.key(SLOT_SERVER_KEY, "server key")?;
        let info = cert_info(&cert, "server.crt")?;
        if info.spki != key.spki()? {
            return Err(PkiFileError::Interrupted(
                "server.crt does not match the server key in the database (an interrupted key rotation?): \
                 run `coffer cert renew-server` to issue a certificate for the current key"
                    .into(),
            ));
        }
        Ok((cert, key))
    }

    /// Issues a new server certificate for the same key (so pins stay valid), for `sans`
    /// or, when empty, the names of the current certificate.
    ///
    /// It also repairs the keys directory after an interrupted key rotation: the new
    /// certificate is for the key the database holds, and `server-next.pub` is rewritten
    /// from the next key in the database.
    pub fn renew_server_cert(&self, sans: &[San], days: u32) -> Result<Renewal, PkiFileError> {
        let current = read_cert(&server_cert_path(&self.paths), "server.crt")?;
        let key = self.key(SLOT_SERVER_KEY, "server key")?;
        let finished_rotation = cert_info(&current, "server.crt")?.spki != key.spki()?;
        let sans = if sans.is_empty() {
            cert_info(&current, "server.crt")?.sans
        } else {
            sans.to_vec()
        };
        let cert = self.ca()?.issue_server(&key, &sans, days)?;
        let next = self.key(SLOT_SERVER_NEXT_KEY, "next server key")?;
        let next_spki = next.spki()?;
        write_public(
            &self.paths.keys_dir.join(SERVER_NEXT_PUB_FILE),
            &public_key_pem(&next_spki),
        )?;
        write_public(&server_cert_path(&self.paths), &to_pem(&cert))?;
        let cert = cert_info(&cert, "server.crt")?;
        Ok(Renewal {
            finished_rotation: finished_rotation.then(|| (spki_pin(&cert.spki), spki_pin(&next_spki))),
            cert,
        })
    }

    /// Rotates the server key: the next key (whose pin apps already carry as their backup
    /// pin) becomes the current one with a new certificate for the same names, and a new
    /// next key is made. The database commit comes first; if writing the files is
    /// interrupted, `coffer cert renew-server` rewrites both from the database.
    ///
    /// `expect_next`, when given, is the pin the caller expects to promote (the backup pin
    /// the apps carry); the rotation is refused if the database's next key has another.
    pub fn rotate_server_key(&self, days: u32, expect_next: Option<&str>) -> Result<Rotation, PkiFileError> {
        // Only from a consistent state: after an interrupted rotation the database already
        // holds the promoted key, and promoting again would discard the key whose pin the
        // apps carry as their backup.
        let interrupted = |what: &str| {
            PkiFileError::Interrupted(format!(
                "{what}: a previous key rotation was committed but its files were not written; run \
                 `coffer cert renew-server` to finish it, and do not rotate again until the apps carry the \
                 new next pin it prints"
            ))
        };
        let (current_cert, _) = self.server_identity().map_err(|e| match e {
            PkiFileError::Interrupted(_) => interrupted("server.crt does not match the server key in the database"),
            e => e,
        })?;
        let old = cert_info(&current_cert, "server.crt")?;
        let promoted = self.key(SLOT_SERVER_NEXT_KEY, "next server key")?;
        let shipped = from_pem(
            &read_text(&self.paths.keys_dir.join(SERVER_NEXT_PUB_FILE))?,
            "PUBLIC KEY",
            "server-next.pub",
        )?;
        if shipped != promoted.spki()? {
            return Err(interrupted(
                "server-next.pub does not match the next key in the database",
            ));
        }
        if let Some(expected) = expect_next
            && expected != spki_pin(&shipped)
        {
            return Err(PkiFileError::Interrupted(format!(
                "the next server key's pin is {}, not {expected}: nothing was rotated (see `coffer pins`)",
                spki_pin(&shipped)
            )));
        }
        let cert = self.ca()?.issue_server(&promoted, &old.sans, days)?;
        let next = KeyDer::generate()?;
        self.put_keys(&[(SLOT_SERVER_KEY, &promoted), (SLOT_SERVER_NEXT_KEY, &next)], true)?;
        let next_spki = next.spki()?;
        let committed = |e: VaultError| {
            PkiFileError::Interrupted(format!(
                "the rotation is committed in the database, but {e}; do NOT rotate again: fix the cause and run \
                 `coffer cert renew-server`, which rewrites server.crt and server-next.pub from the database"
            ))
        };
        write_public(
            &self.paths.keys_dir.join(SERVER_NEXT_PUB_FILE),
            &public_key_pem(&next_spki),
        )
        .map_err(committed)?;
        write_public(&server_cert_path(&self.paths), &to_pem(&cert)).map_err(committed)?;
        let info = cert_info(&cert, "server.crt")?;
        Ok(Rotation {
            retired_pin: spki_pin(&old.spki),
            current_pin: spki_pin(&info.spki),
            next_pin: spki_pin(&next_spki),
            cert: info,
        })
    }

    /// Rewrites `keys/crl.pem`: every revoked device's certificate and every certificate
    /// replaced by a renewal, while they have not expired. Returns how many it lists.
    pub fn write_crl(&self) -> Result<usize, PkiFileError> {
        let mut last_number = self.crl.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Timestamp::now();
        let mut revoked = Vec::new();
        for d in self.devices()? {
            if let (true, Some(serial)) = (d.body.revoked, &d.body.serial)
                && d.expires > now
            {
                revoked.push(Revoked {
                    serial: serial.clone(),
                    at: d.body.revoked_at.unwrap_or(now).0 / 1000,
                });
            }
            for r in d.body.retired.iter().filter(|r| r.not_after > now) {
                revoked.push(Revoked {
                    serial: r.serial.clone(),
                    at: r.at.0 / 1000,
                });
            }
        }
        // Milliseconds since the epoch, and always above the last number this process wrote.
        let number = u64::try_from(now.0).unwrap_or(0).max(*last_number + 1);
        let der = self.ca()?.crl(&revoked, number)?;
        write_public(&crl_path(&self.paths), &crl_pem(&der))?;
        *last_number = number;
        Ok(revoked.len())
    }

    /// Makes a key pair, a client certificate and a signing secret for a new device of `owner`, and
    /// registers the device under the certificate's thumbprint.
    pub fn issue_device(&self, owner: UserId, name: &str, days: u32) -> Result<IssuedDevice, PkiFileError> {
        self.user(owner)?;
        let ca = self.ca()?;
        let key = KeyDer::generate()?;
        let id = DeviceId::random().map_err(|e| VaultError::Seal(e.into()))?;
        let cert_der = ca.issue_device(id, &key.spki()?, days)?;
        let info = cert_info(&cert_der, "device certificate")?;
        let device = self.register_device(
            id,
            owner,
            super::principals::DeviceBody {
                name: name.to_owned(),
                thumbprint: crate::pki::thumbprint(&cert_der),
                revoked: false,
                signing_secret: Some(new_signing_secret()?),
                serial: Some(info.serial),
                revoked_at: None,
                retired: Vec::new(),
            },
            Timestamp(info.not_after.saturating_mul(1000)),
        )?;
        Ok(IssuedDevice {
            device,
            cert_der,
            key,
            ca_der: ca.cert_der().to_vec(),
        })
    }
}

/// A fresh SigV4 signing secret: 240 random bits as 40 base64url characters (the length
/// of an AWS secret access key).
pub fn new_signing_secret() -> Result<crate::secret::SecretString, VaultError> {
    crate::secret::SecretString::random(30).map_err(|e| VaultError::Seal(e.into()))
}
