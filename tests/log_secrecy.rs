//! No secret reaches the server log, whatever a client sends and however it is refused.
//!
//! The real `coffer serve` runs with `COFFER_LOG_FORMAT=json` and `COFFER_LOG_LEVEL=debug`
//! (the most it ever writes) and is set up through its own admin socket: users with
//! passwords, devices with PKCS#12 passwords, a TOTP secret, an enrolment code, and at
//! the end a new passphrase. Real mTLS clients then drive what a client can do: logins
//! (with a one-time code too), uploads, listings, downloads, metadata changes, an
//! enrolment, ERP writes and reads (through a fake ERP, a slow one and a closed port),
//! and a refusal of every problem type a client can provoke. A second run, with few
//! connections and requests allowed and the default `auth.max_future_write_secs`, adds
//! `too-many-connections`, `too-many-requests` and a write refused right after the start.
//! Then the server's stderr is checked:
//!
//! 1. none of the secrets (passphrases, passwords, wrong passwords, session tokens,
//!    signing secrets, one-time codes and the TOTP secret, enrolment codes, PKCS#12
//!    passwords, device keys, document content, names, titles and tags, ERP keys and
//!    values), nor their hex, base64 or base32 forms, appears anywhere in it;
//! 2. every line is one JSON object from the log subscriber (`coffer listening on` goes
//!    to stdout; nothing else is allowed);
//! 3. every request made has exactly one `coffer::request` line, found by the
//!    `X-Request-Id` of its answer, with its method, status, problem type, route
//!    *pattern* (never the raw path), device, user, address, body sizes and duration, and
//!    there are no other request lines; every `coffer::auth` line names a request made,
//!    with its problem type, and a route pattern;
//! 4. every problem type provoked appears in some line's `problem` field.
//!
//! The checks are then shown to catch a leaked secret, a non-JSON line, a raw path in
//! place of a route pattern, a missing or doubled request line and a missing problem type,
//! on altered copies of the log.
//!
//! Two fixtures no command can make are made with the library before the server starts:
//! a certificate of the coffer's CA that no device holds (`device-unknown`), and a device
//! whose record expired while its certificate has not (`device-expired`: the handshake
//! already refuses an expired certificate, so only such a record reaches the per-request
//! check).
//!
//! Not exercised, as no client can provoke them: `integrity-error` (needs the database
//! file altered on disk), `unavailable` (database maintenance, more than
//! `auth.max_password_checks` logins waiting 10 s for a slot, or a full replay table of a
//! million writes), `internal-error` (a server fault). Nor `upstream-busy`: it needs ERP
//! reads racing for `erp.max_upstream_fetches` turns, and whether the loser gets 503 or
//! 504 depends on timing. `too-many-writes` is provoked through the per-device login
//! budget; its other cause, 10,000 live write signatures of one device, is not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use coffer::app::Vault;
use coffer::app::principals::{DeviceBody, UserBody};
use coffer::crypto::kdf::KdfParams;
use coffer::crypto::totp;
use coffer::model::{DeviceId, Role, Timestamp, UserId};
use coffer::pki::KeyDer;
use coffer::secret::Passphrase;
use coffer::store::StoreOptions;
use rustls::ClientConfig;
use serde_json::{Value, json};
use time::OffsetDateTime;

use common::binary::{Running, expect_ok, isolate_cheap, text};
use common::client::{ClientSetup, Connection, Response, Signer, raw_tls, read_response, unique_nonce};
use common::erp::FakeErp;
use common::served::{WAIT, socket_path};
use common::server::sha256_hex;
use common::{CHEAP_KDF, TestDirs, coffer_command, empty_dirs, write_file};

// ---- the secrets, distinctive so that a substring search means something ----

const PASSPHRASE_FIRST: &str = "passphrase-Secr3t-first-4c19e0";
const PASSPHRASE_SECOND: &str = "passphrase-Secr3t-second-b83d27";
const DOC_CONTENT: &str = "DOC-CONTENT-5f2a9c confidential payroll figures";
const DOC_NAME: &str = "name-secret-payroll-0b7e.pdf";
const DOC_PRIVATE_NAME: &str = "name-secret-private-71c4.txt";
const DOC_TITLE: &str = "title-secret-payroll-d0a3";
const DOC_TITLE_2: &str = "title-secret-renamed-52e8";
const DOC_TITLE_REPLAY: &str = "title-secret-replayed-c4f1";
const DOC_TAG: &str = "tag-secret-payroll-93b5";
const DOC_TAG_BAD: &str = "tag-secret-wrongtype-1d2e";
const PAUSED_NAME: &str = "name-secret-stalled-a8f0.bin";
const BIG_NAME: &str = "name-secret-toolarge-6e3b.bin";
const MISMATCH_NAME: &str = "name-secret-mismatch-30cd.bin";
const EARLY_NAME: &str = "name-secret-early-e15a.bin";
const PUSHED_KEY: &str = "erpkey-secret-pushed-7a61";
const PUSHED_VALUE: &str = "erpval-secret-pushed-2b90";
const PUSHED_VALUE_2: &str = "erpval-secret-pushed-again-88e3";
const BATCH_KEY: &str = "erpkey-secret-batch-4f0d";
const BATCH_VALUE: &str = "erpval-secret-batch-c5a2";
const BROKEN_VALUE: &str = "erpval-secret-broken-0e9f";
const MISSING_KEY: &str = "erpkey-secret-missing-b6c7";
const CUSTOMER_KEY: &str = "erpkey-secret-customer-19f2";
const CUSTOMER_VALUE: &str = "erpval-secret-customer-e07b";
const SLOW_KEY: &str = "erpkey-secret-slow-5d3a";
const SLOW_VALUE: &str = "erpval-secret-slow-a94c";
const DOWN_KEY: &str = "erpkey-secret-down-61be";
const GARBLED_KEY: &str = "erpkey-secret-garbled-3c8e";
const GARBLED_VALUE: &str = "erpval-secret-garbled-f21d";
const NOT_BATCH_KEY: &str = "erpkey-secret-notbatch-d9a4";
const SPACED_TITLE: &str = "title-secret  spaced  0c6b";
const BOGUS_TOKEN: &str = "tok-Secr3t-bogus-6a0f3e9d2c";
const WRONG_SIGNING_SECRET: &str = "sigsecret-Secr3t-wrong-55d1";
const BOGUS_CODE: &str = "ENROL-Secr3t-BOGUS-8c2e";
const BROKEN_CODE: &str = "ENROL-Secr3t-BROKEN-3f7a";
const BOGUS_TOTP: &str = "otp-Secr3t-7391";
const CSR_GARBAGE: &str = "csr-Secr3t-garbage-4e02";
const QUERY_SECRET: &str = "query-secret-unknown-9a1c";
const UNKNOWN_PATH_SECRET: &str = "path-secret-unknown-d3b8";

fn password_of(user: &str) -> String {
    format!("pw-Secr3t-{user}-7e1b")
}

fn wrong_password(n: usize) -> String {
    format!("pw-Secr3t-wrong-{n}-91ac")
}

fn p12_password_of(device: &str) -> String {
    format!("p12pw-Secr3t-{device}-2f6d")
}

/// What must not be in the log: each secret with the forms it could take there.
#[derive(Default)]
struct Secrets {
    /// (what, needle): searched for as a substring of the whole log.
    needles: Vec<(String, String)>,
    /// (what, digits): one-time codes, too short for a plain search (a timestamp's
    /// fraction could hold them): searched for outside the `timestamp` field, as words of
    /// their own.
    codes: Vec<(String, String)>,
}

impl Secrets {
    fn add(&mut self, what: &str, needle: String) {
        if !self.needles.iter().any(|(_, n)| *n == needle) {
            self.needles.push((what.to_owned(), needle));
        }
    }

    /// A secret text: as is, and its hex and base64 forms.
    fn text(&mut self, what: &str, value: &str) {
        assert!(value.len() >= 8, "{what}: too short to search for");
        self.add(what, value.to_owned());
        self.bytes(&format!("{what} (its bytes)"), value.as_bytes());
    }

    /// Secret bytes, in hex (both cases), base64 (standard and URL-safe) and base32.
    fn bytes(&mut self, what: &str, bytes: &[u8]) {
        let hex = hex(bytes);
        self.add(&format!("{what} as hex"), hex.to_ascii_uppercase());
        self.add(&format!("{what} as hex"), hex);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.add(&format!("{what} as base64"), b64.trim_end_matches('=').to_owned());
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        self.add(&format!("{what} as base64url"), b64url);
        let b32 = data_encoding::BASE32_NOPAD.encode(bytes);
        self.add(&format!("{what} as base32"), b32);
    }

    /// A random secret handed out by the server (token, signing secret, code): as is,
    /// and, when it is base64 or base32 of at least 12 bytes, the other forms of those
    /// bytes.
    fn random(&mut self, what: &str, value: &str) {
        self.text(what, value);
        let trimmed = value.trim_end_matches('=');
        let engines = [
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ];
        let decoded = engines
            .iter()
            .find_map(|e| e.decode(trimmed).ok())
            .or_else(|| data_encoding::BASE32_NOPAD.decode(trimmed.as_bytes()).ok());
        if let Some(raw) = decoded.filter(|r| r.len() >= 12) {
            self.bytes(&format!("{what} (decoded)"), &raw);
        }
    }

    /// A one-time code.
    fn code(&mut self, what: &str, digits: &str) {
        self.codes.push((what.to_owned(), digits.to_owned()));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- what was sent, to find in the log ----

/// A device and its owner as the log names them.
#[derive(Clone, Copy, Debug)]
struct Who {
    device: DeviceId,
    user: UserId,
}

/// One request made and the answer it got.
#[derive(Debug)]
struct Sent {
    what: String,
    request_id: String,
    method: String,
    status: u16,
    problem: Option<String>,
    route: &'static str,
    who: Option<Who>,
    body_out: usize,
    body_in: usize,
}

/// Every route pattern of the API, and what unrouted requests are logged as.
const ROUTES: [&str; 8] = [
    "/v1/enroll",
    "/v1/session",
    "/v1/documents",
    "/v1/documents/{id}",
    "/v1/documents/{id}/meta",
    "/v1/erp/{collection}",
    "/v1/erp/{collection}/{key}",
    "(no route)",
];

/// A connection beyond `limits.max_connections`.
const TOO_MANY_CONNECTIONS: &str = "too-many-connections";

/// Every problem type a client can provoke: each must be provoked, and logged.
const PROVOKED: [&str; 36] = [
    "client-certificate-required",
    "device-unknown",
    "device-revoked",
    "device-expired",
    "user-disabled",
    "signature-required",
    "signature-invalid",
    "signature-mismatch",
    "access-key-mismatch",
    "request-time-skewed",
    "signed-before-start",
    "replayed-request",
    "payload-hash-mismatch",
    "session-required",
    "session-invalid",
    "login-failed",
    "totp-required",
    "account-locked",
    "too-many-auth-failures",
    "too-many-writes",
    "enrolment-code-invalid",
    "csr-invalid",
    "too-many-enrolments",
    "role-not-permitted",
    "not-permitted",
    "not-found",
    "method-not-allowed",
    "invalid-request",
    "payload-too-large",
    "range-not-satisfiable",
    "request-timeout",
    "too-many-transfers",
    "upstream-failed",
    "upstream-timeout",
    "too-many-requests",
    TOO_MANY_CONNECTIONS,
];

// ---- requests ----

/// A device a client calls as: its certificate and key, its ids (`None` for a
/// certificate no device holds), its signing secret and session token.
#[derive(Clone)]
struct Dev {
    label: String,
    cert_pem: String,
    key_pem: String,
    device: Option<DeviceId>,
    user: Option<UserId>,
    secret: String,
    token: Option<String>,
}

impl Dev {
    fn signer(&self) -> Signer {
        Signer {
            access_key: self.device.map(|d| d.to_string()).unwrap_or_default(),
            secret: self.secret.clone(),
            region: "local".to_owned(),
            token: self.token.clone(),
        }
    }

    fn who(&self) -> Option<Who> {
        Some(Who {
            device: self.device?,
            user: self.user?,
        })
    }
}

/// A request to send: method, target, headers (signed when the connection signs), body,
/// and the route pattern the log must name. Writes carry a fresh `X-Coffer-Nonce`, so a
/// write repeated within a second is not a replay.
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    route: &'static str,
}

fn req(method: &str, target: &str, route: &'static str) -> Req {
    assert!(ROUTES.contains(&route), "{route} is not a route pattern");
    let mut headers = Vec::new();
    if !matches!(method, "GET" | "HEAD") {
        headers.push(("x-coffer-nonce".to_owned(), unique_nonce()));
    }
    Req {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
        route,
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    fn json(self, value: &Value) -> Self {
        self.raw_json(&value.to_string())
    }

    fn raw_json(self, text: &str) -> Self {
        self.header("content-type", "application/json").body(text.as_bytes())
    }

    fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }
}

/// The head of a request written by hand, signed (when `signer` is given) as of `at`,
/// with `unsigned` headers added after the signature.
fn head_at(
    signer: Option<&Signer>,
    at: OffsetDateTime,
    r: &Req,
    payload_sha256: &str,
    unsigned: &[(&str, &str)],
) -> String {
    let mut headers = r.header_refs();
    let len = r.body.len().to_string();
    if !r.body.is_empty() || !matches!(r.method.as_str(), "GET" | "HEAD" | "DELETE") {
        headers.push(("content-length", &len));
    }
    let mut head = format!("{} {} HTTP/1.1\r\nhost: localhost\r\n", r.method, r.target);
    for (n, v) in &headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(signer) = signer {
        for (n, v) in signer.sign_at(&r.method, &r.target, "localhost", &headers, payload_sha256, at) {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    for (n, v) in unsigned {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The running server as the clients see it, and every request made of it.
struct Env {
    addr: SocketAddr,
    ca_pem: String,
    sent: Vec<Sent>,
}

impl Env {
    fn client(&self, cert: Option<&Dev>) -> Arc<ClientConfig> {
        ClientSetup::new(&self.ca_pem, cert.map(|d| (d.cert_pem.as_str(), d.key_pem.as_str()))).build()
    }

    /// A connection presenting `cert` (none: no certificate) that signs with `signer`.
    fn connect_as(&self, cert: Option<&Dev>, signer: Option<Signer>) -> Connection {
        let mut conn = Connection::open(self.client(cert), self.addr, "localhost").expect("TLS connection");
        conn.set_signer(signer);
        conn
    }

    /// A connection as `dev`, signing with its secret and session token.
    fn connect(&self, dev: &Dev) -> Connection {
        self.connect_as(Some(dev), Some(dev.signer()))
    }

    /// Remembers a request and its answer.
    fn note(&mut self, what: &str, r: &Req, res: &Response, who: Option<Who>) {
        let request_id = res
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id in the answer {res:?}"))
            .to_owned();
        let problem = problem_of(res);
        // A connection over `limits.max_connections` is answered before anything else
        // is looked at: its line names no device.
        let who = who.filter(|_| problem.as_deref() != Some(TOO_MANY_CONNECTIONS));
        self.sent.push(Sent {
            what: what.to_owned(),
            request_id,
            method: r.method.clone(),
            status: res.status,
            problem,
            route: r.route,
            who,
            body_out: res.body.len(),
            body_in: r.body.len(),
        });
    }

    /// Sends `r` on `conn` (whose certificate is `who`'s) and notes it.
    fn on(&mut self, conn: &mut Connection, what: &str, r: &Req, who: Option<&Dev>) -> Response {
        let res = conn
            .request(&r.method, &r.target, &r.header_refs(), &r.body)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        self.note(what, r, &res, who.and_then(Dev::who));
        res
    }

    /// Sends `r` on a new connection presenting `cert` and signing with `signer`.
    fn once(&mut self, what: &str, cert: Option<&Dev>, signer: Option<Signer>, r: &Req) -> Response {
        let mut conn = self.connect_as(cert, signer);
        self.on(&mut conn, what, r, cert)
    }

    /// Sends `r` as `dev` on a new connection.
    fn as_dev(&mut self, what: &str, dev: &Dev, r: &Req) -> Response {
        self.once(what, Some(dev), Some(dev.signer()), r)
    }

    /// Writes `head` and `body` on a new raw connection presenting `cert`; reads one
    /// answer.
    fn raw(&mut self, what: &str, cert: Option<&Dev>, r: &Req, head: &str) -> Response {
        let mut stream = raw_tls(self.client(cert), self.addr);
        stream.write_all(head.as_bytes()).expect("request head");
        stream.write_all(&r.body).expect("request body");
        stream.flush().expect("flush");
        let res = read_response(&mut BufReader::new(stream)).unwrap_or_else(|e| panic!("{what}: {e}"));
        self.note(what, r, &res, cert.and_then(Dev::who));
        res
    }
}

/// The problem type of an answer, if it is a problem.
fn problem_of(res: &Response) -> Option<String> {
    (res.header("content-type") == Some("application/problem+json")).then(|| res.problem())
}

/// Panics unless `res` is `status` with problem type `slug`.
#[track_caller]
fn expect_problem(res: &Response, status: u16, slug: &str, what: &str) {
    assert_eq!(
        (res.status, res.header("content-type")),
        (status, Some("application/problem+json")),
        "{what}: expected {status} {slug}, got {}: {}",
        res.status,
        text(&res.body)
    );
    assert_eq!(res.problem(), slug, "{what}");
}

/// Panics unless `res` has `status`.
#[track_caller]
fn expect_status(res: &Response, status: u16, what: &str) {
    assert_eq!(
        res.status,
        status,
        "{what}: expected {status}, got {}: {}",
        res.status,
        text(&res.body)
    );
}

// ---- the coffer and its server ----

struct Coffer {
    dirs: TestDirs,
}

impl Coffer {
    fn root(&self) -> &Path {
        self.dirs.root.path()
    }

    /// `coffer --config CONFIG --passphrase-file PASSPHRASE`, isolated, cheap argon2id.
    fn command(&self, config: &Path, passphrase: &Path) -> Command {
        let mut cmd = coffer_command(&self.dirs.paths);
        isolate_cheap(&mut cmd, self.root());
        cmd.arg("--config").arg(config).arg("--passphrase-file").arg(passphrase);
        cmd
    }

    /// Runs an admin command (through the running server's socket); returns stdout.
    #[track_caller]
    fn cli(&self, config: &Path, args: &[&str]) -> String {
        // No passphrase file that works: the command must go through the socket.
        let none = self.root().join("no-passphrase");
        expect_ok(
            self.command(config, &none).args(args).output().expect("run coffer"),
            &format!("coffer {args:?}"),
        )
    }

    /// Starts `coffer serve` logging JSON at debug level; returns it, its address and the
    /// Unix second before it was started.
    fn serve(&self, config: &Path, passphrase: &Path) -> (Running, SocketAddr, i64) {
        let mut cmd = self.command(config, passphrase);
        cmd.env("COFFER_LOG_FORMAT", "json")
            .env("COFFER_LOG_LEVEL", "debug")
            .args(["serve", "--listen", "127.0.0.1:0"]);
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let mut server = Running::spawn(cmd);
        let addr = server.listening_on("coffer serve");
        let deadline = Instant::now() + WAIT;
        while std::fs::symlink_metadata(socket_path(&self.dirs)).is_err() {
            assert!(
                Instant::now() < deadline,
                "no admin socket; stderr: {}",
                server.stderr_now()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (server, addr, before)
    }

    /// `user add NAME --role ROLE` with a password file; returns the user id.
    fn add_user(&self, config: &Path, secrets: &mut Secrets, name: &str, role: &str) -> UserId {
        let password = password_of(name);
        secrets.text(&format!("password of {name}"), &password);
        let file = write_file(self.root(), &format!("{name}.password"), &password);
        let out = self.cli(
            config,
            &[
                "user",
                "add",
                name,
                "--role",
                role,
                "--password-file",
                file.to_str().unwrap(),
            ],
        );
        // "added NAME (ROLE), id ID"
        out.split_whitespace()
            .last()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no user id in {out:?}"))
    }

    /// `device issue --user USER` with a PKCS#12 password file; returns the device.
    fn issue(&self, config: &Path, secrets: &mut Secrets, user: &str, owner: UserId, label: &str) -> Dev {
        let p12 = p12_password_of(label);
        secrets.text(&format!("PKCS#12 password of {label}"), &p12);
        let p12_file = write_file(self.root(), &format!("{label}.p12pw"), &p12);
        let out = self.root().join(format!("device-{label}"));
        self.cli(
            config,
            &[
                "device",
                "issue",
                "--user",
                user,
                "--name",
                label,
                "--out",
                out.to_str().unwrap(),
                "--p12-password-file",
                p12_file.to_str().unwrap(),
            ],
        );
        let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{label}/{f}: {e}"));
        let profile: toml::Table = toml::from_str(&read("profile.toml")).expect("profile.toml");
        let field = |k: &str| {
            profile[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} in profile.toml"))
                .to_owned()
        };
        let secret = field("secret_access_key");
        secrets.random(&format!("signing secret of {label}"), &secret);
        let key_pem = read("device.key");
        secret_key_lines(secrets, &format!("private key of {label}"), &key_pem);
        Dev {
            label: label.to_owned(),
            cert_pem: read("device.crt"),
            key_pem,
            device: Some(field("access_key_id").parse().expect("device id")),
            user: Some(owner),
            secret,
            token: None,
        }
    }
}

/// The base64 lines of a private key PEM, as secrets.
fn secret_key_lines(secrets: &mut Secrets, what: &str, pem: &str) {
    for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
        secrets.add(what, line.to_owned());
    }
}

/// Stops the server with SIGTERM; returns all it wrote on stderr.
fn stop(mut server: Running) -> String {
    server.signal(rustix::process::Signal::TERM);
    let (status, stderr) = server.wait_exit(WAIT, "coffer serve after SIGTERM");
    assert!(status.success(), "coffer serve exit {status:?}; stderr: {stderr}");
    stderr
}

/// A certificate from the coffer's CA for a random device id, and its key.
fn mint_certificate(vault: &Vault) -> (Vec<u8>, String, String) {
    let key = KeyDer::generate().expect("key");
    let cert = vault
        .ca()
        .expect("CA")
        .issue_device(DeviceId::random().expect("id"), &key.spki().expect("spki"), 30)
        .expect("issue certificate");
    let cert_pem = coffer::pki::to_pem(&cert);
    let key_pem = key.to_pem().expect("key PEM").to_string();
    (cert, cert_pem, key_pem)
}

/// Made with the library while no server runs (no command makes them): a certificate of
/// the coffer's CA that no device holds, and a device whose record has expired while its
/// certificate has not (the TLS handshake refuses expired certificates, so only a
/// record expiring before its certificate reaches the per-request check).
fn strangers(dirs: &TestDirs, secrets: &mut Secrets) -> (Dev, Dev) {
    let (vault, _) = Vault::open(
        &dirs.paths,
        &Passphrase::new(PASSPHRASE_FIRST.to_owned()),
        StoreOptions::default(),
    )
    .expect("open the coffer");
    let (_, cert_pem, key_pem) = mint_certificate(&vault);
    secret_key_lines(secrets, "private key of the unknown device", &key_pem);
    let unknown = Dev {
        label: "unknown".to_owned(),
        cert_pem,
        key_pem,
        device: None,
        user: None,
        secret: "unknown-device-secret-2c5b".to_owned(),
        token: None,
    };
    let password = password_of("zed");
    secrets.text("password of zed", &password);
    let zed = vault
        .add_user(UserBody {
            name: "zed".to_owned(),
            role: Role::Member,
            password_hash: KdfParams::for_tests()
                .hash_password(&Passphrase::new(password))
                .expect("hash"),
            disabled: false,
            totp: None,
        })
        .expect("add zed");
    let (cert, cert_pem, key_pem) = mint_certificate(&vault);
    secret_key_lines(secrets, "private key of the expired device", &key_pem);
    let device = vault
        .add_device(
            zed.id,
            DeviceBody {
                name: "zed's old phone".to_owned(),
                thumbprint: coffer::pki::thumbprint(&cert),
                revoked: false,
                signing_secret: None,
                serial: None,
                revoked_at: None,
                retired: Vec::new(),
            },
            Timestamp(Timestamp::now().0 - 3_600_000),
        )
        .expect("add the expired device");
    let expired = Dev {
        label: "expired".to_owned(),
        cert_pem,
        key_pem,
        device: Some(device.id),
        user: Some(zed.id),
        secret: "expired-device-secret-7d1e".to_owned(),
        token: None,
    };
    (unknown, expired)
}

/// The configuration of the first run: small limits where a refusal needs them, the ERP
/// collections (one reading through the fake ERP, one through a slow one, one through a
/// closed port, one of pushed records).
fn first_config(erp: &FakeErp, slow: &FakeErp, closed_port: u16) -> String {
    format!(
        r#"allow_cidrs = ["127.0.0.0/8"]

[limits]
max_upload_bytes = 65536
max_transfers_per_device = 1
body_idle_timeout_secs = 2
device_requests_per_minute = 100000
shutdown_grace_secs = 2

[auth]
max_future_write_secs = 0
max_login_failures = 3
device_failures_per_minute = 10
ip_failures_per_minute = 100000
enrolments_per_ip_per_minute = 5

[erp.collections.customers]
read_roles = ["member", "integration"]
upstream = "{customers}"
upstream_connect_timeout = "1s"
upstream_timeout = "5s"

[erp.collections.slowpoke]
read_roles = ["member"]
upstream = "{slow}"
upstream_connect_timeout = "1s"
upstream_timeout = "1s"

[erp.collections.down]
read_roles = ["member"]
upstream = "http://127.0.0.1:{closed_port}/api/down/{{key}}"
upstream_connect_timeout = "1s"
upstream_timeout = "1s"

[erp.collections.pushed]
read_roles = ["member", "integration"]
"#,
        customers = erp.url_template(),
        slow = slow.url_template(),
    )
}

/// The second run: few connections, few requests per device, and writes refused for
/// the default 10 s after the start.
const SECOND_CONFIG: &str = r#"allow_cidrs = ["127.0.0.0/8"]

[limits]
max_connections = 2
device_requests_per_minute = 5
shutdown_grace_secs = 2

[auth]
ip_failures_per_minute = 100000
"#;

/// `POST /v1/session` for `dev` as `username` with `password`; on success, `dev` signs
/// with the new token from then on.
fn log_in(
    env: &mut Env,
    secrets: &mut Secrets,
    dev: &mut Dev,
    username: &str,
    password: &str,
    totp: Option<&str>,
) -> Response {
    let mut body = json!({"username": username, "password": password});
    if let Some(code) = totp {
        body["totp"] = json!(code);
    }
    let mut signer = dev.signer();
    signer.token = None;
    let r = req("POST", "/v1/session", "/v1/session").json(&body);
    let res = env.once(
        &format!("login of {username} on {}", dev.label),
        Some(&*dev),
        Some(signer),
        &r,
    );
    if res.status == 200 {
        let token = res.json()["token"].as_str().expect("token").to_owned();
        secrets.random(&format!("session token of {}", dev.label), &token);
        dev.token = Some(token);
    }
    res
}

/// A CSR for a fresh P-256 key, and the key (PKCS#8 PEM).
fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CSR parameters");
    params.distinguished_name.push(rcgen::DnType::CommonName, "my phone");
    let request = params.serialize_request(&key).expect("CSR");
    (request.pem().expect("CSR PEM"), key.serialize_pem())
}

/// Every fixed secret the clients send.
fn fixed_secrets() -> Secrets {
    let mut secrets = Secrets::default();
    for (what, value) in [
        ("passphrase", PASSPHRASE_FIRST),
        ("new passphrase", PASSPHRASE_SECOND),
        ("document content", DOC_CONTENT),
        ("document name", DOC_NAME),
        ("private document name", DOC_PRIVATE_NAME),
        ("document title", DOC_TITLE),
        ("changed title", DOC_TITLE_2),
        ("replayed title", DOC_TITLE_REPLAY),
        ("document tag", DOC_TAG),
        ("badly typed tags", DOC_TAG_BAD),
        ("stalled upload name", PAUSED_NAME),
        ("oversized upload name", BIG_NAME),
        ("mismatched upload name", MISMATCH_NAME),
        ("early upload name", EARLY_NAME),
        ("ERP key", PUSHED_KEY),
        ("ERP value", PUSHED_VALUE),
        ("ERP value", PUSHED_VALUE_2),
        ("ERP batch key", BATCH_KEY),
        ("ERP batch value", BATCH_VALUE),
        ("unparsable ERP value", BROKEN_VALUE),
        ("missing ERP key", MISSING_KEY),
        ("upstream ERP key", CUSTOMER_KEY),
        ("upstream ERP value", CUSTOMER_VALUE),
        ("slow ERP key", SLOW_KEY),
        ("slow ERP value", SLOW_VALUE),
        ("unreachable ERP key", DOWN_KEY),
        ("ERP key of a garbled record", GARBLED_KEY),
        ("garbled upstream record", GARBLED_VALUE),
        ("ERP key posted to", NOT_BATCH_KEY),
        ("title with loose spaces", SPACED_TITLE),
        ("made-up session token", BOGUS_TOKEN),
        ("wrong signing secret", WRONG_SIGNING_SECRET),
        ("made-up enrolment code", BOGUS_CODE),
        ("enrolment code in broken JSON", BROKEN_CODE),
        ("made-up one-time code", BOGUS_TOTP),
        ("garbage CSR", CSR_GARBAGE),
        ("unknown query parameter", QUERY_SECRET),
        ("unknown path", UNKNOWN_PATH_SECRET),
        ("unknown user name", "nobody-secret-4b1a"),
    ] {
        secrets.text(what, value);
    }
    for n in 0..8 {
        secrets.text("wrong password", &wrong_password(n));
    }
    secrets
}

/// The devices the clients call as.
struct Devices {
    alice_phone: Dev,
    alice_slow: Dev,
    alice_old: Dev,
    bob_phone: Dev,
    carol_a: Dev,
    carol_b: Dev,
    tina_phone: Dev,
    lock_phone: Dev,
    flood_phone: Dev,
    hammer_phone: Dev,
    mallory_phone: Dev,
    scanner_dev: Dev,
    unknown: Dev,
    expired: Dev,
    /// Enrolled by bob over HTTP.
    tablet: Option<Dev>,
}

/// What the admin commands hand out besides users and devices.
struct Handed {
    /// Tina's TOTP seed.
    seed: Vec<u8>,
    /// An enrolment code for a new device of bob.
    code: String,
}

/// Users, devices, a TOTP secret and an enrolment code, through the admin socket of the
/// running server.
fn set_up(coffer: &Coffer, config: &Path, secrets: &mut Secrets, (unknown, expired): (Dev, Dev)) -> (Devices, Handed) {
    let alice = coffer.add_user(config, secrets, "alice", "member");
    let bob = coffer.add_user(config, secrets, "bob", "member");
    let carol = coffer.add_user(config, secrets, "carol", "member");
    let tina = coffer.add_user(config, secrets, "tina", "member");
    let lockme = coffer.add_user(config, secrets, "lockme", "member");
    let flood = coffer.add_user(config, secrets, "flood", "member");
    let hammer = coffer.add_user(config, secrets, "hammer", "member");
    let mallory = coffer.add_user(config, secrets, "mallory", "member");
    let scanner = coffer.add_user(config, secrets, "scanner", "integration");
    let alice_phone = coffer.issue(config, secrets, "alice", alice, "alice-phone");
    let alice_slow = coffer.issue(config, secrets, "alice", alice, "alice-slow");
    let alice_old = coffer.issue(config, secrets, "alice", alice, "alice-old");
    let bob_phone = coffer.issue(config, secrets, "bob", bob, "bob-phone");
    let carol_a = coffer.issue(config, secrets, "carol", carol, "carol-a");
    let carol_b = coffer.issue(config, secrets, "carol", carol, "carol-b");
    let tina_phone = coffer.issue(config, secrets, "tina", tina, "tina-phone");
    let lock_phone = coffer.issue(config, secrets, "lockme", lockme, "lock-phone");
    let flood_phone = coffer.issue(config, secrets, "flood", flood, "flood-phone");
    let hammer_phone = coffer.issue(config, secrets, "hammer", hammer, "hammer-phone");
    let mallory_phone = coffer.issue(config, secrets, "mallory", mallory, "mallory-phone");
    let scanner_dev = coffer.issue(config, secrets, "scanner", scanner, "scanner-dev");
    // TOTP for tina: the secret is in the otpauth URI printed once.
    let out = coffer.cli(config, &["user", "totp", "tina"]);
    let uri = out
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .unwrap_or_else(|| panic!("no otpauth URI in {out:?}"));
    let seed_b32 = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .expect("secret= in the URI");
    secrets.text("TOTP secret (base32)", seed_b32);
    let seed = data_encoding::BASE32_NOPAD
        .decode(seed_b32.as_bytes())
        .expect("base32 seed");
    secrets.bytes("TOTP secret", &seed);
    // An enrolment code for a new device of bob.
    let out = coffer.cli(config, &["device", "enroll", "--user", "bob", "--json"]);
    let code = serde_json::from_str::<Value>(out.trim()).expect("enrolment JSON")["code"]
        .as_str()
        .expect("code")
        .to_owned();
    secrets.random("enrolment code", &code);
    let bare: String = code.chars().filter(char::is_ascii_alphanumeric).collect();
    secrets.random("enrolment code without separators", &bare);
    secrets.add("enrolment code in lower case", bare.to_ascii_lowercase());
    let devices = Devices {
        alice_phone,
        alice_slow,
        alice_old,
        bob_phone,
        carol_a,
        carol_b,
        tina_phone,
        lock_phone,
        flood_phone,
        hammer_phone,
        mallory_phone,
        scanner_dev,
        unknown,
        expired,
        tablet: None,
    };
    (devices, Handed { seed, code })
}

/// Documents: uploads, listings, downloads, metadata; refusals of what their owner or
/// another member may not do. Returns the id of a team document of alice.
fn documents(env: &mut Env, d: &Devices) -> String {
    let mut alice_conn = env.connect(&d.alice_phone);
    let content = format!("{DOC_CONTENT}\n").repeat(40);
    let r = req("POST", "/v1/documents", "/v1/documents")
        .header("x-coffer-name", DOC_NAME)
        .header("x-coffer-title", DOC_TITLE)
        .header("x-coffer-tags", DOC_TAG)
        .header("x-coffer-visibility", "team")
        .header("content-type", "application/pdf")
        .body(content.as_bytes());
    let res = env.on(&mut alice_conn, "upload", &r, Some(&d.alice_phone));
    expect_status(&res, 201, "upload");
    let doc = res.json()["id"].as_str().expect("id").to_owned();
    let r = req("POST", "/v1/documents", "/v1/documents")
        .header("x-coffer-name", DOC_PRIVATE_NAME)
        .body(DOC_CONTENT.as_bytes());
    let res = env.on(&mut alice_conn, "private upload", &r, Some(&d.alice_phone));
    expect_status(&res, 201, "private upload");
    let private_doc = res.json()["id"].as_str().expect("id").to_owned();
    let list = format!("/v1/documents?name_prefix={DOC_NAME}&tag={DOC_TAG}&limit=10");
    let res = env.on(
        &mut alice_conn,
        "filtered listing",
        &req("GET", &list, "/v1/documents"),
        Some(&d.alice_phone),
    );
    expect_status(&res, 200, "filtered listing");
    let content_path = format!("/v1/documents/{doc}");
    let meta_path = format!("/v1/documents/{doc}/meta");
    for (what, r) in [
        ("metadata", req("GET", &meta_path, "/v1/documents/{id}/meta")),
        ("download", req("GET", &content_path, "/v1/documents/{id}")),
        ("HEAD", req("HEAD", &content_path, "/v1/documents/{id}")),
        (
            "range",
            req("GET", &content_path, "/v1/documents/{id}").header("range", "bytes=0-99"),
        ),
    ] {
        let res = env.on(&mut alice_conn, what, &r, Some(&d.alice_phone));
        assert!(matches!(res.status, 200 | 206), "{what}: {}", res.status);
    }
    let r = req("GET", &content_path, "/v1/documents/{id}").header("range", "bytes=100000-");
    let res = env.on(&mut alice_conn, "range past the end", &r, Some(&d.alice_phone));
    expect_problem(&res, 416, "range-not-satisfiable", "range past the end");
    let r = req("PATCH", &meta_path, "/v1/documents/{id}/meta").json(&json!({"title": DOC_TITLE_2}));
    let res = env.on(&mut alice_conn, "title change", &r, Some(&d.alice_phone));
    expect_status(&res, 200, "title change");
    // (Routed nowhere, its body is not read: it is signed as empty.)
    let r = req("PUT", "/v1/documents", "/v1/documents");
    let res = env.on(&mut alice_conn, "PUT on the collection", &r, Some(&d.alice_phone));
    expect_problem(&res, 405, "method-not-allowed", "PUT on the collection");
    let r = req(
        "GET",
        &format!("/v1/documents/{}", "0".repeat(32)),
        "/v1/documents/{id}",
    );
    let res = env.on(&mut alice_conn, "unknown document", &r, Some(&d.alice_phone));
    expect_problem(&res, 404, "not-found", "unknown document");
    let r = req("GET", &format!("/v1/{UNKNOWN_PATH_SECRET}/{PUSHED_KEY}"), "(no route)");
    let res = env.on(&mut alice_conn, "unknown path", &r, Some(&d.alice_phone));
    expect_problem(&res, 404, "not-found", "unknown path");
    // Bob sees the team document but may not change it; alice's private one is not his.
    let res = env.as_dev(
        "team document for bob",
        &d.bob_phone,
        &req("GET", &meta_path, "/v1/documents/{id}/meta"),
    );
    expect_status(&res, 200, "team document for bob");
    let res = env.as_dev(
        "bob deletes alice's document",
        &d.bob_phone,
        &req("DELETE", &content_path, "/v1/documents/{id}"),
    );
    expect_problem(&res, 403, "not-permitted", "bob deletes alice's document");
    let r = req("PATCH", &meta_path, "/v1/documents/{id}/meta").json(&json!({"title": DOC_TITLE_REPLAY}));
    let res = env.as_dev("bob renames alice's document", &d.bob_phone, &r);
    expect_problem(&res, 403, "not-permitted", "bob renames alice's document");
    let r = req("GET", &format!("/v1/documents/{private_doc}"), "/v1/documents/{id}");
    let res = env.as_dev("bob reads alice's private document", &d.bob_phone, &r);
    expect_problem(&res, 404, "not-found", "bob reads alice's private document");
    let r = req("DELETE", &format!("/v1/documents/{private_doc}"), "/v1/documents/{id}");
    let res = env.on(&mut alice_conn, "delete", &r, Some(&d.alice_phone));
    expect_status(&res, 204, "delete");

    doc
}

/// Malformed requests and bodies: wrong JSON types, broken JSON, undecodable headers,
/// unknown parameters, loose spaces, unusable hashes, too large, not matching their hash.
fn malformed(env: &mut Env, d: &Devices, doc: &str) {
    let meta_path = format!("/v1/documents/{doc}/meta");
    let bad_login = [
        (
            "login with a password of the wrong type",
            format!(r#"{{"username":"alice","password":["{}"]}}"#, wrong_password(0)),
        ),
        (
            "login with a password object",
            format!(r#"{{"username":"alice","password":{{"{}":1}}}}"#, wrong_password(1)),
        ),
        (
            "login with broken JSON",
            format!(r#"{{"username":"alice","password":"{}"#, wrong_password(2)),
        ),
        (
            "login with an unknown field",
            format!(
                r#"{{"username":"alice","password":"x","{}":"{}"}}"#,
                wrong_password(3),
                wrong_password(4)
            ),
        ),
    ];
    for (what, body) in &bad_login {
        let mut signer = d.alice_phone.signer();
        signer.token = None;
        let r = req("POST", "/v1/session", "/v1/session").raw_json(body);
        let res = env.once(what, Some(&d.alice_phone), Some(signer), &r);
        expect_problem(&res, 400, "invalid-request", what);
    }
    let r = req("PATCH", &meta_path, "/v1/documents/{id}/meta").json(&json!({"tags": DOC_TAG_BAD}));
    let res = env.as_dev("tags of the wrong type", &d.alice_phone, &r);
    expect_problem(&res, 400, "invalid-request", "tags of the wrong type");
    let r = req("PATCH", &meta_path, "/v1/documents/{id}/meta").raw_json(&format!(r#"{{"title":"{DOC_TITLE_REPLAY}"#));
    let res = env.as_dev("broken metadata JSON", &d.alice_phone, &r);
    expect_problem(&res, 400, "invalid-request", "broken metadata JSON");
    let r = req("POST", "/v1/documents", "/v1/documents")
        .header("x-coffer-name", &format!("{DOC_NAME}%FF"))
        .body(DOC_CONTENT.as_bytes());
    let res = env.as_dev("undecodable name", &d.alice_phone, &r);
    expect_problem(&res, 400, "invalid-request", "undecodable name");
    let r = req(
        "GET",
        &format!("/v1/documents?{QUERY_SECRET}={DOC_NAME}"),
        "/v1/documents",
    );
    let res = env.as_dev("unknown query parameter", &d.alice_phone, &r);
    expect_problem(&res, 400, "invalid-request", "unknown query parameter");

    // A signed metadata header whose canonical form would hide its loose spaces.
    let r = req("POST", "/v1/documents", "/v1/documents")
        .header("x-coffer-name", DOC_NAME)
        .header("x-coffer-title", SPACED_TITLE)
        .body(DOC_CONTENT.as_bytes());
    let res = env.as_dev("loose spaces in a signed header", &d.alice_phone, &r);
    expect_problem(&res, 400, "invalid-request", "loose spaces in a signed header");
    // A payload hash the server does not accept.
    let r = req("GET", "/v1/documents", "/v1/documents").header("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
    let res = env.as_dev("unsigned payload", &d.alice_phone, &r);
    expect_problem(&res, 400, "invalid-request", "unsigned payload");
    // A JSON body over 64 KiB, the password in it.
    let padding = format!("{} ", password_of("alice")).repeat(4000);
    let mut signer = d.alice_phone.signer();
    signer.token = None;
    let r = req("POST", "/v1/session", "/v1/session")
        .json(&json!({"username": "alice", "password": password_of("alice"), "padding": padding}));
    let res = env.once("oversized login", Some(&d.alice_phone), Some(signer), &r);
    expect_problem(&res, 413, "payload-too-large", "oversized login");

    // Too large: refused on its declared length, the body partly unread.
    let big = format!("{DOC_CONTENT}\n").repeat(2500);
    let mut conn = env.connect(&d.alice_phone);
    let r = req("POST", "/v1/documents", "/v1/documents").header("x-coffer-name", BIG_NAME);
    let res = conn
        .request_streamed(
            "POST",
            "/v1/documents",
            &r.header_refs(),
            big.len() as u64,
            big.as_bytes(),
            16 * 1024,
            &sha256_hex(big.as_bytes()),
        )
        .expect("an answer to the oversized upload");
    let r = r.body(big.as_bytes());
    env.note("oversized upload", &r, &res, d.alice_phone.who());
    expect_problem(&res, 413, "payload-too-large", "oversized upload");
    drop(conn);

    // The body does not match its declared hash: in a login, and in a streamed upload.
    let body = json!({"username": "carol", "password": password_of("carol")}).to_string();
    let mut signer = d.carol_b.signer();
    signer.token = None;
    let r = req("POST", "/v1/session", "/v1/session")
        .header("x-amz-content-sha256", &sha256_hex(b"another body"))
        .raw_json(&body);
    let res = env.once("login body not matching its hash", Some(&d.carol_b), Some(signer), &r);
    expect_problem(&res, 400, "payload-hash-mismatch", "login body not matching its hash");
    let mut conn = env.connect(&d.carol_a);
    let r = req("POST", "/v1/documents", "/v1/documents").header("x-coffer-name", MISMATCH_NAME);
    let res = conn
        .request_streamed(
            "POST",
            "/v1/documents",
            &r.header_refs(),
            DOC_CONTENT.len() as u64,
            DOC_CONTENT.as_bytes(),
            1024,
            &sha256_hex(b"not the content"),
        )
        .expect("an answer to the mismatched upload");
    let r = r.body(DOC_CONTENT.as_bytes());
    env.note("upload not matching its hash", &r, &res, d.carol_a.who());
    expect_problem(&res, 400, "payload-hash-mismatch", "upload not matching its hash");
    drop(conn);
}

/// Authentication refusals, one per reason, and a replayed write.
fn authentication(env: &mut Env, d: &Devices, doc: &str) {
    let meta_path = format!("/v1/documents/{doc}/meta");
    // A write sent twice: accepted, then refused as a replay.
    let r = req("PATCH", &meta_path, "/v1/documents/{id}/meta").json(&json!({"title": DOC_TITLE_REPLAY}));
    let head = head_at(
        Some(&d.alice_phone.signer()),
        OffsetDateTime::now_utc(),
        &r,
        &sha256_hex(&r.body),
        &[],
    );
    let res = env.raw("a signed write", Some(&d.alice_phone), &r, &head);
    expect_status(&res, 200, "a signed write");
    let res = env.raw("the same signed write again", Some(&d.alice_phone), &r, &head);
    expect_problem(&res, 409, "replayed-request", "the same signed write again");

    // One refusal per reason, in the order the server checks them.
    let r = req("GET", "/v1/documents", "/v1/documents");
    let res = env.once("no client certificate", None, None, &r);
    expect_problem(&res, 401, "client-certificate-required", "no client certificate");
    let login =
        req("POST", "/v1/session", "/v1/session").json(&json!({"username": "alice", "password": password_of("alice")}));
    let res = env.once("login without a client certificate", None, None, &login);
    expect_problem(&res, 401, "client-certificate-required", "login without a certificate");
    let res = env.once("unknown device", Some(&d.unknown), Some(d.unknown.signer()), &r);
    expect_problem(&res, 401, "device-unknown", "unknown device");
    let res = env.once("expired device", Some(&d.expired), Some(d.expired.signer()), &r);
    expect_problem(&res, 401, "device-expired", "expired device");
    let res = env.once("unsigned", Some(&d.alice_phone), None, &r);
    expect_problem(&res, 401, "signature-required", "unsigned");
    // A client that puts its secret where the signature goes.
    let now = OffsetDateTime::now_utc();
    let date = coffer::sigv4::amz_date(now);
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{}/local/coffer/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
        d.alice_phone.device.unwrap(),
        &date[..8],
        d.alice_phone.secret
    );
    let head = head_at(
        None,
        now,
        &r,
        coffer::sigv4::EMPTY_SHA256,
        &[("x-amz-date", &date), ("authorization", &authorization)],
    );
    let res = env.raw("the secret as the signature", Some(&d.alice_phone), &r, &head);
    expect_problem(&res, 401, "signature-invalid", "the secret as the signature");
    let wrong = Signer {
        secret: WRONG_SIGNING_SECRET.to_owned(),
        ..d.bob_phone.signer()
    };
    let res = env.once("wrong signing secret", Some(&d.bob_phone), Some(wrong), &r);
    expect_problem(&res, 401, "signature-mismatch", "wrong signing secret");
    let other_key = Signer {
        access_key: d.alice_phone.device.unwrap().to_string(),
        ..d.bob_phone.signer()
    };
    let res = env.once("another device's access key", Some(&d.bob_phone), Some(other_key), &r);
    expect_problem(&res, 401, "access-key-mismatch", "another device's access key");
    let at = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let head = head_at(Some(&d.carol_a.signer()), at, &r, coffer::sigv4::EMPTY_SHA256, &[]);
    let res = env.raw("signed an hour ago", Some(&d.carol_a), &r, &head);
    expect_problem(&res, 401, "request-time-skewed", "signed an hour ago");
    let mut no_session = d.carol_a.signer();
    no_session.token = None;
    let res = env.once("no session", Some(&d.carol_a), Some(no_session), &r);
    expect_problem(&res, 401, "session-required", "no session");
    let bogus = Signer {
        token: Some(BOGUS_TOKEN.to_owned()),
        ..d.carol_a.signer()
    };
    let res = env.once("made-up session token", Some(&d.carol_a), Some(bogus), &r);
    expect_problem(&res, 401, "session-invalid", "made-up session token");
    let others = Signer {
        token: d.alice_phone.token.clone(),
        ..d.carol_a.signer()
    };
    let res = env.once("another device's session", Some(&d.carol_a), Some(others), &r);
    expect_problem(&res, 401, "session-invalid", "another device's session");
}

/// Logins refused: wrong passwords up to the lock, a second factor, too many logins and
/// too many failures from one device.
fn logins(env: &mut Env, secrets: &mut Secrets, d: &mut Devices, seed: &[u8]) {
    let list_req = req("GET", "/v1/documents", "/v1/documents");
    // Logins: wrong passwords until the account locks; then even the right one is refused.
    for n in 5..8 {
        let res = log_in(env, secrets, &mut d.lock_phone, "lockme", &wrong_password(n), None);
        if res.status == 429 {
            expect_problem(&res, 429, "account-locked", "wrong password on a locked account");
            break;
        }
        expect_problem(&res, 401, "login-failed", "wrong password");
    }
    let res = log_in(env, secrets, &mut d.lock_phone, "lockme", &password_of("lockme"), None);
    expect_problem(&res, 429, "account-locked", "right password on a locked account");
    // (A login is for the device's owner: another name fails like a wrong password.)
    let res = log_in(
        env,
        secrets,
        &mut d.carol_b,
        "nobody-secret-4b1a",
        &password_of("carol"),
        None,
    );
    expect_problem(&res, 401, "login-failed", "another user's name");
    // A second factor: required, a made-up code refused, the right one accepted.
    let res = log_in(env, secrets, &mut d.tina_phone, "tina", &password_of("tina"), None);
    expect_problem(&res, 401, "totp-required", "login without the one-time code");
    let res = log_in(
        env,
        secrets,
        &mut d.tina_phone,
        "tina",
        &password_of("tina"),
        Some(BOGUS_TOTP),
    );
    expect_problem(&res, 401, "login-failed", "made-up one-time code");
    let step = totp::step_at(u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).expect("after 1970"));
    for s in step - 1..=step + 1 {
        secrets.code(
            "a one-time code of tina",
            &format!("{:06}", totp::code(seed, s, totp::DIGITS)),
        );
    }
    let right = format!("{:06}", totp::code(seed, step, totp::DIGITS));
    let res = log_in(
        env,
        secrets,
        &mut d.tina_phone,
        "tina",
        &password_of("tina"),
        Some(&right),
    );
    expect_status(&res, 200, "login with the one-time code");
    let res = env.as_dev(
        "tina lists",
        &d.tina_phone,
        &req("GET", "/v1/documents", "/v1/documents"),
    );
    expect_status(&res, 200, "tina lists");
    // Logins from one device beyond its budget (successes included).
    let mut refused = false;
    for _ in 0..15 {
        let res = log_in(env, secrets, &mut d.flood_phone, "flood", &password_of("flood"), None);
        if res.status == 429 {
            expect_problem(&res, 429, "too-many-writes", "one login too many");
            refused = true;
            break;
        }
        expect_status(&res, 200, "login of flood");
    }
    assert!(refused, "the logins of one device were never refused");
    // Failed authentications from one device beyond its budget.
    let wrong = Signer {
        secret: WRONG_SIGNING_SECRET.to_owned(),
        ..d.hammer_phone.signer()
    };
    let mut refused = false;
    for _ in 0..20 {
        let res = env.once("badly signed", Some(&d.hammer_phone), Some(wrong.clone()), &list_req);
        if res.status == 429 {
            expect_problem(&res, 429, "too-many-auth-failures", "one failure too many");
            refused = true;
            break;
        }
        expect_problem(&res, 401, "signature-mismatch", "badly signed");
    }
    assert!(refused, "the failures of one device were never refused");
}

/// A stalled upload holds the device's only transfer slot, then times out.
fn transfers(env: &mut Env, d: &Devices) {
    let paused = format!("{DOC_CONTENT}\n").repeat(500);
    let pr = req("POST", "/v1/documents", "/v1/documents").header("x-coffer-name", PAUSED_NAME);
    let mut paused_stream = raw_tls(env.client(Some(&d.alice_slow)), env.addr);
    let head = head_at(
        Some(&d.alice_slow.signer()),
        OffsetDateTime::now_utc(),
        &pr.body(paused.as_bytes()),
        &sha256_hex(paused.as_bytes()),
        &[],
    );
    paused_stream.write_all(head.as_bytes()).expect("upload head");
    paused_stream
        .write_all(&paused.as_bytes()[..paused.len() / 2])
        .expect("half the body");
    paused_stream.flush().expect("flush");
    let mut conn = env.connect(&d.alice_slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = env.on(
            &mut conn,
            "listing while an upload runs",
            &req("GET", "/v1/documents", "/v1/documents"),
            Some(&d.alice_slow),
        );
        if res.status == 429 {
            expect_problem(&res, 429, "too-many-transfers", "listing while an upload runs");
            break;
        }
        expect_status(&res, 200, "listing before the upload holds its slot");
        assert!(Instant::now() < deadline, "the stalled upload never held its slot");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conn);
    let res = read_response(&mut BufReader::new(paused_stream)).expect("an answer to the stalled upload");
    let pr = req("POST", "/v1/documents", "/v1/documents").body(&paused.as_bytes()[..paused.len() / 2]);
    env.note("stalled upload", &pr, &res, d.alice_slow.who());
    expect_problem(&res, 408, "request-timeout", "stalled upload");
}

/// Enrolment: made-up, broken and used codes, a garbage CSR, too many attempts, and a
/// device enrolled (whose secret is then used). Returns the enrolled device.
fn enrolment(env: &mut Env, secrets: &mut Secrets, code: &str, bob: UserId) -> Dev {
    let enrol = |code: &str, csr: &str| {
        req("POST", "/v1/enroll", "/v1/enroll").json(&json!({"code": code, "csr": csr, "device_name": "bob's tablet"}))
    };
    let (csr_pem, csr_key) = csr();
    secret_key_lines(secrets, "private key of the enrolled device", &csr_key);
    let res = env.once("made-up enrolment code", None, None, &enrol(BOGUS_CODE, &csr_pem));
    expect_problem(&res, 401, "enrolment-code-invalid", "made-up enrolment code");
    let r = req("POST", "/v1/enroll", "/v1/enroll").raw_json(&format!(r#"{{"code":"{BROKEN_CODE}","csr":"#));
    let res = env.once("broken enrolment JSON", None, None, &r);
    expect_problem(&res, 400, "invalid-request", "broken enrolment JSON");
    let garbage = base64::engine::general_purpose::STANDARD.encode(CSR_GARBAGE);
    secrets.add("garbage CSR body", garbage.clone());
    let garbage = format!("-----BEGIN CERTIFICATE REQUEST-----\n{garbage}\n-----END CERTIFICATE REQUEST-----\n");
    let res = env.once("garbage CSR", None, None, &enrol(code, &garbage));
    expect_problem(&res, 400, "csr-invalid", "garbage CSR");
    let res = env.once("enrolment", None, None, &enrol(code, &csr_pem));
    expect_status(&res, 201, "enrolment");
    let enrolled = res.json();
    let secret = enrolled["secret_access_key"].as_str().expect("secret").to_owned();
    secrets.random("signing secret of the enrolled device", &secret);
    let mut tablet = Dev {
        label: "bob-tablet".to_owned(),
        cert_pem: enrolled["certificate_chain"].as_str().expect("chain").to_owned(),
        key_pem: csr_key,
        device: Some(enrolled["device_id"].as_str().expect("id").parse().expect("device id")),
        user: Some(bob),
        secret,
        token: None,
    };
    let res = env.once("used enrolment code", None, None, &enrol(code, &csr_pem));
    expect_problem(&res, 401, "enrolment-code-invalid", "used enrolment code");
    let mut refused = false;
    for _ in 0..10 {
        let res = env.once("one enrolment too many", None, None, &enrol(BOGUS_CODE, &csr_pem));
        if res.status == 429 {
            expect_problem(&res, 429, "too-many-enrolments", "one enrolment too many");
            refused = true;
            break;
        }
        expect_problem(&res, 401, "enrolment-code-invalid", "made-up enrolment code");
    }
    assert!(refused, "enrolment attempts were never refused");
    let res = log_in(env, secrets, &mut tablet, "bob", &password_of("bob"), None);
    expect_status(&res, 200, "login on the enrolled device");
    let res = env.as_dev(
        "the enrolled device lists",
        &tablet,
        &req("GET", "/v1/documents", "/v1/documents"),
    );
    expect_status(&res, 200, "the enrolled device lists");

    tablet
}

/// ERP records: pushed, read, read many, batched, deleted, read through upstreams that
/// answer, garble, time out or refuse; refused for the wrong role or method.
fn erp_records(env: &mut Env, d: &Devices) {
    let erp_path = |collection: &str, key: &str| format!("/v1/erp/{collection}/{key}");
    let one = "/v1/erp/{collection}/{key}";
    let r = req("PUT", &erp_path("pushed", PUSHED_KEY), one).json(&json!({"v": PUSHED_VALUE}));
    let res = env.as_dev("ERP put", &d.scanner_dev, &r);
    expect_status(&res, 201, "ERP put");
    let r = req("PUT", &erp_path("pushed", PUSHED_KEY), one).json(&json!({"v": PUSHED_VALUE_2}));
    let res = env.as_dev("ERP put again", &d.scanner_dev, &r);
    expect_status(&res, 200, "ERP put again");
    let r = req("PUT", &erp_path("pushed", BATCH_KEY), one).raw_json(&format!(r#"{{"v":"{BROKEN_VALUE}"#));
    let res = env.as_dev("ERP put of broken JSON", &d.scanner_dev, &r);
    expect_problem(&res, 400, "invalid-request", "ERP put of broken JSON");
    let r = req("PUT", &erp_path("pushed", PUSHED_KEY), one).json(&json!({"v": PUSHED_VALUE}));
    let res = env.as_dev("ERP put by a member", &d.alice_phone, &r);
    expect_problem(&res, 403, "role-not-permitted", "ERP put by a member");
    let mut conn = env.connect(&d.alice_phone);
    let res = env.on(
        &mut conn,
        "ERP read",
        &req("GET", &erp_path("pushed", PUSHED_KEY), one),
        Some(&d.alice_phone),
    );
    expect_status(&res, 200, "ERP read");
    let many = format!("/v1/erp/pushed?key={PUSHED_KEY}&key={MISSING_KEY}");
    let res = env.on(
        &mut conn,
        "ERP multi-get",
        &req("GET", &many, "/v1/erp/{collection}"),
        Some(&d.alice_phone),
    );
    expect_status(&res, 200, "ERP multi-get");
    let batch = json!({"operations": [
        {"op": "put", "key": BATCH_KEY, "value": {"v": BATCH_VALUE}},
        {"op": "delete", "key": PUSHED_KEY},
    ]});
    let r = req("POST", &erp_path("pushed", "batch"), one).json(&batch);
    let res = env.as_dev("ERP batch", &d.scanner_dev, &r);
    expect_status(&res, 200, "ERP batch");
    let res = env.on(
        &mut conn,
        "deleted ERP record",
        &req("GET", &erp_path("pushed", PUSHED_KEY), one),
        Some(&d.alice_phone),
    );
    expect_problem(&res, 404, "not-found", "deleted ERP record");
    let r = req("POST", &erp_path("pushed", NOT_BATCH_KEY), one).json(&json!({"v": PUSHED_VALUE}));
    let res = env.as_dev("ERP POST to a record", &d.scanner_dev, &r);
    expect_problem(&res, 405, "method-not-allowed", "ERP POST to a record");
    let r = req("DELETE", &erp_path("pushed", BATCH_KEY), one);
    let res = env.as_dev("ERP delete", &d.scanner_dev, &r);
    expect_status(&res, 204, "ERP delete");
    let res = env.on(
        &mut conn,
        "ERP read through the upstream",
        &req("GET", &erp_path("customers", CUSTOMER_KEY), one),
        Some(&d.alice_phone),
    );
    expect_status(&res, 200, "ERP read through the upstream");
    assert!(text(&res.body).contains(CUSTOMER_VALUE), "{}", text(&res.body));
    let res = env.on(
        &mut conn,
        "ERP record the upstream garbled",
        &req("GET", &erp_path("customers", GARBLED_KEY), one),
        Some(&d.alice_phone),
    );
    expect_problem(&res, 502, "upstream-failed", "ERP record the upstream garbled");
    let bad_query = format!("/v1/erp/pushed?{QUERY_SECRET}={PUSHED_KEY}");
    let res = env.on(
        &mut conn,
        "ERP multi-get with an unknown parameter",
        &req("GET", &bad_query, "/v1/erp/{collection}"),
        Some(&d.alice_phone),
    );
    expect_problem(&res, 400, "invalid-request", "ERP multi-get with an unknown parameter");
    let res = env.on(
        &mut conn,
        "ERP read of an unknown collection",
        &req("GET", &erp_path("secretcollection", PUSHED_KEY), one),
        Some(&d.alice_phone),
    );
    expect_problem(&res, 404, "not-found", "ERP read of an unknown collection");
    let res = env.on(
        &mut conn,
        "ERP read through a closed port",
        &req("GET", &erp_path("down", DOWN_KEY), one),
        Some(&d.alice_phone),
    );
    expect_problem(&res, 502, "upstream-failed", "ERP read through a closed port");
    drop(conn);
    let res = env.as_dev(
        "ERP read through a slow upstream",
        &d.alice_phone,
        &req("GET", &erp_path("slowpoke", SLOW_KEY), one),
    );
    expect_problem(&res, 504, "upstream-timeout", "ERP read through a slow upstream");
    let r = req("POST", "/v1/session", "/v1/session")
        .json(&json!({"username": "scanner", "password": password_of("scanner")}));
    let res = env.as_dev("login of an integration", &d.scanner_dev, &r);
    expect_problem(&res, 403, "role-not-permitted", "login of an integration");
    let res = env.as_dev(
        "documents for an integration",
        &d.scanner_dev,
        &req("GET", "/v1/documents", "/v1/documents"),
    );
    expect_problem(&res, 403, "role-not-permitted", "documents for an integration");
}

/// A session ended, a device revoked, a user disabled (through the admin socket).
fn ended(env: &mut Env, secrets: &mut Secrets, coffer: &Coffer, config: &Path, d: &mut Devices) {
    let res = env.as_dev("logout", &d.alice_slow, &req("DELETE", "/v1/session", "/v1/session"));
    expect_status(&res, 204, "logout");
    let res = env.as_dev(
        "ended session",
        &d.alice_slow,
        &req("GET", "/v1/documents", "/v1/documents"),
    );
    expect_problem(&res, 401, "session-invalid", "ended session");
    coffer.cli(config, &["device", "revoke", &d.alice_old.device.unwrap().to_string()]);
    let res = env.as_dev(
        "revoked device",
        &d.alice_old,
        &req("GET", "/v1/documents", "/v1/documents"),
    );
    expect_problem(&res, 401, "device-revoked", "revoked device");
    coffer.cli(config, &["user", "disable", "mallory"]);
    let res = env.as_dev(
        "disabled user",
        &d.mallory_phone,
        &req("GET", "/v1/documents", "/v1/documents"),
    );
    expect_problem(&res, 403, "user-disabled", "disabled user");
    let res = log_in(
        env,
        secrets,
        &mut d.mallory_phone,
        "mallory",
        &password_of("mallory"),
        None,
    );
    expect_problem(&res, 403, "user-disabled", "login of a disabled user");
}

/// The second run: a write right after the start, too many connections, too many
/// requests from one device.
fn second_run(env: &mut Env, d: &Devices) {
    let tablet = d.tablet.as_ref().expect("the enrolled device");
    // A write right after the start is refused: it may be a replay of one the first run
    // accepted (dated up to max_future_write_secs ahead).
    let r = req("POST", "/v1/documents", "/v1/documents")
        .header("x-coffer-name", EARLY_NAME)
        .body(DOC_CONTENT.as_bytes());
    let res = env.as_dev("a write right after the start", &d.alice_phone, &r);
    expect_problem(&res, 401, "signed-before-start", "a write right after the start");
    // Two connections held open; a third is answered 503.
    let list = req("GET", "/v1/documents", "/v1/documents");
    let mut held = Vec::new();
    for dev in [&d.alice_phone, &d.bob_phone] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut conn = env.connect(dev);
            let res = env.on(&mut conn, "a listing on a held connection", &list, Some(dev));
            if res.status == 200 {
                held.push(conn);
                break;
            }
            // The refused write's connection may not be counted out yet.
            expect_problem(&res, 503, TOO_MANY_CONNECTIONS, "a listing on a held connection");
            assert!(Instant::now() < deadline, "the server stayed full");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let res = env.as_dev("a third connection", &d.tina_phone, &list);
    expect_problem(&res, 503, TOO_MANY_CONNECTIONS, "a third connection");
    drop(held);
    // Requests of one device beyond limits.device_requests_per_minute.
    let mut refused = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !refused && Instant::now() < deadline {
        let mut conn = env.connect(tablet);
        for _ in 0..10 {
            let res = env.on(&mut conn, "one request too many", &list, Some(tablet));
            match (res.status, problem_of(&res).as_deref()) {
                (200, _) => {}
                (429, _) => {
                    expect_problem(&res, 429, "too-many-requests", "one request too many");
                    refused = true;
                    break;
                }
                (503, Some(TOO_MANY_CONNECTIONS)) => {
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
                _ => panic!("one request too many: {} {}", res.status, text(&res.body)),
            }
        }
    }
    assert!(refused, "the requests of one device were never refused");
}

#[test]
fn no_secret_reaches_the_log_on_any_path() {
    let started = Instant::now();
    let mut secrets = fixed_secrets();
    let erp = FakeErp::start("/api/customers/");
    erp.put_json(CUSTOMER_KEY, &json!({"name": CUSTOMER_VALUE}));
    // Answered 200 with a body that is not JSON.
    erp.put_raw(GARBLED_KEY, format!(r#"{{"name": {GARBLED_VALUE}"#));
    let slow = FakeErp::start("/api/slow/");
    slow.put_json(SLOW_KEY, &json!({"name": SLOW_VALUE}));
    slow.set_delay(Duration::from_secs(3));
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();

    let coffer = Coffer { dirs: empty_dirs() };
    let root = coffer.root().to_path_buf();
    let first_passphrase = write_file(&root, "passphrase-1", &format!("{PASSPHRASE_FIRST}\n"));
    let second_passphrase = write_file(&root, "passphrase-2", &format!("{PASSPHRASE_SECOND}\n"));
    let config: PathBuf = write_file(&root, "first.toml", &first_config(&erp, &slow, closed_port));
    let mut init = vec!["init"];
    init.extend(CHEAP_KDF);
    expect_ok(
        coffer
            .command(&config, &first_passphrase)
            .args(&init)
            .output()
            .expect("run coffer init"),
        "coffer init",
    );
    let (unknown, expired) = strangers(&coffer.dirs, &mut secrets);

    // ---- first run ----
    let (server, addr, spawned) = coffer.serve(&config, &first_passphrase);
    let ca_pem = std::fs::read_to_string(coffer::app::pki::ca_cert_path(&coffer.dirs.paths)).expect("ca.crt");
    let mut env = Env {
        addr,
        ca_pem,
        sent: Vec::new(),
    };

    let (mut d, handed) = set_up(&coffer, &config, &mut secrets, (unknown, expired));
    eprintln!("set up in {:?}", started.elapsed());

    // Signed before the server started (less than the 5 minutes of allowed skew ago).
    let r = req("GET", "/v1/documents", "/v1/documents");
    let at = OffsetDateTime::from_unix_timestamp(spawned - 1).expect("time");
    let head = head_at(Some(&d.carol_a.signer()), at, &r, coffer::sigv4::EMPTY_SHA256, &[]);
    let res = env.raw("a read signed before the start", Some(&d.carol_a), &r, &head);
    expect_problem(&res, 401, "signed-before-start", "a read signed before the start");
    for (dev, name) in [
        (&mut d.alice_phone, "alice"),
        (&mut d.alice_slow, "alice"),
        (&mut d.bob_phone, "bob"),
        (&mut d.carol_a, "carol"),
        (&mut d.mallory_phone, "mallory"),
    ] {
        let res = log_in(&mut env, &mut secrets, dev, name, &password_of(name), None);
        expect_status(&res, 200, &format!("login of {name}"));
    }
    let doc = documents(&mut env, &d);
    malformed(&mut env, &d, &doc);
    authentication(&mut env, &d, &doc);
    logins(&mut env, &mut secrets, &mut d, &handed.seed);
    transfers(&mut env, &d);
    let bob = d.bob_phone.user.expect("bob");
    d.tablet = Some(enrolment(&mut env, &mut secrets, &handed.code, bob));
    erp_records(&mut env, &d);
    ended(&mut env, &mut secrets, &coffer, &config, &mut d);
    // A new passphrase, through the socket, for the second run.
    let new = second_passphrase.to_str().unwrap();
    coffer.cli(&config, &["key", "passphrase", "--new-passphrase-file", new]);
    let first_log = stop(server);
    eprintln!("first run done after {:?}", started.elapsed());

    // ---- second run: few connections and requests, writes refused at first ----
    let config = write_file(&root, "second.toml", SECOND_CONFIG);
    let (server, addr, _) = coffer.serve(&config, &second_passphrase);
    env.addr = addr;
    second_run(&mut env, &d);
    let second_log = stop(server);
    eprintln!("second run done after {:?}", started.elapsed());

    // ---- the log ----
    let log = format!("{first_log}{second_log}");
    let wanted = PROVOKED;
    let answered: BTreeSet<&str> = env.sent.iter().filter_map(|s| s.problem.as_deref()).collect();
    for slug in &wanted {
        assert!(answered.contains(slug), "{slug} was never provoked");
    }
    let failures = check_log(&log, &secrets, &env.sent, &wanted);
    assert!(
        failures.is_empty(),
        "{} problem(s) with the log:\n{}\n\nthe log:\n{log}",
        failures.len(),
        failures.join("\n")
    );
    checker_catches(&log, &secrets, &env.sent, &wanted);
    eprintln!(
        "{} requests, {} log lines, {} forms of secrets and {} one-time codes checked in {:?}",
        env.sent.len(),
        log.lines().count(),
        secrets.needles.len(),
        secrets.codes.len(),
        started.elapsed()
    );
}

// ---- the checks ----

/// A log field as text: strings as they are, numbers as written.
fn field(line: &Value, name: &str) -> Option<String> {
    match line.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// Whether a logged id names `want`: its 32 hex digits, as everywhere else, or (as the
/// log writes them today) the decimal of its 128 bits.
fn names_id(logged: Option<&str>, want: u128) -> bool {
    logged.is_some_and(|l| l == format!("{want:032x}") || l == want.to_string())
}

/// Whether `digits` occur in `haystack` as a word of their own (not inside a longer
/// number or a hex id, where six digits in a row turn up by chance).
fn has_code(haystack: &str, digits: &str) -> bool {
    haystack.match_indices(digits).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + digits.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric()) && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Everything wrong with `log` (empty: nothing).
fn check_log(log: &str, secrets: &Secrets, sent: &[Sent], problems: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    // 1. No secret, in any form.
    for (what, needle) in &secrets.needles {
        if let Some((n, line)) = log.lines().enumerate().find(|(_, l)| l.contains(needle.as_str())) {
            failures.push(format!("the {what} ({needle}) is in line {}: {line}", n + 1));
        }
    }
    // 2. Every line one JSON object from tracing.
    let mut lines = Vec::new();
    for (n, line) in log.lines().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v)
                if v.is_object()
                    && v.get("timestamp").is_some()
                    && v.get("level").is_some()
                    && v.get("target").is_some() =>
            {
                lines.push(v);
            }
            _ => failures.push(format!("line {} is not a JSON log line: {line:?}", n + 1)),
        }
    }
    for (what, digits) in &secrets.codes {
        for line in &lines {
            let mut without_time = line.clone();
            if let Some(o) = without_time.as_object_mut() {
                o.remove("timestamp");
            }
            if has_code(&without_time.to_string(), digits) {
                failures.push(format!("{what} ({digits}) is in the line {line}"));
            }
        }
    }
    // Routes are patterns, never raw paths, in request lines and refusal lines alike.
    for line in &lines {
        if let Some(route) = field(line, "route") {
            let pattern = route.split(" (request ").next().unwrap_or_default();
            if !ROUTES.contains(&pattern) {
                failures.push(format!("a route that is not a pattern: {line}"));
            }
        }
    }
    // The finer reasons of refusals name requests made, with their problem type.
    for line in lines.iter().filter(|l| l["target"] == "coffer::auth") {
        let id = field(line, "route").and_then(|r| {
            r.split(" (request ")
                .nth(1)
                .map(|id| id.trim_end_matches(')').to_owned())
        });
        match sent.iter().find(|s| Some(&s.request_id) == id.as_ref()) {
            Some(s) if field(line, "problem") == s.problem => {}
            _ => failures.push(format!(
                "a refusal line for no request made, or another problem: {line}"
            )),
        }
    }
    // 3. One request line per request made, with what the answer said.
    // Refusals of callers without a device are logged at most 20 per 10 s; the rest are
    // counted in summary lines (`suppressed`).
    let is_summary = |l: &Value| l.get("suppressed").is_some();
    let suppressed: u64 = lines
        .iter()
        .filter(|l| l["target"] == "coffer::request" && is_summary(l))
        .filter_map(|l| l["suppressed"].as_u64())
        .sum();
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "coffer::request" && !is_summary(l))
        .collect();
    for s in sent {
        let found: Vec<&&Value> = requests
            .iter()
            .filter(|l| l["request_id"] == s.request_id.as_str())
            .collect();
        if found.is_empty() && s.who.is_none() && s.status >= 400 && suppressed > 0 {
            continue;
        }
        let [line] = found.as_slice() else {
            failures.push(format!(
                "{}: {} request lines with request_id {} (expected one)",
                s.what,
                found.len(),
                s.request_id
            ));
            continue;
        };
        let mut wrong = Vec::new();
        if line["method"] != s.method.as_str() {
            wrong.push("method");
        }
        if line["status"].as_u64() != Some(u64::from(s.status)) {
            wrong.push("status");
        }
        if field(line, "problem") != s.problem {
            wrong.push("problem");
        }
        if line["route"] != s.route {
            wrong.push("route");
        }
        let (device, user) = (field(line, "device"), field(line, "user"));
        match s.who {
            Some(w) => {
                if !names_id(device.as_deref(), w.device.0) {
                    wrong.push("device");
                }
                if !names_id(user.as_deref(), w.user.0) {
                    wrong.push("user");
                }
            }
            None => {
                if device.is_some() || user.is_some() {
                    wrong.push("device or user (none known)");
                }
            }
        }
        if line["ip"] != "127.0.0.1" {
            wrong.push("ip");
        }
        let number = |k: &str| line[k].as_f64().filter(|n| *n >= 0.0);
        if number("duration_ms").is_none() {
            wrong.push("duration_ms");
        }
        match line["bytes_in"].as_u64() {
            Some(n) if n <= s.body_in as u64 => {}
            _ => wrong.push("bytes_in"),
        }
        match line["bytes_out"].as_u64() {
            Some(n) if s.method == "HEAD" || n == s.body_out as u64 => {}
            _ => wrong.push("bytes_out"),
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: wrong {} in {line}; expected {s:?}",
                s.what,
                wrong.join(", ")
            ));
        }
    }
    if requests.len() as u64 + suppressed != sent.len() as u64 {
        failures.push(format!(
            "{} request lines (and {suppressed} counted in summaries) for {} requests made",
            requests.len(),
            sent.len()
        ));
    }
    // 4. Every problem type provoked is logged.
    let logged: BTreeSet<String> = lines.iter().filter_map(|l| field(l, "problem")).collect();
    for slug in problems {
        if !logged.contains(*slug) {
            failures.push(format!("no line with problem {slug}"));
        }
    }
    failures
}

/// The checks fail on altered copies of a log that passed them: they can catch what
/// they look for.
fn checker_catches(log: &str, secrets: &Secrets, sent: &[Sent], problems: &[&str]) {
    let lines: Vec<&str> = log.lines().collect();
    let request_line = |route: &str| {
        lines
            .iter()
            .position(|l| l.contains("\"target\":\"coffer::request\"") && l.contains(&format!("\"route\":\"{route}\"")))
            .unwrap_or_else(|| panic!("no request line for {route}"))
    };
    let with = |at: usize, line: String| {
        let mut all: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        all.insert(at, line);
        all.join("\n")
    };
    let expect = |altered: String, what: &str, needle: &str| {
        let failures = check_log(&altered, secrets, sent, problems);
        assert!(
            failures.iter().any(|f| f.contains(needle)),
            "the checks missed {what}: {failures:?}"
        );
    };
    let token = secrets
        .needles
        .iter()
        .find(|(what, _)| what.starts_with("session token"))
        .map(|(_, n)| n.clone())
        .expect("a session token");
    let code = &secrets.codes.first().expect("a one-time code").1;
    for (what, leaked) in [
        ("a password", password_of("alice")),
        ("a session token", token),
        ("document content", DOC_CONTENT.to_owned()),
        ("an ERP key", PUSHED_KEY.to_owned()),
        ("the passphrase", PASSPHRASE_FIRST.to_owned()),
        ("a one-time code", format!("code {code} accepted")),
    ] {
        let line = json!({
            "timestamp": "2026-01-01T00:00:00.000000Z",
            "level": "DEBUG",
            "message": format!("refused: {leaked}"),
            "target": "coffer::auth",
        });
        let needle = if what == "a one-time code" {
            code.as_str()
        } else {
            "is in line"
        };
        expect(with(lines.len() / 2, line.to_string()), what, needle);
    }
    expect(
        with(3, "thread 'main' panicked at src/main.rs".to_owned()),
        "a line that is not JSON",
        "not a JSON log line",
    );
    // A raw path in place of the route pattern.
    let at = request_line("/v1/erp/{collection}/{key}");
    let mut altered: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    altered[at] = altered[at].replace(
        "\"route\":\"/v1/erp/{collection}/{key}\"",
        "\"route\":\"/v1/erp/pushed/some-record\"",
    );
    expect(altered.join("\n"), "a raw path", "not a pattern");
    // A request line twice, and one missing.
    let at = request_line("/v1/session");
    expect(with(at, lines[at].to_owned()), "a doubled request line", "expected one");
    let mut altered: Vec<&str> = lines.clone();
    altered.remove(at);
    expect(altered.join("\n"), "a missing request line", "0 request lines");
    // A problem type never logged.
    let altered: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.contains("\"problem\":\"replayed-request\""))
        .collect();
    expect(
        altered.join("\n"),
        "a missing problem type",
        "no line with problem replayed-request",
    );
}
