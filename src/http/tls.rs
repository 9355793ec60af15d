//! The TLS listener's configuration: rustls with the ring provider, TLS 1.3 only unless
//! the config opts into 1.2 (then ECDHE key exchange with AEAD suites only), client
//! certificates verified against coffer's CA (optional at the handshake, required by every
//! route but enrolment), a server certificate that can be replaced live, and no session
//! resumption.

use std::sync::{Arc, RwLock};

use rustls::server::{NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::TlsVersion;
use crate::pki::KeyDer;

/// The TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(String);

/// TLS 1.2 suites accepted when the config opts into TLS 1.2: ECDHE key exchange with an
/// AEAD, ECDSA only (the server key is P-256, so RSA suites could never be chosen anyway).
const TLS12_SUITES: [rustls::SupportedCipherSuite; 3] = [
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The crypto provider coffer uses everywhere (ring), with the suites the config allows.
pub fn provider(min: TlsVersion) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(_) => {
            min == TlsVersion::Tls12 && TLS12_SUITES.iter().any(|a| a.suite() == s.suite())
        }
    });
    provider
}

/// The server's certificate and key, replaceable while the server runs (`SIGHUP`, server
/// key rotation): connections already open keep their session, new handshakes get the
/// new certificate.
pub struct ServerCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCert([key elided])")
    }
}

impl ServerCert {
    /// Loads `cert_der` with its private key.
    pub fn new(cert_der: Vec<u8>, key: &KeyDer, min: TlsVersion) -> Result<Self, TlsError> {
        let provider = Arc::new(provider(min));
        let certified = certified(&provider, cert_der, key)?;
        Ok(Self {
            provider,
            current: RwLock::new(certified),
        })
    }

    /// Replaces the certificate and key for every handshake from now on.
    pub fn replace(&self, cert_der: Vec<u8>, key: &KeyDer) -> Result<(), TlsError> {
        let certified = certified(&self.provider, cert_der, key)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = certified;
        Ok(())
    }

    /// When the certificate in use expires (seconds since the epoch), if it parses.
    pub fn not_after(&self) -> Option<i64> {
        let key = self.get();
        let der = key.cert.first()?;
        crate::pki::cert_info(der.as_ref(), "server.crt")
            .ok()
            .map(|i| i.not_after)
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn certified(
    provider: &rustls::crypto::CryptoProvider,
    cert_der: Vec<u8>,
    key: &KeyDer,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.expose().to_vec()));
    let certified = CertifiedKey::from_der(vec![CertificateDer::from(cert_der)], key, provider)
        .map_err(|e| TlsError(format!("the server certificate or key: {e}")))?;
    Ok(Arc::new(certified))
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Builds the server configuration. A client certificate, when presented, must chain to
/// the CA and be within its validity dates, or the handshake fails; a client without one
/// completes the handshake but reaches nothing except enrolment (`POST /v1/enroll`): every
/// other route refuses it (see `auth::identify`).
pub fn server_config(ca_der: &[u8], cert: Arc<ServerCert>, min: TlsVersion) -> Result<ServerConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let provider = cert.provider.clone();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(|e| err(&e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| err(&e))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    // Resumption would skip the client-certificate verifier: every connection makes a
    // full handshake. (The per-request device check is authoritative anyway.)
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls12_suites(min: TlsVersion) -> Vec<String> {
        provider(min)
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .map(|s| format!("{:?}", s.suite()))
            .collect()
    }

    #[test]
    fn tls12_suites_only_when_opted_in_and_only_ecdhe_aead() {
        assert!(tls12_suites(TlsVersion::Tls13).is_empty());
        let suites = tls12_suites(TlsVersion::Tls12);
        assert_eq!(suites.len(), 3, "{suites:?}");
        assert!(
            suites
                .iter()
                .all(|s| s.contains("ECDHE_ECDSA") && (s.contains("GCM") || s.contains("CHACHA20"))),
            "{suites:?}"
        );
        assert!(
            provider(TlsVersion::Tls13)
                .cipher_suites
                .iter()
                .any(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)))
        );
    }
}
