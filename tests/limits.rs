//! Every limit answers rather than hangs: one test per limit of `[limits]`, each against a
//! real server over mutual TLS, showing the status, the problem type (or, where the
//! request never reaches coffer, actix-http's bare answer), `Retry-After` where promised,
//! the connection closed where promised, an answer within a bound (the limit's own time
//! plus [`MARGIN`]), and the limit lifting again.
//!
//! Covered elsewhere, not repeated here:
//! - `limits.max_connections_per_ip`: closed before TLS, another address unaffected, the
//!   slot back once a connection closes:
//!   `tests/allowlist.rs::connections_beyond_the_per_address_cap_are_closed_before_tls_and_slots_come_back`.
//! - `limits.max_transfers_per_device` (`429 too-many-transfers` for uploads, downloads and
//!   listings of that device, others unaffected, back when one ends):
//!   `tests/http_limits.rs::a_device_at_its_transfer_limit_gets_429_until_one_ends_and_other_devices_go_on`;
//!   `limits.max_downloads` and `max_uploads` together:
//!   `tests/http_limits.rs::overall_upload_and_download_caps_hold_across_devices`.
//! - `limits.body_idle_timeout_secs`, nothing left in the database after a stalled upload:
//!   `tests/http_limits.rs::a_stalled_upload_body_is_408_the_connection_closed_and_nothing_kept`;
//!   the watchdog (twice the idle timeout) on a half-sent second request, an unfinished JSON
//!   body and an unread download: `tests/http_limits.rs`, section 9.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::http::ServerOptions;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use common::client::{RawStream, Response, Signer, raw_tls, read_response, signed_head, unique_nonce};
use common::pattern;
use common::server::{Identity, TestServer, assert_problem, id_of, sha256_hex, start_server_with, test_options};

/// Slack on every time bound, for a loaded two-core machine: an answer due after `t`
/// seconds must arrive before `t + MARGIN`.
const MARGIN: Duration = Duration::from_secs(5);

// ---- helpers ----

fn options(change: impl FnOnce(&mut ServerOptions)) -> ServerOptions {
    let mut o = test_options();
    change(&mut o);
    o
}

fn member_device(server: &TestServer, name: &str) -> Identity {
    let user = server.add_member(name);
    server.issue_device(user.id)
}

/// `status` with a problem body of type `urn:coffer:problem:{slug}`.
#[track_caller]
fn assert_problem_type(res: &Response, status: u16, slug: &str) {
    assert_problem(res, status, slug);
    assert_eq!(
        res.json()["type"].as_str(),
        Some(format!("urn:coffer:problem:{slug}").as_str()),
        "problem type"
    );
}

/// The `Retry-After` of `res` in delay-seconds, at least one and at most `max`.
#[track_caller]
fn retry_after(res: &Response, max: u64) -> u64 {
    let value = res
        .header("retry-after")
        .unwrap_or_else(|| panic!("{} without Retry-After", res.status));
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not delay-seconds"));
    assert!((1..=max).contains(&secs), "Retry-After {secs}, expected 1 to {max}");
    secs
}

/// A TLS connection driven by hand (partial requests, pauses, watching it close), signing
/// its requests as the device it presents (if any).
struct Raw {
    stream: RawStream,
    signer: Option<Signer>,
    /// When the handshake completed.
    opened: Instant,
}

impl Raw {
    /// Presents `who`'s certificate and signs as `who`.
    fn open(server: &TestServer, who: &Identity) -> Self {
        let stream = raw_tls(server.client_config(Some(who)), server.addr());
        Self {
            stream,
            signer: who.signer(),
            opened: Instant::now(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends a signed request with `body` and reads its answer, waiting at most `within`.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        within: Duration,
    ) -> std::io::Result<Response> {
        let len = body.len().to_string();
        let mut all = headers.to_vec();
        if method != "GET" {
            all.push(("content-length", &len));
        }
        let head = signed_head(self.signer.as_ref(), method, path, "localhost", &all, &sha256_hex(body));
        self.send(head.as_bytes())?;
        self.send(body)?;
        self.read_answer(within)
    }

    fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, &[], b"", MARGIN)
    }

    /// Reads one response (with a Content-Length), waiting at most `within` for it.
    fn read_answer(&mut self, within: Duration) -> std::io::Result<Response> {
        self.stream.sock.set_read_timeout(Some(within)).expect("timeout");
        // The server answers one request at a time: a fresh buffer takes nothing of the next.
        read_response(&mut BufReader::new(&mut self.stream))
    }

    /// Reads until the server closes the connection, for at most `within`; returns the
    /// bytes that arrived. Panics if the connection is still open then.
    #[track_caller]
    fn read_until_closed(&mut self, within: Duration, what: &str) -> Vec<u8> {
        let deadline = Instant::now() + within;
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: the connection was still open after {within:?} ({} bytes received: {:?})",
                received.len(),
                String::from_utf8_lossy(&received)
            );
            self.stream.sock.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                // A reset, or a close without TLS close_notify: closed all the same.
                Err(_) => return received,
            }
        }
    }

    /// Panics unless the server closes the connection without another byte within
    /// `within` (shorter than the watchdog's idle time, where one runs: it would close the
    /// connection anyway).
    #[track_caller]
    fn assert_closed(&mut self, within: Duration, what: &str) {
        let rest = self.read_until_closed(within, what);
        assert!(
            rest.is_empty(),
            "{what}: more bytes before the close: {}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// The response in `bytes` (one whole response, Content-Length framed, nothing after it).
#[track_caller]
fn parse_one(bytes: &[u8], what: &str) -> Response {
    let mut reader = BufReader::new(bytes);
    let res = read_response(&mut reader)
        .unwrap_or_else(|e| panic!("{what}: not a response ({e}): {:?}", String::from_utf8_lossy(bytes)));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("read");
    assert!(
        rest.is_empty(),
        "{what}: bytes after the response: {:?}",
        String::from_utf8_lossy(&rest)
    );
    res
}

/// The server's `/metrics` text (from its plain-HTTP health listener).
fn metrics(server: &TestServer) -> String {
    let addr = server.running().health_addr().expect("a health listener");
    let mut tcp = TcpStream::connect(addr).expect("connect to the health listener");
    tcp.set_read_timeout(Some(MARGIN)).expect("timeout");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .expect("metrics request");
    let res = read_response(&mut BufReader::new(tcp)).expect("metrics answer");
    assert_eq!(res.status, 200, "/metrics");
    String::from_utf8(res.body).expect("UTF-8 metrics")
}

/// The value of the sample `series` (name and labels exactly as exposed), 0 if absent.
fn metric(server: &TestServer, series: &str) -> f64 {
    metrics(server)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Waits until `series` reads `value` (the server reaches it asynchronously).
#[track_caller]
fn wait_for_metric(server: &TestServer, series: &str, value: f64) {
    let deadline = Instant::now() + MARGIN;
    loop {
        let now = metric(server, series);
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {now}, expected {value}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a TCP connection, sends a real TLS ClientHello and panics unless the server
/// closes it without a byte (no ServerHello, no alert) within [`MARGIN`].
#[track_caller]
fn assert_closed_before_tls(addr: SocketAddr, config: Arc<ClientConfig>, what: &str) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    let mut tls = rustls::ClientConnection::new(config, ServerName::try_from("localhost").expect("name")).expect("tls");
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).expect("ClientHello");
    // The server may have closed already: a failed write is a close too.
    let _ = tcp.write_all(&hello);
    tcp.set_read_timeout(Some(MARGIN)).expect("timeout");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the connection was still open after {MARGIN:?}")
            }
            Err(_) => break, // reset: our ClientHello was left unread
        }
    }
    assert!(
        received.is_empty(),
        "{what}: {} byte(s) arrived, starting {:02x?}",
        received.len(),
        &received[..received.len().min(8)]
    );
}

// ---- limits.header_timeout_secs ----

#[test]
fn request_headers_not_finished_in_time_get_a_bare_408_and_the_connection_closed() {
    let server = start_server_with(options(|o| {
        o.limits.header_timeout_secs = 1;
        // The watchdog (twice this) is what cuts a half-sent *second* request, below; it
        // acts later than the 408s, so they show actix closing the connection itself.
        o.limits.body_idle_timeout_secs = 2;
    }));
    let alice = member_device(&server, "alice");
    let header_timeout = Duration::from_secs(1);
    let idle = Duration::from_secs(2);
    // The server closes right after an answer that closes the connection; the watchdog
    // would only after twice the idle time.
    let promptly = Duration::from_millis(1500);

    // (c) A kept-alive connection whose second request is left half-sent: actix times out
    // only the first request's headers, so no 408 comes; the watchdog cuts it (see
    // `tests/http_limits.rs::a_second_request_left_unfinished_on_a_kept_alive_connection_is_cut`).
    let mut kept = Raw::open(&server, &alice);
    assert_eq!(kept.get("/v1/documents").expect("first request").status, 200);
    kept.send(b"GET /v1/documents HTTP/1.1\r\nhost: loc")
        .expect("half a second request");
    let kept_since = Instant::now();

    // (b) A connection that sends nothing after the handshake.
    let mut silent = Raw::open(&server, &alice);

    // (a) A client sending its first request's headers one byte every 100 ms, never
    // finishing them: the timeout is a deadline for the whole head, not an idle timeout.
    let mut slow = Raw::open(&server, &alice);
    let mut head = b"GET /v1/documents HTTP/1.1\r\nhost: localhost\r\nx-slow: ".iter();
    let mut sent = 0usize;
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        // Waits 100 ms for the server to say anything, then sends the next byte.
        slow.stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        match slow.stream.read(&mut buf) {
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("the slow client's connection ended without an answer: {e}"),
        }
        assert!(
            slow.opened.elapsed() < header_timeout + MARGIN,
            "no answer {:?} after the handshake ({sent} header bytes sent)",
            slow.opened.elapsed()
        );
        let byte = *head.next().unwrap_or(&b'a');
        if slow.send(&[byte]).is_err() {
            break; // closed: its answer, if any, is read below
        }
        sent += 1;
    }
    let answered = slow.opened.elapsed();
    received.extend(slow.read_until_closed(promptly, "the slow client after its 408"));
    let res = parse_one(&received, "the slow client's answer");
    assert_eq!(res.status, 408, "{:?}", String::from_utf8_lossy(&received));
    // actix-http answers on its own: the request never reached coffer, so there is no
    // problem body (and no request id).
    assert!(res.body.is_empty(), "a body on the bare 408");
    assert_eq!(res.header("content-length"), Some("0"));
    assert_eq!(res.header("connection"), Some("close"));
    assert_eq!(res.header("content-type"), None);
    assert_eq!(res.header("x-request-id"), None);
    // actix's clock is cached (500 ms): the deadline may fall that much early.
    assert!(
        answered >= Duration::from_millis(400),
        "408 after {answered:?}, before the 1 s header timeout"
    );
    assert!(sent >= 3, "only {sent} header bytes were sent before the 408");

    // (b) The same answer to the silent connection, by the same deadline.
    let res = silent
        .read_answer(header_timeout + MARGIN)
        .expect("an answer to the silent connection");
    let elapsed = silent.opened.elapsed();
    silent.assert_closed(promptly, "the silent connection after its 408");
    assert_eq!(res.status, 408);
    assert!(res.body.is_empty());
    assert!(
        elapsed >= Duration::from_millis(400),
        "the silent connection was answered after {elapsed:?}"
    );

    // (c) The half-sent second request: no byte at all, the connection closed after twice
    // the body idle timeout (not after the header timeout, long past).
    let bytes = kept.read_until_closed(2 * idle + MARGIN, "the half-sent second request");
    let elapsed = kept_since.elapsed();
    assert!(
        bytes.is_empty(),
        "the half-sent second request got an answer: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        elapsed >= 2 * idle - Duration::from_millis(100),
        "the half-sent second request was cut after {elapsed:?}, before the watchdog's {:?}",
        2 * idle
    );

    // The limit lifts: a client that sends its headers in time is served.
    let mut fresh = Raw::open(&server, &alice);
    assert_eq!(fresh.get("/v1/documents").expect("a timely request").status, 200);
}

// ---- limits.body_idle_timeout_secs ----

#[test]
fn a_stalled_request_body_gets_408_request_timeout_and_the_connection_closed() {
    let server = start_server_with(options(|o| o.limits.body_idle_timeout_secs = 1));
    let alice = member_device(&server, "alice");
    let idle = Duration::from_secs(1);
    let mut conn = Raw::open(&server, &alice);
    let kept = conn
        .request(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "kept.txt")],
            b"kept",
            MARGIN,
        )
        .expect("upload");
    assert_eq!(kept.status, 201, "{}", String::from_utf8_lossy(&kept.body));
    let kept = id_of(&kept.json());

    // An upload whose body stops half-way, and a JSON body that stops after one byte, both
    // signed for the whole body they announce.
    let body = pattern(1, 200_000);
    let mut upload = Raw::open(&server, &alice);
    let head = signed_head(
        upload.signer.as_ref(),
        "POST",
        "/v1/documents",
        "localhost",
        &[("x-coffer-name", "stalled.bin"), ("content-length", "200000")],
        &sha256_hex(&body),
    );
    upload.send(head.as_bytes()).expect("upload head");
    upload.send(&body[..100_000]).expect("half the body");
    let upload_since = Instant::now();
    let json = br#"{"title":"never finished"}"#;
    let mut patch = Raw::open(&server, &alice);
    let len = json.len().to_string();
    let head = signed_head(
        patch.signer.as_ref(),
        "PATCH",
        &format!("/v1/documents/{kept}/meta"),
        "localhost",
        &[("content-type", "application/json"), ("content-length", &len)],
        &sha256_hex(json),
    );
    patch.send(head.as_bytes()).expect("PATCH head");
    patch.send(&json[..1]).expect("one byte of JSON");
    let patch_since = Instant::now();

    for (what, stream, since) in [
        ("the upload", &mut upload, upload_since),
        ("the PATCH", &mut patch, patch_since),
    ] {
        let res = stream
            .read_answer(idle + MARGIN)
            .unwrap_or_else(|e| panic!("{what}: no answer within {:?}: {e}", idle + MARGIN));
        let elapsed = since.elapsed();
        assert_problem_type(&res, 408, "request-timeout");
        assert!(elapsed >= Duration::from_millis(900), "{what}: 408 after {elapsed:?}");
        // At once: the watchdog would close it only after twice the idle time.
        stream.assert_closed(idle, &format!("{what} after its 408"));
    }

    // Nothing of either was kept, and the same requests sent in time are served (on a new
    // connection: the first one has idled past the watchdog meanwhile).
    let mut conn = Raw::open(&server, &alice);
    let res = conn
        .request("GET", &format!("/v1/documents/{kept}/meta"), &[], b"", MARGIN)
        .expect("meta");
    assert_eq!(res.json()["title"], "", "the stalled PATCH changed the document");
    let res = conn
        .request(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "stalled.bin")],
            &body,
            MARGIN,
        )
        .expect("the upload again");
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let listing = conn.get("/v1/documents").expect("listing").json();
    let mut names: Vec<&str> = listing["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["kept.txt", "stalled.bin"]);
}

// ---- limits.max_connections ----

#[test]
fn connections_beyond_max_connections_get_503_and_beyond_twice_it_are_closed_before_tls() {
    let server = start_server_with(options(|o| {
        o.limits.max_connections = 8;
        // Closed before TLS beyond 2 x 8 + 1 TCP connections.
        o.limits.max_anonymous_connections = 1;
        // Connections held open without a request must not time out during the test.
        o.limits.header_timeout_secs = 60;
    }));
    let alice = member_device(&server, "alice");
    let open = "coffer_open_connections";

    // Up to the cap every connection is served.
    let mut served: Vec<Raw> = (0..8).map(|_| Raw::open(&server, &alice)).collect();
    for (i, c) in served.iter_mut().enumerate() {
        assert_eq!(c.get("/v1/documents").expect("listing").status, 200, "connection {i}");
    }

    // The next one is answered 503 too-many-connections with Retry-After, and closed.
    let mut over = Raw::open(&server, &alice);
    let started = Instant::now();
    let res = over.get("/v1/documents").expect("an answer beyond the cap");
    assert!(started.elapsed() < MARGIN);
    assert_problem_type(&res, 503, "too-many-connections");
    assert_eq!(res.header("connection"), Some("close"));
    retry_after(&res, 60);
    over.assert_closed(MARGIN, "the connection beyond max_connections after its 503");
    wait_for_metric(&server, open, 8.0);

    // Twice the cap plus the anonymous pool open (the extra ones past their handshake,
    // without a request yet): the next connection is closed before TLS, and counted.
    let mut held: Vec<Raw> = (0..9).map(|_| Raw::open(&server, &alice)).collect();
    wait_for_metric(&server, open, 17.0);
    let refused = r#"coffer_connections_refused_total{reason="capacity"}"#;
    assert_eq!(metric(&server, refused), 0.0);
    assert_closed_before_tls(
        server.addr(),
        server.client_config(Some(&alice)),
        "a connection beyond twice max_connections plus max_anonymous_connections",
    );
    assert_eq!(metric(&server, refused), 1.0);
    // Meanwhile the connections within the cap are served as before, and a held one
    // beyond it gets its 503 when it asks.
    assert_eq!(served[0].get("/v1/documents").expect("listing").status, 200);
    let res = held[0].get("/v1/documents").expect("an answer beyond the cap");
    assert_problem_type(&res, 503, "too-many-connections");
    held[0].assert_closed(MARGIN, "a held connection after its 503");

    // When connections close, new ones are served again.
    drop(held);
    drop(served.pop());
    wait_for_metric(&server, open, 7.0);
    let mut again = Raw::open(&server, &alice);
    assert_eq!(again.get("/v1/documents").expect("listing").status, 200);
    assert_eq!(again.get("/v1/documents").expect("listing").status, 200, "kept alive");
}

#[test]
fn connections_without_a_certificate_have_their_own_pool_and_cannot_crowd_devices_out() {
    let server = start_server_with(options(|o| {
        o.limits.max_connections = 2;
        o.limits.max_anonymous_connections = 2;
        o.limits.header_timeout_secs = 60;
    }));
    let alice = member_device(&server, "alice");
    let open = "coffer_open_connections";
    // Strangers (no client certificate) fill their pool and hold it without a request.
    let strangers: Vec<_> = (0..2)
        .map(|_| raw_tls(server.client_config(None), server.addr()))
        .collect();
    wait_for_metric(&server, open, 2.0);
    // A third stranger is answered 503 too-many-connections and closed...
    let mut third = raw_tls(server.client_config(None), server.addr());
    third
        .write_all(b"GET /v1/documents HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("urn:coffer:problem:too-many-connections"), "{answer}");
    // ...while devices still have all their connections.
    let mut devices: Vec<Raw> = (0..2).map(|_| Raw::open(&server, &alice)).collect();
    for (i, c) in devices.iter_mut().enumerate() {
        assert_eq!(
            c.get("/v1/documents").expect("listing").status,
            200,
            "device connection {i}"
        );
    }
    drop(strangers);
}

#[test]
fn one_address_holds_at_most_eight_connections_without_a_certificate_and_idle_ones_beyond_are_cut() {
    let server = start_server_with(options(|o| {
        o.limits.header_timeout_secs = 60;
    }));
    let alice = member_device(&server, "alice");
    // Eight idle strangers from one address are held...
    let strangers: Vec<_> = (0..8)
        .map(|_| raw_tls(server.client_config(None), server.addr()))
        .collect();
    wait_for_metric(&server, "coffer_open_connections", 8.0);
    // ...a ninth that only holds its connection is cut within a few seconds (the
    // watchdog's next sweep), without waiting for the header timeout...
    let mut ninth = raw_tls(server.client_config(None), server.addr());
    ninth
        .sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match ninth.read(&mut buf) {
        Ok(0) | Err(_) if started.elapsed() < Duration::from_secs(5) => {}
        other => panic!(
            "the ninth idle stranger was not cut: {other:?} after {:?}",
            started.elapsed()
        ),
    }
    // ...and devices are served meanwhile.
    let mut device = Raw::open(&server, &alice);
    assert_eq!(device.get("/v1/documents").expect("listing").status, 200);
    drop(strangers);
}

// ---- limits.max_uploads ----

#[test]
fn uploads_beyond_max_uploads_get_429_too_many_transfers_until_one_ends() {
    let server = start_server_with(options(|o| o.limits.max_uploads = 1));
    let alice = member_device(&server, "alice");
    let bob = member_device(&server, "bob");

    // Alice's upload holds the only upload slot while its body is not through.
    let body = pattern(2, 100_000);
    let mut held = Raw::open(&server, &alice);
    let head = signed_head(
        held.signer.as_ref(),
        "POST",
        "/v1/documents",
        "localhost",
        &[("x-coffer-name", "held.bin"), ("content-length", "100000")],
        &sha256_hex(&body),
    );
    held.send(head.as_bytes()).expect("upload head");
    held.send(&body[..50_000]).expect("half the body");
    wait_for_metric(&server, r#"coffer_transfers_active{kind="upload"}"#, 1.0);

    // Bob's upload is refused at once (not queued behind hers).
    let mut conn = Raw::open(&server, &bob);
    let started = Instant::now();
    let res = conn
        .request("POST", "/v1/documents", &[("x-coffer-name", "bob.txt")], b"bob", MARGIN)
        .expect("an answer while the slot is taken");
    assert!(started.elapsed() < MARGIN);
    assert_problem_type(&res, 429, "too-many-transfers");
    retry_after(&res, 60);
    // Other requests go on meanwhile.
    let mut conn = Raw::open(&server, &bob);
    assert_eq!(conn.get("/v1/documents").expect("listing").status, 200);

    // Her upload ends: the slot is free again.
    held.send(&body[50_000..]).expect("the rest of the body");
    let res = held.read_answer(MARGIN).expect("her upload's answer");
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    // (Signed anew: the refused request's signature is spent, docs/protocol.md §3.)
    let nonce = unique_nonce();
    let res = conn
        .request(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "bob.txt"), ("x-coffer-nonce", &nonce)],
            b"bob",
            MARGIN,
        )
        .expect("bob's upload again");
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    // The refused upload left nothing: bob has his one document.
    let listing = conn.get("/v1/documents").expect("listing").json();
    assert_eq!(listing["documents"].as_array().expect("documents").len(), 1);
}

// ---- limits.device_requests_per_minute ----

/// Lists on `conn` until an answer is not a `200`; returns how many were served, the time
/// that took, and the refusal.
fn spend_budget(conn: &mut Raw, most: u32) -> (u32, Duration, Response) {
    let started = Instant::now();
    let mut served = 0u32;
    loop {
        let res = conn.get("/v1/documents").expect("an answer");
        if res.status != 200 {
            return (served, started.elapsed(), res);
        }
        served += 1;
        assert!(served <= most, "{served} requests served, never refused");
    }
}

#[test]
fn a_device_beyond_its_request_budget_gets_429_too_many_requests_and_others_go_on() {
    // A budget of 60 a minute: a burst of 60, then one more each second.
    let per_minute = 60;
    let server = start_server_with(options(|o| o.limits.device_requests_per_minute = per_minute));
    let user = server.add_member("alice");
    let phone = server.issue_device(user.id);
    // Another device of the same user: the budget is per device.
    let tablet = server.issue_device(user.id);
    let bob = member_device(&server, "bob");
    let doomed = member_device(&server, "carol");
    let stranger = server.unregistered_certificate();

    // The phone spends its burst on one kept-alive connection, then is refused.
    let mut conn = Raw::open(&server, &phone);
    let (served, took, res) = spend_budget(&mut conn, 10 * per_minute);
    let refused_at = Instant::now();
    let refill = took.as_secs_f64() * f64::from(per_minute) / 60.0;
    assert!(
        served >= per_minute && f64::from(served) <= f64::from(per_minute) + refill + 1.0,
        "{served} requests served before the 429 (burst {per_minute}, {refill:.2} refilled)"
    );
    assert_problem_type(&res, 429, "too-many-requests");
    // One token is back within a second.
    let wait = retry_after(&res, 1);

    // Other devices, of the same user or not, are served meanwhile.
    for (who, device) in [("the tablet", &tablet), ("bob", &bob)] {
        let res = Raw::open(&server, device).get("/v1/documents").expect("listing");
        assert_eq!(res.status, 200, "{who}: {}", String::from_utf8_lossy(&res.body));
    }
    // After Retry-After the phone is served again, on the same connection.
    std::thread::sleep(Duration::from_secs(wait).saturating_sub(refused_at.elapsed()));
    let res = conn.get("/v1/documents").expect("listing after Retry-After");
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));

    // A certificate of no device, or of a revoked one, gets its authentication problem,
    // never a 429 of the budget: it is not counted as a device's request. (Carol spends
    // her budget first: her revoked certificate is answered device-revoked all the same.)
    let (_, _, res) = spend_budget(&mut Raw::open(&server, &doomed), 10 * per_minute);
    assert_problem_type(&res, 429, "too-many-requests");
    server.vault().revoke_device(doomed.device_id()).expect("revoke");
    for _ in 0..3 {
        let res = Raw::open(&server, &doomed).get("/v1/documents").expect("401");
        assert_problem_type(&res, 401, "device-revoked");
        let res = Raw::open(&server, &stranger).get("/v1/documents").expect("401");
        assert_problem_type(&res, 401, "device-unknown");
    }
}
