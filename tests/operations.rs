//! Operating a running coffer: the health listener (`/healthz`, `/readyz` turning unready
//! when the server certificate nears expiry and ready again once `coffer cert
//! renew-server` went through the admin socket, `/metrics` in Prometheus text with bounded
//! labels, plain HTTP only), a graceful SIGTERM that lets an upload in flight finish (or
//! cuts it after `limits.shutdown_grace_secs`, leaving nothing), and SIGHUP re-reading the
//! configuration file (`limits.device_requests_per_minute` live, other limits named as
//! needing a restart, an invalid file kept out).
//!
//! The health listener is spoken to with a bare `TcpStream` and hand-written HTTP/1.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::Value;

use common::binary::{Running, expect_ok, text};
use common::client::{ClientSetup, Connection, RawStream, Response, Signer, raw_tls, read_response, signed_head};
use common::served::{CLI, WAIT, connect, get, log_in, prepared_coffer, via_socket};
use common::server::{Identity, assert_problem, content_path, id_of, sha256_hex, start_server, upload};
use common::{
    CHEAP_KDF, PASSPHRASE, STAGING, TestDirs, empty_dirs, pattern, raw_documents_and_chunks, raw_len, write_file,
};

/// What `coffer serve` logs once its health listener is up.
const HEALTH_LINE: &str = "health and metrics on http://";

/// How long to wait for something the server reaches by itself (a counter, a log line).
const SETTLE: Duration = Duration::from_secs(30);

/// How long an upload in flight stays paused after SIGTERM before it goes on.
const PAUSE: Duration = Duration::from_secs(3);

// ---- the health listener, by hand ----

/// A plain-HTTP answer read in full.
#[derive(Debug)]
struct Plain {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Plain {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        text(&self.body)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// `GET path` on the health listener over a fresh TCP connection (`Connection: close`).
fn health_get(addr: SocketAddr, path: &str) -> Plain {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to the health listener {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path} on the health listener: {e}"));
    parse_plain(&raw, path)
}

fn parse_plain(raw: &[u8], what: &str) -> Plain {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no end of head in {:?}", text(raw)));
    let head = text(&raw[..end]);
    let mut rest = raw[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "{what}: status line {status_line:?}"
    );
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let eol = at
                + rest[at..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("chunk size line");
            let size =
                usize::from_str_radix(text(&rest[at..eol]).split(';').next().unwrap().trim(), 16).expect("chunk size");
            at = eol + 2;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
        rest = body;
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("content-length");
        assert!(
            rest.len() >= len,
            "{what}: body cut short ({} of {len} bytes)",
            rest.len()
        );
        rest.truncate(len);
    }
    Plain {
        status,
        headers,
        body: rest,
    }
}

/// The address `coffer serve` logged for its health listener.
fn health_addr_of(server: &Running) -> SocketAddr {
    let stderr = server.wait_stderr(HEALTH_LINE, WAIT, "the health listener's address");
    let at = stderr.find(HEALTH_LINE).unwrap() + HEALTH_LINE.len();
    let addr: String = stderr[at..].chars().take_while(|c| !c.is_whitespace()).collect();
    addr.parse()
        .unwrap_or_else(|e| panic!("health listener address {addr:?}: {e}\n{stderr}"))
}

// ---- Prometheus text ----

/// One sample line of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped).
fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("metric line {line:?}"));
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            let close;
            loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated labels: {line:?}"));
                match c {
                    '}' => {
                        close = i;
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label value: {line:?}");
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|(_, c)| c) {
                                Some('\\') => match chars.next().map(|(_, c)| c) {
                                    Some('n') => value.push('\n'),
                                    Some(c) => value.push(c),
                                    None => panic!("escape at the end: {line:?}"),
                                },
                                Some('"') => break,
                                Some(c) => value.push(c),
                                None => panic!("unterminated label value: {line:?}"),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            rest = &inner[close + 1..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value {value:?} ({e}): {line:?}"));
        out.push(Sample { name, labels, value });
    }
    out
}

/// A scrape of `/metrics`: the text and its samples.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn take(health: SocketAddr) -> Self {
        let res = health_get(health, "/metrics");
        assert_eq!(res.status, 200, "/metrics: {}", res.text());
        let ct = res.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("text/plain; version=0.0.4"),
            "/metrics content type {ct:?}"
        );
        let text = res.text();
        let samples = parse_metrics(&text);
        Self { text, samples }
    }

    /// Samples of `name` carrying every label of `labels`.
    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples of `name` carrying `labels` (0 without any).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The one sample of `name` carrying `labels`.
    #[track_caller]
    fn one(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one sample {name}{labels:?}, found {found:?}\n{}",
            self.text
        );
        found[0].value
    }
}

/// Scrapes until `ready` holds (the counters of a request are written once its answer has
/// been sent, a moment after the client has it), or [`SETTLE`] passed; returns the last.
fn scrape_until(health: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + SETTLE;
    loop {
        let scrape = Scrape::take(health);
        if ready(&scrape) || Instant::now() > deadline {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/readyz`: the status, the JSON, and the checks by name.
fn readiness(health: SocketAddr) -> (u16, Value, BTreeMap<String, (bool, String)>) {
    let res = health_get(health, "/readyz");
    let json = res.json();
    let checks = json["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks: {json}"))
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("check name").to_owned(),
                (
                    c["ok"].as_bool().expect("check ok"),
                    c["detail"].as_str().expect("check detail").to_owned(),
                ),
            )
        })
        .collect::<BTreeMap<_, _>>();
    let names: Vec<&str> = checks.keys().map(String::as_str).collect();
    assert_eq!(names, ["database", "server_certificate", "unlocked"], "{json}");
    (res.status, json, checks)
}

// ---- the binary ----

/// `coffer serve` on 127.0.0.1:0 with a passphrase file, `env` on top of [`CLI`]'s and
/// `global` flags before `serve`; returns once it accepts requests, its admin socket
/// exists, and its health listener's address is known.
fn serve_with(dirs: &TestDirs, env: &[(&str, &str)], global: &[&str]) -> (Running, SocketAddr, SocketAddr) {
    let passphrase = write_file(dirs.root.path(), "passphrase", &format!("{PASSPHRASE}\n"));
    let mut cmd = CLI.without_passphrase(dirs);
    cmd.envs(env.iter().copied())
        .args(global)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let mut server = Running::spawn(cmd);
    let addr = server.listening_on("coffer serve");
    let socket = common::served::socket_path(dirs);
    let deadline = Instant::now() + WAIT;
    while std::fs::symlink_metadata(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "no admin socket; stderr: {}",
            server.stderr_now()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = health_addr_of(&server);
    (server, addr, health)
}

/// Sends SIGTERM and waits for a clean exit; returns stderr.
fn stop(mut server: Running) -> String {
    server.signal(rustix::process::Signal::TERM);
    let (status, stderr) = server.wait_exit(WAIT, "coffer serve after SIGTERM");
    assert!(status.success(), "coffer serve exit {status:?}; stderr: {stderr}");
    stderr
}

// ---- 1. readiness and the server certificate ----

#[test]
fn readyz_fails_while_the_server_certificate_nears_expiry_and_recovers_after_renew_server() {
    let dirs = empty_dirs();
    let mut init = CLI.coffer(&dirs);
    init.env("COFFER_SERVER_CERT_DAYS", "10").arg("init").args(CHEAP_KDF);
    expect_ok(init.output().unwrap(), "coffer init with a 10-day server certificate");
    let (server, _addr, health) = serve_with(&dirs, &[], &[]);

    // The process answers, but it should not get traffic: its certificate expires soon.
    let res = health_get(health, "/healthz");
    assert_eq!(res.status, 200, "/healthz: {}", res.text());
    let (status, json, checks) = readiness(health);
    assert_eq!(status, 503, "/readyz with a 10-day certificate: {json}");
    assert_eq!(json["ready"], false, "{json}");
    assert!(checks["unlocked"].0 && checks["database"].0, "{json}");
    let (ok, detail) = &checks["server_certificate"];
    assert!(!ok, "{json}");
    assert!(
        detail.contains("coffer cert renew-server"),
        "the detail does not say what to do: {detail}"
    );
    assert!(detail.contains("expires in"), "{detail}");
    let days = Scrape::take(health).one("coffer_server_certificate_expiry_days", &[]);
    assert!(
        (9.0..=10.0).contains(&days),
        "expiry days {days} (certificate of 10 days)"
    );

    // Renewed through the running server (no passphrase: its admin socket), which
    // switches to it at once: ready again.
    let stdout = via_socket(&dirs, &["cert", "renew-server"]);
    assert!(stdout.contains("renewed"), "{stdout}");
    let (status, json, checks) = readiness(health);
    assert_eq!(status, 200, "/readyz after the renewal: {json}");
    assert_eq!(json["ready"], true, "{json}");
    assert!(checks.values().all(|(ok, _)| *ok), "{json}");
    assert!(checks["server_certificate"].1.contains("valid for"), "{json}");
    let days = Scrape::take(health).one("coffer_server_certificate_expiry_days", &[]);
    assert!(
        (396.0..=397.0).contains(&days),
        "expiry days {days} after renewing for 397 days"
    );
    let res = health_get(health, "/healthz");
    assert_eq!(res.status, 200, "/healthz: {}", res.text());
    stop(server);
}

#[test]
fn a_fresh_coffer_is_ready() {
    let server = start_server();
    let health = server.running().health_addr().expect("a health listener");
    let res = health_get(health, "/healthz");
    assert_eq!((res.status, res.text().as_str()), (200, "ok\n"));
    let (status, json, checks) = readiness(health);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["ready"], true, "{json}");
    for (name, (ok, detail)) in &checks {
        assert!(ok, "{name}: {detail}");
    }
    // The test server's certificate is issued for 30 days.
    let days = Scrape::take(health).one("coffer_server_certificate_expiry_days", &[]);
    assert!((29.0..=30.0).contains(&days), "expiry days {days}");
}

// ---- 2. graceful shutdown ----

/// An upload whose head and first part were sent over a raw mTLS stream.
struct InFlight {
    stream: RawStream,
    rest: Vec<u8>,
}

impl InFlight {
    /// Signed `POST /v1/documents` of `body` with its whole length and hash, and its
    /// first `sent` bytes.
    fn start(addr: SocketAddr, ca: &str, who: &Identity, name: &str, body: &[u8], sent: usize) -> Self {
        let config = ClientSetup::new(ca, Some((&who.cert_pem, &who.key_pem))).build();
        let mut stream = raw_tls(config, addr);
        stream.sock.set_read_timeout(Some(WAIT)).unwrap();
        let len = body.len().to_string();
        let head = signed_head(
            who.signer().as_ref(),
            "POST",
            "/v1/documents",
            "localhost",
            &[("x-coffer-name", name), ("content-length", &len)],
            &sha256_hex(body),
        );
        stream.write_all(head.as_bytes()).expect("upload head");
        stream.write_all(&body[..sent]).expect("first part of the body");
        stream.flush().expect("flush");
        Self {
            stream,
            rest: body[sent..].to_vec(),
        }
    }

    /// Sends the rest of the body and reads the answer.
    fn finish(mut self) -> Response {
        self.stream.write_all(&self.rest).expect("rest of the body");
        self.stream.flush().expect("flush");
        read_response(&mut BufReader::new(&mut self.stream)).expect("answer to the finished upload")
    }
}

/// Waits until the server counts `n` uploads in progress (the handler took its slot).
fn wait_uploads_active(health: SocketAddr, n: f64) {
    let scrape = scrape_until(health, |s| s.sum("coffer_transfers_active", &[("kind", "upload")]) == n);
    assert_eq!(
        scrape.sum("coffer_transfers_active", &[("kind", "upload")]),
        n,
        "uploads in progress\n{}",
        scrape.text
    );
}

/// What became of a connection attempt.
enum Probe {
    /// Refused or closed without an HTTP answer.
    Refused(String),
    /// Answered: the server still takes new connections.
    Served(u16),
}

/// A new TLS connection (no client certificate: such refusals spend no failure budget)
/// and one request.
fn probe(addr: SocketAddr, config: Arc<ClientConfig>) -> Probe {
    let tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(t) => t,
        Err(e) => return Probe::Refused(format!("connect failed: {e}")),
    };
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    let head = b"GET /v1/documents HTTP/1.1\r\nhost: localhost\r\n\r\n";
    if let Err(e) = tls.write_all(head).and_then(|()| tls.flush()) {
        return Probe::Refused(format!("closed before the request went out: {e}"));
    }
    match read_response(&mut BufReader::new(&mut tls)) {
        Ok(res) => Probe::Served(res.status),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("a new connection was neither refused, closed nor answered within 20 s")
        }
        Err(e) => Probe::Refused(format!("closed without an answer: {e}")),
    }
}

/// Probes until a new connection is refused (the stop is asynchronous to the signal).
fn assert_new_connections_refused(addr: SocketAddr, ca: &str) -> String {
    let config = ClientSetup::new(ca, None).build();
    let deadline = Instant::now() + SETTLE;
    loop {
        match probe(addr, config.clone()) {
            Probe::Refused(why) => return why,
            Probe::Served(status) => assert!(
                Instant::now() < deadline,
                "new connections are still served ({status}) {SETTLE:?} after SIGTERM"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The names of the documents `conn` lists.
fn listed(conn: &mut Connection) -> Vec<(String, String)> {
    let res = get(conn, "/v1/documents");
    assert_eq!(res.status, 200, "listing: {}", text(&res.body));
    res.json()["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| (id_of(d), d["name"].as_str().expect("name").to_owned()))
        .collect()
}

#[test]
fn sigterm_lets_an_upload_in_flight_finish_within_the_grace() {
    let prepared = prepared_coffer(&["alice"]);
    let (dirs, ca) = (prepared.dirs, prepared.ca_pem);
    let alice = prepared.members.into_iter().next().unwrap();
    let (mut server, addr, health) = serve_with(&dirs, &[], &[]);

    let content = pattern(81, 4 * 1024 * 1024);
    let upload = InFlight::start(addr, &ca, &alice.identity, "in-flight.bin", &content, content.len() / 2);
    wait_uploads_active(health, 1.0);

    server.signal(rustix::process::Signal::TERM);
    let signalled = Instant::now();
    server.wait_stderr("SIGTERM: no new connections", WAIT, "the stop");
    let why = assert_new_connections_refused(addr, &ca);
    eprintln!("a new connection after SIGTERM: {why}");
    // The health listener still answers during the grace, and says the server is not
    // ready (a load balancer or monitor stops sending it work).
    let ready = health_get(health, "/readyz");
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 503, "{body}");
    assert!(body.contains("\"serving\"") && body.contains("stopping"), "{body}");

    // The connection open before the signal goes on: after a pause (longer than actix's
    // 1 s shutdown poll, well within the 30 s grace), the rest of the body is taken and
    // the upload completes.
    std::thread::sleep(PAUSE.saturating_sub(signalled.elapsed()));
    assert!(server.is_running(), "coffer exited with an upload in flight");
    let res = upload.finish();
    assert_eq!(res.status, 201, "the upload in flight: {}", text(&res.body));
    let id = id_of(&res.json());
    let (status, stderr) = server.wait_exit(WAIT, "coffer serve after the upload finished");
    assert!(status.success(), "exit {status:?}; stderr: {stderr}");
    assert!(stderr.contains("coffer stopped"), "{stderr}");

    // Served again: the document is there, byte for byte.
    let (server, addr, _) = serve_with(&dirs, &[], &[]);
    let mut conn = connect(addr, &ca, &alice.identity);
    log_in(&mut conn, &alice);
    assert_eq!(listed(&mut conn), [(id.clone(), "in-flight.bin".to_owned())]);
    let res = get(&mut conn, &content_path(&id));
    assert_eq!(res.status, 200, "{}", text(&res.body));
    assert!(res.body == content, "the document differs from what was uploaded");
    drop(conn);
    stop(server);
}

#[test]
fn sigterm_cuts_an_upload_stalled_past_the_grace_and_leaves_nothing() {
    let prepared = prepared_coffer(&["alice"]);
    let (dirs, ca) = (prepared.dirs, prepared.ca_pem);
    let alice = prepared.members.into_iter().next().unwrap();
    let grace = [("COFFER_SHUTDOWN_GRACE_SECS", "1")];
    let (mut server, addr, health) = serve_with(&dirs, &grace, &[]);

    let content = pattern(82, 4 * 1024 * 1024);
    let mut upload = InFlight::start(addr, &ca, &alice.identity, "stalled.bin", &content, content.len() / 2);
    wait_uploads_active(health, 1.0);

    server.signal(rustix::process::Signal::TERM);
    let signalled = Instant::now();
    // The rest of the body never comes: the process ends after the grace, not after the
    // body idle timeout (30 s).
    let within = Duration::from_secs(1 + 20);
    let (status, stderr) = server.wait_exit(within, "coffer serve with a stalled upload, 1 s grace");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "exit {status:?}; stderr: {stderr}");
    assert!(stderr.contains("within 1 s"), "{stderr}");
    match read_response(&mut BufReader::new(&mut upload.stream)) {
        Ok(res) => assert_ne!(res.status, 201, "the cut upload was stored: {}", text(&res.body)),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the cut upload's connection stayed open after the exit"
        ),
    }
    drop(upload);

    // Served again: nothing listed, nothing damaged.
    let (server, addr, _) = serve_with(&dirs, &[], &[]);
    let opened = server.stderr_now();
    if let Some(line) = opened.lines().find(|l| l.contains("unfinished upload")) {
        eprintln!("the restart collected: {line}");
    }
    let mut conn = connect(addr, &ca, &alice.identity);
    log_in(&mut conn, &alice);
    assert_eq!(listed(&mut conn), []);
    drop(conn);
    for args in [&["verify"][..], &["verify", "--deep"][..]] {
        let stdout = via_socket(&dirs, args);
        assert!(stdout.contains("no damage found"), "coffer {args:?}: {stdout}");
    }
    stop(server);
    // Nor in the file: no document, no chunk, nothing staged.
    let raw = raw_documents_and_chunks(&dirs.paths);
    assert!(
        raw.documents.is_empty(),
        "{} document record(s) left",
        raw.documents.len()
    );
    assert!(raw.chunks.is_empty(), "{} chunk(s) left", raw.chunks.len());
    assert_eq!(raw_len(&dirs.paths, STAGING), 0, "staging entries left");
}

// ---- 3. metrics ----

#[test]
fn metrics_count_requests_by_route_pattern_refusals_bytes_and_devices() {
    let server = start_server();
    let health = server.running().health_addr().expect("a health listener");
    let alice_user = server.add_member("alice");
    let alice = server.issue_device(alice_user.id);
    let bob_user = server.add_member("bob");
    let bob = server.issue_device(bob_user.id);

    // An upload and its download.
    let content = pattern(83, 300_000);
    let mut conn = server.connect(&alice);
    let id = id_of(&upload(&mut conn, "metrics.bin", &[], &content));
    let res = get(&mut conn, &content_path(&id));
    assert_eq!(res.status, 200, "{}", text(&res.body));
    assert!(res.body == content, "the download differs");
    // A bad signature (alice's certificate, a wrong secret).
    let mut bad = server.connect_unsigned(&alice);
    let signer = alice.signer().unwrap();
    bad.set_signer(Some(Signer {
        secret: format!("{}x", signer.secret),
        ..signer
    }));
    assert_problem(&get(&mut bad, "/v1/documents"), 401, "signature-mismatch");
    // No client certificate.
    let res = get(&mut server.connect_anonymous(), "/v1/documents");
    assert_problem(&res, 401, "client-certificate-required");

    let route = |r: &'static str, m: &'static str, s: &'static str| [("route", r), ("method", m), ("status", s)];
    let requests = "coffer_http_requests_total";
    let m = scrape_until(health, |m| {
        m.sum(requests, &route("/v1/documents", "GET", "401")) >= 2.0
            && m.sum(requests, &route("/v1/documents/{id}", "GET", "200")) >= 1.0
    });
    assert_eq!(
        m.one(requests, &route("/v1/documents", "POST", "201")),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.one(requests, &route("/v1/documents/{id}", "GET", "200")),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.one(requests, &route("/v1/documents", "GET", "401")),
        2.0,
        "{}",
        m.text
    );
    // Labels are route patterns, never what the client sent.
    assert!(!m.text.contains(&id), "a document id is in the metrics:\n{}", m.text);
    for s in m.samples.iter().filter(|s| s.name == requests) {
        let r = &s.labels["route"];
        assert!(r.starts_with('/') || r == "(no route)", "route label {r:?}");
        assert!(
            !r.split('/')
                .any(|seg| seg.len() == 32 && seg.chars().all(|c| c.is_ascii_hexdigit())),
            "a raw id in route label {r:?}"
        );
    }
    let rejections = "coffer_auth_rejections_total";
    assert!(
        m.sum(rejections, &[("reason", "signature-mismatch")]) >= 1.0,
        "{}",
        m.text
    );
    assert!(
        m.sum(rejections, &[("reason", "client-certificate-required")]) >= 1.0,
        "{}",
        m.text
    );
    let body_in = m.one("coffer_http_request_body_bytes_total", &[]);
    let body_out = m.one("coffer_http_response_body_bytes_total", &[]);
    assert!(body_in >= content.len() as f64, "request body bytes {body_in}");
    assert!(body_out >= content.len() as f64, "response body bytes {body_out}");
    assert!(m.one("coffer_database_size_bytes", &[]) > 0.0, "{}", m.text);
    assert_eq!(m.one("coffer_devices_active", &[]), 2.0, "{}", m.text);
    let soonest = m.one("coffer_device_certificate_soonest_expiry_days", &[]);
    assert!((29.0..=30.0).contains(&soonest), "soonest device expiry {soonest}");
    assert_eq!(m.sum("coffer_transfers_active", &[]), 0.0, "{}", m.text);
    assert!(m.matching("coffer_open_connections", &[]).count() == 1, "{}", m.text);

    // The latency histogram of the upload: buckets rising to +Inf, a sum and a count.
    let hist = "coffer_http_request_duration_seconds";
    let upload_route = [("route", "/v1/documents"), ("method", "POST")];
    let bucket = format!("{hist}_bucket");
    let buckets: Vec<&Sample> = m.matching(&bucket, &upload_route).collect();
    assert!(buckets.len() > 2, "{}", m.text);
    assert!(
        buckets.windows(2).all(|w| w[0].value <= w[1].value),
        "buckets are not cumulative: {buckets:?}"
    );
    let inf = m.one(&bucket, &[upload_route[0], upload_route[1], ("le", "+Inf")]);
    assert_eq!(inf, 1.0, "{}", m.text);
    assert_eq!(m.one(&format!("{hist}_count"), &upload_route), 1.0, "{}", m.text);
    assert!(m.one(&format!("{hist}_sum"), &upload_route) > 0.0, "{}", m.text);

    // A revoked device is no longer active.
    server
        .vault()
        .revoke_device(bob.device_id())
        .expect("revoke bob's device");
    let m = Scrape::take(health);
    assert_eq!(m.one("coffer_devices_active", &[]), 1.0, "{}", m.text);
}

#[test]
fn the_health_listener_is_plain_http_and_serves_only_its_three_routes() {
    let server = start_server();
    let health = server.running().health_addr().expect("a health listener");
    let res = health_get(health, "/nope");
    assert_eq!(res.status, 404, "{}", res.text());
    let res = health_get(health, "/v1/documents");
    assert_eq!(res.status, 404, "{}", res.text());

    // A TLS ClientHello: the API port answers with a handshake record (0x16), the health
    // listener does not speak TLS.
    let hello = {
        let config = server.client_config(None);
        let mut conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        hello
    };
    let answer = |addr: SocketAddr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&hello).unwrap();
        let mut got = vec![0u8; 4096];
        let mut n = 0;
        // Enough to tell a TLS record from an HTTP answer, or the close.
        while n < 8 {
            match s.read(&mut got[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("no answer to a ClientHello from {addr} within 20 s")
                }
                Err(_) => break,
            }
        }
        got.truncate(n);
        got
    };
    let api = answer(server.addr());
    assert_eq!(api.first(), Some(&0x16), "the API port did not answer with a handshake");
    let plain = answer(health);
    assert_ne!(
        plain.first(),
        Some(&0x16),
        "the health listener answered a TLS handshake"
    );
    assert!(
        plain.is_empty() || plain.starts_with(b"HTTP/1.1 4"),
        "the health listener answered a ClientHello with {:?}",
        text(&plain)
    );
}

// ---- 4. SIGHUP ----

/// Rewrites the configuration file and sends SIGHUP.
fn reconfigure(server: &mut Running, file: &Path, contents: &str) {
    std::fs::write(file, contents).expect("write the configuration file");
    server.signal(rustix::process::Signal::HUP);
}

/// Requests `GET /v1/documents` on fresh connections until one is refused `429`; returns
/// the number of requests answered 200 before it, and the refusal.
fn requests_until_429(addr: SocketAddr, ca: &str, who: &Identity, at_most: usize) -> (usize, Response) {
    for answered in 0..at_most {
        let res = get(&mut connect(addr, ca, who), "/v1/documents");
        match res.status {
            200 => {}
            429 => return (answered, res),
            other => panic!("request {}: {other} {}", answered + 1, text(&res.body)),
        }
    }
    panic!("no 429 within {at_most} requests")
}

#[test]
fn sighup_applies_the_request_budget_live_names_other_limits_and_keeps_an_invalid_file_out() {
    let prepared = prepared_coffer(&["alice", "bob"]);
    let (dirs, ca) = (prepared.dirs, prepared.ca_pem);
    let mut members = prepared.members.into_iter();
    let (alice, bob) = (members.next().unwrap(), members.next().unwrap());
    let file = write_file(
        dirs.root.path(),
        "operations.toml",
        "[limits]\ndevice_requests_per_minute = 1000\n",
    );
    let file_arg = file.to_str().unwrap();
    let (mut server, addr, health) = serve_with(&dirs, &[], &["--config", file_arg]);

    // 1000 a minute: a dozen requests pass.
    let mut conn = connect(addr, &ca, &alice.identity);
    for i in 0..12 {
        let res = get(&mut conn, "/v1/documents");
        assert_eq!(res.status, 200, "request {i} under 1000 a minute: {}", text(&res.body));
    }
    drop(conn);

    // 5 a minute, live.
    reconfigure(&mut server, &file, "[limits]\ndevice_requests_per_minute = 5\n");
    let stderr = server.wait_stderr("SIGHUP: applied", WAIT, "the reload");
    let applied = stderr.lines().find(|l| l.contains("SIGHUP: applied")).unwrap();
    assert!(applied.contains("limits.device_requests_per_minute"), "{applied}");
    assert!(!stderr.contains("next start"), "{stderr}");
    let (answered, res) = requests_until_429(addr, &ca, &alice.identity, 8);
    // Five, and one more if the bucket refilled a token (one every 12 s) meanwhile.
    assert!(answered <= 6, "{answered} requests passed a budget of 5 a minute");
    assert_problem(&res, 429, "too-many-requests");
    let retry: u64 = res
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    eprintln!("429 detail: {}", res.json()["detail"]);

    // Another limit: named as needing a restart, nothing applied.
    reconfigure(
        &mut server,
        &file,
        "[limits]\ndevice_requests_per_minute = 5\nmax_uploads = 7\n",
    );
    let stderr = server.wait_stderr("take effect at the next start", WAIT, "the second reload");
    let line = stderr
        .lines()
        .find(|l| l.contains("take effect at the next start"))
        .unwrap();
    assert!(line.contains("limits.max_uploads"), "{line}");
    assert!(line.contains("restart coffer"), "{line}");
    assert_eq!(stderr.matches("SIGHUP: applied").count(), 1, "{stderr}");

    // Invalid files (unreadable TOML, then a value out of range): the running
    // configuration stays, and the server goes on serving.
    reconfigure(&mut server, &file, "[limits\ndevice_requests_per_minute = 5\n");
    server.wait_stderr("SIGHUP: kept the running configuration", WAIT, "the invalid reload");
    reconfigure(&mut server, &file, "[limits]\ndevice_requests_per_minute = 0\n");
    let stderr = server.wait_stderr_count(
        "SIGHUP: kept the running configuration",
        2,
        WAIT,
        "the out-of-range reload",
    );
    assert!(stderr.contains("fix the file and send SIGHUP again"), "{stderr}");
    assert_eq!(stderr.matches("SIGHUP: applied").count(), 1, "{stderr}");
    assert!(server.is_running(), "coffer exited on an invalid configuration");
    // Still 5 a minute (neither the invalid values nor the defaults): bob's budget.
    let (answered, res) = requests_until_429(addr, &ca, &bob.identity, 8);
    assert!((1..=6).contains(&answered), "bob: {answered} requests before the 429");
    assert_problem(&res, 429, "too-many-requests");
    assert_eq!(health_get(health, "/healthz").status, 200);
    let (status, json, _) = readiness(health);
    assert_eq!(status, 200, "{json}");
    stop(server);
}
