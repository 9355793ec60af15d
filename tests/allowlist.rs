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
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::http::ServerOptions;
use coffer::http::allowlist::Allowlist;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use common::binary::{ALICE_PASSWORD, Cli, Running, isolate_cheap, text};
use common::client::{ClientSetup, Connection, RawStream, Response, Signer, read_response, signed_head, unique_nonce};
use common::server::{Identity, TestServer, start_server_on, test_options};
use common::*;

/// How long a refused connection may take to be closed (generous: a loaded test machine).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

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

// ---- an in-process server with the allowlist under test ----

/// A coffer HTTPS server in this process over a fresh coffer, listening on `listen`, with
/// the allowlist under test.
fn start(listen: SocketAddr, allow: Allowlist) -> TestServer {
    start_server_on(
        listen,
        ServerOptions {
            allow,
            ..test_options()
        },
    )
}

/// Refusals counted by the server.
fn refused(server: &TestServer) -> u64 {
    server.running().refused_connections()
}

/// Waits (with a deadline) until the refusal count reaches `n`; returns it.
fn refused_reaches(server: &TestServer, n: u64) -> u64 {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while refused(server) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    refused(server)
}

/// A member with a registered device, logged in on it.
fn member_device(server: &TestServer, name: &str) -> Identity {
    let user = server.add_member(name);
    let identity = server.issue_device(user.id);
    assert!(identity.token.is_some(), "login of {name}");
    identity
}

/// A signed listing on a new connection to `to` (the server's own address unless
/// given) must answer 200.
#[track_caller]
fn assert_serves(server: &TestServer, identity: &Identity, to: SocketAddr, what: &str) {
    let mut conn = Connection::open(server.client_config(Some(identity)), to, "localhost")
        .unwrap_or_else(|e| panic!("{what}: the TLS handshake failed: {e}"));
    conn.set_signer(identity.signer());
    let res = conn
        .request("GET", "/v1/documents", &[], b"")
        .unwrap_or_else(|e| panic!("{what}: the request failed: {e}"));
    assert_eq!(res.status, 200, "{what}: {}", text(&res.body));
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
    let server = start(
        "127.0.0.1:0".parse().unwrap(),
        Allowlist::parse(&["127.0.0.1/32"]).unwrap(),
    );
    let alice = member_device(&server, "alice");
    assert_eq!(refused(&server), 0);

    // From 127.0.0.2, with alice's valid certificate ready: closed before TLS.
    let tcp = connect_from(LO2, server.addr()).expect("connect from 127.0.0.2");
    let closed = assert_closed_without_a_byte(tcp, server.client_config(Some(&alice)), "client on 127.0.0.2");
    eprintln!("note: the refused connection ended with {closed:?}");
    assert_eq!(refused_reaches(&server, 1), 1, "the refusal was not counted");

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
    assert_eq!(refused_reaches(&server, 2), 2);

    // From 127.0.0.1: the full mutual-TLS service, and nothing more is counted.
    assert_serves(&server, &alice, server.addr(), "client on 127.0.0.1");
    let mut raw = tls_from(LO1, server.addr(), server.client_config(Some(&alice)));
    let res = raw_request(&mut raw, alice.signer().as_ref(), "GET", "/v1/documents", &[], b"");
    assert_eq!(res.status, 200, "{}", text(&res.body));
    assert_eq!(refused(&server), 2, "an allowed connection was counted as refused");
}

// ---- 2. IPv6 loopback and IPv4-mapped addresses ----

#[test]
fn ipv6_loopback_is_served_when_listed_and_refused_without_a_byte_when_not() {
    if !ipv6_loopback() {
        eprintln!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    let listen: SocketAddr = "[::1]:0".parse().unwrap();

    let allowed = start(listen, Allowlist::parse(&["::1/128"]).unwrap());
    assert_eq!(allowed.addr().ip(), LO6);
    let alice = member_device(&allowed, "alice");
    assert_serves(
        &allowed,
        &alice,
        allowed.addr(),
        "::1 client of a server allowing ::1/128",
    );
    assert_eq!(refused(&allowed), 0);
    drop(allowed);

    let v4_only = start(listen, Allowlist::parse(&["127.0.0.1/32"]).unwrap());
    let bob = member_device(&v4_only, "bob");
    let tcp = connect_from(LO6, v4_only.addr()).expect("connect from ::1");
    assert_closed_without_a_byte(
        tcp,
        v4_only.client_config(Some(&bob)),
        "::1 client of a server allowing only 127.0.0.1/32",
    );
    assert_eq!(refused_reaches(&v4_only, 1), 1, "the refusal was not counted");
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
    let server = start("[::]:0".parse().unwrap(), Allowlist::parse(&["127.0.0.1/32"]).unwrap());
    let alice = member_device(&server, "alice");
    let port = server.addr().port();
    // 127.0.0.1 arrives as ::ffff:127.0.0.1 and is matched as 127.0.0.1.
    assert_serves(
        &server,
        &alice,
        SocketAddr::new(LO1, port),
        "127.0.0.1 via a dual-stack listener",
    );
    assert_eq!(refused(&server), 0);
    // ::ffff:127.0.0.2 is not 127.0.0.1; ::1 is not either.
    let tcp = connect_from(LO2, SocketAddr::new(LO1, port)).expect("connect from 127.0.0.2");
    assert_closed_without_a_byte(
        tcp,
        server.client_config(Some(&alice)),
        "127.0.0.2 via a dual-stack listener",
    );
    assert_eq!(refused_reaches(&server, 1), 1);
    let tcp = connect_from(LO6, SocketAddr::new(LO6, port)).expect("connect from ::1");
    assert_closed_without_a_byte(tcp, server.client_config(Some(&alice)), "::1 via a dual-stack listener");
    assert_eq!(refused_reaches(&server, 2), 2);
}

// ---- the binary ----

/// `coffer` on a [`TestDirs`]: the test passphrase, writes accepted right after a start,
/// and no `allow_cidrs` (the tests add it).
const CLI: Cli = Cli {
    env: &[("COFFER_MAX_FUTURE_WRITE_SECS", "0")],
};

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
    let dirs = CLI.initialised_with_alice();
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
        let mut cmd = CLI.coffer(&dirs);
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
        assert!(run.try_next_line().is_none(), "{what}: it printed a listening address");
        assert!(
            std::fs::symlink_metadata(dirs.paths.data_dir.join("admin.sock")).is_err(),
            "{what}: an admin socket was left behind"
        );
    }
}

#[test]
fn serve_with_coffer_allow_cidrs_closes_other_addresses_before_tls_and_logs_it() {
    let dirs = CLI.initialised_with_alice();
    let out = dirs.root.path().join("phone");
    let p12 = write_file(dirs.root.path(), "p12.txt", "a long enough password\n");
    CLI.ok(
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

    let mut cmd = CLI.coffer(&dirs);
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
    let stderr = server.wait_stderr("not in allow_cidrs", CLOSE_TIMEOUT, "the refusal log line");
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
    assert!(server.is_running());
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

// ---- connections per address ----

#[test]
fn connections_beyond_the_per_address_cap_are_closed_before_tls_and_slots_come_back() {
    let mut options = test_options();
    options.limits.max_connections_per_ip = 2;
    let server = start_server_on("127.0.0.1:0".parse().unwrap(), options);
    let alice = member_device(&server, "alice");
    let config = server.client_config(Some(&alice));
    // Two connections from 127.0.0.1 are held open...
    let first = tls_from(LO1, server.addr(), config.clone());
    let _second = tls_from(LO1, server.addr(), config.clone());
    // ...so a third from the same address gets not a byte,
    let third = connect_from(LO1, server.addr()).expect("connect");
    assert_closed_without_a_byte(third, config.clone(), "a third connection from 127.0.0.1");
    // while another address has its own quota.
    let mut other = tls_from(LO2, server.addr(), config.clone());
    let res = raw_request(&mut other, alice.signer().as_ref(), "GET", "/v1/documents", &[], b"");
    assert_eq!(res.status, 200, "{}", text(&res.body));
    // Closing one connection gives its slot back (once the server has seen the close).
    drop(first);
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        let tcp = connect_from(LO1, server.addr()).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = ServerName::try_from("localhost".to_owned()).unwrap();
        let mut stream = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), tcp);
        let mut handshake = Ok(());
        while stream.conn.is_handshaking() && handshake.is_ok() {
            handshake = stream.conn.complete_io(&mut stream.sock).map(|_| ());
        }
        if handshake.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
