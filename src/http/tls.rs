//! The TLS listener's configuration: rustls with the ring provider, TLS 1.3 only unless
//! the config opts into 1.2 (then ECDHE key exchange with AEAD suites only), client
//! certificates verified against coffer's CA, and no session resumption.

use std::sync::Arc;

use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
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

/// Builds the server configuration. Every connection must present a client certificate
/// that chains to the CA and is within its validity dates, or the handshake fails: until
/// an endpoint exists that needs no certificate (enrolment), a client without one gets
/// nothing but a failed handshake, bounded by actix-tls's 3 s handshake timeout.
pub fn server_config(
    ca_der: &[u8],
    server_cert_der: Vec<u8>,
    server_key: &KeyDer,
    min: TlsVersion,
) -> Result<ServerConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let provider = Arc::new(provider(min));
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(|e| err(&e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(&e))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.expose().to_vec()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(server_cert_der)], key)
        .map_err(|e| err(&e))?;
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
