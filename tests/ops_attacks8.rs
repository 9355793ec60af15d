//! Regression tests for the hostile review of issue 8 (logs, health listener, metrics,
//! connection caps, per-device request budget, SIGTERM). The review's proofs of concept
//! (branch `review8`, `tests/review8_attacks.rs`) asserted the flaws; the mends on main
//! (0278a61) fixed them, and each test here asserts the mended behaviour, so it fails if
//! the flaw comes back.
//!
//! The tests open many sockets, count log lines of this process and read the database
//! file's commit counter, so they take turns (see [`serial`]); no assertion is a tight
//! timing: every bound is several times what an idle machine needs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use coffer::http::ServerOptions;
use rustls::pki_types::ServerName;

use common::client::{Response, raw_tls, read_response, signed_head};
use common::server::{Identity, TestServer, sha256_hex, start_server_with, test_options};

/// The health listener's connection cap (`src/http/health.rs`, `MAX_CONNECTIONS`).
const HEALTH_CONNECTIONS: usize = 16;
/// How long `/readyz` reuses a database probe (`src/http/health.rs`, `PROBE_REUSE`).
const PROBE_REUSE: Duration = Duration::from_secs(5);
/// Request lines of refused requests without a device per window
/// (`src/http/observe.rs`, `UNIDENTIFIED_LINES`, `UNIDENTIFIED_WINDOW`).
const UNIDENTIFIED_LINES: u64 = 20;
const UNIDENTIFIED_WINDOW: Duration = Duration::from_secs(10);

// ---- helpers ----

/// The tests of this file take turns: they count this process's log lines and open many
/// sockets, which parallel tests would disturb.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn options(change: impl FnOnce(&mut ServerOptions)) -> ServerOptions {
    let mut o = test_options();
    change(&mut o);
    o
}

fn member_device(server: &TestServer, name: &str) -> Identity {
    let user = server.add_member(name);
    server.issue_device(user.id)
}

/// One signed request by `who` on a fresh connection; every step (connect, handshake,
/// answer) bounded by `within`. `Err` when the server does not answer in time or closes
/// the connection (e.g. before TLS).
fn api_get_within(server: &TestServer, who: &Identity, path: &str, within: Duration) -> std::io::Result<Response> {
    let tcp = TcpStream::connect_timeout(&server.addr(), within)?;
    tcp.set_read_timeout(Some(within))?;
    tcp.set_write_timeout(Some(within))?;
    let conn = rustls::ClientConnection::new(
        server.client_config(Some(who)),
        ServerName::try_from("localhost").expect("name"),
    )
    .map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = signed_head(who.signer().as_ref(), "GET", path, "localhost", &[], &sha256_hex(b""));
    // The write drives the handshake first.
    tls.write_all(head.as_bytes())?;
    tls.flush()?;
    read_response(&mut BufReader::new(tls))
}

/// A signed `GET /v1/documents` by `who` on a fresh connection (see [`api_get_within`]).
fn api_list_within(server: &TestServer, who: &Identity, within: Duration) -> std::io::Result<Response> {
    api_get_within(server, who, "/v1/documents", within)
}

/// A plain-HTTP request to the health listener on a new connection (closed after).
fn health_get(addr: SocketAddr, path: &str) -> Response {
    let mut tcp = TcpStream::connect(addr).expect("connect to the health listener");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes())
        .expect("request");
    read_response(&mut BufReader::new(tcp)).expect("health answer")
}

/// The value of the sample `series` on `/metrics` (name and labels as exposed), 0 if absent.
fn metric(server: &TestServer, series: &str) -> f64 {
    let res = health_get(server.running().health_addr().expect("health listener"), "/metrics");
    assert_eq!(res.status, 200, "/metrics");
    String::from_utf8(res.body)
        .expect("UTF-8")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("number"))
}

/// Waits (generously) until `series` reads `value`.
#[track_caller]
fn wait_for_metric(server: &TestServer, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = metric(server, series);
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} stays at {now}, expected {value}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A socket whose peer is watched for closing, with what it sent meanwhile.
struct Watched {
    tcp: TcpStream,
    received: Vec<u8>,
    closed_after: Option<Duration>,
}

/// Reads every socket of `watched` (keeping what arrives) until each is closed by the
/// server or `limit` has passed since `since`.
fn watch_until_closed(watched: &mut [Watched], since: Instant, limit: Duration) {
    for w in watched.iter_mut() {
        w.tcp
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
    }
    let mut buf = [0u8; 4096];
    while since.elapsed() < limit && watched.iter().any(|w| w.closed_after.is_none()) {
        for w in watched.iter_mut().filter(|w| w.closed_after.is_none()) {
            match w.tcp.read(&mut buf) {
                Ok(0) => w.closed_after = Some(since.elapsed()),
                Ok(n) => w.received.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // A reset is a close too.
                Err(_) => w.closed_after = Some(since.elapsed()),
            }
        }
    }
}

/// The id of the last transaction committed to the redb file at `path`, read from the file
/// header (redb's documented file format: two 128-byte commit slots from byte 64, each with
/// its "last committed transaction id" at byte 104; the newer slot holds the larger id).
/// Every durable commit rewrites it, so the difference between two readings counts the
/// commits in between.
fn last_transaction(path: &Path) -> u64 {
    let mut header = [0u8; 320];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .expect("read the database header");
    assert_eq!(&header[..4], b"redb", "not a redb file");
    let id = |slot: usize| u64::from_le_bytes(header[slot + 104..slot + 112].try_into().unwrap());
    id(64).max(id(64 + 128))
}

/// The commit counter once the server has stopped writing (audit entries of the set-up
/// are written by a background thread).
fn settled_transaction(path: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = last_transaction(path);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = last_transaction(path);
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "the server keeps committing");
        last = now;
    }
}

// ---- a log subscriber that records the request lines (this test binary's own) ----

/// One `coffer::request` line at INFO: its `problem` and, for a summary line, `suppressed`.
#[derive(Clone, Debug, Default)]
struct RequestLine {
    problem: Option<String>,
    suppressed: Option<u64>,
}

static REQUEST_LINES: Mutex<Vec<RequestLine>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

struct RecordRequestLines;

impl tracing::field::Visit for RequestLine {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "problem" {
            self.problem = Some(value.to_owned());
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "suppressed" {
            self.suppressed = Some(value);
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "suppressed" {
            self.suppressed = u64::try_from(value).ok();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "problem" => self.problem = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "suppressed" => self.suppressed = format!("{value:?}").parse().ok(),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecordRequestLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == coffer::telemetry::REQUEST_TARGET && *meta.level() == tracing::Level::INFO {
            let mut line = RequestLine::default();
            event.record(&mut line);
            REQUEST_LINES.lock().unwrap().push(line);
        }
    }
}

fn install_line_recorder() {
    use tracing_subscriber::layer::SubscriberExt;
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(RecordRequestLines);
        tracing::subscriber::set_global_default(subscriber).expect("install the recording subscriber");
    });
}

fn request_lines() -> Vec<RequestLine> {
    REQUEST_LINES.lock().unwrap().clone()
}

// =====================================================================================
// F1: the health listener runs apart from the API (own thread, one worker, 16 connections,
// no keep-alive, 5 s for a request). Connections held on it, idle or with a complete
// request followed by a byte of a second one (which kept a keep-alive connection open for
// ever when it shared the API's workers and their connection caps), are closed within
// seconds and never keep a device from the API.
// =====================================================================================

#[test]
fn f1_connections_held_on_the_health_listener_are_closed_soon_and_leave_the_api_alone() {
    let _serial = serial();
    // Small caps: were the health listener back in the API's workers, their actix cap
    // (2 x 4 + 1 + 16 = 25 per worker, two workers) would be filled by 50 held sockets.
    let server = start_server_with(options(|o| {
        o.limits.max_connections = 4;
        o.limits.max_anonymous_connections = 1;
    }));
    let alice = member_device(&server, "alice");
    let health = server.running().health_addr().expect("health listener");
    assert_eq!(
        api_list_within(&server, &alice, Duration::from_secs(10))
            .expect("served before")
            .status,
        200
    );

    // Complete requests, each answered, then the first byte of a second request on the
    // same connection (which cleared the keep-alive timer and armed no other).
    let dribbling = 64;
    let mut watched = Vec::new();
    for _ in 0..dribbling {
        let mut tcp = TcpStream::connect(health).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("request");
        match read_response(&mut BufReader::new(&mut tcp)) {
            Ok(res) => assert_eq!(res.status, 200),
            // Not answered: the listener holds no more connections (checked below).
            Err(_) => break,
        }
        // The server may have closed it already.
        let _ = tcp.write_all(b"G");
        watched.push(Watched {
            tcp,
            received: Vec::new(),
            closed_after: None,
        });
    }
    let answered = watched.len();
    // Then idle sockets: they take every place of the health listener for its 5 s request
    // timeout.
    let idle = HEALTH_CONNECTIONS;
    for _ in 0..idle {
        let tcp = TcpStream::connect(health).expect("connect");
        watched.push(Watched {
            tcp,
            received: Vec::new(),
            closed_after: None,
        });
    }
    let since = Instant::now();

    // Meanwhile the API serves a signed, logged-in phone at once.
    let started = Instant::now();
    let res = api_list_within(&server, &alice, Duration::from_secs(10));
    println!(
        "device request with {answered} dribbling and {idle} idle sockets on the health listener: {:?} after {:?}",
        res.as_ref().map(|r| r.status),
        started.elapsed()
    );
    assert_eq!(
        res.expect("the API answers while the health listener is held").status,
        200
    );
    assert_eq!(answered, dribbling, "the health listener stopped answering");

    // Every held socket is closed by the server within seconds: the dribbling ones right
    // after their one answer (no keep-alive), the idle ones at the 5 s request timeout.
    watch_until_closed(&mut watched, since, Duration::from_secs(40));
    let open = watched.iter().filter(|w| w.closed_after.is_none()).count();
    let slowest = watched.iter().filter_map(|w| w.closed_after).max();
    println!("all health sockets closed by the server after {slowest:?} ({open} still open)");
    assert_eq!(open, 0, "health connections still open after 40 s");
    for (i, w) in watched[..dribbling].iter().enumerate() {
        assert!(
            w.received.is_empty(),
            "dribbling connection {i}: a second answer {:?}",
            String::from_utf8_lossy(&w.received)
        );
    }

    // A socket held while the listener is otherwise quiet is closed within a few seconds
    // (5 s request timeout), and the listener still answers afterwards.
    let mut one = [Watched {
        tcp: TcpStream::connect(health).expect("connect"),
        received: Vec::new(),
        closed_after: None,
    }];
    one[0]
        .tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .expect("half a request");
    let t = Instant::now();
    watch_until_closed(&mut one, t, Duration::from_secs(30));
    println!(
        "a half-sent request on the health listener was closed after {:?}",
        one[0].closed_after
    );
    assert!(
        one[0].closed_after.is_some(),
        "a half-sent request kept its connection 30 s"
    );
    assert_eq!(health_get(health, "/healthz").status, 200);
    assert_eq!(
        api_list_within(&server, &alice, Duration::from_secs(10))
            .expect("served after")
            .status,
        200
    );
}

// =====================================================================================
// F2: `/readyz` probes the database (a durable write) at most once per 5 s, one probe at
// a time; concurrent callers share the result. Counted with the database file's own
// commit counter: a flood of 200 unauthenticated `/readyz` costs a handful of commits, not
// one each.
// =====================================================================================

#[test]
fn f2_a_readyz_flood_costs_at_most_one_database_write_per_five_seconds() {
    let _serial = serial();
    let server = start_server_with(test_options());
    let alice = member_device(&server, "alice");
    let health = server.running().health_addr().expect("health listener");
    let database = server.dirs().database();

    // What one probe costs on the counter (redb may count more than one transaction per
    // durable commit): one /readyz on a cold cache; then that probe's reuse runs out.
    let before = settled_transaction(&database);
    assert_eq!(health_get(health, "/readyz").status, 200);
    let per_probe = settled_transaction(&database) - before;
    assert!(
        (1..=8).contains(&per_probe),
        "one /readyz on a cold cache moved the commit counter by {per_probe} (has redb's header layout changed?)"
    );
    std::thread::sleep(PROBE_REUSE + Duration::from_millis(500));

    // 200 requests, from 50 threads at once, each request on its own connection (the
    // listener allows no keep-alive), the cache cold at the start.
    let before = settled_transaction(&database);
    let threads = 50;
    let each = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let started = Instant::now();
    let flood: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (0..each).map(|_| health_get(health, "/readyz")).collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<Response> = flood
        .into_iter()
        .flat_map(|t| t.join().expect("flood thread"))
        .collect();
    let took = started.elapsed();
    let probes = (last_transaction(&database) - before).div_ceil(per_probe);
    // One probe per started 5 s, plus one for a window starting as the flood ends.
    let allowed = 2 + took.as_secs() / PROBE_REUSE.as_secs();
    println!(
        "{} /readyz answered in {took:?}: {probes} database probes (at most {allowed} allowed; {per_probe} \
         transactions each)",
        answers.len()
    );
    assert!(probes >= 1, "the flood on a cold cache made no database probe");
    assert!(
        probes <= allowed,
        "{probes} database probes for {} /readyz in {took:?}: more than one per 5 s",
        answers.len()
    );

    // Every caller was answered, all with the same (shared) verdict.
    assert_eq!(answers.len(), threads * each);
    let mut details = std::collections::BTreeSet::new();
    for a in &answers {
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let v = a.json();
        assert_eq!(v["ready"], true, "{v}");
        let db = v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == "database")
            .expect("a database check")
            .clone();
        assert_eq!(db["ok"], true, "{v}");
        details.insert(db["detail"].as_str().expect("detail").to_owned());
    }
    assert_eq!(details.len(), 1, "{details:?}");

    // The phones did not notice.
    assert_eq!(
        api_list_within(&server, &alice, Duration::from_secs(10))
            .expect("served")
            .status,
        200
    );
}

// =====================================================================================
// F3: refused requests without an identified device are logged at most 20 lines per 10 s,
// then one summary line with the count left out; a device's own refused requests are each
// logged.
// =====================================================================================

#[test]
fn f3_refused_requests_without_a_device_log_at_most_20_lines_per_window_and_a_summary() {
    let _serial = serial();
    install_line_recorder();
    let server = start_server_with(test_options());
    let alice = member_device(&server, "alice");
    let anonymous = server.client_config(None);
    let lines_before = request_lines().len();

    let n = 200;
    let started = Instant::now();
    for _ in 0..n {
        let mut raw = raw_tls(anonymous.clone(), server.addr());
        raw.write_all(b"GET /v1/documents HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .expect("request");
        let res = read_response(&mut BufReader::new(&mut raw)).expect("answer");
        assert_eq!(res.status, 401);
    }
    let flood = started.elapsed();

    // The phone's refused requests (an unknown document), made while the gate is shut for
    // strangers: each one is logged.
    let refused_by_device = 30;
    let mut device_problem = String::new();
    for i in 0..refused_by_device {
        let path = format!("/v1/documents/{:032x}", 0xdead_beef_u128 + i as u128);
        let res = api_get_within(&server, &alice, &path, Duration::from_secs(10)).expect("answer");
        assert_eq!(res.status, 404, "{}", String::from_utf8_lossy(&res.body));
        device_problem = res.problem();
    }
    // Windows start with the server, not with the flood: a flood of d seconds overlaps at
    // most d / 10 + 2 of them.
    let windows = 2 + flood.as_secs() / UNIDENTIFIED_WINDOW.as_secs();
    // Stopping the server writes the summary of the last window.
    drop(server.stop());

    let lines: Vec<RequestLine> = request_lines().split_off(lines_before);
    let anonymous_lines = lines
        .iter()
        .filter(|l| l.problem.as_deref() == Some("client-certificate-required"))
        .count();
    let summaries: Vec<u64> = lines.iter().filter_map(|l| l.suppressed).collect();
    let device_lines = lines
        .iter()
        .filter(|l| l.problem.as_deref() == Some(device_problem.as_str()))
        .count();
    let cap = UNIDENTIFIED_LINES * windows;
    println!(
        "{n} anonymous requests in {flood:?}: {anonymous_lines} request lines (cap {cap}), summaries {summaries:?}; \
         {refused_by_device} refused device requests: {device_lines} lines ({device_problem})"
    );
    assert!(anonymous_lines >= 1, "no anonymous request line at all");
    assert!(
        anonymous_lines as u64 <= cap,
        "{anonymous_lines} request lines for {n} anonymous requests (at most {cap})"
    );
    assert!(!summaries.is_empty(), "no summary line");
    assert_eq!(
        anonymous_lines as u64 + summaries.iter().sum::<u64>(),
        n as u64,
        "every anonymous refusal is either logged or counted in a summary"
    );
    assert_eq!(device_lines, refused_by_device, "each refused device request is logged");
}

// =====================================================================================
// F4: connections without a client certificate have their own pool
// (`limits.max_anonymous_connections`): strangers filling it get `503
// too-many-connections` themselves, and devices keep all of `limits.max_connections`.
// =====================================================================================

#[test]
fn f4_anonymous_connections_filling_their_pool_do_not_lock_devices_out() {
    let _serial = serial();
    let server = start_server_with(options(|o| {
        o.limits.max_connections = 4;
        o.limits.max_anonymous_connections = 4;
        // The strangers' connections are held without a request for the whole test.
        o.limits.header_timeout_secs = 60;
    }));
    let alice = member_device(&server, "alice");
    let open = "coffer_open_connections";

    // Strangers (TLS without a certificate) hold as many connections as devices may have.
    let strangers: Vec<_> = (0..4)
        .map(|_| raw_tls(server.client_config(None), server.addr()))
        .collect();
    wait_for_metric(&server, open, 4.0);
    // Their pool is full: one more stranger is answered 503 too-many-connections.
    let mut over = raw_tls(server.client_config(None), server.addr());
    over.write_all(b"GET /v1/documents HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .expect("request");
    let res = read_response(&mut BufReader::new(&mut over)).expect("answer");
    assert_eq!(res.status, 503);
    assert_eq!(res.problem(), "too-many-connections");
    drop(over);

    // Devices still have every one of their connections, at once ...
    let mut devices: Vec<_> = (0..4).map(|_| server.connect(&alice)).collect();
    for (i, c) in devices.iter_mut().enumerate() {
        let res = c.request("GET", "/v1/documents", &[], b"").expect("listing");
        assert_eq!(
            res.status,
            200,
            "device connection {i}: {}",
            String::from_utf8_lossy(&res.body)
        );
    }
    drop(devices);
    // ... and new ones, one after the other.
    for i in 0..5 {
        let res = api_list_within(&server, &alice, Duration::from_secs(10)).expect("answer");
        assert_eq!(
            res.status,
            200,
            "device request {i}: {}",
            String::from_utf8_lossy(&res.body)
        );
    }
    drop(strangers);
}

// =====================================================================================
// F5: the per-device request budget is spent only once the signature verifies: requests
// with a copy of the phone's certificate but no valid signature spend the failure budget,
// not the phone's.
// =====================================================================================

#[test]
fn f5_unsigned_requests_with_a_copied_certificate_do_not_spend_the_phones_budget() {
    let _serial = serial();
    let budget = 5;
    let server = start_server_with(options(|o| {
        o.limits.device_requests_per_minute = budget;
        o.auth.device_failures_per_minute = 1000;
        o.auth.ip_failures_per_minute = 1000;
    }));
    let alice = member_device(&server, "alice");
    // The thief: alice's certificate and key, no signing secret; twice the budget.
    for i in 0..2 * budget {
        let mut c = server.connect_unsigned(&alice);
        let res = c.request("GET", "/v1/documents", &[], b"").expect("answer");
        assert_eq!(
            res.problem(),
            "signature-required",
            "unsigned request {i} with the phone's certificate (it must not spend the phone's budget)"
        );
    }
    // The phone itself still has its whole budget ...
    for i in 0..budget {
        let res = api_list_within(&server, &alice, Duration::from_secs(10)).expect("answer");
        assert_eq!(
            res.status,
            200,
            "signed request {i} of the phone: {}",
            String::from_utf8_lossy(&res.body)
        );
    }
    // ... and no more: the budget itself still holds for signed requests (it refills one
    // request per 12 s, hence a few tries).
    let refused = (0..3).find_map(|_| {
        let res = api_list_within(&server, &alice, Duration::from_secs(10)).expect("answer");
        (res.status != 200).then_some(res)
    });
    let res = refused.expect("the phone's budget of 5 requests a minute was not enforced");
    assert_eq!(res.status, 429);
    assert_eq!(res.problem(), "too-many-requests");
}

// =====================================================================================
// F6: SIGTERM during start-up (here: while the passphrase is read from a FIFO nobody
// writes) stops the process at once, with status 0, as the signal's default action did
// before `serve` handled SIGTERM itself.
// =====================================================================================

/// Whether process `pid` has a handler installed for SIGTERM (`SigCgt` in its status).
fn catches_sigterm(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn f6_sigterm_during_start_up_ends_the_process_with_status_0() {
    use common::binary::Cli;
    let _serial = serial();
    const CLI: Cli = Cli {
        env: &[("COFFER_ALLOW_CIDRS", "127.0.0.0/8")],
    };
    let dirs = CLI.initialised_with_alice();
    // The passphrase is read from a FIFO nobody writes: the start-up waits there.
    let fifo = dirs.root.path().join("passphrase.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let stderr_path = dirs.root.path().join("serve.stderr");
    let mut cmd = CLI.without_passphrase(&dirs);
    cmd.env("COFFER_PASSPHRASE_FILE", &fifo)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let mut child = KillOnDrop(cmd.spawn().expect("start coffer serve"));
    let pid = child.0.id();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // Wait until `serve` handles SIGTERM itself (before that the default action would end
    // it anyway), then give it a moment to reach the FIFO.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !catches_sigterm(pid) {
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "serve ended early: {}",
            stderr()
        );
        assert!(Instant::now() < deadline, "serve never installed its SIGTERM handler");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "serve ended before the SIGTERM: {}",
        stderr()
    );

    let sent = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("send SIGTERM");
    let limit = Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            sent.elapsed() < limit,
            "SIGTERM during start-up was ignored: still running after {limit:?}; stderr: {}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "serve ended {:?} after SIGTERM during start-up: {status:?}; stderr: {}",
        sent.elapsed(),
        stderr()
    );
    assert_eq!(status.code(), Some(0), "stderr: {}", stderr());
}

// =====================================================================================
// F1 (configuration): the health listener has no authentication, so `health.listen` must
// be a loopback address unless `health.allow_remote = true`.
// =====================================================================================

#[test]
fn health_listen_beyond_loopback_needs_allow_remote() {
    use coffer::config::Config;
    let _serial = serial();
    // The library's validation.
    for listen in ["0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464"] {
        let c = Config::from_toml(&format!("[health]\nlisten = \"{listen}\"\n"), "x.toml").expect("parses");
        let err = c.validate().expect_err(listen).to_string();
        assert!(err.contains("health.allow_remote"), "{listen}: {err}");
        let c = Config::from_toml(
            &format!("[health]\nlisten = \"{listen}\"\nallow_remote = true\n"),
            "x.toml",
        )
        .expect("parses");
        c.validate()
            .unwrap_or_else(|e| panic!("{listen} with allow_remote: {e}"));
    }
    for listen in ["127.0.0.1:9464", "[::1]:9464", "off"] {
        let c = Config::from_toml(&format!("[health]\nlisten = \"{listen}\"\n"), "x.toml").expect("parses");
        c.validate().unwrap_or_else(|e| panic!("{listen}: {e}"));
    }

    // `coffer config check`, as an operator would run it (without the test environment's
    // own health address).
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |file: &Path, env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coffer"));
        common::isolate(&mut cmd, dir.path());
        cmd.env_remove("COFFER_HEALTH_LISTEN");
        cmd.args(["config", "check"]).arg(file).envs(env.iter().copied());
        cmd.output().expect("run coffer config check")
    };
    let remote = common::write_file(dir.path(), "remote.toml", "[health]\nlisten = \"0.0.0.0:9464\"\n");
    let out = check(&remote, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "0.0.0.0 accepted: {stderr}");
    assert!(
        stderr.contains("health.listen") && stderr.contains("health.allow_remote"),
        "{stderr}"
    );
    let allowed = common::write_file(
        dir.path(),
        "allowed.toml",
        "[health]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n",
    );
    let out = check(&allowed, &[]);
    assert!(
        out.status.success(),
        "allow_remote = true refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same through the environment.
    let empty = common::write_file(dir.path(), "empty.toml", "");
    let out = check(&empty, &[("COFFER_HEALTH_LISTEN", "0.0.0.0:9464")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "COFFER_HEALTH_LISTEN=0.0.0.0:9464 accepted");
    assert!(stderr.contains("health.allow_remote"), "{stderr}");
}
