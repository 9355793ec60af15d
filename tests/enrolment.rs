//! Enrolment over HTTPS (`POST /v1/enroll`), the one route reachable without a client
//! certificate: a phone makes its key and a CSR, sends it with a single-use code, and gets a
//! client certificate whose subject the server chooses, a device id and a signing secret.
//! Covered here: the whole flow up to signed, logged-in requests with the new certificate;
//! what the issued certificate holds (and what it does not take from the CSR); codes that
//! are used, expired, unknown or malformed; refused CSRs (bad signature, RSA, other curves,
//! garbage); every other route refused without a certificate; the per-address attempt
//! budget; renewal with a renewal code (same device id, new certificate, old one on the
//! CRL, sessions ended); and malformed or oversized request bodies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};

use coffer::config::AuthConfig;
use coffer::http::ServerOptions;
use coffer::model::{DeviceId, Timestamp, UserId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use x509_parser::prelude::{FromDer, X509Certificate};

use common::client::{Connection, Response, Signer, read_response, unique_nonce};
use common::server::{
    Identity, TestServer, assert_problem, assert_status, start_server, start_server_with, test_options,
};

// ---- CSRs ----

/// A key made "on the phone" and its certificate signing request.
struct Csr {
    key: KeyPair,
    pem: String,
    der: Vec<u8>,
}

/// CSR parameters an attacker would like honoured: their own subject, server and IP
/// names, a CA flag, certificate-signing key usage and every extended key usage.
fn attacker_params() -> CertificateParams {
    let mut params =
        CertificateParams::new(vec!["coffer.example.com".to_owned(), "127.0.0.1".to_owned()]).expect("CSR parameters");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "attacker-chosen");
    dn.push(DnType::OrganizationName, "evil corp");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    params
}

/// A CSR for a fresh key of `alg` with `params`.
fn csr_with(alg: &'static SignatureAlgorithm, params: &CertificateParams) -> Csr {
    let key = KeyPair::generate_for(alg).expect("generate key");
    let request = params.serialize_request(&key).expect("serialize CSR");
    Csr {
        pem: request.pem().expect("CSR PEM"),
        der: request.der().to_vec(),
        key,
    }
}

/// A P-256 CSR (what the Secure Enclave and Android Keystore make) asking for everything.
fn p256_csr() -> Csr {
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, &attacker_params())
}

/// A plain P-256 CSR: a name and nothing else.
fn plain_p256_csr() -> Csr {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CSR parameters");
    params.distinguished_name.push(DnType::CommonName, "my phone");
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, &params)
}

/// DER → PEM with `tag`, 64 characters a line.
fn pem(tag: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

/// The DER of every `CERTIFICATE` block in `text`.
fn certificates(text: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|c| c.expect("certificate PEM").to_vec())
        .collect()
}

fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("an X.509 certificate");
    assert!(rest.is_empty(), "trailing bytes after the certificate");
    cert
}

/// The CA certificate the server was set up with (`keys/ca.crt`), DER.
fn ca_der(server: &TestServer) -> Vec<u8> {
    let text = std::fs::read_to_string(server.dirs().paths.keys_dir.join(coffer::app::pki::CA_CERT_FILE))
        .expect("read ca.crt");
    let certs = certificates(&text);
    assert_eq!(certs.len(), 1, "ca.crt holds one certificate");
    certs.into_iter().next().expect("the CA")
}

// ---- codes ----

/// A code for a new device of `user`, valid for ten minutes.
fn new_code(server: &TestServer, user: UserId) -> String {
    let code = server
        .vault()
        .create_enrolment(user, None, 600)
        .expect("create enrolment code");
    assert_eq!(code.device, None);
    code.code.expose().to_owned()
}

/// A renewal code for `device` of `user`, valid for ten minutes.
fn renewal_code(server: &TestServer, user: UserId, device: DeviceId) -> String {
    let code = server
        .vault()
        .create_enrolment(user, Some(device), 600)
        .expect("create renewal code");
    assert_eq!(code.device, Some(device));
    code.code.expose().to_owned()
}

/// 160 random bits as a well-formed code (`XXXX-XXXX-...`, 32 base32 characters) and its
/// canonical form (no dashes).
fn random_code() -> (String, String) {
    let bytes: [u8; 20] = coffer::crypto::random_bytes().expect("random");
    let canonical = data_encoding::BASE32_NOPAD.encode(&bytes);
    let grouped: Vec<String> = canonical
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8(c.to_vec()).expect("ASCII"))
        .collect();
    (grouped.join("-"), canonical)
}

/// The store's key for a code: SHA-256 over a domain label and the canonical code (as
/// `src/app/enrol.rs` computes it; the test that uses it checks it with a control code).
fn code_hash(canonical: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"coffer enrolment code v1\0");
    h.update(canonical.as_bytes());
    h.finalize().into()
}

fn device_count(server: &TestServer) -> usize {
    server.vault().devices().expect("devices").len()
}

fn unused_codes(server: &TestServer) -> usize {
    server.vault().enrolments().expect("enrolments").len()
}

// ---- requests ----

fn enrol_body(code: &str, csr: &str, device_name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "code": code, "csr": csr, "device_name": device_name })).expect("JSON")
}

/// `POST /v1/enroll` with `headers` and `body` on a fresh connection without a client
/// certificate (a refusal closes the connection).
fn post_enroll_raw(server: &TestServer, headers: &[(&str, &str)], body: &[u8]) -> Response {
    server
        .connect_anonymous()
        .request("POST", "/v1/enroll", headers, body)
        .expect("enrol request")
}

/// `POST /v1/enroll` as the app sends it, without a client certificate.
fn post_enroll(server: &TestServer, code: &str, csr: &str, device_name: &str) -> Response {
    post_enroll_raw(
        server,
        &[("content-type", "application/json")],
        &enrol_body(code, csr, device_name),
    )
}

/// What a successful enrolment returned, with the key the CSR was made for.
struct Enrolled {
    json: serde_json::Value,
    device_id: String,
    secret: String,
    region: String,
    chain_pem: String,
    leaf_der: Vec<u8>,
    key_pem: String,
}

impl Enrolled {
    fn id(&self) -> DeviceId {
        self.device_id.parse().expect("device id")
    }

    /// The returned chain (leaf, then CA) and the CSR's key.
    fn identity(&self) -> Identity {
        Identity {
            device: None,
            cert_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
            secret: Some(self.secret.clone()),
            token: None,
        }
    }

    /// SigV4 credentials as the response hands them out.
    fn signer(&self, token: Option<&str>) -> Signer {
        Signer {
            access_key: self.device_id.clone(),
            secret: self.secret.clone(),
            region: self.region.clone(),
            token: token.map(str::to_owned),
        }
    }
}

/// Checks a `201` enrolment answer and keeps what it returned.
#[track_caller]
fn enrolled(res: &Response, csr: &Csr) -> Enrolled {
    assert_eq!(
        res.status,
        201,
        "enrolment: {} {}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
    let json = res.json();
    let text = |k: &str| {
        json[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing or not a string: {json}"))
            .to_owned()
    };
    let chain_pem = text("certificate_chain");
    let leaf_der = certificates(&chain_pem).into_iter().next().expect("a leaf certificate");
    Enrolled {
        device_id: text("device_id"),
        secret: text("secret_access_key"),
        region: text("region"),
        chain_pem,
        leaf_der,
        key_pem: csr.key.serialize_pem(),
        json,
    }
}

/// A connection presenting the enrolled certificate, signing with its credentials.
fn connect_enrolled(server: &TestServer, e: &Enrolled, token: Option<&str>) -> Connection {
    let mut conn = server.connect_with(server.client_config(Some(&e.identity())));
    conn.set_signer(Some(e.signer(token)));
    conn
}

fn password_of(name: &str) -> String {
    format!("password of {name}")
}

/// `POST /v1/session` as `user` on the enrolled device.
fn login(server: &TestServer, e: &Enrolled, user: &str) -> Response {
    let body =
        serde_json::to_vec(&serde_json::json!({ "username": user, "password": password_of(user) })).expect("JSON");
    let nonce = unique_nonce();
    connect_enrolled(server, e, None)
        .request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
            &body,
        )
        .expect("login request")
}

/// Logs `user` in on the enrolled device; returns the session token.
#[track_caller]
fn log_in(server: &TestServer, e: &Enrolled, user: &str) -> String {
    let res = login(server, e, user);
    assert_status(&res, 200);
    res.json()["token"].as_str().expect("token").to_owned()
}

/// `GET /v1/documents` on a fresh connection; the names listed.
fn list_names(conn: &mut Connection) -> Vec<String> {
    let res = conn.request("GET", "/v1/documents", &[], b"").expect("list request");
    assert_status(&res, 200);
    res.json()["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect()
}

/// The problem's `detail`, or "".
fn detail(res: &Response) -> String {
    res.json()["detail"].as_str().unwrap_or_default().to_owned()
}

/// Server options with a large enrolment budget, for tests that make many attempts.
fn roomy_options() -> ServerOptions {
    ServerOptions {
        auth: AuthConfig {
            enrolments_per_ip_per_minute: 1000,
            ..test_options().auth
        },
        ..test_options()
    }
}

// ---- 1. the whole flow ----

#[test]
fn enrolment_without_a_client_certificate_gives_a_working_device() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    assert_eq!(unused_codes(&server), 1);
    let csr = p256_csr();
    let before = time::OffsetDateTime::now_utc();

    let res = post_enroll(&server, &code, &csr.pem, "anna's phone");
    let e = enrolled(&res, &csr);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.header("content-type"), Some("application/json"));

    // Exactly the documented fields.
    let keys: BTreeSet<&str> = e
        .json
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "device_id",
            "certificate_chain",
            "secret_access_key",
            "region",
            "service",
            "expires"
        ])
    );
    let id = e.id();
    assert_eq!(e.region, "local");
    assert_eq!(e.json["service"], "coffer");
    assert!(e.secret.len() >= 30, "secret_access_key is too short");

    // The chain: the leaf, then the CA of keys/ca.crt, and nothing else.
    assert_eq!(e.chain_pem.matches("-----BEGIN ").count(), 2, "{}", e.chain_pem);
    let chain = certificates(&e.chain_pem);
    assert_eq!(chain.len(), 2);
    let ca = ca_der(&server);
    assert_eq!(chain[1], ca, "the second certificate is the CA");
    assert!(
        e.chain_pem.find("-----BEGIN CERTIFICATE-----") == Some(0),
        "the chain starts with the leaf"
    );
    let leaf = parse_cert(&chain[0]);
    let ca_cert = parse_cert(&ca);
    assert_eq!(leaf.issuer(), ca_cert.subject(), "issued by the CA");
    leaf.verify_signature(Some(ca_cert.public_key()))
        .expect("the leaf verifies with the CA's key");

    // `expires` is the certificate's end, `device_days` (365 in tests) from now.
    let expires = e.json["expires"].as_str().expect("expires");
    let expires = time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|err| panic!("expires {expires:?} is not RFC 3339: {err}"));
    assert_eq!(expires.unix_timestamp(), leaf.validity().not_after.timestamp());
    let ahead = expires - before;
    assert!(
        ahead >= time::Duration::days(365) - time::Duration::seconds(5)
            && ahead <= time::Duration::days(365) + time::Duration::minutes(5),
        "expires {expires} is not device_days after the enrolment"
    );

    // The device as registered: anna's, named as asked, holding this certificate and secret.
    let devices = server.vault().devices().expect("devices");
    assert_eq!(devices.len(), 1);
    let device = server.vault().device(id).expect("the enrolled device");
    assert_eq!(device.owner, anna.id);
    assert_eq!(device.body.name, "anna's phone");
    assert!(!device.body.revoked);
    assert_eq!(device.body.thumbprint, coffer::pki::thumbprint(&e.leaf_der));
    assert_eq!(device.body.serial.as_deref(), Some(leaf.raw_serial()));
    assert_eq!(
        device.body.signing_secret.as_ref().map(|s| s.expose().to_owned()),
        Some(e.secret.clone())
    );
    assert_eq!(device.expires.0 / 1000, leaf.validity().not_after.timestamp());
    // The code is consumed.
    assert_eq!(unused_codes(&server), 0);

    // The new certificate and the CSR's key open a connection; signed requests need a
    // session, which the user gets by logging in on this device.
    let res = connect_enrolled(&server, &e, None)
        .request("GET", "/v1/documents", &[], b"")
        .expect("list request");
    assert_problem(&res, 401, "session-required");
    let token = log_in(&server, &e, "anna");
    let mut conn = connect_enrolled(&server, &e, Some(&token));
    let doc = common::server::upload(&mut conn, "from the phone.txt", &[], b"enrolled content");
    let doc_id = common::server::id_of(&doc);
    assert_eq!(doc["owner"].as_str(), Some(anna.id.to_string().as_str()));
    assert_eq!(list_names(&mut conn), vec!["from the phone.txt".to_owned()]);
    let res = conn
        .request("GET", &common::server::content_path(&doc_id), &[], b"")
        .expect("download");
    assert_status(&res, 200);
    assert_eq!(res.body, b"enrolled content");
    // An unsigned request with the certificate is still refused.
    let res = server
        .connect_with(server.client_config(Some(&e.identity())))
        .request("GET", "/v1/documents", &[], b"")
        .expect("unsigned request");
    assert_problem(&res, 401, "signature-required");
}

// ---- 2. the certificate is the server's ----

#[test]
fn the_issued_certificate_is_the_servers_choice_not_the_csrs() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let csr = p256_csr();
    let e = enrolled(&post_enroll(&server, &code, &csr.pem, "phone"), &csr);
    let leaf = parse_cert(&e.leaf_der);

    // Subject: CN = the device id, O = coffer, nothing else.
    let subject = leaf.subject();
    let cns: Vec<&str> = subject
        .iter_common_name()
        .map(|a| a.as_str().expect("CN string"))
        .collect();
    assert_eq!(cns, vec![e.device_id.as_str()], "CN is the device id");
    let orgs: Vec<&str> = subject
        .iter_organization()
        .map(|a| a.as_str().expect("O string"))
        .collect();
    assert_eq!(orgs, vec!["coffer"]);
    assert_eq!(subject.iter_attributes().count(), 2, "subject {subject}");
    for taken in [&b"attacker-chosen"[..], b"evil corp", b"coffer.example.com"] {
        assert!(
            !common::contains_bytes(&e.leaf_der, taken),
            "{} from the CSR is in the certificate",
            String::from_utf8_lossy(taken)
        );
    }

    // No names from the CSR, a client certificate only, not a CA.
    assert!(
        leaf.subject_alternative_name().expect("SAN extension parses").is_none(),
        "the CSR's SANs were copied"
    );
    let eku = leaf
        .extended_key_usage()
        .expect("EKU parses")
        .expect("an EKU extension")
        .value;
    assert!(eku.client_auth, "EKU clientAuth");
    assert!(
        !eku.server_auth
            && !eku.any
            && !eku.code_signing
            && !eku.email_protection
            && !eku.time_stamping
            && !eku.ocsp_signing,
        "EKU beyond clientAuth: {eku:?}"
    );
    assert!(eku.other.is_empty(), "other EKUs: {:?}", eku.other);
    assert!(!leaf.is_ca(), "the device certificate is a CA");
    if let Some(bc) = leaf.basic_constraints().expect("basic constraints parse") {
        assert!(!bc.value.ca, "basicConstraints CA:TRUE");
    }
    let ku = leaf.key_usage().expect("key usage parses").expect("a key usage").value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign() && !ku.crl_sign(), "signing key usages: {ku:?}");

    // The key is the CSR's (the phone's), and the certificate is the CA's.
    assert_eq!(leaf.public_key().raw, csr.key.subject_public_key_info().as_slice());
    let (_, parsed_csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&csr.der).expect("parse the CSR");
    assert_eq!(
        leaf.public_key().raw,
        parsed_csr.certification_request_info.subject_pki.raw
    );
    let ca = ca_der(&server);
    let ca_cert = parse_cert(&ca);
    assert_eq!(leaf.issuer(), ca_cert.subject());
    leaf.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the CA");
    assert!(leaf.raw_serial().len() >= 8, "a random serial");
}

// ---- 3. codes ----

#[test]
fn an_enrolment_code_works_once() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let first = p256_csr();
    enrolled(&post_enroll(&server, &code, &first.pem, "first"), &first);
    assert_eq!(device_count(&server), 1);

    let second = plain_p256_csr();
    let res = post_enroll(&server, &code, &second.pem, "second");
    assert_problem(&res, 401, "enrolment-code-invalid");
    // Spelled differently (lower case, spaces), it is still the used code.
    let respelled = code.to_ascii_lowercase().replace('-', " ");
    let res = post_enroll(&server, &respelled, &second.pem, "second");
    assert_problem(&res, 401, "enrolment-code-invalid");
    assert_eq!(device_count(&server), 1, "a used code registered a second device");
}

#[test]
fn used_unknown_malformed_and_expired_codes_get_the_same_answer() {
    let server = start_server_with(roomy_options());
    let anna = server.add_member("anna");
    let csr = plain_p256_csr();

    // A used code: the reference answer.
    let used = new_code(&server, anna.id);
    enrolled(&post_enroll(&server, &used, &csr.pem, "phone"), &csr);
    let reference = post_enroll(&server, &used, &plain_p256_csr().pem, "again");
    assert_problem(&reference, 401, "enrolment-code-invalid");

    // A valid code stays unused through all the attempts below.
    let valid = new_code(&server, anna.id);
    let devices = device_count(&server);

    // Expired: stored through the store with an expiry in the past (codes live at least a
    // minute, so one cannot be made to expire in a test otherwise). The control code,
    // stored the same way but not expired, proves the store key is computed right.
    let now = Timestamp::now().0;
    let store_code = |expires_ms: i64| {
        let (code, canonical) = random_code();
        server
            .vault()
            .store()
            .insert_enrolment(
                code_hash(&canonical),
                &coffer::store::StoredEnrolment {
                    user: anna.id,
                    device: None,
                    created: Timestamp(now - 2 * 3_600_000),
                    expires: Timestamp(expires_ms),
                },
            )
            .expect("insert enrolment");
        code
    };
    let expired = store_code(now - 3_600_000);
    let just_expired = store_code(now - 1);
    let control = store_code(now + 600_000);

    let (unknown, _) = random_code();
    let mut one_changed = valid.clone().into_bytes();
    one_changed[0] = if one_changed[0] == b'A' { b'B' } else { b'A' };
    let one_changed = String::from_utf8(one_changed).expect("ASCII");
    let cases: Vec<(&str, String)> = vec![
        ("expired", expired.clone()),
        ("just expired", just_expired),
        ("unknown", unknown),
        ("valid with one character changed", one_changed),
        ("empty", String::new()),
        ("short", "ABCD-EFGH".to_owned()),
        ("one group too many", format!("{valid}-ABCD")),
        ("not base32", "1111-1111-1111-1111-1111-1111-1111-1111".to_owned()),
        ("not ASCII", "ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ".to_owned()),
        ("a valid code with a null byte", format!("{valid}\0")),
    ];
    for (what, code) in &cases {
        let res = post_enroll(&server, code, &plain_p256_csr().pem, "phone");
        assert_problem(&res, 401, "enrolment-code-invalid");
        assert_eq!(
            res.body, reference.body,
            "{what}: the answer differs from a used code's"
        );
    }
    // Expired stays expired.
    let res = post_enroll(&server, &expired, &plain_p256_csr().pem, "phone");
    assert_eq!(res.body, reference.body);
    assert_eq!(device_count(&server), devices, "a refused code registered a device");

    // The control code and the valid one still work.
    let c = plain_p256_csr();
    enrolled(&post_enroll(&server, &control, &c.pem, "control"), &c);
    let c = plain_p256_csr();
    enrolled(&post_enroll(&server, &valid, &c.pem, "valid"), &c);
    assert_eq!(device_count(&server), devices + 2);
}

#[test]
fn a_code_is_accepted_however_it_is_spelled() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    // As typed from the QR code's text: lower case, spaces instead of dashes.
    let typed = code.to_ascii_lowercase().replace('-', " ");
    let csr = plain_p256_csr();
    enrolled(&post_enroll(&server, &typed, &csr.pem, "typed"), &csr);
}

#[test]
fn a_code_of_a_user_disabled_since_is_removed_with_the_user() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    server
        .vault()
        .update_user(anna.id, |b| b.disabled = true)
        .expect("disable anna");
    let csr = plain_p256_csr();
    assert_problem(
        &post_enroll(&server, &code, &csr.pem, "phone"),
        401,
        "enrolment-code-invalid",
    );
    assert_eq!(device_count(&server), 0);
    assert_eq!(unused_codes(&server), 0, "disabling the user left its code");
    // Re-enabling the user does not revive the code.
    server
        .vault()
        .update_user(anna.id, |b| b.disabled = false)
        .expect("enable anna");
    assert_problem(
        &post_enroll(&server, &code, &csr.pem, "phone"),
        401,
        "enrolment-code-invalid",
    );
    assert_eq!(device_count(&server), 0);
}

#[test]
fn a_refused_attempt_does_not_consume_the_code() {
    let server = start_server_with(roomy_options());
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let csr = plain_p256_csr();

    // A bad CSR, then bad device names (empty, too long, control characters).
    let res = post_enroll(&server, &code, &pem("CERTIFICATE REQUEST", b"garbage"), "phone");
    assert_problem(&res, 400, "csr-invalid");
    for name in [
        String::new(),
        "n".repeat(256),
        "evil\u{1b}[2J".to_owned(),
        "two\nlines".to_owned(),
    ] {
        let res = post_enroll(&server, &code, &csr.pem, &name);
        assert_problem(&res, 400, "invalid-request");
    }
    assert_eq!(device_count(&server), 0);
    assert_eq!(unused_codes(&server), 1);

    // The same code with the valid request works.
    enrolled(&post_enroll(&server, &code, &csr.pem, "phone"), &csr);
    assert_eq!(device_count(&server), 1);
    assert_eq!(unused_codes(&server), 0);
}

// ---- 4. refused CSRs ----

#[test]
fn csrs_that_are_badly_signed_of_other_key_types_or_garbage_are_refused() {
    let server = start_server_with(roomy_options());
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);

    // One byte of the signature changed (the last byte of the DER is the signature's).
    let good = p256_csr();
    let mut bad_signature = good.der.clone();
    *bad_signature.last_mut().expect("a byte") ^= 0x01;
    // The signed part changed (the subject), the signature left as it was.
    let mut tampered = good.der.clone();
    let at = tampered
        .windows(b"attacker-chosen".len())
        .position(|w| w == b"attacker-chosen")
        .expect("the CN in the DER");
    tampered[at] = b'b';
    let rsa1024 = include_str!("data/rsa1024.csr.pem");
    let p384 = csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, &attacker_params());
    let ed25519 = csr_with(&rcgen::PKCS_ED25519, &attacker_params());
    let mut trailing = good.der.clone();
    trailing.extend_from_slice(&[0x05, 0x00]);
    let big = format!("{}{}", " ".repeat(coffer::pki::MAX_CSR_BYTES), good.pem);

    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "bad signature",
            pem("CERTIFICATE REQUEST", &bad_signature),
            Some("signature"),
        ),
        (
            "tampered subject",
            pem("CERTIFICATE REQUEST", &tampered),
            Some("signature"),
        ),
        ("RSA-1024", rsa1024.to_owned(), Some("RSA")),
        ("P-384", p384.pem.clone(), Some("P-256")),
        ("Ed25519", ed25519.pem.clone(), Some("P-256")),
        ("empty", String::new(), None),
        ("not PEM", "this is not a CSR".to_owned(), None),
        (
            "PEM of garbage",
            pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00"),
            None,
        ),
        ("a certificate, not a CSR", server.ca_pem.clone(), None),
        (
            "a certificate under the CSR label",
            pem("CERTIFICATE REQUEST", &ca_der(&server)),
            None,
        ),
        (
            "trailing bytes",
            pem("CERTIFICATE REQUEST", &trailing),
            Some("trailing"),
        ),
        ("too large", big, Some("too large")),
        ("raw DER as text", String::from_utf8_lossy(&good.der).into_owned(), None),
    ];
    for (what, csr, mentions) in &cases {
        let res = post_enroll(&server, &code, csr, "phone");
        assert_eq!(res.status, 400, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 400, "csr-invalid");
        if let Some(word) = mentions {
            assert!(detail(&res).contains(word), "{what}: detail {:?}", detail(&res));
        }
        assert_eq!(device_count(&server), 0, "{what} registered a device");
        assert_eq!(unused_codes(&server), 1, "{what} consumed the code");
    }

    // The code and the good CSR still work; the older "NEW CERTIFICATE REQUEST" label too.
    let relabelled = good.pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
    enrolled(&post_enroll(&server, &code, &relabelled, "phone"), &good);
    assert_eq!(device_count(&server), 1);
}

// ---- 5. nothing else without a client certificate ----

/// Every resource `src/http/routes/mod.rs` registers (the test fails when a route is added
/// there and not here).
const ROUTES: [&str; 7] = [
    "/v1/enroll",
    "/v1/session",
    "/v1/documents",
    "/v1/documents/{id}",
    "/v1/documents/{id}/meta",
    "/v1/erp/{collection}",
    "/v1/erp/{collection}/{key}",
];

#[test]
fn the_route_list_matches_the_router() {
    let source = include_str!("../src/http/routes/mod.rs");
    let registered: Vec<&str> = source
        .split("web::resource(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().expect("a quoted path"))
        .collect();
    assert_eq!(registered, ROUTES, "update ROUTES (and the anonymous-access test)");
    // Routes registered any other way would escape the list.
    for other in [
        "web::scope(",
        ".route(\"",
        "web::service(",
        "#[get",
        "#[post",
        "#[put",
        "#[delete",
        "#[patch",
    ] {
        assert!(!source.contains(other), "the router uses {other}: extend this test");
    }
    assert_eq!(
        source.matches(".service(").count(),
        ROUTES.len(),
        "a service registered without web::resource"
    );
}

#[test]
fn without_a_client_certificate_every_other_request_is_refused() {
    let server = start_server();
    let anna = server.add_member("anna");
    // A real document of a real user, so that "exists" and "does not" cannot differ.
    let doc = common::upload_in_pieces(
        server.vault(),
        common::new_document(anna.id, "existing.txt"),
        b"existing content",
    );
    let ids = [
        doc.id.to_string(),
        coffer::model::DocumentId::random().expect("id").to_string(),
        "not-an-id".to_owned(),
    ];
    let mut targets: Vec<String> = Vec::new();
    for route in ROUTES {
        if route.contains("{id}") {
            targets.extend(ids.iter().map(|id| route.replace("{id}", id)));
        } else if route.starts_with("/v1/erp/") {
            // Collections, a key, the batch path and a multi-get: all refused alike.
            for collection in ["demo", "nope"] {
                let route = route.replace("{collection}", collection);
                targets.extend(["C-1", "batch"].map(|key| route.replace("{key}", key)));
                targets.push(format!("{}?key=C-1", route.replace("/{key}", "")));
            }
        } else {
            targets.push(route.to_owned());
        }
    }
    targets.extend(
        [
            "/v1/nope",
            "/",
            "/v1",
            "/v1/",
            "/v1/enroll/",
            "/v1/ENROLL",
            "/v1/session/extra",
            "/v1/documents?limit=1",
            "/v1/documents/x/meta/extra",
            "/v2/documents",
            "/v1/enroll/../documents",
        ]
        .map(str::to_owned),
    );
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let devices = device_count(&server);
    let mut checked = 0;
    for target in &targets {
        for method in methods {
            if method == "POST" && target == "/v1/enroll" {
                continue;
            }
            let body: &[u8] = if matches!(method, "POST" | "PUT" | "PATCH") {
                br#"{"username":"anna","password":"password of anna"}"#
            } else {
                b""
            };
            let headers: &[(&str, &str)] = if body.is_empty() {
                &[]
            } else {
                &[("content-type", "application/json"), ("x-coffer-name", "anon.txt")]
            };
            let res = server
                .connect_anonymous()
                .request(method, target, headers, body)
                .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
            assert_eq!(
                res.status,
                401,
                "{method} {target} without a certificate: {}",
                String::from_utf8_lossy(&res.body)
            );
            if method != "HEAD" {
                assert_problem(&res, 401, "client-certificate-required");
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} requests");
    // Nothing happened: the document is there, unchanged, and no device or session appeared.
    assert_eq!(
        common::read_all(server.vault(), doc.id).expect("read"),
        b"existing content"
    );
    assert_eq!(device_count(&server), devices);
    assert!(
        server
            .vault()
            .live_sessions(Timestamp::now())
            .expect("sessions")
            .is_empty()
    );
}

// ---- 6. attempts per address ----

/// A TCP connection to `to` from the local address `source` (any of 127.0.0.0/8).
fn tcp_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    bind(&fd, &SocketAddrV4::new(source, 0)).unwrap_or_else(|e| panic!("bind {source}: {e}"));
    connect(&fd, &to).expect("connect");
    TcpStream::from(fd)
}

/// `POST /v1/enroll` from the local address `source`, without a client certificate.
fn post_enroll_from(server: &TestServer, source: Ipv4Addr, body: &[u8]) -> Response {
    let tcp = tcp_from(source, server.addr());
    let name = ServerName::try_from("localhost".to_owned()).expect("server name");
    let conn = rustls::ClientConnection::new(server.client_config(None), name).expect("TLS client");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST /v1/enroll HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    stream.write_all(body).expect("send body");
    stream.flush().expect("flush");
    read_response(&mut BufReader::new(stream)).expect("response")
}

#[test]
fn enrolment_attempts_are_limited_per_address() {
    let server = start_server_with(ServerOptions {
        auth: AuthConfig {
            enrolments_per_ip_per_minute: 3,
            ..test_options().auth
        },
        ..test_options()
    });
    let anna = server.add_member("anna");
    let first = new_code(&server, anna.id);
    let second = new_code(&server, anna.id);

    // Three attempts of every kind count: a refused code, a success, a malformed request.
    let (unknown, _) = random_code();
    let csr = plain_p256_csr();
    assert_problem(
        &post_enroll(&server, &unknown, &csr.pem, "phone"),
        401,
        "enrolment-code-invalid",
    );
    let e = enrolled(&post_enroll(&server, &first, &csr.pem, "phone"), &csr);
    assert_problem(
        &post_enroll_raw(&server, &[("content-type", "text/plain")], b"{}"),
        400,
        "invalid-request",
    );

    // The fourth, even with a valid code, is refused before the code is looked at.
    let other = plain_p256_csr();
    let res = post_enroll(&server, &second, &other.pem, "second phone");
    assert_problem(&res, 429, "too-many-enrolments");
    let wait: u64 = res
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_eq!(device_count(&server), 1);
    assert_eq!(unused_codes(&server), 1, "the refused attempt consumed the code");
    assert_problem(
        &post_enroll_raw(&server, &[("content-type", "application/json")], b"garbage"),
        429,
        "too-many-enrolments",
    );

    // Another address has its own budget.
    let res = post_enroll_from(
        &server,
        Ipv4Addr::new(127, 0, 0, 2),
        &enrol_body(&second, &other.pem, "second phone"),
    );
    enrolled(&res, &other);
    assert_eq!(device_count(&server), 2);

    // An enrolled device behind the spent address is not affected.
    let token = log_in(&server, &e, "anna");
    let mut conn = connect_enrolled(&server, &e, Some(&token));
    assert!(list_names(&mut conn).is_empty());
}

// ---- 7. renewal ----

/// The serials a CRL file lists, after checking that the CA signed it.
fn crl_serials(server: &TestServer) -> Vec<Vec<u8>> {
    let path = coffer::app::pki::crl_path(&server.dirs().paths);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let der = coffer::pki::from_pem(&text, "X509 CRL", "crl").expect("a PEM CRL");
    let (rest, crl) = x509_parser::parse_x509_crl(&der).expect("parse the CRL");
    assert!(rest.is_empty());
    let ca = ca_der(server);
    let ca_cert = parse_cert(&ca);
    assert_eq!(crl.issuer(), ca_cert.subject());
    crl.verify_signature(ca_cert.public_key())
        .expect("the CRL verifies with the CA's key");
    crl.iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect()
}

#[test]
fn a_renewal_code_gives_the_same_device_a_new_certificate_and_ends_the_old_one() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let old_csr = p256_csr();
    let old = enrolled(&post_enroll(&server, &code, &old_csr.pem, "old phone"), &old_csr);
    let id = old.id();
    let old_token = log_in(&server, &old, "anna");
    let mut old_conn = connect_enrolled(&server, &old, Some(&old_token));
    common::server::upload(&mut old_conn, "before renewal.txt", &[], b"kept");
    let old_serial = parse_cert(&old.leaf_der).raw_serial().to_vec();

    // Renew with a new key made on the phone.
    let renewal = renewal_code(&server, anna.id, id);
    let new_csr = plain_p256_csr();
    let res = post_enroll(&server, &renewal, &new_csr.pem, "new phone");
    let new = enrolled(&res, &new_csr);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(new.device_id, old.device_id, "the same device");
    assert_ne!(new.leaf_der, old.leaf_der);
    assert_ne!(new.secret, old.secret, "a new signing secret");
    let leaf = parse_cert(&new.leaf_der);
    assert_eq!(leaf.public_key().raw, new_csr.key.subject_public_key_info().as_slice());
    let cns: Vec<&str> = leaf
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().expect("CN"))
        .collect();
    assert_eq!(cns, vec![new.device_id.as_str()]);
    assert_ne!(leaf.raw_serial(), old_serial.as_slice());
    assert_eq!(certificates(&new.chain_pem)[1], ca_der(&server));

    // One device, renamed, holding the new certificate, the old serial retired.
    assert_eq!(device_count(&server), 1);
    let device = server.vault().device(id).expect("device");
    assert_eq!(device.owner, anna.id);
    assert_eq!(device.body.name, "new phone");
    assert_eq!(device.body.thumbprint, coffer::pki::thumbprint(&new.leaf_der));
    assert_eq!(device.body.serial.as_deref(), Some(leaf.raw_serial()));
    assert!(device.body.retired.iter().any(|r| r.serial == old_serial));
    assert_eq!(unused_codes(&server), 0);

    // The CRL lists the old certificate and not the new one.
    let listed = crl_serials(&server);
    assert!(listed.contains(&old_serial), "the old serial is not on the CRL");
    assert!(!listed.iter().any(|s| s.as_slice() == leaf.raw_serial()));

    // The device's sessions ended.
    let sessions = server.vault().live_sessions(Timestamp::now()).expect("sessions");
    assert!(
        sessions.iter().all(|s| s.device != id),
        "a session of the device survived"
    );

    // The old certificate is refused: on the keep-alive connection opened before, and on a
    // new one.
    let res = old_conn.request("GET", "/v1/documents", &[], b"").expect("request");
    assert_problem(&res, 401, "device-unknown");
    let res = connect_enrolled(&server, &old, Some(&old_token))
        .request("GET", "/v1/documents", &[], b"")
        .expect("request");
    assert_problem(&res, 401, "device-unknown");

    // With the new certificate: the old session is over, the old secret does not sign.
    let res = connect_enrolled(&server, &new, Some(&old_token))
        .request("GET", "/v1/documents", &[], b"")
        .expect("request");
    assert_problem(&res, 401, "session-invalid");
    let mut stale = connect_enrolled(&server, &new, None);
    stale.set_signer(Some(Signer {
        secret: old.secret.clone(),
        ..new.signer(None)
    }));
    let res = stale.request("GET", "/v1/documents", &[], b"").expect("request");
    assert_problem(&res, 401, "signature-mismatch");

    // A new login works, and the device's documents are there.
    let token = log_in(&server, &new, "anna");
    let mut conn = connect_enrolled(&server, &new, Some(&token));
    assert_eq!(list_names(&mut conn), vec!["before renewal.txt".to_owned()]);
    common::server::upload(&mut conn, "after renewal.txt", &[], b"new");

    // The renewal code is used up.
    let res = post_enroll(&server, &renewal, &plain_p256_csr().pem, "again");
    assert_problem(&res, 401, "enrolment-code-invalid");
    assert_eq!(device_count(&server), 1);
}

#[test]
fn a_renewal_code_of_a_device_revoked_since_is_refused() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let csr = plain_p256_csr();
    let e = enrolled(&post_enroll(&server, &code, &csr.pem, "phone"), &csr);
    let id = e.id();
    let renewal = renewal_code(&server, anna.id, id);
    // Revoked as `coffer device revoke` does it: the device, then the CRL.
    server.vault().revoke_device(id).expect("revoke");
    server.vault().write_crl().expect("write the CRL");
    assert!(
        server.vault().create_enrolment(anna.id, Some(id), 600).is_err(),
        "a renewal code was made for a revoked device"
    );

    let new_csr = plain_p256_csr();
    let res = post_enroll(&server, &renewal, &new_csr.pem, "renewed");
    assert_problem(&res, 401, "enrolment-code-invalid");
    // Still revoked, still the old certificate, no new device.
    let device = server.vault().device(id).expect("device");
    assert!(device.body.revoked, "the renewal un-revoked the device");
    assert_eq!(device.body.thumbprint, coffer::pki::thumbprint(&e.leaf_der));
    assert_eq!(device.body.name, "phone");
    assert_eq!(device_count(&server), 1);
    let res = connect_enrolled(&server, &e, None)
        .request("GET", "/v1/documents", &[], b"")
        .expect("request");
    assert_problem(&res, 401, "device-revoked");
    // The refused renewal left the revoked certificate on the CRL.
    let serial = parse_cert(&e.leaf_der).raw_serial().to_vec();
    assert!(crl_serials(&server).contains(&serial));
}

#[test]
fn a_renewal_checks_the_device_name_like_an_enrolment() {
    let server = start_server_with(roomy_options());
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let csr = plain_p256_csr();
    let e = enrolled(&post_enroll(&server, &code, &csr.pem, "phone"), &csr);
    let id = e.id();
    // The names a new enrolment refuses (`a_refused_attempt_does_not_consume_the_code`),
    // and a 60 KiB one (the JSON body may hold up to 64 KiB).
    let bad_names = [
        String::new(),
        "n".repeat(256),
        "n".repeat(60 * 1024),
        "evil\u{1b}[2J".to_owned(),
        "two\nlines".to_owned(),
    ];
    let mut accepted = Vec::new();
    for name in &bad_names {
        // A fresh renewal code each time, in case the previous one was (wrongly) used.
        let renewal = renewal_code(&server, anna.id, id);
        let res = post_enroll(&server, &renewal, &plain_p256_csr().pem, name);
        let stored = server.vault().device(id).expect("device").body.name;
        let left = unused_codes(&server);
        let refused = res.status == 400 && res.problem() == "invalid-request";
        if !refused || stored != "phone" || left != 1 {
            let shown: String = name.chars().take(20).collect();
            accepted.push(format!(
                "name {shown:?} ({} bytes): status {}, stored name now {} bytes, codes left {left}",
                name.len(),
                res.status,
                stored.len()
            ));
        }
        // Back to a known state: the device named "phone", no code left.
        if stored != "phone" || left != 1 {
            let fix = renewal_code(&server, anna.id, id);
            let c = plain_p256_csr();
            enrolled(&post_enroll(&server, &fix, &c.pem, "phone"), &c);
        }
        if left == 1 {
            let c = plain_p256_csr();
            enrolled(&post_enroll(&server, &renewal, &c.pem, "phone"), &c);
        }
        assert_eq!(unused_codes(&server), 0);
    }
    // A renewal checks the device name like a new enrolment (1 to 255 bytes, no control
    // characters): `coffer device list` prints it to the admin's terminal.
    assert!(
        accepted.is_empty(),
        "renewals accepted invalid device names:\n{}",
        accepted.join("\n")
    );
    let renewal = renewal_code(&server, anna.id, id);
    let new_csr = plain_p256_csr();
    enrolled(&post_enroll(&server, &renewal, &new_csr.pem, "renewed"), &new_csr);
    assert_eq!(server.vault().device(id).expect("device").body.name, "renewed");
}

// ---- 8. malformed and oversized requests ----

#[test]
fn malformed_requests_are_invalid_and_oversized_ones_too_large() {
    let server = start_server_with(roomy_options());
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let csr = plain_p256_csr();
    let good = enrol_body(&code, &csr.pem, "phone");

    // The right body with the wrong (or no) content type.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type.map(|t| ("content-type", t)).into_iter().collect();
        let res = post_enroll_raw(&server, &headers, &good);
        assert_problem(&res, 400, "invalid-request");
    }
    // (`application/json` with a parameter and in another case is accepted: see the
    // successful request at the end.)

    // Bodies that are not the expected JSON object.
    let csr_json = serde_json::Value::from(csr.pem.clone());
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        br#"{"code": "x", "csr": "#.to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        serde_json::to_vec(&serde_json::json!({ "code": code, "csr": csr_json })).expect("JSON"),
        serde_json::to_vec(&serde_json::json!({ "code": code, "csr": csr_json, "device_name": "p", "user": "admin" }))
            .expect("JSON"),
        serde_json::to_vec(&serde_json::json!({ "code": 12, "csr": csr_json, "device_name": "p" })).expect("JSON"),
        [good.as_slice(), b"{}"].concat(),
        good[..good.len() - 1].to_vec(),
    ];
    for body in &bodies {
        let res = post_enroll_raw(&server, &[("content-type", "application/json")], body);
        assert_problem(&res, 400, "invalid-request");
    }
    assert_eq!(unused_codes(&server), 1);

    // Over 64 KiB (the valid request padded with trailing white space) is too large; at
    // 64 KiB exactly it is read.
    let limit = 64 * 1024;
    let mut over = good.clone();
    over.resize(limit + 1, b' ');
    let res = post_enroll_raw(&server, &[("content-type", "application/json")], &over);
    assert_problem(&res, 413, "payload-too-large");
    assert_eq!(device_count(&server), 0);
    assert_eq!(unused_codes(&server), 1, "a refused request consumed the code");

    let mut at_limit = good.clone();
    at_limit.resize(limit, b' ');
    let res = post_enroll_raw(
        &server,
        &[("content-type", "Application/JSON; charset=utf-8")],
        &at_limit,
    );
    enrolled(&res, &csr);
    assert_eq!(device_count(&server), 1);
}

#[test]
fn a_login_that_completes_after_a_renewal_makes_no_session_for_the_new_certificate() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = new_code(&server, anna.id);
    let old_csr = p256_csr();
    let old = enrolled(&post_enroll(&server, &code, &old_csr.pem, "phone"), &old_csr);
    // A login request identified the device with its old certificate...
    let seen_at_login = server.vault().device(old.id()).expect("device");
    // ...and a renewal commits while that login is still checking the password.
    let renewal = renewal_code(&server, anna.id, old.id());
    let new_csr = plain_p256_csr();
    let new = enrolled(&post_enroll(&server, &renewal, &new_csr.pem, "phone"), &new_csr);
    let password = coffer::secret::Passphrase::new(password_of("anna"));
    let session = server
        .vault()
        .login(
            &seen_at_login,
            &coffer::app::sessions::Credentials {
                username: "anna",
                password: &password,
                totp: None,
            },
            &coffer::app::sessions::SessionPolicy::from(&test_options().auth),
            coffer::model::Timestamp::now(),
        )
        .expect("the login itself succeeds");
    // The session is bound to the old certificate: useless with the new one.
    let mut conn = connect_enrolled(&server, &new, Some(session.token.expose()));
    let res = conn.request("GET", "/v1/documents", &[], b"").expect("list");
    assert_problem(&res, 401, "session-invalid");
    // A fresh login with the new certificate works.
    let token = log_in(&server, &new, "anna");
    let mut conn = connect_enrolled(&server, &new, Some(&token));
    assert_eq!(list_names(&mut conn), Vec::<String>::new());
}
