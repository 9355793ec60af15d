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

/// The crypto provider coffer uses everywhere (ring), with the suites the config allows.
pub fn provider(min: TlsVersion) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    // TLS 1.2 suites: only ECDHE key exchange with an AEAD (GCM or ChaCha20-Poly1305).
    provider.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(t) => {
            let name = format!("{:?}", t.common.suite);
            min == TlsVersion::Tls12 && name.contains("ECDHE") && (name.contains("GCM") || name.contains("CHACHA20"))
        }
    });
    provider
}

/// Builds the server configuration. `allow_unauthenticated` admits connections without a
/// client certificate (they reach only what needs none); a certificate that is presented
/// must chain to the CA and be within its validity dates, or the handshake fails.
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
        .allow_unauthenticated()
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
