//! The certificate lifecycle driven as the real binary: `coffer device revoke` while the
//! server runs (through the admin socket, taking effect on an open connection) and while
//! it is stopped, `keys/crl.pem` listing what was revoked or replaced, enrolment codes
//! (`coffer device enroll --json`, `POST /v1/enroll` with a CSR), server key rotation
//! with a live reload (SIGHUP) checked by clients that pin SPKI hashes, the admin socket
//! itself (mode, removal, stale sockets, a symlink in its place), and `device renew --out`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use common::binary::{ALICE_PASSWORD, Cli, Running, expect_ok, expect_ok_with_stderr, text};
use common::client::{ClientSetup, Connection, Response, Signer, unique_nonce};
use common::server::assert_problem;
use common::*;

/// How long to wait for something the server does by itself (a log line, an exit).
const WAIT: Duration = Duration::from_secs(30);

const P12_PASSWORD: &str = "a long enough password\n";

// ---- the binary ----

/// `coffer` on a [`TestDirs`]: loopback allowed, writes accepted right after a start.
/// Without the passphrase ([`Cli::without_passphrase`]), a command that needs the
/// database either goes through a running server's admin socket or fails.
const CLI: Cli = Cli {
    env: &[
        ("COFFER_ALLOW_CIDRS", "127.0.0.0/8"),
        ("COFFER_MAX_FUTURE_WRITE_SECS", "0"),
    ],
};

/// Runs `coffer ARGS` without a passphrase, next to a running server: it must succeed,
/// so it went through the admin socket (nothing else could open the database), and say
/// nothing about a passphrase. Returns stdout.
#[track_caller]
fn via_socket(dirs: &TestDirs, args: &[&str]) -> String {
    let (stdout, stderr) = expect_ok_with_stderr(
        CLI.without_passphrase(dirs).args(args).output().expect("run coffer"),
        &format!("coffer {args:?} (no passphrase, server running)"),
    );
    assert!(
        !stderr.to_lowercase().contains("passphrase"),
        "coffer {args:?} spoke of a passphrase: {stderr}"
    );
    stdout
}

/// Runs `coffer ARGS` without a passphrase and with no server: it must fail because it
/// needs the passphrase to open the database itself. Returns stderr.
#[track_caller]
fn needs_passphrase(dirs: &TestDirs, args: &[&str]) -> String {
    let out = CLI.without_passphrase(dirs).args(args).output().expect("run coffer");
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "coffer {args:?} without a passphrase or server: {stderr}"
    );
    assert!(stderr.contains("no passphrase"), "coffer {args:?}: {stderr}");
    stderr
}

/// Starts `coffer serve` (not --dev) on 127.0.0.1, allowing 127.0.0.0/8.
fn serve(dirs: &TestDirs) -> (Running, SocketAddr) {
    let mut cmd = CLI.coffer(dirs);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let mut server = Running::spawn(cmd);
    let addr = server.listening_on("coffer serve");
    (server, addr)
}

fn socket_path(dirs: &TestDirs) -> PathBuf {
    dirs.paths.data_dir.join("admin.sock")
}

// ---- devices ----

/// A device's credentials: certificate, key, CA and SigV4 secret.
#[derive(Clone)]
struct Device {
    id: String,
    ca: String,
    cert: String,
    key: String,
    secret: String,
    region: String,
}

impl Device {
    /// The device `device issue --out` or `device renew --out` wrote to `dir`.
    fn load(dir: &Path) -> Self {
        let profile = coffer::client::Profile::load(&dir.join("profile.toml")).unwrap();
        let read = |f: &Path| std::fs::read_to_string(dir.join(f)).unwrap();
        Self {
            id: profile.access_key_id.clone(),
            ca: read(&profile.ca),
            cert: read(&profile.cert),
            key: read(&profile.key),
            secret: profile.secret_access_key.expose().to_owned(),
            region: profile.region.clone(),
        }
    }

    fn signer(&self) -> Signer {
        Signer {
            access_key: self.id.clone(),
            secret: self.secret.clone(),
            region: self.region.clone(),
            token: None,
        }
    }

    fn client(&self) -> Arc<ClientConfig> {
        ClientSetup::new(&self.ca, Some((&self.cert, &self.key))).build()
    }

    /// The serial number of its (leaf) certificate.
    fn serial(&self) -> Vec<u8> {
        serial_of(&self.cert)
    }

    /// A connection presenting the certificate and signing with the secret (no session).
    fn connect_with(&self, config: Arc<ClientConfig>, addr: SocketAddr) -> Connection {
        let mut conn = Connection::open(config, addr, "localhost").expect("TLS connection");
        conn.set_signer(Some(self.signer()));
        conn
    }

    fn connect(&self, addr: SocketAddr) -> Connection {
        self.connect_with(self.client(), addr)
    }

    /// A connection on which alice is logged in.
    fn session(&self, addr: SocketAddr) -> Connection {
        self.session_with(self.client(), addr)
    }

    fn session_with(&self, config: Arc<ClientConfig>, addr: SocketAddr) -> Connection {
        let mut conn = self.connect_with(config, addr);
        let res = login(&mut conn);
        assert_eq!(res.status, 200, "login of device {}: {}", self.id, text(&res.body));
        conn
    }
}

/// Logs alice in on `conn`; on success its signer carries the session from then on.
fn login(conn: &mut Connection) -> Response {
    let body = serde_json::json!({ "username": "alice", "password": ALICE_PASSWORD }).to_string();
    // Two logins signed in the same second must differ, or the second is a replay.
    let nonce = unique_nonce();
    let res = conn
        .request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
            body.as_bytes(),
        )
        .expect("login request");
    if res.status == 200 {
        let token = res.json()["token"].as_str().expect("token").to_owned();
        conn.signer_mut().expect("a signer").token = Some(token);
    }
    res
}

fn list(conn: &mut Connection) -> Response {
    conn.request("GET", "/v1/documents", &[], b"").expect("listing")
}

#[track_caller]
fn assert_lists(conn: &mut Connection, what: &str) {
    let res = list(conn);
    assert_eq!(res.status, 200, "{what}: {}", text(&res.body));
}

/// `coffer device issue --user alice --out ROOT/NAME`.
fn issue(dirs: &TestDirs, name: &str) -> Device {
    let out = dirs.root.path().join(name);
    let p12 = write_file(dirs.root.path(), &format!("{name}.p12pass"), P12_PASSWORD);
    let mut cmd = CLI.coffer(dirs);
    cmd.args(["device", "issue", "--user", "alice", "--out"])
        .arg(&out)
        .arg("--p12-password-file")
        .arg(&p12);
    expect_ok(cmd.output().unwrap(), "device issue");
    Device::load(&out)
}

/// The serial number of the first certificate in `pem`.
fn serial_of(pem: &str) -> Vec<u8> {
    let der = coffer::pki::from_pem(pem, "CERTIFICATE", "certificate").unwrap();
    coffer::pki::cert_info(&der, "certificate").unwrap().serial
}

/// The serials `keys/crl.pem` lists, after checking that the CA signed it.
fn crl_serials(dirs: &TestDirs) -> Vec<Vec<u8>> {
    let path = coffer::app::pki::crl_path(&dirs.paths);
    let pem = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let der = coffer::pki::from_pem(&pem, "X509 CRL", "crl.pem").expect("a PEM X509 CRL");
    let (rest, crl) = x509_parser::parse_x509_crl(&der).expect("a DER CRL");
    assert!(rest.is_empty(), "trailing bytes after the CRL");
    let ca_der = coffer::app::pki::read_cert(&coffer::app::pki::ca_cert_path(&dirs.paths), "ca.crt").unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    crl.verify_signature(ca.public_key())
        .expect("the CRL is signed by the CA");
    assert_eq!(crl.issuer(), ca.subject(), "the CRL's issuer");
    crl.iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect()
}

/// The rows of `device list` as (id, status).
fn device_statuses(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .skip(1)
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words[0].to_owned(), words[2].to_owned())
        })
        .collect()
}

// ---- 4. revocation while the server runs ----

#[test]
fn revoking_through_the_admin_socket_refuses_the_next_request_on_an_open_connection() {
    let dirs = CLI.initialised_with_alice();
    let phone = issue(&dirs, "phone");
    let other = issue(&dirs, "tablet");
    let (mut server, addr) = serve(&dirs);

    let mut conn = phone.session(addr);
    assert_lists(&mut conn, "before the revocation");
    let mut other_conn = other.session(addr);

    // A separate process with no passphrase: only the running server can execute it.
    let stdout = via_socket(&dirs, &["device", "revoke", &phone.id]);
    assert!(stdout.contains(&format!("revoked device {}", phone.id)), "{stdout}");
    assert!(stdout.contains("lists 1 certificate(s)"), "{stdout}");

    // The next request on the same keep-alive connection is refused.
    assert_problem(&list(&mut conn), 401, "device-revoked");
    // And on a new connection.
    let mut fresh = phone.connect(addr);
    assert_problem(&login(&mut fresh), 401, "device-revoked");
    // The other device goes on.
    assert_lists(&mut other_conn, "another device after the revocation");

    let listed = crl_serials(&dirs);
    assert_eq!(listed, vec![phone.serial()], "the CRL after the revocation");
    let statuses = device_statuses(&via_socket(&dirs, &["device", "list"]));
    assert!(
        statuses.contains(&(phone.id.clone(), "revoked".to_owned())),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(other.id.clone(), "active".to_owned())),
        "{statuses:?}"
    );
    // A revoked device cannot be renewed back to life, and nothing is written.
    let out = dirs.root.path().join("renewed");
    let p12 = write_file(dirs.root.path(), "renew.p12pass", P12_PASSWORD);
    let res = CLI
        .without_passphrase(&dirs)
        .args(["device", "renew", &phone.id, "--out"])
        .arg(&out)
        .arg("--p12-password-file")
        .arg(&p12)
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1), "{}", text(&res.stderr));
    assert!(text(&res.stderr).contains("revoked"), "{}", text(&res.stderr));
    assert!(!out.exists(), "renewing a revoked device created --out");
    assert_eq!(crl_serials(&dirs), vec![phone.serial()]);
    assert!(server.is_running());
    server.kill();
}

// ---- 5. revocation with the server stopped ----

#[test]
fn revoking_with_the_server_stopped_opens_the_database_and_the_next_start_refuses_the_device() {
    let dirs = CLI.initialised_with_alice();
    let phone = issue(&dirs, "phone");
    // No server: without the passphrase it cannot be done...
    needs_passphrase(&dirs, &["device", "revoke", &phone.id]);
    // ...with it, the command opens the database itself.
    let stdout = CLI.ok(&dirs, &["device", "revoke", &phone.id]);
    assert!(stdout.contains(&format!("revoked device {}", phone.id)), "{stdout}");
    assert_eq!(crl_serials(&dirs), vec![phone.serial()], "the CRL after the revocation");

    let (mut server, addr) = serve(&dirs);
    let mut conn = phone.connect(addr);
    assert_problem(&login(&mut conn), 401, "device-revoked");
    let mut conn = phone.connect(addr);
    assert_problem(&list(&mut conn), 401, "device-revoked");
    // The start rewrote the CRL; it still lists the device.
    assert_eq!(crl_serials(&dirs), vec![phone.serial()], "the CRL after the start");
    server.kill();
}

// ---- 6. enrolment codes ----

/// `coffer device enroll --json` output, checked for its fields.
struct Code {
    code: String,
    url: String,
    pins: [String; 2],
}

#[track_caller]
fn parse_code(stdout: &str) -> Code {
    let json: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let obj = json.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "expires", "pins", "url"], "{stdout}");
    let code = json["code"].as_str().expect("code").to_owned();
    assert_eq!(code.len(), 39, "{code}");
    assert!(code.split('-').all(|g| g.len() == 4), "{code}");
    let expires = time::OffsetDateTime::parse(
        json["expires"].as_str().expect("expires"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("expires is RFC 3339");
    let now = time::OffsetDateTime::now_utc();
    assert!(
        expires > now + time::Duration::hours(23) && expires <= now + time::Duration::hours(24),
        "the default --ttl is 24h: expires {expires}, now {now}"
    );
    let pins: Vec<String> = json["pins"]
        .as_array()
        .expect("pins")
        .iter()
        .map(|p| p.as_str().expect("a pin").to_owned())
        .collect();
    Code {
        code,
        url: json["url"].as_str().expect("url").to_owned(),
        pins: pins.try_into().expect("two pins"),
    }
}

/// `coffer pins --json` (needs no passphrase): (current, next).
fn pins(dirs: &TestDirs) -> (String, String) {
    let out = CLI.without_passphrase(dirs).args(["pins", "--json"]).output().unwrap();
    let stdout = expect_ok(out, "coffer pins --json");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let pin = |k: &str| {
        let p = json[k].as_str().unwrap_or_else(|| panic!("{k}: {stdout}")).to_owned();
        assert!(p.starts_with("sha256/") && p.len() == 7 + 44, "{p}");
        p
    };
    (pin("current"), pin("next"))
}

/// Enrols a device with `code` through `POST /v1/enroll` (no client certificate), with a
/// P-256 key made here as a phone would.
fn enrol(addr: SocketAddr, ca: &str, code: &str, name: &str) -> Result<Device, Response> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut conn = Connection::open(ClientSetup::new(ca, None).build(), addr, "localhost").expect("TLS connection");
    let body = serde_json::json!({ "code": code, "csr": csr, "device_name": name }).to_string();
    let res = conn
        .request(
            "POST",
            "/v1/enroll",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .expect("enrol request");
    if res.status != 201 {
        return Err(res);
    }
    let json = res.json();
    let chain = json["certificate_chain"].as_str().expect("certificate_chain");
    // The chain is the device certificate, then the CA.
    assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2, "{chain}");
    assert!(chain.ends_with(ca), "the chain does not end with ca.crt");
    Ok(Device {
        id: json["device_id"].as_str().expect("device_id").to_owned(),
        ca: ca.to_owned(),
        cert: chain.to_owned(),
        key: key.serialize_pem(),
        secret: json["secret_access_key"].as_str().expect("secret").to_owned(),
        region: json["region"].as_str().expect("region").to_owned(),
    })
}

#[test]
fn enrolment_codes_from_a_stopped_and_a_running_server_both_enrol_a_device() {
    let dirs = CLI.initialised_with_alice();
    let ca = std::fs::read_to_string(coffer::app::pki::ca_cert_path(&dirs.paths)).unwrap();
    let (current, next) = pins(&dirs);

    // Server stopped: the command opens the database (so it needs the passphrase).
    needs_passphrase(&dirs, &["device", "enroll", "--user", "alice", "--json"]);
    let offline = parse_code(&CLI.ok(&dirs, &["device", "enroll", "--user", "alice", "--json"]));
    assert_eq!(offline.pins, [current.clone(), next.clone()]);
    // The URL comes from the CLI's configuration: the certificate's first name and the
    // default port.
    assert_eq!(offline.url, "https://localhost:8443");

    let (mut server, addr) = serve(&dirs);
    // Server running: through the admin socket; the URL is the server's own.
    let online = parse_code(&via_socket(&dirs, &["device", "enroll", "--user", "alice", "--json"]));
    assert_eq!(online.pins, [current.clone(), next.clone()]);
    assert_eq!(online.url, format!("https://localhost:{}", addr.port()));
    assert_ne!(online.code, offline.code);
    assert_eq!(pins(&dirs), (current, next), "enrolment changed the pins");

    let mut enrolled = Vec::new();
    for (what, code) in [("offline code", &offline.code), ("online code", &online.code)] {
        let device = enrol(addr, &ca, code, what)
            .unwrap_or_else(|res| panic!("enrolment with the {what}: {} {}", res.status, text(&res.body)));
        let mut conn = device.session(addr);
        assert_lists(&mut conn, &format!("device enrolled with the {what}"));
        // A code is single-use.
        let again = enrol(addr, &ca, code, "again")
            .err()
            .expect("a used code enrolled again");
        assert_problem(&again, 401, "enrolment-code-invalid");
        enrolled.push(device.id);
    }
    let statuses = device_statuses(&via_socket(&dirs, &["device", "list"]));
    assert_eq!(
        statuses,
        enrolled
            .iter()
            .map(|id| (id.clone(), "active".to_owned()))
            .collect::<Vec<_>>()
    );
    server.kill();
}

// ---- 7. server key rotation with SIGHUP ----

/// Accepts the server's certificate if and only if its SPKI pin is one of `pins` (as
/// mobile apps pin), and verifies the handshake signature with its key.
#[derive(Debug)]
struct Pinned {
    pins: Vec<String>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let info = coffer::pki::cert_info(end_entity.as_ref(), "server certificate")
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let pin = coffer::pki::spki_pin(&info.spki);
        if self.pins.contains(&pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("server key pin mismatch ({pin})")))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client presenting `device` that trusts only a server key pinned in `pins`.
fn pinned_client(device: &Device, pins: &[&str]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Pinned {
        pins: pins.iter().map(|p| (*p).to_owned()).collect(),
        algorithms: provider.signature_verification_algorithms,
    };
    let certs: Vec<_> = CertificateDer::pem_slice_iter(device.cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(device.key.as_bytes()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

#[track_caller]
fn assert_pin_refused(config: Arc<ClientConfig>, addr: SocketAddr, what: &str) {
    match Connection::open(config, addr, "localhost") {
        Ok(_) => panic!("{what}: the handshake succeeded"),
        Err(e) => assert!(e.to_string().contains("pin mismatch"), "{what}: failed otherwise: {e}"),
    }
}

#[test]
fn rotating_the_server_key_and_sighup_switch_new_handshakes_to_the_backup_pin() {
    let dirs = CLI.initialised_with_alice();
    let phone = issue(&dirs, "phone");
    let (mut server, addr) = serve(&dirs);
    let (old_current, old_next) = pins(&dirs);
    assert_ne!(old_current, old_next);

    // Before the rotation the pinning client is right about which key is in use.
    let mut before = phone.session_with(pinned_client(&phone, &[&old_current]), addr);
    assert_lists(&mut before, "connection pinned to the current key");
    assert_pin_refused(
        pinned_client(&phone, &[&old_next]),
        addr,
        "pinned to the next key before the rotation",
    );

    let stdout = via_socket(&dirs, &["cert", "rotate-server-key"]);
    assert!(stdout.contains(&format!("{old_current}  retired")), "{stdout}");
    assert!(stdout.contains(&format!("{old_next}  current")), "{stdout}");
    server.wait_stderr_count("admin command: reloaded the server certificate", 1, WAIT, "rotation");
    server.signal(rustix::process::Signal::HUP);
    server.wait_stderr_count("SIGHUP: reloaded the server certificate", 1, WAIT, "SIGHUP");
    assert!(server.is_running(), "SIGHUP ended the server");

    // The connection opened before the rotation is not dropped.
    assert_lists(&mut before, "connection opened before the rotation");
    // A client pinning only the old backup pin connects and is served.
    let mut after = phone.session_with(pinned_client(&phone, &[&old_next]), addr);
    assert_lists(&mut after, "connection pinned to the old next key");
    // A client pinning only the retired key is refused by its own check.
    assert_pin_refused(
        pinned_client(&phone, &[&old_current]),
        addr,
        "pinned to the retired key after the rotation",
    );

    let (new_current, new_next) = pins(&dirs);
    assert_eq!(new_current, old_next, "the backup pin did not become current");
    assert_ne!(new_next, old_next);
    assert_ne!(new_next, old_current);
    let server_cert = std::fs::read_to_string(coffer::app::pki::server_cert_path(&dirs.paths)).unwrap();
    let der = coffer::pki::from_pem(&server_cert, "CERTIFICATE", "server.crt").unwrap();
    assert_eq!(
        coffer::pki::spki_pin(&coffer::pki::cert_info(&der, "server.crt").unwrap().spki),
        old_next
    );

    // A second SIGHUP reloads again and the server still runs and serves.
    server.signal(rustix::process::Signal::HUP);
    server.wait_stderr_count("SIGHUP: reloaded the server certificate", 2, WAIT, "second SIGHUP");
    assert!(server.is_running(), "the second SIGHUP ended the server");
    assert_lists(&mut before, "the old connection after two SIGHUPs");
    assert_lists(&mut after, "the new connection after two SIGHUPs");
    server.kill();
}

// ---- 8. the admin socket ----

#[track_caller]
fn assert_owner_only_socket(dirs: &TestDirs) {
    let meta = std::fs::symlink_metadata(socket_path(dirs)).expect("data/admin.sock exists");
    assert!(meta.file_type().is_socket(), "data/admin.sock is not a socket");
    assert_eq!(meta.mode() & 0o7777, 0o600, "data/admin.sock mode");
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    // The socket is bound in a private staging directory first; none is left behind.
    let staging: Vec<String> = std::fs::read_dir(&dirs.paths.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".a"))
        .collect();
    assert!(staging.is_empty(), "staging directories left: {staging:?}");
}

#[test]
fn the_admin_socket_is_owner_only_and_admin_commands_open_the_database_after_a_stop() {
    let dirs = CLI.initialised_with_alice();
    let phone = issue(&dirs, "phone");
    let (mut server, _) = serve(&dirs);
    assert_owner_only_socket(&dirs);
    let through_socket = via_socket(&dirs, &["device", "list"]);
    assert!(through_socket.contains(&phone.id), "{through_socket}");

    // SIGTERM: a graceful stop removes the socket.
    server.signal(rustix::process::Signal::TERM);
    let (status, stderr) = server.wait_exit(WAIT, "coffer serve after SIGTERM");
    assert!(status.success(), "exit after SIGTERM: {status:?}; stderr: {stderr}");
    assert!(
        std::fs::symlink_metadata(socket_path(&dirs)).is_err(),
        "data/admin.sock is left after a graceful stop"
    );
    needs_passphrase(&dirs, &["device", "list"]);
    assert_eq!(
        CLI.ok(&dirs, &["device", "list"]),
        through_socket,
        "the same list both ways"
    );

    // SIGKILL: the socket file stays behind, stale; commands still open the database, and
    // the next server replaces it.
    let (mut server, _) = serve(&dirs);
    assert_owner_only_socket(&dirs);
    server.kill();
    assert!(
        std::fs::symlink_metadata(socket_path(&dirs)).is_ok_and(|m| m.file_type().is_socket()),
        "a killed server removed its socket (expected it to be left stale)"
    );
    needs_passphrase(&dirs, &["device", "list"]);
    assert_eq!(CLI.ok(&dirs, &["device", "list"]), through_socket);
    let (mut server, new_addr) = serve(&dirs);
    assert_owner_only_socket(&dirs);
    assert_eq!(via_socket(&dirs, &["device", "list"]), through_socket);
    let mut conn = phone.session(new_addr);
    assert_lists(&mut conn, "after replacing a stale socket");
    server.kill();
}

#[test]
fn a_symlink_at_the_socket_path_stops_serve_and_is_left_alone() {
    let dirs = CLI.initialised_with_alice();
    let link = socket_path(&dirs);
    let target = dirs.root.path().join("elsewhere.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let mut cmd = CLI.coffer(&dirs);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let mut run = Running::spawn(cmd);
    let (status, stderr) = run.wait_exit(WAIT, "coffer serve with a symlinked admin.sock");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&link.display().to_string()) && stderr.contains("symbolic link"),
        "the message does not name the symlink: {stderr}"
    );
    assert!(run.try_next_line().is_none(), "it printed a listening address");
    let meta = std::fs::symlink_metadata(&link).expect("the symlink is still there");
    assert!(meta.file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), target, "the symlink was changed");
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "something was created through the symlink"
    );
    // Admin commands refuse it as well rather than connect through it.
    let out = CLI.coffer(&dirs).args(["device", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("symbolic link"), "{}", text(&out.stderr));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn serve_refuses_a_data_directory_others_could_write_and_starts_once_it_is_private() {
    let dirs = CLI.initialised_with_alice();
    let data = &dirs.paths.data_dir;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o770)).unwrap();
    let mut cmd = CLI.coffer(&dirs);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let mut run = Running::spawn(cmd);
    let (status, stderr) = run.wait_exit(WAIT, "coffer serve with a group-writable data dir");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("writable by group or others") && stderr.contains("chmod 700"),
        "{stderr}"
    );
    assert!(std::fs::symlink_metadata(socket_path(&dirs)).is_err());
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (mut server, _) = serve(&dirs);
    assert_owner_only_socket(&dirs);
    server.kill();
}

#[test]
fn a_start_that_fails_after_binding_the_admin_socket_removes_it() {
    let dirs = CLI.initialised_with_alice();
    // The HTTPS address is taken, so `serve` fails after it bound the admin socket.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = CLI.coffer(&dirs);
    cmd.args(["serve", "--listen", &addr]);
    let mut run = Running::spawn(cmd);
    let (status, stderr) = run.wait_exit(WAIT, "coffer serve on a taken port");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(
        std::fs::symlink_metadata(socket_path(&dirs)).is_err(),
        "a failed start left data/admin.sock behind"
    );
    drop(taken);
    assert!(!CLI.ok(&dirs, &["device", "list"]).is_empty());
    let (mut server, _) = serve(&dirs);
    assert_owner_only_socket(&dirs);
    server.kill();
}

// ---- 7b. SIGHUP reads the files by itself, and keeps a bad certificate out ----

#[test]
fn sighup_keeps_the_current_certificate_when_server_crt_is_bad_and_reloads_it_when_fixed() {
    let dirs = CLI.initialised_with_alice();
    let phone = issue(&dirs, "phone");
    let (mut server, addr) = serve(&dirs);
    let (current, _) = pins(&dirs);
    let path = coffer::app::pki::server_cert_path(&dirs.paths);
    let good = std::fs::read(&path).unwrap();

    // A valid certificate for another key (the CA's) is not loaded.
    std::fs::copy(coffer::app::pki::ca_cert_path(&dirs.paths), &path).unwrap();
    server.signal(rustix::process::Signal::HUP);
    let stderr = server.wait_stderr_count("SIGHUP: kept the current server certificate", 1, WAIT, "bad server.crt");
    assert!(stderr.contains("does not match the server key"), "{stderr}");
    assert!(server.is_running(), "SIGHUP with a bad server.crt ended the server");
    let mut conn = phone.session_with(pinned_client(&phone, &[&current]), addr);
    assert_lists(&mut conn, "after SIGHUP with a bad server.crt");

    std::fs::write(&path, &good).unwrap();
    server.signal(rustix::process::Signal::HUP);
    server.wait_stderr_count(
        "SIGHUP: reloaded the server certificate",
        1,
        WAIT,
        "restored server.crt",
    );
    let mut conn = phone.session_with(pinned_client(&phone, &[&current]), addr);
    assert_lists(&mut conn, "after SIGHUP with the restored server.crt");
    server.kill();
}

// ---- 9. device renewal with a new key ----

#[test]
fn renewing_a_device_through_the_socket_keeps_its_id_and_retires_the_old_certificate() {
    let dirs = CLI.initialised_with_alice();
    let phone = issue(&dirs, "phone");
    let (mut server, addr) = serve(&dirs);
    let mut old_conn = phone.session(addr);
    assert_lists(&mut old_conn, "before the renewal");

    let out = dirs.root.path().join("renewed");
    let p12 = write_file(dirs.root.path(), "renew.p12pass", P12_PASSWORD);
    let stdout = via_socket(
        &dirs,
        &[
            "device",
            "renew",
            &phone.id,
            "--out",
            out.to_str().unwrap(),
            "--p12-password-file",
            p12.to_str().unwrap(),
        ],
    );
    assert!(stdout.contains(&format!("renewed device {}", phone.id)), "{stdout}");
    let renewed = Device::load(&out);
    assert_eq!(renewed.id, phone.id, "the device id changed");
    assert_ne!(renewed.serial(), phone.serial());
    assert_ne!(renewed.key, phone.key, "no new key");
    assert_ne!(renewed.secret, phone.secret, "no new signing secret");

    // The new files work.
    let mut conn = renewed.session(addr);
    assert_lists(&mut conn, "renewed device");
    // The old certificate is refused, on its open connection and on a new one.
    assert_problem(&list(&mut old_conn), 401, "device-unknown");
    let mut fresh = phone.connect(addr);
    assert_problem(&login(&mut fresh), 401, "device-unknown");
    // The CRL lists the old serial only.
    assert_eq!(crl_serials(&dirs), vec![phone.serial()]);
    assert_eq!(
        device_statuses(&via_socket(&dirs, &["device", "list"])),
        vec![(phone.id.clone(), "active".to_owned())]
    );
    assert_lists(&mut conn, "renewed device, again");
    // Revoking it now lists the current certificate too, and keeps the retired one.
    via_socket(&dirs, &["device", "revoke", &phone.id]);
    assert_problem(&list(&mut conn), 401, "device-revoked");
    let mut listed = crl_serials(&dirs);
    listed.sort();
    let mut expected = vec![phone.serial(), renewed.serial()];
    expected.sort();
    assert_eq!(listed, expected, "the CRL after revoking the renewed device");
    server.kill();
}
