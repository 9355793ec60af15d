//! Enrolment: single-use codes an admin hands to a user (as a QR code), with which the app
//! turns a CSR for a key made on the phone into a client certificate; and renewal of an
//! enrolled device's certificate, with a code (the app's key, same or new) or with a key
//! made here (a PKCS#12 bundle for MDM).
//!
//! A code is 160 random bits, shown as 32 base32 characters in groups of four; only its
//! SHA-256 is stored. It is consumed in the commit that registers or renews its device.

use sha2::{Digest, Sha256};

use super::pki::{IssuedDevice, PkiFileError, new_signing_secret};
use super::principals::{DeviceBody, DeviceInfo, RetiredCert};
use super::{Vault, VaultError};
use crate::model::{DeviceId, Timestamp, UserId};
use crate::pki::{KeyDer, PkiError, cert_info, csr_public_key, thumbprint};
use crate::secret::SecretString;
use crate::store::{StoreError, StoredEnrolment, insert_device_in, update_device_in};

/// Random bytes in a code (160 bits).
const CODE_BYTES: usize = 20;
/// Shortest and longest lifetime of a code, seconds.
pub const CODE_TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=30 * 86_400;

/// A new enrolment code (shown once).
#[derive(Debug)]
pub struct EnrolmentCode {
    /// The code, `XXXX-XXXX-...`.
    pub code: SecretString,
    /// When it stops working.
    pub expires: Timestamp,
    /// The device a renewal code renews.
    pub device: Option<DeviceId>,
}

/// A device enrolled (or renewed) from a CSR.
#[derive(Debug)]
pub struct Enrolled {
    /// The device as now stored.
    pub device: DeviceInfo,
    /// Its new certificate, DER.
    pub cert_der: Vec<u8>,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// Its SigV4 signing secret (new on every enrolment and renewal).
    pub secret: SecretString,
    /// Whether an existing device was renewed.
    pub renewed: bool,
}

/// Enrolment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// The code is unknown, used or expired (one error for all three).
    #[error("the enrolment code is unknown, used or expired: ask an admin for a new one")]
    CodeInvalid,
    /// The CSR is malformed, badly signed or for a refused key type.
    #[error(transparent)]
    Csr(PkiError),
    /// The device to renew was revoked since the code was made.
    #[error("the device was revoked: enrol it again with a new code")]
    Revoked,
    /// A PKI or database operation failed.
    #[error(transparent)]
    Pki(#[from] PkiFileError),
}

impl From<VaultError> for EnrolError {
    fn from(e: VaultError) -> Self {
        Self::Pki(e.into())
    }
}

impl From<StoreError> for EnrolError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound("enrolment code") => Self::CodeInvalid,
            e => VaultError::from(e).into(),
        }
    }
}

/// The code's canonical form (`-` and spaces dropped, upper case), or `None` if it cannot
/// be a code.
fn normalise(code: &str) -> Option<String> {
    let c: String = code
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let len = data_encoding::BASE32_NOPAD.encode_len(CODE_BYTES);
    (c.len() == len && data_encoding::BASE32_NOPAD.decode(c.as_bytes()).is_ok()).then_some(c)
}

fn code_hash(canonical: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"coffer enrolment code v1\0");
    h.update(canonical.as_bytes());
    h.finalize().into()
}

fn new_code() -> Result<(SecretString, [u8; 32]), VaultError> {
    let bytes: zeroize::Zeroizing<[u8; CODE_BYTES]> =
        zeroize::Zeroizing::new(crate::crypto::random_bytes().map_err(VaultError::Seal)?);
    let canonical = zeroize::Zeroizing::new(data_encoding::BASE32_NOPAD.encode(bytes.as_slice()));
    let grouped: Vec<&str> = canonical
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    Ok((SecretString::new(grouped.join("-")), code_hash(&canonical)))
}

impl Vault {
    /// Makes a code with which one device of `user` enrols within `ttl_secs`; with `renew`,
    /// the code instead gives that device (of `user`) a new certificate.
    pub fn create_enrolment(
        &self,
        user: UserId,
        renew: Option<DeviceId>,
        ttl_secs: u64,
    ) -> Result<EnrolmentCode, VaultError> {
        if !CODE_TTL_RANGE.contains(&ttl_secs) {
            return Err(VaultError::Invalid(
                "an enrolment code lives 1 minute to 30 days (e.g. --ttl 24h)".into(),
            ));
        }
        let owner = self.user(user)?;
        if owner.body.disabled {
            return Err(VaultError::Invalid(format!(
                "{} is disabled: enable the user first",
                owner.body.name
            )));
        }
        if let Some(id) = renew {
            let d = self.device(id)?;
            if d.owner != user {
                return Err(VaultError::Invalid("the device belongs to another user".into()));
            }
            if d.body.revoked {
                return Err(VaultError::Invalid(
                    "the device is revoked: enrol a new one with `coffer device enroll`".into(),
                ));
            }
        }
        let (code, hash) = new_code()?;
        let now = Timestamp::now();
        let ttl_ms = i64::try_from(ttl_secs).unwrap_or(i64::MAX).saturating_mul(1000);
        let expires = Timestamp(now.0.saturating_add(ttl_ms));
        self.store.insert_enrolment(
            hash,
            &StoredEnrolment {
                user,
                device: renew,
                created: now,
                expires,
            },
        )?;
        Ok(EnrolmentCode {
            code,
            expires,
            device: renew,
        })
    }

    /// Unused enrolment codes (user, renewed device, expiry), soonest expiry first.
    pub fn enrolments(&self) -> Result<Vec<StoredEnrolment>, VaultError> {
        let now = Timestamp::now();
        Ok(self
            .store
            .enrolments()?
            .into_iter()
            .filter(|e| e.expires > now)
            .collect())
    }

    /// Enrols a device with `code` and the PKCS#10 CSR `csr_pem`: the CSR's key gets a
    /// client certificate valid for `days` whose subject coffer chooses (the device id),
    /// and a new signing secret. A renewal code keeps the device id and replaces the
    /// certificate (the old one joins the CRL) and secret, and ends the device's sessions.
    pub fn enrol(&self, code: &str, csr_pem: &str, device_name: &str, days: u32) -> Result<Enrolled, EnrolError> {
        let canonical = normalise(code).ok_or(EnrolError::CodeInvalid)?;
        let hash = code_hash(&canonical);
        // A read first: wrong codes cost neither a signature check nor the write lock. The
        // commit below checks the code again.
        if self.store.enrolment(hash, Timestamp::now())?.is_none() {
            return Err(EnrolError::CodeInvalid);
        }
        let spki = csr_public_key(csr_pem).map_err(EnrolError::Csr)?;
        let ca = self.ca()?;
        let ca_der = ca.cert_der().to_vec();
        let secret = new_signing_secret()?;
        let now = Timestamp::now();
        let mut renewed = None;
        let device = self.store.consume_enrolment(hash, now, |txn, e| {
            // A code whose user was removed or disabled since is as good as expired.
            match self.user(e.user) {
                Ok(owner) if !owner.body.disabled => {}
                Ok(_) | Err(VaultError::NotFound(_) | VaultError::Store(StoreError::NotFound(_))) => {
                    return Err(EnrolError::CodeInvalid);
                }
                Err(e) => return Err(e.into()),
            }
            match e.device {
                None => {
                    let id = DeviceId::random().map_err(|e| VaultError::Seal(e.into()))?;
                    let cert_der = ca.issue_device(id, &spki, days).map_err(PkiFileError::from)?;
                    let info = cert_info(&cert_der, "device certificate").map_err(PkiFileError::from)?;
                    let body = DeviceBody {
                        name: device_name.to_owned(),
                        thumbprint: thumbprint(&cert_der),
                        revoked: false,
                        signing_secret: Some(secret.clone()),
                        serial: Some(info.serial),
                        revoked_at: None,
                        retired: Vec::new(),
                    };
                    let (stored, index, device) =
                        self.seal_new_device(id, e.user, body, Timestamp(info.not_after.saturating_mul(1000)))?;
                    insert_device_in(txn, id, &stored, index)?;
                    Ok((device, cert_der))
                }
                Some(id) => {
                    let (device, cert_der) =
                        self.renew_in(txn, &ca, id, &spki, days, Some(device_name), secret.clone())?;
                    renewed = Some(id);
                    Ok((device, cert_der))
                }
            }
        })?;
        let (device, cert_der) = device;
        if let Some(id) = renewed {
            // Committed: the caller must get its certificate even if this cleanup fails.
            self.after_renewal(id);
        }
        Ok(Enrolled {
            device,
            cert_der,
            ca_der,
            secret,
            renewed: renewed.is_some(),
        })
    }

    /// Gives device `id` a new key made here and a certificate for it (for devices that
    /// take a PKCS#12 bundle from an MDM rather than making a CSR); the device keeps its
    /// id and gets a new signing secret; the old certificate joins the CRL.
    pub fn renew_device_with_new_key(&self, id: DeviceId, days: u32) -> Result<IssuedDevice, EnrolError> {
        let key = KeyDer::generate().map_err(PkiFileError::from)?;
        let spki = key.spki().map_err(PkiFileError::from)?;
        let ca = self.ca()?;
        let secret = new_signing_secret()?;
        let mut out = None;
        self.store.update_devices_with(|txn| {
            out = Some(self.renew_in(txn, &ca, id, &spki, days, None, secret.clone())?);
            Ok::<_, EnrolError>(())
        })?;
        let (device, cert_der) = out.ok_or(EnrolError::Pki(PkiFileError::Vault(VaultError::NotFound("device"))))?;
        self.after_renewal(id);
        Ok(IssuedDevice {
            device,
            cert_der,
            key,
            ca_der: ca.cert_der().to_vec(),
        })
    }

    /// After a renewal's commit: ends the device's sessions (made with the old certificate)
    /// and lists the old certificate in the CRL. Failures are logged, not returned: the
    /// renewal stands, sessions also end at their expiry, and the CRL is rewritten daily.
    fn after_renewal(&self, id: DeviceId) {
        if let Err(e) = self.end_device_sessions(id) {
            tracing::warn!("device {id} was renewed but its sessions could not be ended: {e}");
        }
        if let Err(e) = self.write_crl() {
            tracing::warn!("device {id} was renewed but the CRL could not be rewritten: {e}");
        }
    }

    /// Renews device `id` inside `txn`: a certificate for `spki`, the old serial retired,
    /// a new secret, optionally a new name.
    #[allow(clippy::too_many_arguments)]
    fn renew_in(
        &self,
        txn: &redb::WriteTransaction,
        ca: &crate::pki::Ca,
        id: DeviceId,
        spki: &[u8],
        days: u32,
        name: Option<&str>,
        secret: SecretString,
    ) -> Result<(DeviceInfo, Vec<u8>), EnrolError> {
        let cert_der = ca.issue_device(id, spki, days).map_err(PkiFileError::from)?;
        let info = cert_info(&cert_der, "device certificate").map_err(PkiFileError::from)?;
        let expires = Timestamp(info.not_after.saturating_mul(1000));
        let mut renewed = None;
        update_device_in(txn, id, |old| {
            let current = self.open_device(id, &old)?;
            if current.body.revoked {
                return Err(EnrolError::Revoked);
            }
            let mut body = current.body.clone();
            if let Some(serial) = body.serial.take() {
                body.retired.push(RetiredCert {
                    serial,
                    at: Timestamp::now(),
                    not_after: current.expires,
                });
            }
            let now = Timestamp::now();
            body.retired.retain(|r| r.not_after > now);
            body.serial = Some(info.serial.clone());
            body.thumbprint = thumbprint(&cert_der);
            body.signing_secret = Some(secret);
            if let Some(n) = name {
                body.name = n.to_owned();
            }
            let (stored, reindex) = self.reseal_device(id, &old, &current.body.thumbprint, &body, expires)?;
            renewed = Some(DeviceInfo {
                expires,
                body,
                ..current
            });
            Ok((stored, reindex))
        })?;
        let device = renewed.ok_or(EnrolError::Pki(PkiFileError::Vault(VaultError::NotFound("device"))))?;
        Ok((device, cert_der))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_160_bits_grouped_and_normalise() {
        let (code, hash) = new_code().unwrap();
        let text = code.expose();
        assert_eq!(text.len(), 32 + 7, "{text}");
        assert!(text.split('-').all(|g| g.len() == 4));
        let canonical = normalise(text).unwrap();
        assert_eq!(code_hash(&canonical), hash);
        assert_eq!(
            normalise(&text.to_ascii_lowercase().replace('-', " ")).unwrap(),
            canonical
        );
        assert!(normalise("short").is_none());
        assert!(normalise(&"1".repeat(32)).is_none(), "1 is not base32");
        let (other, _) = new_code().unwrap();
        assert_ne!(other.expose(), text);
    }
}
