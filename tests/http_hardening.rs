//! Defences added after the attacker review of signatures and sessions: writes dated in
//! the future and the restart window, one login at a time per device and a login budget,
//! unknown paths that do not fill the replay table, `+` in queries, whitespace runs in
//! signed `x-coffer-*` values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use coffer::config::AuthConfig;
use coffer::http::ServerOptions;
use common::client::unique_nonce;
use common::server::*;

fn member(server: &TestServer, name: &str) -> Identity {
    let user = server.add_member(name);
    server.issue_device(user.id)
}

#[test]
fn writes_are_refused_for_the_future_window_after_a_start_and_reads_are_not() {
    // Writes may be dated 3 s ahead: for the first 3 s after the start no write is
    // accepted (one the previous process accepted could be dated up to then).
    let server = start_server_with(ServerOptions {
        auth: AuthConfig {
            max_future_write_secs: 3,
            ..test_options().auth
        },
        ..test_options()
    });
    let anna = member(&server, "anna");
    let mut conn = server.connect(&anna);
    let res = conn.request("GET", "/v1/documents", &[], b"").unwrap();
    assert_eq!(res.status, 200, "a read right after the start");
    let res = post(&mut conn, "early.txt", &[], b"x");
    assert_problem(&res, 401, "signed-before-start");
    // The answer says when writes will be accepted.
    let wait: u64 = res.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=4).contains(&wait), "Retry-After {wait}");
    let detail = res.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("started moments ago"), "{detail}");
    std::thread::sleep(Duration::from_millis(3500));
    let mut conn = server.connect(&anna);
    upload(&mut conn, "later.txt", &[], b"x");
}

#[test]
fn a_write_dated_beyond_the_future_window_is_skewed_and_a_read_is_not() {
    let server = start_server_with(ServerOptions {
        auth: AuthConfig {
            max_future_write_secs: 2,
            ..test_options().auth
        },
        ..test_options()
    });
    let anna = member(&server, "anna");
    std::thread::sleep(Duration::from_millis(2100));
    let signer = anna.signer().unwrap();
    let ahead = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
    let mut conn = server.connect_unsigned(&anna);
    let send =
        |conn: &mut common::client::Connection, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
            let mut all: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            all.extend(signer.sign_at(method, path, "localhost", headers, &sha256_hex(body), ahead));
            let refs: Vec<(&str, &str)> = all.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            conn.request(method, path, &refs, body).unwrap()
        };
    let res = send(&mut conn, "GET", "/v1/documents", &[], b"");
    assert_eq!(res.status, 200, "a read a minute ahead is inside the ±5 min window");
    let res = send(
        &mut conn,
        "POST",
        "/v1/documents",
        &[("x-coffer-name", "ahead.txt")],
        b"x",
    );
    assert_problem(&res, 401, "request-time-skewed");
    assert!(
        res.json()["server_time"].is_string(),
        "{}",
        String::from_utf8_lossy(&res.body)
    );
}

#[test]
fn a_device_logs_in_once_at_a_time_and_within_its_login_budget() {
    let server = start_server();
    let anna = member(&server, "anna");
    let body = br#"{"username":"anna","password":"password of anna"}"#;
    let login = |conn: &mut common::client::Connection| {
        let nonce = unique_nonce();
        conn.request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
            body,
        )
        .unwrap()
    };
    // Ten logins in a row (successes count too), then the budget answers.
    let mut answers = Vec::new();
    for _ in 0..11 {
        let mut conn = server.connect(&anna);
        answers.push(login(&mut conn));
    }
    for res in &answers[..10] {
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    }
    assert_problem(&answers[10], 429, "too-many-writes");
    assert!(answers[10].header("retry-after").is_some());
    // Another device of another user is not affected.
    let ben = member(&server, "ben");
    let mut conn = server.connect(&ben);
    let res = conn
        .request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json")],
            br#"{"username":"ben","password":"password of ben"}"#,
        )
        .unwrap();
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
}

#[test]
fn concurrent_logins_of_one_device_are_refused_not_queued() {
    let server = start_server();
    let anna = member(&server, "anna");
    let barrier = std::sync::Barrier::new(6);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (server, anna, barrier) = (&server, &anna, &barrier);
                s.spawn(move || {
                    let mut conn = server.connect(anna);
                    let nonce = unique_nonce();
                    barrier.wait();
                    conn.request(
                        "POST",
                        "/v1/session",
                        &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
                        br#"{"username":"anna","password":"password of anna"}"#,
                    )
                    .unwrap()
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn writes_to_unknown_paths_or_methods_do_not_fill_the_replay_table() {
    let server = start_server();
    let anna = member(&server, "anna");
    let signer = anna.signer().unwrap();
    let head = common::client::signed_head(
        Some(&signer),
        "PUT",
        "/v1/session",
        "localhost",
        &[],
        coffer::sigv4::EMPTY_SHA256,
    );
    // The same signed bytes twice: a 405 both times, not a 409 (nothing was recorded).
    for _ in 0..2 {
        let mut stream = common::client::raw_tls(server.client_config(Some(&anna)), server.addr());
        use std::io::Write;
        stream
            .write_all(head.replace("\r\n\r\n", "\r\ncontent-length: 0\r\n\r\n").as_bytes())
            .unwrap();
        let res = common::client::read_response(&mut std::io::BufReader::new(stream)).unwrap();
        assert_problem(&res, 405, "method-not-allowed");
    }
}

#[test]
fn a_plus_in_the_query_and_whitespace_runs_in_coffer_headers_are_refused() {
    let server = start_server();
    let anna = member(&server, "anna");
    let mut conn = server.connect(&anna);
    let res = conn.request("GET", "/v1/documents?tag=a+b", &[], b"").unwrap();
    assert_problem(&res, 401, "signature-invalid");
    assert!(res.json()["detail"].as_str().unwrap().contains("%2B"));
    let mut conn = server.connect(&anna);
    let res = conn.request("GET", "/v1/documents?tag=a%2Bb", &[], b"").unwrap();
    assert_eq!(res.status, 200);
    // (Leading and trailing whitespace is not part of a field value in HTTP at all.)
    for title in ["Q1  report", "Q1\treport", "Q1 \t report"] {
        let mut conn = server.connect(&anna);
        let res = post(&mut conn, "r.txt", &[("x-coffer-title", title)], b"x");
        assert_problem(&res, 400, "invalid-request");
    }
    let mut conn = server.connect(&anna);
    let doc = upload(&mut conn, "r.txt", &[("x-coffer-title", "Q1%20%20report")], b"x");
    assert_eq!(doc["title"], "Q1  report");
}
