//! The IP allowlist (`allow_cidrs`): a connection from an address outside it is closed
//! before the TLS handshake, so the client receives not a single byte (no ServerHello),
//! and the refusal is counted and logged; addresses inside it get the normal mutual-TLS
//! service. Checked on an in-process server (IPv4 with a client bound to 127.0.0.2, IPv6
//! loopback, IPv4-mapped addresses) and on the real binary (`allow_cidrs` required for
//! `coffer serve`, `COFFER_ALLOW_CIDRS`, `serve --dev` allowing loopback).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coffer::app::Vault;
use coffer::app::init::{PkiPlan, init_with_pki};
use coffer::app::principals::UserBody;
use coffer::crypto::kdf::KdfParams;
use coffer::http::RunningServer;
use coffer::http::allowlist::Allowlist;
use coffer::model::Role;
use coffer::secret::Passphrase;
use coffer::store::StoreOptions;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use common::client::{ClientSetup, Connection, RawStream, Response, Signer, read_response, signed_head, unique_nonce};
use common::server::{Identity, test_options};
use common::*;

/// How long a start of the binary may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a refused connection may take to be closed (generous: a loaded test machine).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---- raw sockets with a chosen source address ----

/// A TCP connection from `source` (port chosen by the kernel) to `to`. `std` cannot bind
/// the source address of an outgoing connection; rustix can, without `unsafe`.
fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let family = if source.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = socket(family, SocketType::STREAM, None)?;
    bind(&fd, &SocketAddr::new(source, 0))?;
    connect(&fd, &to)?;
    let stream = TcpStream::from(fd);
    assert_eq!(stream.local_addr()?.ip(), source, "the source address was not bound");
    Ok(stream)
}

/// How a refused connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// An orderly close (FIN).
    Eof,
    /// A reset (the server closed with our ClientHello unread).
    Reset,
}

/// Sends a real TLS ClientHello (the first flight of a rustls client) on `tcp` and reads
/// until the server closes; panics if a single byte arrives (a ServerHello or an alert)
/// or if the connection stays open.
#[track_caller]
fn assert_closed_without_a_byte(mut tcp: TcpStream, config: Arc<ClientConfig>, what: &str) -> Closed {
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    let mut tls = ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    assert_eq!(hello.first(), Some(&0x16), "not a TLS handshake record");
    // The server may have closed already: a failed write is a close too.
    let _ = tcp.write_all(&hello);
    tcp.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break Closed::Eof,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => break Closed::Reset,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "{what}: the connection was still open after {CLOSE_TIMEOUT:?} ({} bytes received)",
                    received.len()
                )
            }
            Err(e) => panic!("{what}: unexpected read error {e} ({:?})", e.kind()),
        }
    };
    assert!(
        received.is_empty(),
        "{what}: the refused client received {} byte(s), starting {:02x?} (0x16 0x03 would be a ServerHello)",
        received.len(),
        &received[..received.len().min(16)]
    );
    closed
}

/// A completed TLS handshake from `source` to `addr`.
fn tls_from(source: IpAddr, addr: SocketAddr, config: Arc<ClientConfig>) -> RawStream {
    let tcp = connect_from(source, addr).expect("connect");
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("handshake");
    }
    stream
}

/// One request with a body on a raw stream (signed when `signer` is given), and its
/// response (read through a fresh buffer: the server answers one request at a time).
fn raw_request(
    stream: &mut RawStream,
    signer: Option<&Signer>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let hash = coffer::sigv4::sha256_hex(body);
    let len = body.len().to_string();
    let mut all = headers.to_vec();
    if !body.is_empty() {
        all.push(("content-length", &len));
    }
    let head = signed_head(signer, method, path, "localhost", &all, &hash);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream.flush().unwrap();
    read_response(&mut BufReader::new(stream)).expect("a response")
}

/// Logs `user` in over a raw stream; returns the session token.
fn raw_login(stream: &mut RawStream, signer: &Signer, user: &str, password: &str) -> String {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    // Two logins signed in the same second must differ, or the second is a replay.
    let nonce = unique_nonce();
    let res = raw_request(
        stream,
        Some(signer),
        "POST",
        "/v1/session",
        &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
        body.as_bytes(),
    );
    assert_eq!(res.status, 200, "login: {}", text(&res.body));
    res.json()["token"].as_str().expect("token").to_owned()
}

// ---- an in-process server that keeps its `RunningServer` ----

/// A coffer HTTPS server in this process over a fresh coffer, listening where the test
/// says, with the allowlist under test. (`common::server::TestServer` forces
/// `127.0.0.1:0` and does not expose `RunningServer::refused_connections`.)
struct InProcess {
    server: Option<RunningServer>,
    vault: Arc<Vault>,
    ca_pem: String,
    _dirs: TestDirs,
}

impl InProcess {
    fn start(listen: SocketAddr, allow: Allowlist) -> Self {
        let dirs = empty_dirs();
        init_with_pki(
            &dirs.paths,
            &passphrase(),
            KdfParams::for_tests(),
            StoreOptions::default(),
            &PkiPlan {
                sans: ["localhost", "127.0.0.1", "::1"]
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect(),
                ca_days: 30,
                server_days: 30,
            },
        )
        .expect("init with PKI");
        let (vault, _) = Vault::open(&dirs.paths, &passphrase(), StoreOptions::default()).expect("open vault");
        let vault = Arc::new(vault);
        let ca_pem = std::fs::read_to_string(coffer::app::pki::ca_cert_path(&dirs.paths)).unwrap();
        let options = coffer::http::ServerOptions {
            listen,
            allow,
            ..test_options()
        };
        let server = coffer::http::start(vault.clone(), options).expect("start the server");
        // Requests signed in the second the server started are refused.
        while time::OffsetDateTime::now_utc().unix_timestamp() < server.signatures_from() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            server: Some(server),
            vault,
            ca_pem,
            _dirs: dirs,
        }
    }

    fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    fn addr(&self) -> SocketAddr {
        self.running().addr()
    }

    /// Refusals counted by the server.
    fn refused(&self) -> u64 {
        self.running().refused_connections()
    }

    /// Waits (with a deadline) until the refusal count reaches `n`; returns it.
    fn refused_reaches(&self, n: u64) -> u64 {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.refused() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.refused()
    }

    /// A member with a registered device, logged in on it.
    fn member_device(&self, name: &str) -> Identity {
        let password = Passphrase::new(format!("password of {name}"));
        let user = self
            .vault
            .add_user(UserBody {
                name: name.to_owned(),
                role: Role::Member,
                password_hash: KdfParams::for_tests().hash_password(&password).unwrap(),
                disabled: false,
                totp: None,
            })
            .unwrap();
        let issued = self.vault.issue_device(user.id, "test device", 30).unwrap();
        let creds = coffer::app::sessions::Credentials {
            username: name,
            password: &password,
            totp: None,
        };
        let policy = coffer::app::sessions::SessionPolicy::from(&coffer::config::AuthConfig::default());
        let session = self
            .vault
            .login(&issued.device, &creds, &policy, coffer::model::Timestamp::now())
            .expect("login");
        Identity {
            secret: issued
                .device
                .body
                .signing_secret
                .as_ref()
                .map(|s| s.expose().to_owned()),
            token: Some(session.token.expose().to_owned()),
            device: Some(issued.device),
            cert_pem: coffer::pki::to_pem(&issued.cert_der),
            key_pem: issued.key.to_pem().unwrap().to_string(),
        }
    }

    fn client(&self, identity: Option<&Identity>) -> Arc<ClientConfig> {
        ClientSetup::new(
            &self.ca_pem,
            identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str())),
        )
        .build()
    }

    /// A signed listing on a new connection to `to` (the server's own address unless
    /// given) must answer 200.
    #[track_caller]
    fn assert_serves(&self, identity: &Identity, to: SocketAddr, what: &str) {
        let mut conn = Connection::open(self.client(Some(identity)), to, "localhost")
            .unwrap_or_else(|e| panic!("{what}: the TLS handshake failed: {e}"));
        conn.set_signer(identity.signer());
        let res = conn
            .request("GET", "/v1/documents", &[], b"")
            .unwrap_or_else(|e| panic!("{what}: the request failed: {e}"));
        assert_eq!(res.status, 200, "{what}: {}", text(&res.body));
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop();
        }
    }
}

/// Whether this machine has an IPv6 loopback to listen and connect on.
fn ipv6_loopback() -> bool {
    match std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(l) => {
            let addr = l.local_addr().unwrap();
            TcpStream::connect(addr).is_ok()
        }
        Err(_) => false,
    }
}

const LO2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const LO1: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LO6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ---- 1. IPv4: 127.0.0.2 refused before TLS, 127.0.0.1 served ----

#[test]
fn a_client_outside_the_allowlist_gets_no_byte_and_is_counted_while_an_allowed_one_is_served() {
    let server = InProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        Allowlist::parse(&["127.0.0.1/32"]).unwrap(),
    );
    let alice = server.member_device("alice");
    assert_eq!(server.refused(), 0);

    // From 127.0.0.2, with alice's valid certificate ready: closed before TLS.
    let tcp = connect_from(LO2, server.addr()).expect("connect from 127.0.0.2");
    let closed = assert_closed_without_a_byte(tcp, server.client(Some(&alice)), "client on 127.0.0.2");
    eprintln!("note: the refused connection ended with {closed:?}");
    assert_eq!(server.refused_reaches(1), 1, "the refusal was not counted");

    // A second one, this time sending nothing at all: also closed, also counted.
    let mut silent = connect_from(LO2, server.addr()).expect("connect from 127.0.0.2");
    silent.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("a silent refused client received {n} byte(s)"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("a silent refused client: {e} ({:?})", e.kind()),
    }
    assert_eq!(server.refused_reaches(2), 2);

    // From 127.0.0.1: the full mutual-TLS service, and nothing more is counted.
    server.assert_serves(&alice, server.addr(), "client on 127.0.0.1");
    let mut raw = tls_from(LO1, server.addr(), server.client(Some(&alice)));
    let res = raw_request(&mut raw, alice.signer().as_ref(), "GET", "/v1/documents", &[], b"");
    assert_eq!(res.status, 200, "{}", text(&res.body));
    assert_eq!(server.refused(), 2, "an allowed connection was counted as refused");
}

// ---- 2. IPv6 loopback and IPv4-mapped addresses ----

#[test]
fn ipv6_loopback_is_served_when_listed_and_refused_without_a_byte_when_not() {
    if !ipv6_loopback() {
        eprintln!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    let listen: SocketAddr = "[::1]:0".parse().unwrap();

    let allowed = InProcess::start(listen, Allowlist::parse(&["::1/128"]).unwrap());
    assert_eq!(allowed.addr().ip(), LO6);
    let alice = allowed.member_device("alice");
    allowed.assert_serves(&alice, allowed.addr(), "::1 client of a server allowing ::1/128");
    assert_eq!(allowed.refused(), 0);
    drop(allowed);

    let v4_only = InProcess::start(listen, Allowlist::parse(&["127.0.0.1/32"]).unwrap());
    let bob = v4_only.member_device("bob");
    let tcp = connect_from(LO6, v4_only.addr()).expect("connect from ::1");
    assert_closed_without_a_byte(
        tcp,
        v4_only.client(Some(&bob)),
        "::1 client of a server allowing only 127.0.0.1/32",
    );
    assert_eq!(v4_only.refused_reaches(1), 1, "the refusal was not counted");
}

#[test]
fn a_dual_stack_listener_matches_ipv4_mapped_clients_as_ipv4() {
    // Needs a dual-stack [::] socket (net.ipv6.bindv6only = 0, the Linux default).
    if !ipv6_loopback() {
        eprintln!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    if std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() != "0") {
        eprintln!("skipped: net.ipv6.bindv6only is set, so [::] does not accept IPv4 clients");
        return;
    }
    // Every address but 127.0.0.1 is refused, so listening on [::] exposes nothing.
    let server = InProcess::start("[::]:0".parse().unwrap(), Allowlist::parse(&["127.0.0.1/32"]).unwrap());
    let alice = server.member_device("alice");
    let port = server.addr().port();
    // 127.0.0.1 arrives as ::ffff:127.0.0.1 and is matched as 127.0.0.1.
    server.assert_serves(
        &alice,
        SocketAddr::new(LO1, port),
        "127.0.0.1 via a dual-stack listener",
    );
    assert_eq!(server.refused(), 0);
    // ::ffff:127.0.0.2 is not 127.0.0.1; ::1 is not either.
    let tcp = connect_from(LO2, SocketAddr::new(LO1, port)).expect("connect from 127.0.0.2");
    assert_closed_without_a_byte(tcp, server.client(Some(&alice)), "127.0.0.2 via a dual-stack listener");
    assert_eq!(server.refused_reaches(1), 1);
    let tcp = connect_from(LO6, SocketAddr::new(LO6, port)).expect("connect from ::1");
    assert_closed_without_a_byte(tcp, server.client(Some(&alice)), "::1 via a dual-stack listener");
    assert_eq!(server.refused_reaches(2), 2);
}

// ---- a coffer process that is killed when the test ends ----

/// A spawned `coffer` with its output collected; killed (and waited for) when dropped.
struct Running {
    child: Option<Child>,
    stdout_lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start coffer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child: Some(child),
            stdout_lines: rx,
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }

    /// What the process wrote on stderr so far.
    fn stderr_now(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (with a deadline) for `needle` on stderr; returns all of stderr.
    fn wait_stderr(&self, needle: &str, what: &str) -> String {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            let now = self.stderr_now();
            if now.contains(needle) {
                return now;
            }
            assert!(Instant::now() < deadline, "{what}: no {needle:?} on stderr: {now}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn collect_stderr(&mut self) -> String {
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        self.stderr_now()
    }

    /// Kills the process and returns what it wrote on stderr.
    fn kill(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.collect_stderr()
    }

    /// Waits for the process to end by itself; kills it and panics after `timeout`.
    fn wait_exit(&mut self, timeout: Duration, what: &str) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let stderr = self.kill();
                panic!("{what}: still running after {timeout:?}; stderr: {stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        (status, self.collect_stderr())
    }

    /// The next stdout line.
    fn next_line(&mut self, what: &str) -> String {
        match self.stdout_lines.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                let stderr = self.kill();
                panic!("{what}: printed nothing more within {START_TIMEOUT:?}; stderr: {stderr}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let stderr = self.kill();
                panic!("{what}: ended; stderr: {stderr}")
            }
        }
    }

    /// The address of the first stdout line, `coffer listening on https://ADDR`; returns
    /// once the server accepts signatures (the second after it started).
    fn listening_on(&mut self, what: &str) -> SocketAddr {
        let line = self.next_line(what);
        let started = time::OffsetDateTime::now_utc().unix_timestamp();
        let addr = line
            .strip_prefix("coffer listening on https://")
            .unwrap_or_else(|| panic!("{what}: unexpected first line {line:?}"));
        let addr = addr.parse().unwrap_or_else(|e| panic!("{what}: address {addr:?}: {e}"));
        while time::OffsetDateTime::now_utc().unix_timestamp() <= started {
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- the binary ----

/// Nothing from the caller's environment; cheap argon2id; runs in `cwd`.
fn isolate_cheap(cmd: &mut Command, cwd: &Path) {
    isolate(cmd, cwd);
    cmd.envs(CHEAP_KDF_ENV);
}

/// `coffer --data-dir .. --keys-dir ..` for `dirs`, with the test passphrase and no
/// `allow_cidrs` (the tests add it).
fn coffer(dirs: &TestDirs) -> Command {
    let mut cmd = coffer_command(&dirs.paths);
    isolate_cheap(&mut cmd, dirs.root.path());
    cmd.env("COFFER_PASSPHRASE", PASSPHRASE);
    cmd.env("COFFER_MAX_FUTURE_WRITE_SECS", "0");
    cmd
}

#[track_caller]
fn ok(dirs: &TestDirs, args: &[&str]) -> String {
    let out = coffer(dirs).args(args).output().expect("run coffer");
    assert!(
        out.status.success(),
        "coffer {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

const ALICE_PASSWORD: &str = "correct horse battery";

/// A coffer made by `coffer init`, with a member `alice`.
fn initialised_with_alice() -> TestDirs {
    let dirs = empty_dirs();
    let mut args = vec!["init"];
    args.extend(CHEAP_KDF);
    ok(&dirs, &args);
    let password = write_file(dirs.root.path(), "alice.password", &format!("{ALICE_PASSWORD}\n"));
    ok(
        &dirs,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "member",
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    dirs
}

/// A device's files as `device issue --out` (or `serve --dev`) wrote them.
struct DeviceFiles {
    ca: String,
    cert: String,
    key: String,
    signer: Signer,
    user: String,
}

impl DeviceFiles {
    fn load(profile_path: &Path, ca: &Path) -> Self {
        let profile = coffer::client::Profile::load(profile_path).unwrap();
        let dir = profile_path.parent().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Self {
            ca: read(ca),
            cert: read(&dir.join(&profile.cert)),
            key: read(&dir.join(&profile.key)),
            signer: Signer {
                access_key: profile.access_key_id.clone(),
                secret: profile.secret_access_key.expose().to_owned(),
                region: profile.region.clone(),
                token: None,
            },
            user: profile.username,
        }
    }

    fn client(&self) -> Arc<ClientConfig> {
        ClientSetup::new(&self.ca, Some((&self.cert, &self.key))).build()
    }

    /// From `source`: handshake, login, a signed listing; panics unless it answers 200.
    #[track_caller]
    fn assert_served_from(&self, source: IpAddr, addr: SocketAddr, password: &str, what: &str) {
        let mut stream = tls_from(source, addr, self.client());
        let mut signer = self.signer.clone();
        signer.token = Some(raw_login(&mut stream, &signer, &self.user, password));
        let res = raw_request(&mut stream, Some(&signer), "GET", "/v1/documents", &[], b"");
        assert_eq!(res.status, 200, "{what}: {}", text(&res.body));
    }
}

// ---- 3. coffer serve: allow_cidrs required, COFFER_ALLOW_CIDRS applied, --dev loopback ----

#[test]
fn serve_refuses_to_start_without_allow_cidrs_and_names_it() {
    let dirs = initialised_with_alice();
    // (what, COFFER_ALLOW_CIDRS, what stderr must say)
    let cases: [(&str, Option<&str>, &[&str]); 3] = [
        (
            "no allow_cidrs at all",
            None,
            &["allow_cidrs is not set", "COFFER_ALLOW_CIDRS"],
        ),
        ("COFFER_ALLOW_CIDRS empty", Some(" , "), &["allow_cidrs is empty"]),
        (
            "COFFER_ALLOW_CIDRS not a network",
            Some("example.com"),
            &["allow_cidrs", "example.com"],
        ),
    ];
    for (what, cidrs, needles) in cases {
        let mut cmd = coffer(&dirs);
        if let Some(c) = cidrs {
            cmd.env("COFFER_ALLOW_CIDRS", c);
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        let mut run = Running::spawn(cmd);
        let (status, stderr) = run.wait_exit(Duration::from_secs(30), &format!("serve with {what}"));
        assert_eq!(status.code(), Some(1), "{what}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{what}: stderr does not say {needle:?}: {stderr}"
            );
        }
        assert!(
            run.stdout_lines.try_recv().is_err(),
            "{what}: it printed a listening address"
        );
        assert!(
            std::fs::symlink_metadata(dirs.paths.data_dir.join("admin.sock")).is_err(),
            "{what}: an admin socket was left behind"
        );
    }
}

#[test]
fn serve_with_coffer_allow_cidrs_closes_other_addresses_before_tls_and_logs_it() {
    let dirs = initialised_with_alice();
    let out = dirs.root.path().join("phone");
    let p12 = write_file(dirs.root.path(), "p12.txt", "a long enough password\n");
    ok(
        &dirs,
        &[
            "device",
            "issue",
            "--user",
            "alice",
            "--out",
            out.to_str().unwrap(),
            "--p12-password-file",
            p12.to_str().unwrap(),
        ],
    );
    let phone = DeviceFiles::load(&out.join("profile.toml"), &out.join("ca.crt"));

    let mut cmd = coffer(&dirs);
    cmd.env("COFFER_ALLOW_CIDRS", "127.0.0.2/32")
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let mut server = Running::spawn(cmd);
    let addr = server.listening_on("coffer serve with COFFER_ALLOW_CIDRS=127.0.0.2/32");
    assert!(
        server.stderr_now().contains("accepting connections from 127.0.0.2/32"),
        "{}",
        server.stderr_now()
    );

    // From 127.0.0.1 (not listed), with a valid device certificate: not a byte.
    let tcp = connect_from(LO1, addr).expect("connect from 127.0.0.1");
    assert_closed_without_a_byte(tcp, phone.client(), "127.0.0.1 client of coffer serve");
    let stderr = server.wait_stderr("not in allow_cidrs", "the refusal log line");
    let line = stderr
        .lines()
        .find(|l| l.contains("not in allow_cidrs"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("allowlist") && line.contains("127.0.0.1"),
        "the log line does not name the allowlist and the address: {line}"
    );
    // Nothing of the TLS layer was reached: no handshake error was logged for it.
    assert!(!stderr.to_lowercase().contains("handshake"), "{stderr}");

    // From 127.0.0.2 (listed): the device is served.
    phone.assert_served_from(LO2, addr, ALICE_PASSWORD, "127.0.0.2 client of coffer serve");
    assert!(server.child.as_mut().unwrap().try_wait().unwrap().is_none());
    server.kill();
}

#[test]
fn serve_dev_allows_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer"));
    isolate_cheap(&mut cmd, d);
    cmd.env("COFFER_MAX_FUTURE_WRITE_SECS", "0")
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"]);
    let mut server = Running::spawn(cmd);
    let addr = server.listening_on("serve --dev");
    // The demo profile is written before the next line.
    server.next_line("serve --dev");
    assert!(
        server
            .stderr_now()
            .contains("accepting connections from 127.0.0.0/8, ::1/128"),
        "{}",
        server.stderr_now()
    );
    let demo = DeviceFiles::load(&d.join("keys/dev/profile.toml"), &d.join("keys/ca.crt"));
    let password = std::fs::read_to_string(d.join("keys/dev/password")).unwrap();
    let password = password.trim_end_matches('\n');
    for source in [LO1, LO2] {
        demo.assert_served_from(source, addr, password, &format!("serve --dev, client on {source}"));
    }
    let stderr = server.kill();
    assert!(!stderr.contains("not in allow_cidrs"), "{stderr}");
}
