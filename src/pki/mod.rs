//! coffer's internal PKI: a single-level CA (the root signs device and server
//! certificates directly, since mobile TLS stacks often send only the leaf), server and
//! device certificates, SPKI pins, and PKCS#12 bundles. ECDSA P-256 throughout.
//!
//! Private keys leave this module only as PKCS#8 DER in [`KeyDer`] (zeroized on drop); the
//! caller seals them (see `app::pki`). Every certificate gets a random serial and an
//! explicit validity window.

use std::net::IpAddr;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::model::DeviceId;

/// Common name of the CA certificate.
pub const CA_NAME: &str = "coffer device CA";
/// Organisation written into every certificate.
pub const ORGANISATION: &str = "coffer";
/// Certificates start this long before they are made, for clocks slightly behind.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen refused or failed (bad name, bad key, ...).
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate does not parse.
    #[error("{0} is not a valid X.509 certificate")]
    BadCertificate(&'static str),
    /// A PEM file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    NoPem(&'static str),
    /// A subject alternative name is not a DNS name or an IP address.
    #[error("invalid --san {0:?}: use a DNS name (e.g. coffer.example.com) or an IP address")]
    BadSan(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// PKCS#12 encoding failed.
    #[error("cannot build the PKCS#12 bundle: {0}")]
    Pkcs12(String),
    /// A certificate signing request is malformed, badly signed, or for a refused key.
    #[error("{0}")]
    Csr(String),
}

/// A private key as PKCS#8 DER, zeroized on drop.
pub struct KeyDer(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for KeyDer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDer([private key elided])")
    }
}

impl KeyDer {
    /// Wraps PKCS#8 DER bytes.
    pub fn new(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    /// The PKCS#8 DER bytes. Every read of the private key goes through here.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Ok(Self::new(key.serialize_der()))
    }

    /// As an rcgen key pair (for signing).
    pub fn key_pair(&self) -> Result<KeyPair, PkiError> {
        Ok(KeyPair::try_from(self.expose())?)
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> Result<Vec<u8>, PkiError> {
        use rcgen::PublicKeyData;
        Ok(self.key_pair()?.subject_public_key_info())
    }

    /// The key as a PEM `PRIVATE KEY` block (zeroized on drop).
    pub fn to_pem(&self) -> Result<Zeroizing<String>, PkiError> {
        Ok(Zeroizing::new(self.key_pair()?.serialize_pem()))
    }
}

/// The CA: its certificate and signing key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca([signing key elided])")
    }
}

fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes: [u8; 16] = crate::crypto::random_bytes().map_err(|_| PkiError::Random)?;
    // Positive and non-zero as DER INTEGER: clear the top bit, set the next.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn window(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - BACKDATE, now + time::Duration::days(i64::from(days)))
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANISATION);
    dn.push(DnType::CommonName, common);
    dn
}

impl Ca {
    /// A new CA (key and self-signed certificate) valid for `days`.
    pub fn generate(days: u32) -> Result<(Self, KeyDer), PkiError> {
        let key = KeyDer::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial()?);
        (params.not_before, params.not_after) = window(days);
        let pair = key.key_pair()?;
        let cert = params.self_signed(&pair)?;
        let cert_der = cert.der().to_vec();
        let ca = Self {
            issuer: Issuer::new(params, pair),
            cert_der,
        };
        Ok((ca, key))
    }

    /// The CA from its certificate (DER) and its key.
    pub fn load(cert_der: &[u8], key: &KeyDer) -> Result<Self, PkiError> {
        let der = rustls_pki_types::CertificateDer::from(cert_der);
        let issuer = Issuer::from_ca_cert_der(&der, key.key_pair()?)?;
        Ok(Self {
            issuer,
            cert_der: cert_der.to_vec(),
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        to_pem(&self.cert_der)
    }

    /// A server certificate for `key` naming `sans`, valid for `days`.
    pub fn issue_server(&self, key: &KeyDer, sans: &[San], days: u32) -> Result<Vec<u8>, PkiError> {
        let mut params = CertificateParams::default();
        let first = sans.first().map_or_else(|| "coffer".to_owned(), San::to_string);
        params.distinguished_name = name(&first);
        params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        (params.not_before, params.not_after) = window(days);
        let public = key.key_pair()?;
        Ok(params.signed_by(&public, &self.issuer)?.der().to_vec())
    }

    /// A client certificate for device `id` with public key `spki` (DER
    /// SubjectPublicKeyInfo), valid for `days`. The subject is set here, never taken from
    /// the requester.
    pub fn issue_device(&self, id: DeviceId, spki: &[u8], days: u32) -> Result<Vec<u8>, PkiError> {
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&id.to_string());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        (params.not_before, params.not_after) = window(days);
        Ok(params.signed_by(&public, &self.issuer)?.der().to_vec())
    }
}

/// Largest CSR accepted (PEM text); a P-256 CSR is under 1 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// OID of `id-ecPublicKey`.
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// OID of the P-256 curve (`prime256v1`).
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// The public key (DER SubjectPublicKeyInfo) of a PKCS#10 certificate signing request
/// (PEM), after checking the request's self-signature and that the key is ECDSA P-256 (what
/// the Secure Enclave and Android Keystore make). Nothing else is taken from the request:
/// subject, names and extensions of the certificate are the CA's choice.
pub fn csr_public_key(pem: &str) -> Result<Vec<u8>, PkiError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let bad = |why: &str| PkiError::Csr(why.to_owned());
    if pem.len() > MAX_CSR_BYTES {
        return Err(bad("the CSR is too large (at most 16 KiB of PEM)"));
    }
    let der = from_pem(pem, "CERTIFICATE REQUEST", "the CSR")
        .or_else(|_| from_pem(pem, "NEW CERTIFICATE REQUEST", "the CSR"))
        .map_err(|_| bad("the CSR is not a PEM \"CERTIFICATE REQUEST\" block"))?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|_| bad("the CSR is not a valid PKCS#10 request"))?;
    if !rest.is_empty() {
        return Err(bad("the CSR has trailing bytes"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if algorithm != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
        let what = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("an RSA-{} key", rsa.key_size()),
            Ok(x509_parser::public_key::PublicKey::EC(_)) => "an elliptic-curve key on another curve".to_owned(),
            _ => format!("a key of algorithm {algorithm}"),
        };
        return Err(PkiError::Csr(format!(
            "the CSR is for {what}: coffer accepts ECDSA P-256 keys only (Secure Enclave, Android Keystore)"
        )));
    }
    csr.verify_signature()
        .map_err(|_| bad("the CSR's signature does not verify with its own key"))?;
    Ok(spki.raw.to_vec())
}

/// A certificate listed in a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number (big-endian bytes).
    pub serial: Vec<u8>,
    /// When it was revoked, seconds since the epoch.
    pub at: i64,
}

/// How long a CRL is valid: the server rewrites it on every revocation and once a day.
pub const CRL_DAYS: i64 = 7;

impl Ca {
    /// A CRL (DER) listing `revoked`, numbered `number` (must grow with each CRL).
    pub fn crl(&self, revoked: &[Revoked], number: u64) -> Result<Vec<u8>, PkiError> {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + time::Duration::days(CRL_DAYS),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: time::OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(now),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// DER → PEM `X509 CRL`.
pub fn crl_pem(der: &[u8]) -> String {
    pem_block("X509 CRL", der)
}

/// A subject alternative name of the server certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl std::str::FromStr for San {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, PkiError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        let body = s.strip_prefix("*.").unwrap_or(s);
        if s.len() <= 253 && body.split('.').all(label_ok) {
            Ok(Self::Dns(s.to_ascii_lowercase()))
        } else {
            Err(PkiError::BadSan(s.to_owned()))
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(d) => f.write_str(d),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl San {
    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            Self::Dns(d) => SanType::DnsName(d.as_str().try_into()?),
            Self::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

/// The SPKI pin of a public key: `sha256/` + base64 of SHA-256 over the DER
/// SubjectPublicKeyInfo (the form OkHttp, TrustKit and Alamofire take).
pub fn spki_pin(spki_der: &[u8]) -> String {
    format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
    )
}

/// SHA-256 of a certificate's DER: how a device is recognised.
pub fn thumbprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// What coffer reads back from a certificate it made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity, seconds since the epoch.
    pub not_before: i64,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// Subject alternative names (servers).
    pub sans: Vec<San>,
    /// The serial number (big-endian bytes, as in the certificate).
    pub serial: Vec<u8>,
}

/// Parses a DER certificate.
pub fn cert_info(der: &[u8], what: &'static str) -> Result<CertInfo, PkiError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| PkiError::BadCertificate(what))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate(what));
    }
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => sans.push(San::Dns((*d).to_owned())),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()))),
                    16 => sans.push(San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        spki: cert.public_key().raw.to_vec(),
        sans,
        serial: cert.raw_serial().to_vec(),
    })
}

/// DER → PEM `CERTIFICATE`.
pub fn to_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// DER SPKI → PEM `PUBLIC KEY`.
pub fn public_key_pem(spki: &[u8]) -> String {
    pem_block("PUBLIC KEY", spki)
}

fn pem_block(tag: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

/// The DER of the first PEM block tagged `tag`.
pub fn from_pem(text: &str, tag: &str, what: &'static str) -> Result<Vec<u8>, PkiError> {
    let begin = format!("-----BEGIN {tag}-----");
    let end = format!("-----END {tag}-----");
    let start = text.find(&begin).ok_or(PkiError::NoPem(what))? + begin.len();
    let stop = text[start..].find(&end).ok_or(PkiError::NoPem(what))? + start;
    let b64: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| PkiError::NoPem(what))
}

/// Which PKCS#12 encryption to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P12Flavour {
    /// PBES2 with AES-256 and HMAC-SHA256 (current MDMs, iOS 16+/Android 12+ importers).
    Modern,
    /// PBE-SHA1-3DES with a SHA-1 MAC, for older importers.
    Legacy,
}

/// A password-protected PKCS#12 bundle holding the device key, its certificate and the CA.
pub fn pkcs12(
    key: &KeyDer,
    cert_der: &[u8],
    ca_der: &[u8],
    alias: &str,
    password: &str,
    flavour: P12Flavour,
) -> Result<Vec<u8>, PkiError> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey, PrivateKeyChain,
    };
    let err = |e: p12_keystore::error::Error| PkiError::Pkcs12(e.to_string());
    let leaf = Certificate::from_der(cert_der).map_err(err)?;
    let ca = Certificate::from_der(ca_der).map_err(err)?;
    let private = PrivateKey::from_der(key.expose()).map_err(err)?;
    let local_id = thumbprint(cert_der);
    let chain = PrivateKeyChain::new(local_id.to_vec(), private, [leaf, ca]);
    let mut store = KeyStore::new();
    store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(chain));
    let writer = store.writer(password);
    let writer = match flavour {
        P12Flavour::Modern => writer,
        P12Flavour::Legacy => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .encryption_iterations(2048)
            .mac_iterations(2048),
    };
    writer.write().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_parse() {
        assert_eq!("10.0.0.1".parse::<San>().unwrap(), San::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!(
            "Coffer.Example.com".parse::<San>().unwrap(),
            San::Dns("coffer.example.com".into())
        );
        assert!("bad name".parse::<San>().is_err());
        assert!("-x.example".parse::<San>().is_err());
        assert!("".parse::<San>().is_err());
    }

    #[test]
    fn ca_signs_server_and_device() {
        let (ca, ca_key) = Ca::generate(30).unwrap();
        let server_key = KeyDer::generate().unwrap();
        let sans = vec!["localhost".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let server = ca.issue_server(&server_key, &sans, 10).unwrap();
        let info = cert_info(&server, "server").unwrap();
        assert_eq!(info.sans, sans);
        assert_eq!(info.spki, server_key.spki().unwrap());
        assert!(info.not_after - info.not_before > 10 * 86_400 - 1);
        // The CA reloads from its certificate and key and still signs.
        let again = Ca::load(ca.cert_der(), &ca_key).unwrap();
        let device_key = KeyDer::generate().unwrap();
        let a = again.issue_device(DeviceId(7), &device_key.spki().unwrap(), 1).unwrap();
        let b = again.issue_device(DeviceId(7), &device_key.spki().unwrap(), 1).unwrap();
        assert_ne!(
            thumbprint(&a),
            thumbprint(&b),
            "random serials: same key, different certs"
        );
        let pem = to_pem(&a);
        assert_eq!(from_pem(&pem, "CERTIFICATE", "x").unwrap(), a);
        assert!(spki_pin(&info.spki).starts_with("sha256/"));
        assert_eq!(spki_pin(&info.spki).len(), "sha256/".len() + 44);
    }

    #[test]
    fn pkcs12_round_trips() {
        let (ca, _) = Ca::generate(30).unwrap();
        let key = KeyDer::generate().unwrap();
        let cert = ca.issue_device(DeviceId(1), &key.spki().unwrap(), 1).unwrap();
        for flavour in [P12Flavour::Modern, P12Flavour::Legacy] {
            let p12 = pkcs12(&key, &cert, ca.cert_der(), "device", "pw-123456", flavour).unwrap();
            let store =
                p12_keystore::KeyStore::from_pkcs12(&p12, "pw-123456", p12_keystore::Pkcs12ImportPolicy::Strict)
                    .unwrap();
            let (_, chain) = store.private_key_chain().unwrap();
            assert_eq!(chain.key().as_der(), key.expose());
            assert_eq!(chain.certs()[0].as_der(), cert.as_slice());
            assert!(
                p12_keystore::KeyStore::from_pkcs12(&p12, "wrong", p12_keystore::Pkcs12ImportPolicy::Strict).is_err()
            );
        }
    }
}
