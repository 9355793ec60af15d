//! The encrypted ERP record cache end to end: a real server on 127.0.0.1:0 with real
//! mutual-TLS clients, and a small HTTP server written here standing in for the ERP (it
//! counts calls, records what it was sent, and can be made slow, failing or unreachable).
//! The contract tested is the ERP API of issue 6 (`/v1/erp/{collection}[/{key}]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Barrier;
use std::time::Duration;

use coffer::app::erp::{ErpOp, NewErpRecord, Written};
use coffer::config::Config;
use coffer::erp::{Counters, Erp};
use coffer::http::ServerOptions;
use coffer::model::Timestamp;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use common::client::{Connection, Response, unique_nonce};
use common::erp::{Behaviour, ERP_KEYS, ERP_RECORDS, FakeErp};
use common::server::{Identity, TestServer, assert_problem, assert_status, start_server_with, test_options};
use common::{files_under, raw_index_len, raw_len, unique_marker};

/// `max_record_bytes` of the test configuration.
const MAX_RECORD_BYTES: usize = 4096;
/// Where the fake ERP serves customers.
const CUSTOMERS_PREFIX: &str = "/api/customers/";
/// Read through from the fake ERP; members, admins and the integration read it.
const CUSTOMERS: &str = "customers";
/// Pushed by the integration only (no upstream); members, admins and the integration read it.
const ORDERS: &str = "orders";
/// Pushed only; admins alone read it.
const PRICES: &str = "prices";
/// Pushed only, never served past freshness (`stale_if_error = "0"`); members read it.
const QUOTES: &str = "quotes";

/// Keys that are awkward in a URL: each is one path segment once percent-encoded.
const AWKWARD_KEYS: &[&str] = &[
    "a/b",
    "with space",
    "what?now",
    "hash#tag",
    "Müller & Söhne – Köln",
    "../../etc/passwd",
    "..%2F..%2Fadmin",
    "%2F",
    "key=value&x=y",
    "...",
    "日本語",
    "+plus+",
    "semi;colon",
    "batch",
];

// ---- the fixture ----

/// Freshness of the `customers` collection.
struct Tuning {
    ttl: &'static str,
    stale_if_error: &'static str,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            ttl: "15m",
            stale_if_error: "24h",
        }
    }
}

/// Short freshness, for the expiry tests: fresh 1 s, then stale for 3 s.
fn short_lived() -> Tuning {
    Tuning {
        ttl: "1s",
        stale_if_error: "3s",
    }
}

/// A server with three collections, a fake ERP behind `customers`, and one device each of
/// a member, an admin and an integration (the integration's without a session: it only
/// signs).
struct Fixture {
    server: TestServer,
    /// The server's cache (a clone shares its state: counters, sweep).
    erp: Erp,
    upstream: FakeErp,
    /// The bearer token in the collection's `upstream_bearer_token_file`.
    token: String,
    member: Identity,
    admin: Identity,
    integration: Identity,
    _token_dir: TempDir,
}

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn toml_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn start(tuning: Tuning) -> Fixture {
    let upstream = FakeErp::start(CUSTOMERS_PREFIX);
    let token_dir = tempfile::tempdir().expect("temp dir for the token file");
    let token = format!("erp-token-{}", unique_marker());
    let token_file = token_dir.path().join("erp-token");
    // As `echo TOKEN > file` writes it: the line end is not part of the token.
    std::fs::write(&token_file, format!("{token}\n")).expect("write the token file");
    let text = format!(
        r#"
[erp]
max_record_bytes = {MAX_RECORD_BYTES}

[erp.collections.{CUSTOMERS}]
read_roles = ["member", "admin", "integration"]
ttl = "{ttl}"
stale_if_error = "{stale}"
upstream = {upstream}
upstream_bearer_token_file = {token_file}
upstream_connect_timeout = "1s"
upstream_timeout = "1s"

[erp.collections.{ORDERS}]
read_roles = ["member", "admin", "integration"]

[erp.collections.{PRICES}]
read_roles = ["admin"]

[erp.collections.{QUOTES}]
read_roles = ["member", "integration"]
stale_if_error = "0"
"#,
        ttl = tuning.ttl,
        stale = tuning.stale_if_error,
        upstream = toml_string(&upstream.url_template()),
        token_file = toml_string(token_file.to_str().expect("UTF-8 temp path")),
    );
    let config = Config::from_toml(&text, "erp-test.toml").expect("the test configuration parses");
    config.validate().expect("the test configuration is valid");
    let erp = Erp::from_config(&config.erp).expect("the ERP collections are built from the configuration");
    let server = start_server_with(ServerOptions {
        erp: erp.clone(),
        ..test_options()
    });
    let member = server.issue_device(server.add_member("mia").id);
    let admin = server.issue_device(server.add_admin("ada").id);
    let mut integration = server.issue_device(server.add_integration("erp-sync").id);
    integration.token = None;
    Fixture {
        server,
        erp,
        upstream,
        token,
        member,
        admin,
        integration,
        _token_dir: token_dir,
    }
}

impl Fixture {
    fn member(&self) -> Connection {
        self.server.connect(&self.member)
    }

    fn admin(&self) -> Connection {
        self.server.connect(&self.admin)
    }

    fn integration(&self) -> Connection {
        self.server.connect(&self.integration)
    }

    /// Stores `value` under `key` as the integration; panics unless it is 200 or 201.
    #[track_caller]
    fn push(&self, collection: &str, key: &str, value: &Value) -> Value {
        let res = put_json(&mut self.integration(), collection, key, value);
        assert!(
            res.status == 200 || res.status == 201,
            "PUT {collection}/{key}: {} {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
        res.json()
    }
}

// ---- requests ----

/// A key percent-encoded into one path segment (or query value).
fn enc(key: &str) -> String {
    utf8_percent_encode(key, NON_ALPHANUMERIC).to_string()
}

/// `/v1/erp/{collection}/{key}`, the key percent-encoded.
fn record_path(collection: &str, key: &str) -> String {
    format!("/v1/erp/{collection}/{}", enc(key))
}

fn get(conn: &mut Connection, path: &str) -> Response {
    get_with(conn, path, &[])
}

fn get_with(conn: &mut Connection, path: &str, headers: &[(&str, &str)]) -> Response {
    conn.request("GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Sends a write with a unique nonce (writes are replay-protected).
fn write(conn: &mut Connection, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Response {
    let nonce = unique_nonce();
    let mut headers = vec![("x-coffer-nonce", nonce.as_str())];
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    conn.request(method, path, &headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn put_raw(conn: &mut Connection, path: &str, body: &[u8]) -> Response {
    write(conn, "PUT", path, Some("application/json"), body)
}

fn put_json(conn: &mut Connection, collection: &str, key: &str, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("serialise JSON");
    put_raw(conn, &record_path(collection, key), &body)
}

fn put_expiring(conn: &mut Connection, collection: &str, key: &str, value: &Value, expires: &str) -> Response {
    let body = serde_json::to_vec(value).expect("serialise JSON");
    let path = format!("{}?expires={}", record_path(collection, key), enc(expires));
    put_raw(conn, &path, &body)
}

fn delete(conn: &mut Connection, collection: &str, key: &str) -> Response {
    write(conn, "DELETE", &record_path(collection, key), None, b"")
}

fn batch(conn: &mut Connection, collection: &str, body: &Value) -> Response {
    let body = serde_json::to_vec(body).expect("serialise JSON");
    write(
        conn,
        "POST",
        &format!("/v1/erp/{collection}/batch"),
        Some("application/json"),
        &body,
    )
}

/// `GET /v1/erp/{collection}?key=..&key=..`.
fn multi_get_path(collection: &str, keys: &[&str]) -> String {
    let query: Vec<String> = keys.iter().map(|k| format!("key={}", enc(k))).collect();
    format!("/v1/erp/{collection}?{}", query.join("&"))
}

fn multi_get(conn: &mut Connection, collection: &str, keys: &[&str]) -> Response {
    get(conn, &multi_get_path(collection, keys))
}

/// The `records` of a 200 multi-get.
#[track_caller]
fn records_of(res: &Response) -> Vec<Value> {
    assert_status(res, 200);
    res.json()["records"].as_array().expect("a records array").clone()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format RFC 3339")
}

fn parse_time(v: &Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a timestamp string"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

/// Now plus `secs`, in whole seconds.
fn whole_seconds_from_now(secs: i64) -> OffsetDateTime {
    (OffsetDateTime::now_utc() + time::Duration::seconds(secs))
        .replace_nanosecond(0)
        .expect("whole second")
}

// ---- response checks ----

/// A parsed `Cache-Status` header (RFC 9211) of the cache `coffer`.
#[derive(Debug)]
struct CacheStatus {
    raw: String,
    params: Vec<(String, Option<String>)>,
}

impl CacheStatus {
    fn parse(raw: &str) -> Self {
        let mut items = raw.split(';').map(str::trim);
        assert_eq!(items.next(), Some("coffer"), "cache name in Cache-Status {raw:?}");
        let params = items
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.trim_matches('"').to_owned())),
                None => (item.to_owned(), None),
            })
            .collect();
        Self {
            raw: raw.to_owned(),
            params,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.params.iter().any(|(k, _)| k == name)
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn ttl(&self) -> i64 {
        let ttl = self
            .param("ttl")
            .unwrap_or_else(|| panic!("no ttl in Cache-Status {:?}", self.raw));
        ttl.parse()
            .unwrap_or_else(|e| panic!("ttl {ttl:?} in {:?}: {e}", self.raw))
    }

    /// A fresh hit: `coffer; hit; ttl=N` with N > 0.
    #[track_caller]
    fn assert_fresh_hit(&self) {
        assert!(
            self.has("hit") && self.param("fwd").is_none(),
            "expected a hit: {:?}",
            self.raw
        );
        assert!(self.ttl() > 0, "a fresh hit has a positive ttl: {:?}", self.raw);
        assert!(self.param("detail").is_none(), "{:?}", self.raw);
    }

    /// Fetched from the upstream and stored: `coffer; fwd=FWD; fwd-status=200; stored; ttl=N`.
    #[track_caller]
    fn assert_fetched(&self, fwd: &str) {
        assert_eq!(self.param("fwd"), Some(fwd), "fwd in {:?}", self.raw);
        assert_eq!(self.param("fwd-status"), Some("200"), "fwd-status in {:?}", self.raw);
        assert!(self.has("stored"), "stored in {:?}", self.raw);
        assert!(!self.has("hit"), "{:?}", self.raw);
        assert!(self.ttl() >= 0, "{:?}", self.raw);
    }

    /// An expired copy served because the upstream failed with `fwd_status`.
    #[track_caller]
    fn assert_stale_if_error(&self, fwd_status: &str) {
        assert_eq!(self.param("fwd"), Some("stale"), "fwd in {:?}", self.raw);
        assert_eq!(
            self.param("fwd-status"),
            Some(fwd_status),
            "fwd-status in {:?}",
            self.raw
        );
        assert_eq!(self.param("detail"), Some("stale-if-error"), "detail in {:?}", self.raw);
        assert!(!self.has("stored"), "nothing was stored: {:?}", self.raw);
        assert!(self.ttl() < 0, "ttl is negative past freshness: {:?}", self.raw);
    }
}

#[track_caller]
fn cache_status(res: &Response) -> CacheStatus {
    CacheStatus::parse(res.header("cache-status").expect("a Cache-Status header"))
}

/// The ETag, checked to be a strong tag of 22 base64url characters.
#[track_caller]
fn etag(res: &Response) -> String {
    let tag = res.header("etag").expect("an ETag header");
    assert_etag_shape(tag);
    tag.to_owned()
}

#[track_caller]
fn assert_etag_shape(tag: &str) {
    let inner = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or_else(|| panic!("ETag {tag:?} is not a quoted strong tag"));
    assert_eq!(inner.len(), 22, "ETag {tag:?}: 22 base64url characters");
    assert!(
        inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "ETag {tag:?}: base64url characters only"
    );
}

#[track_caller]
fn age(res: &Response) -> u64 {
    let age = res.header("age").expect("an Age header");
    age.parse().unwrap_or_else(|e| panic!("Age {age:?}: {e}"))
}

/// A 200 record response carrying `value`, with its caching headers; returns its ETag.
#[track_caller]
fn assert_record(res: &Response, value: &Value) -> String {
    assert_status(res, 200);
    let ct = res.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "Content-Type {ct:?}");
    assert_eq!(&res.json(), value, "record body");
    assert_eq!(res.header("cache-control"), Some("private, no-cache"));
    age(res);
    cache_status(res);
    etag(res)
}

/// Panics unless the problem's detail names `operations[index]`.
#[track_caller]
fn assert_names_operation(res: &Response, index: usize) {
    assert_problem(res, 400, "invalid-request");
    let detail = res.json()["detail"].as_str().unwrap_or("").to_owned();
    let want = format!("operations[{index}]");
    assert!(detail.contains(&want), "the detail {detail:?} does not name {want}");
}

/// Panics unless `collection/key` is absent (404 to the integration, which reads
/// `orders` and `customers`; admins read `prices`).
#[track_caller]
fn assert_absent(f: &Fixture, collection: &str, key: &str) {
    let mut conn = if collection == PRICES {
        f.admin()
    } else {
        f.integration()
    };
    let res = get(&mut conn, &record_path(collection, key));
    assert_problem(&res, 404, "not-found");
}

// ---- read-through from the upstream ----

#[test]
fn miss_is_fetched_from_the_upstream_with_the_bearer_token_then_hits_with_the_same_etag() {
    let f = start(Tuning::default());
    let value = json!({"id": "c-1", "name": "Müller GmbH", "credit_limit": 5000, "tags": ["a", "b"]});
    f.upstream.put_json("c-1", &value);
    let mut conn = f.member();

    let first = get(&mut conn, &record_path(CUSTOMERS, "c-1"));
    let tag = assert_record(&first, &value);
    let cs = cache_status(&first);
    cs.assert_fetched("miss");
    assert!(!cs.has("collapsed"), "{:?}", cs.raw);
    assert!(
        (840..=900).contains(&cs.ttl()),
        "ttl of a 15m record just stored: {:?}",
        cs.raw
    );

    let second = get(&mut conn, &record_path(CUSTOMERS, "c-1"));
    assert_eq!(assert_record(&second, &value), tag, "same content, same ETag");
    let cs = cache_status(&second);
    cs.assert_fresh_hit();
    assert!(cs.ttl() <= 900, "{:?}", cs.raw);

    assert_eq!(f.upstream.calls("c-1"), 1, "the hit did not go upstream");
    let seen = f.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, "/api/customers/c-1");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {}", f.token).as_str()),
        "the token from upstream_bearer_token_file"
    );
}

#[test]
fn expired_record_is_fetched_again_and_its_etag_follows_the_content() {
    let f = start(short_lived());
    let v1 = json!({"id": "c-2", "version": 1});
    let v2 = json!({"id": "c-2", "version": 2});
    f.upstream.put_json("c-2", &v1);
    let mut conn = f.member();
    let path = record_path(CUSTOMERS, "c-2");

    let first = get(&mut conn, &path);
    let tag1 = assert_record(&first, &v1);
    cache_status(&first).assert_fetched("miss");

    // Past the 1 s ttl: fetched again, unchanged content keeps its ETag.
    std::thread::sleep(Duration::from_millis(1500));
    let again = get(&mut conn, &path);
    assert_eq!(assert_record(&again, &v1), tag1, "same content, same ETag");
    cache_status(&again).assert_fetched("stale");
    assert_eq!(f.upstream.calls("c-2"), 2);

    // The ERP changes the record; once expired, coffer stores the new content.
    f.upstream.put_json("c-2", &v2);
    std::thread::sleep(Duration::from_millis(1500));
    let changed = get(&mut conn, &path);
    let tag2 = assert_record(&changed, &v2);
    cache_status(&changed).assert_fetched("stale");
    assert_ne!(tag2, tag1, "new content, new ETag");
    assert_eq!(f.upstream.calls("c-2"), 3);
}

#[test]
fn failing_or_unreachable_upstream_serves_the_expired_copy_inside_its_stale_window_then_502() {
    let f = start(short_lived());
    let value = json!({"id": "c-3", "name": "Old but usable"});
    f.upstream.put_json("c-3", &value);
    let mut conn = f.member();
    let path = record_path(CUSTOMERS, "c-3");
    let tag = assert_record(&get(&mut conn, &path), &value);

    // Expired (ttl 1 s) but inside the 3 s stale window; the ERP answers 500.
    std::thread::sleep(Duration::from_millis(1500));
    f.upstream.set(Behaviour::Status(500));
    let stale = get(&mut conn, &path);
    assert_eq!(assert_record(&stale, &value), tag, "the old record is served");
    cache_status(&stale).assert_stale_if_error("502");
    assert!(age(&stale) >= 1, "Age counts from when the copy was stored");
    assert_eq!(f.upstream.calls("c-3"), 2);

    // The ERP is down (connection refused): still the stale copy.
    f.upstream.go_down();
    let stale = get(&mut conn, &path);
    assert_eq!(assert_record(&stale, &value), tag);
    cache_status(&stale).assert_stale_if_error("502");

    // Past the stale window (1 s + 3 s after it was stored): no usable copy.
    std::thread::sleep(Duration::from_millis(2600));
    let res = get(&mut conn, &path);
    assert_problem(&res, 502, "upstream-failed");
    assert_eq!(f.upstream.calls("c-3"), 2, "the ERP is down: nothing reached it");
}

#[test]
fn upstream_failures_without_a_cached_copy_are_502_and_nothing_is_cached() {
    let f = start(Tuning::default());
    let mut conn = f.member();
    let value = json!({"id": "ok"});
    for key in ["s500", "s403", "hangup", "redirect", "not-json", "too-big", "down"] {
        f.upstream.put_json(key, &value);
    }
    f.upstream
        .put_json("redirect-target", &json!({"id": "redirect-target"}));

    f.upstream.set(Behaviour::Status(500));
    assert_problem(&get(&mut conn, &record_path(CUSTOMERS, "s500")), 502, "upstream-failed");

    f.upstream.set(Behaviour::Status(403));
    assert_problem(&get(&mut conn, &record_path(CUSTOMERS, "s403")), 502, "upstream-failed");

    f.upstream.set(Behaviour::Hangup);
    assert_problem(
        &get(&mut conn, &record_path(CUSTOMERS, "hangup")),
        502,
        "upstream-failed",
    );

    // Redirects are not followed.
    f.upstream
        .set(Behaviour::Redirect(f.upstream.url("/api/customers/redirect-target")));
    assert_problem(
        &get(&mut conn, &record_path(CUSTOMERS, "redirect")),
        502,
        "upstream-failed",
    );
    assert_eq!(f.upstream.calls("redirect-target"), 0, "the redirect was followed");

    // A 200 that is not JSON, and a 200 larger than max_record_bytes.
    f.upstream.set_delay(Duration::ZERO);
    f.upstream.put_raw("not-json", "<html>maintenance</html>");
    assert_problem(
        &get(&mut conn, &record_path(CUSTOMERS, "not-json")),
        502,
        "upstream-failed",
    );
    f.upstream
        .put_json("too-big", &json!({"blob": "x".repeat(MAX_RECORD_BYTES + 100)}));
    assert_problem(
        &get(&mut conn, &record_path(CUSTOMERS, "too-big")),
        502,
        "upstream-failed",
    );

    // Failures were not cached: with a working ERP the records are fetched (a miss).
    f.upstream.put_json("not-json", &value);
    f.upstream.put_json("too-big", &value);
    for key in ["s500", "s403", "hangup", "redirect", "not-json", "too-big"] {
        let res = get(&mut conn, &record_path(CUSTOMERS, key));
        assert_record(&res, &value);
        cache_status(&res).assert_fetched("miss");
    }

    // Down: connection refused.
    f.upstream.go_down();
    assert_problem(&get(&mut conn, &record_path(CUSTOMERS, "down")), 502, "upstream-failed");
}

#[test]
fn slow_upstream_is_504_upstream_timeout() {
    let f = start(Tuning::default());
    f.upstream.put_json("slow", &json!({"id": "slow"}));
    // upstream_timeout is 1 s.
    f.upstream.set_delay(Duration::from_secs(3));
    let res = get(&mut f.member(), &record_path(CUSTOMERS, "slow"));
    assert_problem(&res, 504, "upstream-timeout");
    // Under load coffer may give up before the fake ERP has even read the request.
    wait_until("the upstream call", || f.upstream.calls("slow") >= 1);
    assert_eq!(f.upstream.calls("slow"), 1);
}

#[test]
fn upstream_dripping_its_body_past_the_timeout_is_504() {
    let f = start(Tuning::default());
    f.upstream
        .put_json("drip", &json!({"id": "drip", "padding": "x".repeat(40)}));
    // About 60 bytes at one per 100 ms: every read is quick, the whole call is not.
    f.upstream.set(Behaviour::Drip {
        interval: Duration::from_millis(100),
    });
    let res = get(&mut f.member(), &record_path(CUSTOMERS, "drip"));
    assert_problem(&res, 504, "upstream-timeout");
}

#[test]
fn slow_upstream_with_an_expired_copy_serves_it_stale_with_fwd_status_504() {
    // A stale window with room for a loaded machine: the timeout alone takes 1 s.
    let f = start(Tuning {
        ttl: "1s",
        stale_if_error: "20s",
    });
    let value = json!({"id": "c-7"});
    f.upstream.put_json("c-7", &value);
    let mut conn = f.member();
    let path = record_path(CUSTOMERS, "c-7");
    let tag = assert_record(&get(&mut conn, &path), &value);
    std::thread::sleep(Duration::from_millis(1500));
    f.upstream.set_delay(Duration::from_secs(3));
    let stale = get(&mut conn, &path);
    assert_eq!(assert_record(&stale, &value), tag);
    cache_status(&stale).assert_stale_if_error("504");
}

#[test]
fn upstream_404_or_410_is_404_and_drops_the_cached_copy() {
    let f = start(short_lived());
    let mut conn = f.member();
    // Never known anywhere: 404.
    assert_problem(&get(&mut conn, &record_path(CUSTOMERS, "never")), 404, "not-found");

    let gone = json!({"id": "gone"});
    let removed = json!({"id": "removed"});
    f.upstream.put_json("gone", &gone);
    f.upstream.put_json("removed", &removed);
    assert_record(&get(&mut conn, &record_path(CUSTOMERS, "gone")), &gone);
    assert_record(&get(&mut conn, &record_path(CUSTOMERS, "removed")), &removed);

    std::thread::sleep(Duration::from_millis(1500));
    // The ERP deleted "removed" (404)...
    f.upstream.remove("removed");
    assert_problem(&get(&mut conn, &record_path(CUSTOMERS, "removed")), 404, "not-found");
    // ... and answers 410 for everything.
    f.upstream.set(Behaviour::Status(410));
    assert_problem(&get(&mut conn, &record_path(CUSTOMERS, "gone")), 404, "not-found");

    // Still inside the stale window, with a failing ERP: had coffer kept the copies, it
    // would serve them stale now.
    f.upstream.set(Behaviour::Status(500));
    for key in ["removed", "gone"] {
        let res = get(&mut conn, &record_path(CUSTOMERS, key));
        assert_problem(&res, 502, "upstream-failed");
    }
}

#[test]
fn fifty_concurrent_misses_of_one_key_make_one_upstream_call() {
    const READERS: usize = 50;
    let f = start(Tuning::default());
    let value = json!({"id": "hot", "name": "Everyone wants this one"});
    f.upstream.put_json("hot", &value);
    f.upstream.set_delay(Duration::from_millis(300));
    // Fifty phones: one member's fifty devices, each on its own connection.
    let owner = f.server.add_member("crowd");
    let devices: Vec<Identity> = (0..READERS).map(|_| f.server.issue_device(owner.id)).collect();
    let barrier = Barrier::new(READERS);
    let path = record_path(CUSTOMERS, "hot");
    let responses: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .map(|identity| {
                let (server, barrier, path) = (&f.server, &barrier, &path);
                s.spawn(move || {
                    let mut conn = server.connect(identity);
                    barrier.wait();
                    get(&mut conn, path)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("reader thread")).collect()
    });

    assert_eq!(f.upstream.calls("hot"), 1, "concurrent misses make one upstream call");
    let tag = etag(&responses[0]);
    let mut fetched = 0;
    for (i, res) in responses.iter().enumerate() {
        assert_eq!(assert_record(res, &value), tag, "reader {i}");
        let cs = cache_status(res);
        if cs.param("fwd") == Some("miss") && !cs.has("collapsed") {
            fetched += 1;
        } else {
            assert!(
                cs.has("collapsed") || cs.has("hit"),
                "reader {i}: neither the fetch, a collapsed wait nor a hit: {:?}",
                cs.raw
            );
        }
    }
    assert_eq!(fetched, 1, "exactly one request made the fetch");
    let counters = f.erp.counters(CUSTOMERS).expect("counters");
    assert_eq!(counters.upstream_calls, 1, "coffer's own count: {counters:?}");
}

/// Waits (polling) until `done` holds; panics after 10 s.
#[track_caller]
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting for {what} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_record_pushed_during_an_upstream_fetch_is_not_overwritten_by_the_fetched_one() {
    let f = start(Tuning::default());
    let fetched = json!({"from": "the ERP, read before the push"});
    let pushed = json!({"from": "the integration, newer"});
    f.upstream.put_json("race", &fetched);
    f.upstream.set_delay(Duration::from_millis(700));
    let path = record_path(CUSTOMERS, "race");
    let first = std::thread::scope(|s| {
        let reader = s.spawn(|| get(&mut f.member(), &path));
        // The fetch has reached the ERP (which holds its answer back): push now.
        wait_until("the upstream call", || f.upstream.calls("race") == 1);
        f.push(CUSTOMERS, "race", &pushed);
        reader.join().expect("reader thread")
    });
    assert_status(&first, 200);
    let got = first.json();
    assert!(got == fetched || got == pushed, "{got}");
    // The fetch started before the push: its older answer does not replace the push.
    let res = get(&mut f.member(), &path);
    assert_record(&res, &pushed);
    cache_status(&res).assert_fresh_hit();
    assert_eq!(f.upstream.calls("race"), 1);
}

#[test]
fn counters_count_hits_misses_refreshes_stale_serves_errors_and_upstream_calls() {
    let f = start(short_lived());
    let value = json!({"id": "n-1"});
    f.upstream.put_json("n-1", &value);
    let counters = || f.erp.counters(CUSTOMERS).expect("counters of a configured collection");
    assert_eq!(counters(), Counters::default());
    assert!(f.erp.counters("nope").is_none());
    let mut conn = f.member();
    let path = record_path(CUSTOMERS, "n-1");

    assert_record(&get(&mut conn, &path), &value);
    assert_record(&get(&mut conn, &path), &value);
    assert_problem(&get(&mut conn, &record_path(CUSTOMERS, "absent")), 404, "not-found");
    let want = Counters {
        hits: 1,
        misses: 2,
        stale: 0,
        refreshes: 0,
        errors: 0,
        upstream_calls: 2,
        busy: 0,
    };
    assert_eq!(counters(), want, "a miss, a hit, and a miss the ERP does not know");

    std::thread::sleep(Duration::from_millis(1500));
    assert_record(&get(&mut conn, &path), &value);
    let want = Counters {
        refreshes: 1,
        upstream_calls: 3,
        ..want
    };
    assert_eq!(counters(), want, "an expired record fetched again");

    std::thread::sleep(Duration::from_millis(1500));
    f.upstream.set(Behaviour::Status(500));
    cache_status(&get(&mut conn, &path)).assert_stale_if_error("502");
    let want = Counters {
        stale: 1,
        errors: 1,
        upstream_calls: 4,
        ..want
    };
    assert_eq!(counters(), want, "a failed call and a stale copy served");
    assert_eq!(f.erp.counters(ORDERS), Some(Counters::default()));
}

#[test]
fn sweep_removes_records_past_their_stale_window_only() {
    let f = start(short_lived());
    let value = json!({"id": "sw-1"});
    f.upstream.put_json("sw-1", &value);
    assert_record(&get(&mut f.member(), &record_path(CUSTOMERS, "sw-1")), &value);
    let pushed = json!({"id": "o-1"});
    f.push(ORDERS, "o-1", &pushed);
    let vault = f.server.vault();
    let now = Timestamp::now();

    assert_eq!(f.erp.sweep(vault, now).expect("sweep"), 0, "both are fresh");
    // Two seconds on: "sw-1" is expired but inside its stale window (fresh 1 s, stale 3 s).
    assert_eq!(f.erp.sweep(vault, Timestamp(now.0 + 2_000)).expect("sweep"), 0);
    // Ten seconds on: past it; the order (fresh 15 min) stays.
    assert_eq!(f.erp.sweep(vault, Timestamp(now.0 + 10_000)).expect("sweep"), 1);

    // The copy is gone (it would still be fresh by the clock): with the ERP down there is
    // nothing to serve.
    f.upstream.go_down();
    let res = get(&mut f.member(), &record_path(CUSTOMERS, "sw-1"));
    assert_problem(&res, 502, "upstream-failed");
    assert_record(&get(&mut f.member(), &record_path(ORDERS, "o-1")), &pushed);
}

// ---- conditional requests ----

#[test]
fn if_none_match_with_the_etag_is_304_without_a_body() {
    let f = start(Tuning::default());
    let value = json!({"id": "c-6"});
    f.upstream.put_json("c-6", &value);
    let mut conn = f.member();
    let path = record_path(CUSTOMERS, "c-6");
    let tag = assert_record(&get(&mut conn, &path), &value);

    let other = "\"AAAAAAAAAAAAAAAAAAAAAA\"";
    for inm in [tag.clone(), format!("{other}, {tag}"), "*".to_owned()] {
        let res = get_with(&mut conn, &path, &[("if-none-match", &inm)]);
        assert_eq!(res.status, 304, "If-None-Match: {inm}");
        assert!(res.body.is_empty(), "a 304 has no body");
        assert_eq!(res.header("etag"), Some(tag.as_str()));
        age(&res);
        cache_status(&res).assert_fresh_hit();
    }
    // Another tag: the record (and the keep-alive connection is still in step after the
    // 304s, so none of them carried a body).
    let res = get_with(&mut conn, &path, &[("if-none-match", other)]);
    assert_eq!(assert_record(&res, &value), tag);
    assert_eq!(f.upstream.calls("c-6"), 1);
}

#[test]
fn if_none_match_works_for_pushed_records() {
    let f = start(Tuning::default());
    let value = json!({"order": 7});
    let put = f.push(ORDERS, "o-7", &value);
    let tag = put["etag"].as_str().expect("etag in the PUT answer").to_owned();
    assert_etag_shape(&tag);
    let mut conn = f.member();
    let res = get_with(&mut conn, &record_path(ORDERS, "o-7"), &[("if-none-match", &tag)]);
    assert_eq!(res.status, 304);
    assert!(res.body.is_empty());
    assert_eq!(res.header("etag"), Some(tag.as_str()));
}

// ---- multi-get ----

#[test]
fn multi_get_answers_each_key_in_the_order_asked() {
    let f = start(Tuning::default());
    let a = json!({"id": "a"});
    let b = json!({"id": "b"});
    f.upstream.put_json("a", &a);
    f.upstream.put_json("b", &b);
    let mut conn = f.member();

    let records = records_of(&multi_get(&mut conn, CUSTOMERS, &["b", "a", "missing"]));
    assert_eq!(records.len(), 3, "{records:?}");
    for (record, (key, value)) in records.iter().zip([("b", &b), ("a", &a)]) {
        assert_eq!(record["key"], json!(key));
        assert_eq!(record["status"], json!(200), "{record}");
        assert_eq!(&record["value"], value);
        assert_etag_shape(record["etag"].as_str().expect("etag"));
        assert!(record["age"].is_u64(), "{record}");
        let cs = CacheStatus::parse(record["cache_status"].as_str().expect("cache_status"));
        cs.assert_fetched("miss");
    }
    assert_eq!(records[2]["key"], json!("missing"));
    assert_eq!(records[2]["status"], json!(404));
    assert_eq!(records[2]["problem"], json!("urn:coffer:problem:not-found"));
    assert!(records[2].get("value").is_none(), "{}", records[2]);

    // Again: hits, with the ETags a single GET gives.
    let records = records_of(&multi_get(&mut conn, CUSTOMERS, &["a", "b"]));
    assert_eq!(records.len(), 2);
    for (record, key) in records.iter().zip(["a", "b"]) {
        assert_eq!(record["key"], json!(key));
        CacheStatus::parse(record["cache_status"].as_str().expect("cache_status")).assert_fresh_hit();
        let single = get(&mut conn, &record_path(CUSTOMERS, key));
        assert_eq!(record["etag"].as_str(), single.header("etag"), "{key}");
    }
    assert_eq!(f.upstream.calls("a"), 1);
    assert_eq!(f.upstream.calls("b"), 1);

    // A repeated key is answered once.
    let records = records_of(&multi_get(&mut conn, CUSTOMERS, &["a", "a"]));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["key"], json!("a"));
}

#[test]
fn multi_get_refuses_no_key_too_many_keys_and_bad_keys() {
    let f = start(Tuning::default());
    let mut conn = f.member();
    assert_problem(&get(&mut conn, "/v1/erp/orders"), 400, "invalid-request");
    assert_problem(&get(&mut conn, "/v1/erp/orders?other=1"), 400, "invalid-request");

    let keys: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let records = records_of(&multi_get(&mut conn, ORDERS, &keys[..100]));
    assert_eq!(records.len(), 100, "100 keys are allowed");
    assert!(records.iter().all(|r| r["status"] == json!(404)));
    assert_problem(&multi_get(&mut conn, ORDERS, &keys), 400, "invalid-request");

    for bad in [".", ".."] {
        assert_problem(&multi_get(&mut conn, ORDERS, &["ok", bad]), 400, "invalid-request");
    }
    assert_problem(&get(&mut conn, "/v1/erp/orders?key=ok&key="), 400, "invalid-request");
    assert_problem(&multi_get(&mut conn, CUSTOMERS, &["a", ".."]), 400, "invalid-request");
    assert_eq!(
        f.upstream.total_calls(),
        0,
        "a refused multi-get calls nothing upstream"
    );
}

// ---- who may do what ----

#[test]
fn member_cannot_read_an_admin_only_collection_but_an_admin_can() {
    let f = start(Tuning::default());
    let value = json!({"sku": "X-1", "price": 12.5});
    assert_eq!(f.push(PRICES, "x-1", &value)["key"], json!("x-1"));

    let mut member = f.member();
    assert_problem(
        &get(&mut member, &record_path(PRICES, "x-1")),
        403,
        "role-not-permitted",
    );
    // The same answer for a key that does not exist: nothing leaks.
    assert_problem(
        &get(&mut member, &record_path(PRICES, "nope")),
        403,
        "role-not-permitted",
    );
    assert_problem(&multi_get(&mut member, PRICES, &["x-1"]), 403, "role-not-permitted");
    // The integration writes prices but is not among its readers.
    assert_problem(
        &get(&mut f.integration(), &record_path(PRICES, "x-1")),
        403,
        "role-not-permitted",
    );

    let mut admin = f.admin();
    assert_record(&get(&mut admin, &record_path(PRICES, "x-1")), &value);
    let records = records_of(&multi_get(&mut admin, PRICES, &["x-1"]));
    assert_eq!(records[0]["value"], value);
}

#[test]
fn members_and_admins_cannot_write_any_collection() {
    let f = start(Tuning::default());
    let kept = json!({"kept": true});
    for collection in [CUSTOMERS, ORDERS, PRICES] {
        f.push(collection, "kept", &kept);
    }
    for (who, identity) in [("member", &f.member), ("admin", &f.admin)] {
        for collection in [CUSTOMERS, ORDERS, PRICES] {
            // A fresh connection for each: a refused write may close its connection.
            let res = put_json(&mut f.server.connect(identity), collection, "x", &json!({"by": who}));
            assert_problem(&res, 403, "role-not-permitted");
            let res = put_json(&mut f.server.connect(identity), collection, "kept", &json!({"by": who}));
            assert_problem(&res, 403, "role-not-permitted");
            let res = delete(&mut f.server.connect(identity), collection, "kept");
            assert_problem(&res, 403, "role-not-permitted");
            let ops = json!({"operations": [
                {"op": "put", "key": "x", "value": {"by": who}},
                {"op": "delete", "key": "kept"}
            ]});
            let res = batch(&mut f.server.connect(identity), collection, &ops);
            assert_problem(&res, 403, "role-not-permitted");
        }
    }
    for collection in [CUSTOMERS, ORDERS, PRICES] {
        assert_absent(&f, collection, "x");
        let mut conn = if collection == PRICES {
            f.admin()
        } else {
            f.integration()
        };
        assert_record(&get(&mut conn, &record_path(collection, "kept")), &kept);
    }
    // "kept" was served from the cache; only the absence check of "x" asked the ERP.
    assert_eq!(f.upstream.calls("kept"), 0);
    assert_eq!(f.upstream.calls("x"), 1);
}

#[test]
fn integration_writes_and_a_member_reads_them_back() {
    let f = start(Tuning::default());
    let mut erp = f.integration();
    let mut member = f.member();
    let v1 = json!({"order": "A-1", "lines": [{"sku": "X", "qty": 2}]});
    let v2 = json!({"order": "A-1", "lines": [{"sku": "X", "qty": 3}]});

    let created = put_json(&mut erp, ORDERS, "A-1", &v1);
    assert_status(&created, 201);
    let body = created.json();
    assert_eq!(body["key"], json!("A-1"));
    let tag1 = body["etag"].as_str().expect("etag").to_owned();
    assert_etag_shape(&tag1);
    parse_time(&body["expires"]);

    let res = get(&mut member, &record_path(ORDERS, "A-1"));
    assert_eq!(assert_record(&res, &v1), tag1, "the ETag the PUT announced");
    cache_status(&res).assert_fresh_hit();

    // The same content again: 200 (not new), the same ETag.
    let same = put_json(&mut erp, ORDERS, "A-1", &v1);
    assert_status(&same, 200);
    assert_eq!(same.json()["etag"].as_str(), Some(tag1.as_str()));

    // New content: a new ETag, and readers see it.
    let changed = put_json(&mut erp, ORDERS, "A-1", &v2);
    assert_status(&changed, 200);
    let tag2 = changed.json()["etag"].as_str().expect("etag").to_owned();
    assert_ne!(tag2, tag1);
    assert_eq!(assert_record(&get(&mut member, &record_path(ORDERS, "A-1")), &v2), tag2);

    // The integration reads too, without a session.
    assert_eq!(assert_record(&get(&mut erp, &record_path(ORDERS, "A-1")), &v2), tag2);

    let res = delete(&mut erp, ORDERS, "A-1");
    assert_status(&res, 204);
    assert_problem(&get(&mut member, &record_path(ORDERS, "A-1")), 404, "not-found");
    let res = delete(&mut erp, ORDERS, "A-1");
    assert_status(&res, 204);

    // A record pushed into a read-through collection is served without the upstream.
    let pushed = json!({"id": "pushed"});
    f.push(CUSTOMERS, "pushed", &pushed);
    let res = get(&mut member, &record_path(CUSTOMERS, "pushed"));
    assert_record(&res, &pushed);
    cache_status(&res).assert_fresh_hit();
    assert_eq!(f.upstream.total_calls(), 0);
}

#[test]
fn unknown_collection_is_404() {
    let f = start(Tuning::default());
    let mut erp = f.integration();
    assert_problem(&get(&mut erp, "/v1/erp/nope/k"), 404, "not-found");
    assert_problem(&get(&mut erp, "/v1/erp/nope?key=k"), 404, "not-found");
    assert_problem(&put_json(&mut erp, "nope", "k", &json!({})), 404, "not-found");
    assert_problem(&delete(&mut erp, "nope", "k"), 404, "not-found");
    let ops = json!({"operations": [{"op": "put", "key": "k", "value": {}}]});
    assert_problem(&batch(&mut erp, "nope", &ops), 404, "not-found");
    assert_problem(&get(&mut f.member(), "/v1/erp/nope/k"), 404, "not-found");
    assert_problem(&get(&mut f.admin(), "/v1/erp/nope?key=k"), 404, "not-found");
}

#[test]
fn members_and_admins_without_a_session_are_401_session_required() {
    let f = start(Tuning::default());
    f.upstream.put_json("c-9", &json!({"id": "c-9"}));
    f.push(ORDERS, "o-9", &json!({"id": "o-9"}));
    for identity in [&f.member, &f.admin] {
        // A fresh connection for each: the server closes one after refusing it.
        let without_session = || {
            let mut conn = f.server.connect(identity);
            conn.signer_mut().expect("a signed connection").token = None;
            conn
        };
        let res = get(&mut without_session(), &record_path(CUSTOMERS, "c-9"));
        assert_problem(&res, 401, "session-required");
        let res = get(&mut without_session(), &record_path(ORDERS, "o-9"));
        assert_problem(&res, 401, "session-required");
        let res = multi_get(&mut without_session(), ORDERS, &["o-9"]);
        assert_problem(&res, 401, "session-required");
    }
    assert_eq!(f.upstream.total_calls(), 0, "nothing went upstream for a refused read");
    // With their sessions they read.
    assert_record(
        &get(&mut f.member(), &record_path(ORDERS, "o-9")),
        &json!({"id": "o-9"}),
    );
    assert_record(&get(&mut f.admin(), &record_path(ORDERS, "o-9")), &json!({"id": "o-9"}));
}

#[test]
fn integration_reads_through_without_a_session() {
    let f = start(Tuning::default());
    let value = json!({"id": "c-10"});
    f.upstream.put_json("c-10", &value);
    let mut erp = f.integration();
    assert!(f.integration.token.is_none());
    let res = get(&mut erp, &record_path(CUSTOMERS, "c-10"));
    assert_record(&res, &value);
    let records = records_of(&multi_get(&mut erp, CUSTOMERS, &["c-10"]));
    assert_eq!(records[0]["value"], value);
}

// ---- batch writes ----

#[test]
fn batch_puts_and_deletes_several_records_in_one_request() {
    let f = start(Tuning::default());
    f.push(ORDERS, "old", &json!({"old": true}));
    let expires = rfc3339(whole_seconds_from_now(86_400));
    let ops = json!({"operations": [
        {"op": "put", "key": "b1", "value": {"n": 1}},
        {"op": "put", "key": "b2", "value": {"n": 2}, "expires": expires},
        {"op": "put", "key": "b/3 ü", "value": [1, 2, 3]},
        {"op": "delete", "key": "old"}
    ]});
    let res = batch(&mut f.integration(), ORDERS, &ops);
    assert_status(&res, 200);
    assert_eq!(res.json(), json!({"put": 3, "deleted": 1}));

    let mut member = f.member();
    assert_record(&get(&mut member, &record_path(ORDERS, "b1")), &json!({"n": 1}));
    assert_record(&get(&mut member, &record_path(ORDERS, "b2")), &json!({"n": 2}));
    assert_record(&get(&mut member, &record_path(ORDERS, "b/3 ü")), &json!([1, 2, 3]));
    assert_absent(&f, ORDERS, "old");

    // An upsert of an existing record.
    let ops = json!({"operations": [{"op": "put", "key": "b1", "value": {"n": 10}}]});
    let res = batch(&mut f.integration(), ORDERS, &ops);
    assert_status(&res, 200);
    assert_eq!(res.json(), json!({"put": 1, "deleted": 0}));
    assert_record(&get(&mut member, &record_path(ORDERS, "b1")), &json!({"n": 10}));
}

#[test]
fn batch_with_one_bad_operation_writes_nothing() {
    let f = start(Tuning::default());
    let keep = json!({"keep": "unchanged"});
    f.push(ORDERS, "keep", &keep);
    let put = |key: &str| json!({"op": "put", "key": key, "value": {"new": key}});
    let del_keep = json!({"op": "delete", "key": "keep"});
    let cases: Vec<(&str, usize, Vec<Value>)> = vec![
        (
            "key ..",
            2,
            vec![
                put("n1"),
                del_keep.clone(),
                json!({"op": "put", "key": "..", "value": {}}),
                put("n2"),
            ],
        ),
        (
            "value over max_record_bytes",
            1,
            vec![
                del_keep.clone(),
                json!({"op": "put", "key": "n1", "value": "x".repeat(MAX_RECORD_BYTES + 10)}),
            ],
        ),
        (
            "put without a value",
            3,
            vec![
                put("n1"),
                put("n2"),
                del_keep.clone(),
                json!({"op": "put", "key": "n3"}),
            ],
        ),
        (
            "expires in the past",
            1,
            vec![
                del_keep.clone(),
                json!({"op": "put", "key": "n1", "value": {}, "expires": "2001-01-01T00:00:00Z"}),
            ],
        ),
        (
            "key with a control character",
            1,
            vec![put("n1"), json!({"op": "delete", "key": "a\u{1}b"}), del_keep.clone()],
        ),
    ];
    for (what, index, operations) in cases {
        let res = batch(&mut f.integration(), ORDERS, &json!({ "operations": operations }));
        assert_names_operation(&res, index);
        let mut conn = f.integration();
        assert_record(&get(&mut conn, &record_path(ORDERS, "keep")), &keep);
        for key in ["n1", "n2", "n3"] {
            let res = get(&mut conn, &record_path(ORDERS, key));
            assert_eq!(res.status, 404, "{what}: {key} was written by a refused batch");
        }
    }
}

/// Structurally malformed operations (an unknown field type, a missing key): each as its
/// name, the index it is at, and the operations.
fn malformed_batches() -> Vec<(&'static str, usize, Value)> {
    vec![
        (
            "unknown op",
            1,
            json!([{"op": "put", "key": "n1", "value": 1}, {"op": "upsert", "key": "n2", "value": 2}]),
        ),
        (
            "no key",
            2,
            json!([{"op": "put", "key": "n1", "value": 1}, {"op": "delete", "key": "keep"}, {"op": "delete"}]),
        ),
        (
            "key not a string",
            0,
            json!([{"op": "put", "key": 5, "value": 1}, {"op": "delete", "key": "keep"}]),
        ),
        (
            "unknown field",
            1,
            json!([{"op": "delete", "key": "keep"}, {"op": "put", "key": "n1", "value": 1, "ttl": "1h"}]),
        ),
    ]
}

#[test]
fn batch_with_a_malformed_operation_is_400_and_writes_nothing() {
    let f = start(Tuning::default());
    let keep = json!({"keep": "unchanged"});
    f.push(ORDERS, "keep", &keep);
    for (what, _, operations) in malformed_batches() {
        let res = batch(&mut f.integration(), ORDERS, &json!({ "operations": operations }));
        assert_eq!(res.status, 400, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 400, "invalid-request");
    }
    // Malformed as a whole.
    let mut conn = f.integration();
    for body in [
        &b"not json"[..],
        b"{}",
        br#"{"operations": {}}"#,
        br#"{"operations": []}"#,
    ] {
        let res = write(
            &mut conn,
            "POST",
            "/v1/erp/orders/batch",
            Some("application/json"),
            body,
        );
        assert_problem(&res, 400, "invalid-request");
    }
    assert_record(&get(&mut conn, &record_path(ORDERS, "keep")), &keep);
    for key in ["n1", "n2"] {
        assert_absent(&f, ORDERS, key);
    }
}

#[test]
fn batch_error_names_the_index_of_a_malformed_operation() {
    let f = start(Tuning::default());
    f.push(ORDERS, "keep", &json!({"keep": "unchanged"}));
    for (what, index, operations) in malformed_batches() {
        let res = batch(&mut f.integration(), ORDERS, &json!({ "operations": operations }));
        assert_eq!(res.status, 400, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_names_operation(&res, index);
    }
}

#[test]
fn batch_of_1000_operations_is_accepted_and_1001_refused() {
    let f = start(Tuning::default());
    let ops = |prefix: &str, n: usize| -> Value {
        let operations: Vec<Value> = (0..n)
            .map(|i| json!({"op": "put", "key": format!("{prefix}-{i}"), "value": {"i": i}}))
            .collect();
        json!({ "operations": operations })
    };
    let res = batch(&mut f.integration(), ORDERS, &ops("ok", 1000));
    assert_status(&res, 200);
    assert_eq!(res.json(), json!({"put": 1000, "deleted": 0}));
    let mut member = f.member();
    assert_record(&get(&mut member, &record_path(ORDERS, "ok-0")), &json!({"i": 0}));
    assert_record(&get(&mut member, &record_path(ORDERS, "ok-999")), &json!({"i": 999}));

    let res = batch(&mut f.integration(), ORDERS, &ops("over", 1001));
    assert_problem(&res, 400, "invalid-request");
    assert_absent(&f, ORDERS, "over-0");
    assert_absent(&f, ORDERS, "over-1000");
}

// ---- keys ----

/// The longest key allowed: 512 bytes of UTF-8.
fn longest_key() -> String {
    "é".repeat(256)
}

#[test]
fn keys_with_reserved_characters_and_unicode_round_trip_through_put_and_get() {
    let f = start(Tuning::default());
    let long = longest_key();
    let mut keys: Vec<&str> = AWKWARD_KEYS.to_vec();
    keys.push(&long);
    let mut erp = f.integration();
    for key in &keys {
        let res = put_json(&mut erp, ORDERS, key, &json!({"key": key}));
        assert_status(&res, 201);
        assert_eq!(res.json()["key"], json!(key), "the key the PUT answer names");
    }
    let mut member = f.member();
    for key in &keys {
        assert_record(&get(&mut member, &record_path(ORDERS, key)), &json!({"key": key}));
    }
    let records = records_of(&multi_get(&mut member, ORDERS, &keys));
    assert_eq!(records.len(), keys.len());
    for (record, key) in records.iter().zip(&keys) {
        assert_eq!(record["key"], json!(key));
        assert_eq!(record["status"], json!(200), "{key:?}");
        assert_eq!(record["value"], json!({"key": key}));
    }
    // "a/b" is one key, not "b" under "a": nothing answers to the pieces.
    assert_absent(&f, ORDERS, "a");
    assert_problem(&get(&mut member, "/v1/erp/orders/a/b"), 404, "not-found");
}

#[test]
fn keys_reach_the_upstream_percent_encoded_as_one_path_segment() {
    let f = start(Tuning::default());
    let long = longest_key();
    let mut keys: Vec<&str> = AWKWARD_KEYS.to_vec();
    keys.push(&long);
    for key in &keys {
        f.upstream.put_json(key, &json!({"upstream_key": key}));
    }
    let mut member = f.member();
    for key in &keys {
        let res = get(&mut member, &record_path(CUSTOMERS, key));
        assert_record(&res, &json!({"upstream_key": key}));
    }
    let seen = f.upstream.requests();
    assert_eq!(seen.len(), keys.len(), "{seen:?}");
    for request in &seen {
        let segment = request
            .target
            .strip_prefix(CUSTOMERS_PREFIX)
            .unwrap_or_else(|| panic!("{:?} left the configured path", request.target));
        assert!(
            !segment.contains(['/', '?', '#']),
            "{:?}: the key escaped its path segment",
            request.target
        );
        assert!(segment != "." && segment != "..", "{:?}", request.target);
        assert!(request.key.is_some(), "{:?}", request.target);
    }
    let mut asked: Vec<String> = seen.iter().filter_map(|r| r.key.clone()).collect();
    let mut want: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    asked.sort();
    want.sort();
    assert_eq!(asked, want, "the keys the ERP decoded");
}

#[test]
fn dot_keys_overlong_keys_and_control_characters_are_400() {
    let f = start(Tuning::default());
    let too_long = enc(&format!("{}a", longest_key()));
    let bad: Vec<String> = ["%2E", "%2E%2E", "%2e%2E", "a%00b", "a%0Ab", "%7F", "%FF"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([too_long])
        .collect();
    for segment in &bad {
        for collection in [ORDERS, CUSTOMERS] {
            let path = format!("/v1/erp/{collection}/{segment}");
            let res = get(&mut f.member(), &path);
            assert_eq!(res.status, 400, "GET {path}: {}", String::from_utf8_lossy(&res.body));
            assert_problem(&res, 400, "invalid-request");
            let res = put_raw(&mut f.integration(), &path, b"{}");
            assert_eq!(res.status, 400, "PUT {path}: {}", String::from_utf8_lossy(&res.body));
            assert_problem(&res, 400, "invalid-request");
            let res = write(&mut f.integration(), "DELETE", &path, None, b"");
            assert_eq!(res.status, 400, "DELETE {path}: {}", String::from_utf8_lossy(&res.body));
            assert_problem(&res, 400, "invalid-request");
        }
    }
    assert_eq!(f.upstream.total_calls(), 0, "a bad key went upstream");
}

#[test]
fn raw_dot_segments_in_the_path_are_refused_and_reach_nothing() {
    // A literal "." or ".." segment is a relative path step, not a key: the signature
    // check refuses such paths (401 signature-invalid) before any route sees them. What
    // matters here is that they are refused, never served, stored or sent upstream.
    let f = start(Tuning::default());
    f.push(ORDERS, "kept", &json!({"kept": true}));
    for target in [
        "/v1/erp/orders/.",
        "/v1/erp/orders/..",
        "/v1/erp/orders/../orders/kept",
        "/v1/erp/customers/..",
        "/v1/erp/customers/./x",
    ] {
        let res = get(&mut f.member(), target);
        assert!(
            (400..500).contains(&res.status),
            "GET {target}: {} {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
        res.problem();
        for (method, body) in [("PUT", &b"{}"[..]), ("DELETE", b"")] {
            let ct = (method == "PUT").then_some("application/json");
            let res = write(&mut f.integration(), method, target, ct, body);
            assert!(
                (400..500).contains(&res.status),
                "{method} {target}: {} {}",
                res.status,
                String::from_utf8_lossy(&res.body)
            );
        }
    }
    assert_record(
        &get(&mut f.member(), &record_path(ORDERS, "kept")),
        &json!({"kept": true}),
    );
    assert_eq!(f.upstream.total_calls(), 0, "a dot segment went upstream");
}

// ---- at rest ----

/// Panics if any file under `dir` contains one of `needles`.
#[track_caller]
fn assert_not_in_files(dir: &std::path::Path, needles: &[String], when: &str) {
    let files = files_under(dir);
    assert!(!files.is_empty(), "no files under {}", dir.display());
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else {
            continue; // a socket, or gone
        };
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{when}: {} holds {needle:?} in clear",
                file.display()
            );
        }
    }
}

#[test]
fn no_record_key_or_value_is_in_clear_in_the_data_or_keys_directory() {
    let f = start(Tuning::default());
    let key_marker = unique_marker();
    let value_marker = unique_marker();
    let key = |i: usize| format!("key-{key_marker}-{i}");
    let value = |i: usize| json!({"secret": format!("value-{value_marker}-{i}"), "i": i});

    // Pushed one by one, in a batch, and read through from the ERP.
    let mut erp = f.integration();
    for i in 0..3 {
        let res = put_json(&mut erp, ORDERS, &key(i), &value(i));
        assert_status(&res, 201);
    }
    let operations: Vec<Value> = (3..6)
        .map(|i| json!({"op": "put", "key": key(i), "value": value(i)}))
        .collect();
    assert_status(&batch(&mut erp, PRICES, &json!({ "operations": operations })), 200);
    for i in 6..9 {
        f.upstream.put_json(&key(i), &value(i));
    }
    let mut member = f.member();
    for i in 6..8 {
        assert_record(&get(&mut member, &record_path(CUSTOMERS, &key(i))), &value(i));
    }
    records_of(&multi_get(&mut member, CUSTOMERS, &[&key(8), &key(7)]));
    // A deleted record leaves nothing readable behind either.
    assert_status(&delete(&mut erp, ORDERS, &key(0)), 204);
    // Everything is there.
    for i in 1..9 {
        let (collection, mut conn) = match i {
            0..3 => (ORDERS, f.member()),
            3..6 => (PRICES, f.admin()),
            _ => (CUSTOMERS, f.member()),
        };
        assert_record(&get(&mut conn, &record_path(collection, &key(i))), &value(i));
    }

    let needles = [key_marker, value_marker];
    assert_not_in_files(f.server.dirs().root.path(), &needles, "while serving");
    let Fixture { server, .. } = f;
    let dirs = server.stop();
    assert_not_in_files(dirs.root.path(), &needles, "after the server stopped");
}

// ---- key rotation (through the vault: rotating needs the coffer to itself) ----

fn new_record(key: &str, value: &Value, now: Timestamp) -> NewErpRecord {
    NewErpRecord {
        key: key.to_owned(),
        value: serde_json::to_vec(value).expect("serialise JSON"),
        fresh_until: Timestamp(now.0 + 3_600_000),
        stale_until: Timestamp(now.0 + 7_200_000),
    }
}

fn put_op(key: &str, value: &Value, now: Timestamp) -> ErpOp {
    ErpOp::Put(new_record(key, value, now))
}

#[test]
fn records_are_found_replaced_and_deleted_after_a_key_rotation() {
    let (dirs, mut vault) = common::temp_vault();
    let now = Timestamp::now();
    let v1 = json!({"n": 1});
    let v2 = json!({"n": 2});
    let written = vault
        .erp_write(ORDERS, &[put_op("k", &v1, now), put_op("other", &v1, now)], now)
        .expect("write before the rotation");
    assert!(
        matches!(written[0], Written::Put { replaced: false, .. }),
        "{written:?}"
    );
    vault.rotate(|_| {}).expect("rotate the master key");

    let got = vault
        .erp_get(ORDERS, "k")
        .expect("read")
        .expect("found after the rotation");
    assert_eq!(got.value, serde_json::to_vec(&v1).expect("JSON"));
    let written = vault
        .erp_write(ORDERS, &[put_op("k", &v2, now)], now)
        .expect("write after the rotation");
    assert!(
        matches!(written[0], Written::Put { replaced: true, .. }),
        "the record written before the rotation is replaced, not shadowed: {written:?}"
    );
    let got = vault.erp_get(ORDERS, "k").expect("read").expect("found");
    assert_eq!(got.value, serde_json::to_vec(&v2).expect("JSON"));
    drop(vault);
    assert_eq!(raw_len(&dirs.paths, ERP_RECORDS), 2, "one record per key");
    assert_eq!(raw_index_len(&dirs.paths, ERP_KEYS), 2, "one index entry per key");

    let vault = common::open_vault(&dirs.paths);
    let deleted = vault
        .erp_write(ORDERS, &[ErpOp::Delete("k".into())], now)
        .expect("delete");
    assert_eq!(deleted, vec![Written::Deleted { removed: true }]);
    assert!(
        vault.erp_get(ORDERS, "k").expect("read").is_none(),
        "nothing resurfaces"
    );
    assert!(vault.erp_get(ORDERS, "other").expect("read").is_some());
    drop(vault);
    assert_eq!(raw_len(&dirs.paths, ERP_RECORDS), 1);
    assert_eq!(raw_index_len(&dirs.paths, ERP_KEYS), 1);
}

#[test]
fn same_content_under_the_same_key_keeps_its_etag_across_a_key_rotation() {
    let (_dirs, mut vault) = common::temp_vault();
    let now = Timestamp::now();
    let v = json!({"unchanged": true});
    let before = vault.erp_write(ORDERS, &[put_op("k", &v, now)], now).expect("write");
    let Written::Put { etag: tag_before, .. } = before[0] else {
        panic!("{before:?}")
    };
    vault.rotate(|_| {}).expect("rotate the master key");
    let kept = vault.erp_get(ORDERS, "k").expect("read").expect("found");
    assert_eq!(kept.etag, tag_before, "the stored ETag survives the rotation");
    // The ERP sends the same record again (a refresh): clients' If-None-Match still match.
    let after = vault.erp_write(ORDERS, &[put_op("k", &v, now)], now).expect("write");
    let Written::Put { etag: tag_after, .. } = after[0] else {
        panic!("{after:?}")
    };
    assert_eq!(tag_after, tag_before, "same content under the same key, same ETag");
}

// ---- bad input ----

#[test]
fn bad_put_bodies_and_expiries_are_400_and_store_nothing() {
    let f = start(Tuning::default());
    let bodies: [(&str, &[u8]); 4] = [
        ("not-json", b"not json"),
        ("empty", b""),
        ("truncated", br#"{"a":"#),
        ("trailing", br#"{"a":1} {"b":2}"#),
    ];
    for (key, body) in bodies {
        let res = put_raw(&mut f.integration(), &record_path(ORDERS, key), body);
        assert_problem(&res, 400, "invalid-request");
    }
    let ten_years_and_a_month = rfc3339(whole_seconds_from_now(10 * 366 * 86_400 + 31 * 86_400));
    let expiries = [
        ("past", "2001-01-01T00:00:00Z".to_owned()),
        ("just-past", rfc3339(whole_seconds_from_now(-5))),
        ("unparsable", "next tuesday".to_owned()),
        ("impossible-date", "2030-13-45T00:00:00Z".to_owned()),
        ("date-only", "2030-01-01".to_owned()),
        ("too-far", ten_years_and_a_month),
    ];
    for (key, expires) in &expiries {
        let res = put_expiring(&mut f.integration(), ORDERS, key, &json!({"ok": true}), expires);
        assert_eq!(
            res.status,
            400,
            "expires={expires}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert_problem(&res, 400, "invalid-request");
    }
    for key in bodies.iter().map(|(k, _)| *k).chain(expiries.iter().map(|(k, _)| *k)) {
        assert_absent(&f, ORDERS, key);
    }
}

/// JSON text in Latin-1, as a legacy ERP might send it: not UTF-8, so not JSON (RFC 8259 §8.1).
const LATIN1_JSON: &[u8] = b"{\"name\":\"M\xfcller\"}";

#[test]
fn record_that_is_not_utf8_is_refused_from_a_put_and_from_the_upstream() {
    let f = start(Tuning::default());
    let res = put_raw(&mut f.integration(), &record_path(ORDERS, "latin1"), LATIN1_JSON);
    assert_problem(&res, 400, "invalid-request");
    assert_absent(&f, ORDERS, "latin1");

    f.upstream.put_raw("latin1", LATIN1_JSON);
    let res = get(&mut f.member(), &record_path(CUSTOMERS, "latin1"));
    assert_problem(&res, 502, "upstream-failed");
}

#[test]
fn record_over_max_record_bytes_is_413_and_one_at_the_limit_is_stored() {
    let f = start(Tuning::default());
    // A JSON string of exactly the limit, and one byte more.
    let at_limit = format!("\"{}\"", "x".repeat(MAX_RECORD_BYTES - 2));
    let over = format!("\"{}\"", "x".repeat(MAX_RECORD_BYTES - 1));
    let res = put_raw(&mut f.integration(), &record_path(ORDERS, "over"), over.as_bytes());
    assert_problem(&res, 413, "payload-too-large");
    let big = format!("\"{}\"", "x".repeat(64 * 1024));
    let res = put_raw(&mut f.integration(), &record_path(ORDERS, "way-over"), big.as_bytes());
    assert_problem(&res, 413, "payload-too-large");
    assert_absent(&f, ORDERS, "over");
    assert_absent(&f, ORDERS, "way-over");

    let res = put_raw(
        &mut f.integration(),
        &record_path(ORDERS, "at-limit"),
        at_limit.as_bytes(),
    );
    assert_status(&res, 201);
    let value: Value = serde_json::from_str(&at_limit).expect("JSON");
    assert_record(&get(&mut f.member(), &record_path(ORDERS, "at-limit")), &value);
}

// ---- expiry of pushed records ----

#[test]
fn put_expiry_defaults_to_now_plus_ttl_and_an_explicit_one_is_kept() {
    let f = start(Tuning::default());
    let before = OffsetDateTime::now_utc().replace_nanosecond(0).expect("whole second");
    let res = put_json(&mut f.integration(), ORDERS, "default", &json!({}));
    let after = OffsetDateTime::now_utc();
    assert_status(&res, 201);
    let expires = parse_time(&res.json()["expires"]);
    let ttl = time::Duration::minutes(15);
    assert!(
        expires >= before + ttl - time::Duration::seconds(1) && expires <= after + ttl + time::Duration::seconds(1),
        "default expiry {expires} is not about now + 15m ({before}..{after})"
    );

    let explicit = whole_seconds_from_now(3 * 86_400);
    let res = put_expiring(&mut f.integration(), ORDERS, "explicit", &json!({}), &rfc3339(explicit));
    assert_status(&res, 201);
    assert_eq!(parse_time(&res.json()["expires"]), explicit);
    // Longer than the collection's ttl: still fresh.
    let res = get(&mut f.member(), &record_path(ORDERS, "explicit"));
    assert_record(&res, &json!({}));
    let cs = cache_status(&res);
    cs.assert_fresh_hit();
    assert!(cs.ttl() > 900, "fresh until the explicit expiry: {:?}", cs.raw);
}

#[test]
fn pushed_record_past_its_expiry_is_served_as_stale_when_there_is_no_upstream() {
    let f = start(Tuning::default());
    let value = json!({"short": "lived"});
    let expires = whole_seconds_from_now(2);
    for collection in [ORDERS, QUOTES] {
        let res = put_expiring(&mut f.integration(), collection, "brief", &value, &rfc3339(expires));
        assert_status(&res, 201);
    }
    let mut member = f.member();
    cache_status(&get(&mut member, &record_path(ORDERS, "brief"))).assert_fresh_hit();
    cache_status(&get(&mut member, &record_path(QUOTES, "brief"))).assert_fresh_hit();

    while OffsetDateTime::now_utc() < expires + time::Duration::milliseconds(600) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let res = get(&mut member, &record_path(ORDERS, "brief"));
    assert_record(&res, &value);
    let cs = cache_status(&res);
    assert!(cs.has("hit") && cs.param("fwd").is_none(), "{:?}", cs.raw);
    assert_eq!(cs.param("detail"), Some("stale"), "{:?}", cs.raw);
    assert!(cs.ttl() < 0, "{:?}", cs.raw);
    // Without a stale window, an expired record is as good as absent.
    let res = get(&mut member, &record_path(QUOTES, "brief"));
    assert_problem(&res, 404, "not-found");
    let records = records_of(&multi_get(&mut member, QUOTES, &["brief"]));
    assert_eq!(records[0]["status"], json!(404), "{}", records[0]);
}
