//! The HTTP hardening against misbehaving clients, end to end on a real server: transfer
//! slots (per device and overall, `429` with `Retry-After`), the body idle timeout
//! (`408`, nothing kept), connections closed after authentication failures, downloads as
//! sandboxed attachments, refused duplicate metadata headers, damaged documents hidden
//! from non-owners, and fixed-width timestamps.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::app::Vault;
use coffer::http::{RunningServer, ServerOptions};
use coffer::model::DocumentId;
use coffer::store::StoreOptions;
use rustls::ClientConfig;
use serde_json::{Value, json};

use common::client::{ClientSetup, Connection, RawStream, Response, Signer, raw_tls, read_response, signed_head};
use common::server::{
    Identity, TestServer, assert_problem, content_path, id_of, meta_path, post, sha256_hex, start_server,
    start_server_with, test_options, upload,
};
use common::{STAGING, TestDirs, flip_bit, passphrase, pattern, raw_documents_and_chunks, raw_len};

const MIB: usize = 1024 * 1024;
/// How long a test waits for the server to reach a state it cannot observe directly.
const SETTLE: Duration = Duration::from_secs(10);

// ---- helpers ----

fn options(change: impl FnOnce(&mut coffer::config::Limits)) -> ServerOptions {
    let mut o = test_options();
    change(&mut o.limits);
    o
}

fn member_device(server: &TestServer, name: &str) -> Identity {
    let user = server.add_member(name);
    server.issue_device(user.id)
}

/// Uploads on a fresh connection (a refused upload's connection may be closed) and
/// returns the answer.
fn post_fresh(server: &TestServer, who: &Identity, name: &str, body: &[u8]) -> Response {
    post(&mut server.connect(who), name, &[], body)
}

fn get(conn: &mut Connection, path: &str) -> Response {
    conn.request("GET", path, &[], b"").expect("GET")
}

fn list(conn: &mut Connection) -> Response {
    get(conn, "/v1/documents")
}

fn listed_names(conn: &mut Connection) -> Vec<String> {
    let res = list(conn);
    assert_eq!(res.status, 200, "listing: {}", String::from_utf8_lossy(&res.body));
    res.json()["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect()
}

fn listed_ids(conn: &mut Connection) -> Vec<String> {
    let res = list(conn);
    assert_eq!(res.status, 200, "listing: {}", String::from_utf8_lossy(&res.body));
    res.json()["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(id_of)
        .collect()
}

fn patch(conn: &mut Connection, id: &str, body: &str) -> Response {
    conn.request(
        "PATCH",
        &meta_path(id),
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .expect("PATCH")
}

/// A `429 too-many-transfers` with a usable `Retry-After` (delay-seconds).
#[track_caller]
fn assert_too_many(res: &Response, what: &str) {
    assert_eq!(
        res.status,
        429,
        "{what}: expected 429, got {}: {}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
    assert_problem(res, 429, "too-many-transfers");
    let retry = res
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: 429 without Retry-After"));
    let secs: u64 = retry
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After {retry:?} is not delay-seconds"));
    assert!(secs >= 1, "{what}: Retry-After {secs}");
}

/// Repeats `probe` (which must have no lasting effect) until it answers `status`, or
/// panics after [`SETTLE`]. For states the server reaches asynchronously (a request
/// whose head was sent has taken its slot).
#[track_caller]
fn wait_for_status(what: &str, status: u16, mut probe: impl FnMut() -> Response) -> Response {
    let deadline = Instant::now() + SETTLE;
    loop {
        let res = probe();
        if res.status == status {
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} after {SETTLE:?} (expected {status}): {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One keep-alive connection driven by hand, signing its requests with `signer` (if any).
struct RawConn {
    stream: BufReader<RawStream>,
    signer: Option<Signer>,
}

impl RawConn {
    fn open(config: Arc<ClientConfig>, addr: SocketAddr, signer: Option<Signer>) -> Self {
        Self {
            stream: BufReader::new(raw_tls(config, addr)),
            signer,
        }
    }

    /// A connection presenting `who`'s certificate and signing as `who`.
    fn signed(server: &TestServer, who: &Identity) -> Self {
        Self::open(server.client_config(Some(who)), server.addr(), who.signer())
    }

    /// A connection presenting `who`'s certificate without signing.
    fn unsigned(server: &TestServer, who: &Identity) -> Self {
        Self::open(server.client_config(Some(who)), server.addr(), None)
    }

    /// The head of a request without a body, signed with the connection's signer.
    fn head(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> String {
        signed_head(
            self.signer.as_ref(),
            method,
            target,
            "localhost",
            headers,
            coffer::sigv4::EMPTY_SHA256,
        )
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let s = self.stream.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    /// `GET path`, and its response.
    fn get(&mut self, path: &str) -> std::io::Result<Response> {
        let head = self.head("GET", path, &[]);
        self.send(head.as_bytes())?;
        read_response(&mut self.stream)
    }
}

/// Panics unless a request on a connection the server should have closed got no HTTP
/// response because the connection ended (not because the read timed out).
#[track_caller]
fn assert_closed(result: std::io::Result<Response>, what: &str) {
    match result {
        Ok(res) => panic!(
            "{what}: the connection stayed open and answered {} {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        ),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{what}: no answer, but the connection was not closed either (read timed out)"
        ),
    }
}

/// An upload whose head and the first part of its body were sent; the rest waits.
struct PausedUpload {
    stream: RawStream,
    rest: Vec<u8>,
}

impl PausedUpload {
    /// Sends the head of `POST /v1/documents` for `body` with its full Content-Length,
    /// signed as `who` with the whole body's SHA-256 (verified once the body is read), and
    /// the first `sent` bytes.
    fn start(server: &TestServer, who: &Identity, name: &str, body: &[u8], sent: usize) -> Self {
        let mut stream = raw_tls(server.client_config(Some(who)), server.addr());
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
        read_response(&mut BufReader::new(self.stream)).expect("answer to the finished upload")
    }
}

/// Stops the server, closes the coffer, and checks the database holds exactly the
/// documents `ids` (with only their chunks) and nothing staged.
#[track_caller]
fn assert_database_holds_only(server: TestServer, ids: &[&str]) -> TestDirs {
    let dirs = server.stop();
    let raw = raw_documents_and_chunks(&dirs.paths);
    let mut want: Vec<u128> = ids
        .iter()
        .map(|s| s.parse::<DocumentId>().expect("document id").0)
        .collect();
    want.sort_unstable();
    let have: Vec<u128> = raw.documents.iter().map(|(id, _)| *id).collect();
    assert_eq!(have, want, "document records in the database");
    for ((doc, index), _) in &raw.chunks {
        assert!(
            want.contains(doc),
            "chunk {index} of {doc:032x} belongs to no published document"
        );
    }
    assert_eq!(raw_len(&dirs.paths, STAGING), 0, "staging entries left in the database");
    dirs
}

// ---- 1. transfer slots ----

#[test]
fn a_device_at_its_transfer_limit_gets_429_until_one_ends_and_other_devices_go_on() {
    let server = start_server_with(options(|l| l.max_transfers_per_device = 2));
    let user = server.add_member("alice");
    let phone = server.issue_device(user.id);
    // Another device of the same user: the limit is per device.
    let tablet = server.issue_device(user.id);
    let mut phone_conn = server.connect(&phone);
    let kept = id_of(&upload(&mut phone_conn, "kept.bin", &[], &pattern(1, 1000)));

    let first_body = pattern(2, 200_000);
    let first = PausedUpload::start(&server, &phone, "first.bin", &first_body, 100_000);
    let second = PausedUpload::start(&server, &phone, "second.bin", &pattern(3, 200_000), 100_000);
    // Once both uploads hold their slots, even a listing is refused.
    let res = wait_for_status("phone listing while two uploads run", 429, || list(&mut phone_conn));
    assert_too_many(&res, "phone listing");

    let res = post_fresh(&server, &phone, "third.bin", b"third upload");
    assert_too_many(&res, "third upload of the phone");
    let res = get(&mut phone_conn, &content_path(&kept));
    assert_too_many(&res, "download by the phone");

    // The other device is not affected.
    let mut tablet_conn = server.connect(&tablet);
    let tablet_doc = id_of(&upload(&mut tablet_conn, "tablet.bin", &[], b"from the tablet"));
    let res = get(&mut tablet_conn, &content_path(&kept));
    assert_eq!(res.status, 200, "download by the tablet");
    assert!(res.body == pattern(1, 1000));

    // One upload ends: the phone may transfer again (the slot is back before the 201).
    let res = first.finish();
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let first_doc = res.json();
    assert_eq!(first_doc["sha256"], json!(sha256_hex(&first_body)));
    let again = id_of(&upload(&mut server.connect(&phone), "again.bin", &[], b"again"));
    let res = get(&mut phone_conn, &content_path(&kept));
    assert_eq!(
        res.status,
        200,
        "download after an upload ended: {}",
        String::from_utf8_lossy(&res.body)
    );

    // The refused upload left nothing.
    let mut names = listed_names(&mut tablet_conn);
    names.sort();
    assert_eq!(names, ["again.bin", "first.bin", "kept.bin", "tablet.bin"]);
    drop(second); // abandoned: discarded
    drop((phone_conn, tablet_conn));
    assert_database_holds_only(server, &[&kept, &tablet_doc, &id_of(&first_doc), &again]);
}

/// Sends `GET path` and waits until the answer begins (a `200`: the download holds its
/// transfer slots), leaving the response unread so the server cannot hand the whole
/// document over. (Without the wait, a request sent right after it could take the slots
/// first and the download would be refused.)
fn start_held_download(server: &TestServer, who: &Identity, path: &str) -> BufReader<RawStream> {
    let mut stream = raw_tls(server.client_config(Some(who)), server.addr());
    let head = signed_head(
        who.signer().as_ref(),
        "GET",
        path,
        "localhost",
        &[],
        coffer::sigv4::EMPTY_SHA256,
    );
    stream.write_all(head.as_bytes()).expect("download request");
    stream.flush().expect("flush");
    let mut reader = BufReader::with_capacity(1024, stream);
    // Peeked, not consumed: the caller may still read the whole response.
    let start = reader.fill_buf().expect("the start of the download");
    assert!(
        start.starts_with(b"HTTP/1.1 200 "),
        "the download did not start: {}",
        String::from_utf8_lossy(start)
    );
    reader
}

#[test]
fn overall_upload_and_download_caps_hold_across_devices() {
    // One slot each overall, and one per device: a device's own listing answering 429 is
    // the sign that its transfer has taken its slots.
    let server = start_server_with(options(|l| {
        l.max_uploads = 1;
        l.max_downloads = 1;
        l.max_transfers_per_device = 1;
    }));
    let alice = member_device(&server, "alice");
    let bob = member_device(&server, "bob");
    let mut alice_conn = server.connect(&alice);
    let mut bob_conn = server.connect(&bob);
    // Large enough that socket and TLS buffers cannot take all of it while alice does not
    // read (on loopback here, 2 MiB fit in them and 4 MiB did not).
    let big = pattern(4, 24 * MIB);
    let big_id = id_of(&upload(&mut alice_conn, "big.bin", &[], &big));
    let small_id = id_of(&upload(&mut bob_conn, "small.bin", &[], b"small"));

    // Uploads: alice's paused upload holds the only upload slot.
    let paused = PausedUpload::start(&server, &alice, "paused.bin", &pattern(5, 100_000), 50_000);
    wait_for_status("alice's listing while her upload runs", 429, || list(&mut alice_conn));
    let res = post_fresh(&server, &bob, "refused.bin", b"no upload slot");
    assert_too_many(&res, "bob's upload while alice's runs");
    // Downloads and listings have their own slots.
    assert_eq!(list(&mut bob_conn).status, 200, "bob's listing while alice uploads");
    assert_eq!(get(&mut bob_conn, &content_path(&small_id)).status, 200);
    let res = paused.finish();
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let paused_id = id_of(&res.json());
    let later = id_of(&upload(&mut server.connect(&bob), "later.bin", &[], b"slot is free"));

    // Downloads: alice's unread download holds the only download slot.
    let mut held = start_held_download(&server, &alice, &content_path(&big_id));
    wait_for_status("alice's listing while her download runs", 429, || list(&mut alice_conn));
    assert_too_many(&list(&mut bob_conn), "bob's listing while alice downloads");
    assert_too_many(
        &get(&mut bob_conn, &content_path(&small_id)),
        "bob's download while alice downloads",
    );
    // Uploads have their own slots.
    let during = id_of(&upload(
        &mut server.connect(&bob),
        "during.bin",
        &[],
        b"upload slot free",
    ));
    // Alice reads her download through: it is intact, and the slot comes back.
    let res = read_response(&mut held).expect("the held download");
    assert_eq!(res.status, 200);
    assert!(res.body == big, "the held download differs from the upload");
    drop(held);
    wait_for_status("bob's listing after alice's download", 200, || list(&mut bob_conn));
    assert_eq!(get(&mut bob_conn, &content_path(&small_id)).status, 200);

    let mut names = listed_names(&mut bob_conn);
    names.sort();
    assert_eq!(names, ["during.bin", "later.bin", "small.bin"], "bob's documents");
    drop((alice_conn, bob_conn));
    assert_database_holds_only(server, &[&big_id, &small_id, &paused_id, &later, &during]);
}

// ---- 2. body idle timeout ----

#[test]
fn a_stalled_upload_body_is_408_the_connection_closed_and_nothing_kept() {
    let server = start_server_with(options(|l| l.body_idle_timeout_secs = 1));
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    let kept = id_of(&upload(&mut conn, "kept.bin", &[], b"kept"));

    // Half of a 200,000-byte body: more than one chunk is staged before the stall.
    let body = pattern(6, 200_000);
    let paused = PausedUpload::start(&server, &alice, "stalled.bin", &body, 100_000);
    let started = Instant::now();
    let mut reader = BufReader::new(paused.stream);
    let res = read_response(&mut reader).expect("an answer to the stalled upload");
    assert_problem(&res, 408, "request-timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "408 after {:?}, before the 1 s idle timeout",
        started.elapsed()
    );
    // The connection is closed: the rest of the body is not taken as a new request.
    let s = reader.get_mut();
    let sent = s.write_all(&body[100_000..]).and_then(|()| s.flush());
    if sent.is_ok() {
        let mut rest = Vec::new();
        match reader.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "more bytes after the 408: {}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "the connection stayed open after the 408"
            ),
        }
    }

    // On a new connection: the first one has idled past the watchdog (twice the 1 s idle
    // timeout) while the stalled upload was waited for.
    drop(conn);
    assert_eq!(listed_ids(&mut server.connect(&alice)), vec![kept.clone()]);
    assert_database_holds_only(server, &[&kept]);
}

// ---- 3. authentication failures close the connection ----

#[test]
fn a_revoked_device_is_cut_off_after_the_401() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = RawConn::signed(&server, &alice);
    assert_eq!(conn.get("/v1/documents").expect("listing").status, 200);
    server.vault().revoke_device(alice.device_id()).expect("revoke");
    let res = conn.get("/v1/documents").expect("the 401");
    assert_problem(&res, 401, "device-revoked");
    assert_closed(conn.get("/v1/documents"), "second request after device-revoked");
}

#[test]
fn unknown_devices_and_disabled_owners_are_cut_off_too() {
    let server = start_server();
    let stranger = server.unregistered_certificate();
    let mut conn = RawConn::unsigned(&server, &stranger);
    assert_problem(&conn.get("/v1/documents").expect("the 401"), 401, "device-unknown");
    assert_closed(conn.get("/v1/documents"), "second request after device-unknown");

    let user = server.add_member("alice");
    let alice = server.issue_device(user.id);
    server
        .vault()
        .update_user(user.id, |b| b.disabled = true)
        .expect("disable");
    let mut conn = RawConn::signed(&server, &alice);
    assert_problem(&conn.get("/v1/documents").expect("the 403"), 403, "user-disabled");
    assert_closed(conn.get("/v1/documents"), "second request after user-disabled");
}

#[test]
fn success_and_not_found_keep_the_connection_open() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = RawConn::signed(&server, &alice);
    assert_eq!(conn.get("/v1/documents").expect("listing").status, 200);
    let missing = DocumentId::random().expect("id").to_string();
    assert_problem(&conn.get(&content_path(&missing)).expect("404"), 404, "not-found");
    assert_problem(&conn.get("/v1/nothing-here").expect("404"), 404, "not-found");
    let res = conn.get("/v1/documents").expect("a request after the 404s");
    assert_eq!(res.status, 200);
}

// ---- 4. downloads are sandboxed attachments ----

#[track_caller]
fn assert_attachment_headers(res: &Response, disposition: &str, what: &str) {
    assert_eq!(res.header("content-disposition"), Some(disposition), "{what}");
    assert_eq!(
        res.header("content-security-policy"),
        Some("sandbox; default-src 'none'"),
        "{what}"
    );
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"), "{what}");
}

#[test]
fn downloads_are_sandboxed_attachments_with_an_encoded_file_name() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    let html = b"<html><script>fetch('/v1/documents')</script></html>";
    let cases = [
        // (as sent in X-Coffer-Name, the decoded name, the expected Content-Disposition)
        (
            "Vertrag%20M%C3%BCller.pdf",
            "Vertrag Müller.pdf",
            "attachment; filename*=UTF-8''Vertrag%20M%C3%BCller.pdf",
        ),
        // Quotes, semicolons and apostrophes cannot end the parameter or add another.
        (
            "evil%22%3B%20filename%3D%27x.html",
            "evil\"; filename='x.html",
            "attachment; filename*=UTF-8''evil%22%3B%20filename%3D%27x.html",
        ),
    ];
    for (sent, name, disposition) in cases {
        let doc = upload(&mut conn, sent, &[("content-type", "text/html")], html);
        assert_eq!(doc["name"], json!(name));
        let path = content_path(&id_of(&doc));
        let res = get(&mut conn, &path);
        assert_eq!(res.status, 200);
        assert!(res.body == html);
        assert_eq!(
            res.header("content-type"),
            Some("text/html"),
            "the type is kept as uploaded"
        );
        assert_attachment_headers(&res, disposition, "GET");
        // The encoded name decodes back to the stored one.
        let encoded = disposition.rsplit("''").next().expect("encoded name");
        assert_eq!(
            percent_encoding::percent_decode_str(encoded)
                .decode_utf8()
                .expect("UTF-8"),
            name
        );
        let res = conn
            .request("GET", &path, &[("range", "bytes=0-5")], b"")
            .expect("ranged GET");
        assert_eq!(res.status, 206);
        assert_attachment_headers(&res, disposition, "ranged GET");
        let res = conn.request("HEAD", &path, &[], b"").expect("HEAD");
        assert_eq!(res.status, 200);
        assert_attachment_headers(&res, disposition, "HEAD");
    }
}

// ---- 5. duplicate metadata headers ----

#[test]
fn repeated_metadata_headers_are_refused_and_nothing_is_stored() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    // The same headers once each are fine.
    let kept = upload(
        &mut conn,
        "single.pdf",
        &[
            ("x-coffer-visibility", "team"),
            ("content-type", "text/plain"),
            ("x-coffer-title", "once"),
            ("x-coffer-tags", "a,b"),
        ],
        b"single",
    );
    assert_eq!(kept["visibility"], json!("team"));
    let cases: [(&str, &[(&str, &str)]); 5] = [
        (
            "visibility",
            &[
                ("x-coffer-name", "v.pdf"),
                ("x-coffer-visibility", "private"),
                ("x-coffer-visibility", "team"),
            ],
        ),
        (
            "content type",
            &[
                ("x-coffer-name", "c.pdf"),
                ("content-type", "application/pdf"),
                ("content-type", "text/html"),
            ],
        ),
        (
            "name",
            &[("x-coffer-name", "harmless.pdf"), ("x-coffer-name", "other.html")],
        ),
        (
            "title",
            &[
                ("x-coffer-name", "t.pdf"),
                ("x-coffer-title", "one"),
                ("x-coffer-title", "two"),
            ],
        ),
        (
            "tags",
            &[
                ("x-coffer-name", "g.pdf"),
                ("x-coffer-tags", "a"),
                ("x-coffer-tags", "b"),
            ],
        ),
    ];
    for (what, headers) in cases {
        let res = server
            .connect(&alice)
            .request("POST", "/v1/documents", headers, b"duplicated")
            .expect("POST");
        assert_eq!(
            res.status,
            400,
            "repeated {what}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert_problem(&res, 400, "invalid-request");
    }
    assert_eq!(listed_ids(&mut conn), vec![id_of(&kept)]);
    drop(conn);
    assert_database_holds_only(server, &[&id_of(&kept)]);
}

// ---- 6. damaged documents ----

/// A server on an existing coffer's directories; stopped when dropped.
struct Restarted {
    server: Option<RunningServer>,
    vault: Option<Arc<Vault>>,
    addr: SocketAddr,
    ca_pem: String,
}

impl Restarted {
    fn start(dirs: &TestDirs, ca_pem: &str) -> Self {
        let (vault, _) = Vault::open(&dirs.paths, &passphrase(), StoreOptions::default()).expect("reopen the vault");
        let vault = Arc::new(vault);
        let server = coffer::http::start(vault.clone(), test_options()).expect("restart the server");
        // Requests signed in the second the server started are refused.
        while time::OffsetDateTime::now_utc().unix_timestamp() < server.signatures_from() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            addr: server.addr(),
            server: Some(server),
            vault: Some(vault),
            ca_pem: ca_pem.to_owned(),
        }
    }

    /// Stops the server and waits until the vault is closed (so the file can be opened raw).
    fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().expect("stop the server");
        }
        let mut vault = self.vault.take().expect("the vault");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Arc::try_unwrap(vault) {
                Ok(v) => break drop(v),
                Err(shared) => {
                    assert!(
                        Instant::now() < deadline,
                        "the vault is still referenced after the stop"
                    );
                    vault = shared;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn connect(&self, who: &Identity) -> Connection {
        let config = ClientSetup::new(&self.ca_pem, Some((&who.cert_pem, &who.key_pem))).build();
        let mut conn = Connection::open(config, self.addr, "localhost").expect("TLS connection");
        conn.set_signer(who.signer());
        conn
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}

/// The response without its `date` header, to compare answers byte for byte.
fn comparable(res: &Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    // Every answer has its own date and request id.
    let headers = res
        .headers
        .iter()
        .filter(|(n, _)| n != "date" && n != "x-request-id")
        .cloned()
        .collect();
    (res.status, headers, res.body.clone())
}

#[test]
fn a_damaged_document_is_not_found_to_other_members_and_an_integrity_error_to_owner_and_admin() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let bob = member_device(&server, "bob");
    let root_user = server.add_admin("root");
    let root = server.issue_device(root_user.id);
    let mut conn = server.connect(&alice);
    let team = [("x-coffer-visibility", "team")];
    let damaged = id_of(&upload(&mut conn, "damaged.pdf", &team, &pattern(7, 5000)));
    let intact = id_of(&upload(&mut conn, "intact.pdf", &team, b"intact"));
    // Before the damage bob reads it like any team document.
    assert_eq!(get(&mut server.connect(&bob), &meta_path(&damaged)).status, 200);
    drop(conn);
    let ca_pem = server.ca_pem.clone();
    let dirs = server.stop();
    let id: DocumentId = damaged.parse().expect("id");
    common::tamper_document_record(&dirs.paths, id, |doc| {
        let i = doc.sealed_meta.len() / 2;
        flip_bit(&mut doc.sealed_meta, i, 2);
    });

    let server = Restarted::start(&dirs, &ca_pem);
    let missing = DocumentId::random().expect("id").to_string();
    type Call = fn(&mut Connection, &str) -> Response;
    let calls: [(&str, Call); 4] = [
        ("GET content", |c, id| get(c, &content_path(id))),
        ("GET meta", |c, id| get(c, &meta_path(id))),
        ("PATCH meta", |c, id| patch(c, id, r#"{"title":"changed"}"#)),
        ("DELETE", |c, id| {
            c.request("DELETE", &content_path(id), &[], b"").expect("DELETE")
        }),
    ];
    let mut bob_conn = server.connect(&bob);
    for (what, call) in calls {
        let hidden = call(&mut bob_conn, &damaged);
        assert_problem(&hidden, 404, "not-found");
        let absent = call(&mut bob_conn, &missing);
        assert_eq!(
            comparable(&hidden),
            comparable(&absent),
            "{what}: bob's answer for the damaged document differs from a missing id's"
        );
    }
    for (who, identity) in [("owner", &alice), ("admin", &root)] {
        let mut c = server.connect(identity);
        for (what, call) in &calls[..3] {
            let res = call(&mut c, &damaged);
            assert_eq!(
                res.status,
                500,
                "{what} by the {who}: {}",
                String::from_utf8_lossy(&res.body)
            );
            assert_problem(&res, 500, "integrity-error");
        }
    }
    // Listings still work for everyone and leave it out.
    for (who, identity) in [("bob", &bob), ("alice", &alice), ("admin", &root)] {
        let ids = listed_ids(&mut server.connect(identity));
        assert_eq!(ids, vec![intact.clone()], "{who}'s listing");
    }
    // Nothing was deleted or changed by the attempts.
    server.stop();
    let raw = raw_documents_and_chunks(&dirs.paths);
    let mut want = vec![id.0, intact.parse::<DocumentId>().expect("id").0];
    want.sort_unstable();
    assert_eq!(raw.documents.iter().map(|(d, _)| *d).collect::<Vec<_>>(), want);
}

// ---- 7. timestamps ----

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, exactly; returns the milliseconds.
#[track_caller]
fn assert_fixed_width(v: &Value, what: &str) -> u32 {
    let s = v.as_str().unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    let b = s.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    let ok = b.len() == 24
        && digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    assert!(ok, "{what}: {s:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{what}: {s:?} is not RFC 3339: {e}"));
    s[20..23].parse().expect("milliseconds")
}

#[test]
fn timestamps_always_have_three_fractional_digits() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    // A formatter that trims trailing zeros only shows on milliseconds ending in 0, so
    // upload until such a time has been seen (about one in ten).
    let mut seen_trailing_zero = false;
    let mut last = String::new();
    for i in 0..400 {
        let doc = upload(&mut conn, &format!("t{i}"), &[], b"t");
        for field in ["created", "updated"] {
            let ms = assert_fixed_width(&doc[field], &format!("{field} of upload {i}"));
            seen_trailing_zero |= ms.is_multiple_of(10);
        }
        last = id_of(&doc);
        if seen_trailing_zero && i >= 10 {
            break;
        }
    }
    assert!(seen_trailing_zero, "no timestamp with a trailing zero in 400 uploads");
    let meta = get(&mut conn, &meta_path(&last)).json();
    assert_fixed_width(&meta["created"], "meta created");
    let patched = patch(&mut conn, &last, r#"{"title":"x"}"#).json();
    assert_fixed_width(&patched["updated"], "patched updated");
    let listing = list(&mut conn).json();
    for d in listing["documents"].as_array().expect("documents") {
        assert_fixed_width(&d["created"], "listed created");
        assert_fixed_width(&d["updated"], "listed updated");
    }
}

// ---- 9. the connection watchdog ----

/// Waits until the server closes `stream` (EOF or reset), for at most `within`.
#[track_caller]
fn assert_closed_within(stream: &mut RawStream, within: Duration, what: &str) {
    stream.sock.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            // Whatever was in flight (the rest of a download) is not an answer to the stall.
            Ok(_) if started.elapsed() < within => continue,
            Ok(_) => panic!("{what}: the server kept sending past {within:?}"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the connection was still open after {within:?}")
            }
            Err(_) => return, // reset: closed
        }
    }
}

#[test]
fn a_second_request_left_unfinished_on_a_kept_alive_connection_is_cut() {
    // The watchdog waits at least the header timeout + 2 s: keep both short.
    let server = start_server_with(options(|l| {
        l.body_idle_timeout_secs = 1;
        l.header_timeout_secs = 1;
    }));
    let alice = member_device(&server, "alice");
    let mut conn = RawConn::signed(&server, &alice);
    assert_eq!(conn.get("/v1/documents").expect("listing").status, 200);
    // actix times out only the first request's headers: this one it would wait for forever.
    conn.send(b"GET /v1/docu").expect("partial request");
    assert_closed_within(
        conn.stream.get_mut(),
        Duration::from_secs(6),
        "a half-sent second request",
    );
}

#[test]
fn a_json_body_left_unfinished_is_cut() {
    let server = start_server_with(options(|l| l.body_idle_timeout_secs = 1));
    let alice = member_device(&server, "alice");
    let mut c = server.connect(&alice);
    let id = id_of(&upload(&mut c, "doc.txt", &[], b"x"));
    let mut stream = raw_tls(server.client_config(Some(&alice)), server.addr());
    // Signed for the 100-byte body it announces, of which it sends only the first byte.
    let body = format!("{{\"title\":\"{}\"}}", "t".repeat(100 - 12));
    assert_eq!(body.len(), 100);
    let head = signed_head(
        alice.signer().as_ref(),
        "PATCH",
        &meta_path(&id),
        "localhost",
        &[("content-type", "application/json"), ("content-length", "100")],
        &sha256_hex(body.as_bytes()),
    );
    stream.write_all(head.as_bytes()).expect("PATCH head");
    stream.write_all(&body.as_bytes()[..1]).expect("partial PATCH");
    stream.flush().expect("flush");
    assert_closed_within(&mut stream, Duration::from_secs(6), "an unfinished JSON body");
    // The document is unchanged.
    assert_eq!(get(&mut server.connect(&alice), &meta_path(&id)).json()["title"], "");
}

#[test]
fn a_download_the_client_stops_reading_is_cut_and_gives_its_slot_back() {
    let server = start_server_with(options(|l| {
        l.body_idle_timeout_secs = 1;
        l.header_timeout_secs = 1;
        l.max_transfers_per_device = 1;
    }));
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    let big_id = id_of(&upload(&mut conn, "big.bin", &[], &pattern(6, 24 * MIB)));
    let held = start_held_download(&server, &alice, &content_path(&big_id));
    wait_for_status("alice's listing while her unread download holds the slot", 429, || {
        list(&mut conn)
    });
    // Not reading at all: within twice the idle timeout (plus a sweep) the server gives up.
    wait_for_status("alice's listing after the stalled download was cut", 200, || {
        std::thread::sleep(Duration::from_millis(200));
        list(&mut server.connect(&alice))
    });
    drop(held);
}

#[test]
fn unknown_paths_and_methods_authenticate_first() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    // Unsigned, a path that does not exist or a method a path does not take gets the 401
    // (not a 404 or 405), and the connection ends.
    let mut conn = RawConn::unsigned(&server, &alice);
    assert_problem(&conn.get("/nope").expect("the 401"), 401, "signature-required");
    assert_closed(conn.get("/nope"), "after an unsigned request to an unknown path");
    let mut conn = RawConn::unsigned(&server, &alice);
    conn.send(b"PUT /v1/documents HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
        .expect("wrong method");
    let res = read_response(&mut conn.stream).expect("the 401");
    assert_problem(&res, 401, "signature-required");
    assert_closed(conn.get("/nope"), "after an unsigned request with a wrong method");
    // Authenticated, they are a 404 and a 405.
    let mut conn = RawConn::signed(&server, &alice);
    let res = conn.get("/nope").expect("unknown path");
    assert_problem(&res, 404, "not-found");
    let head = conn.head("PUT", "/v1/documents", &[("content-length", "0")]);
    conn.send(head.as_bytes()).expect("wrong method");
    let res = read_response(&mut conn.stream).expect("the 405");
    assert_problem(&res, 405, "method-not-allowed");
    server.vault().revoke_device(alice.device_id()).expect("revoke");
    // A revoked device knocking on a path that does not exist still gets its 401, and the
    // connection ends.
    let res = conn.get("/nope").expect("the 401");
    assert_problem(&res, 401, "device-revoked");
    assert_closed(conn.get("/nope"), "after a 401 on an unknown path");
    let mut conn = RawConn::signed(&server, &alice);
    let head = conn.head("PUT", "/v1/documents", &[("content-length", "0")]);
    conn.send(head.as_bytes()).expect("wrong method");
    let res = read_response(&mut conn.stream).expect("the 401");
    assert_problem(&res, 401, "device-revoked");
}

#[test]
fn an_oversized_json_body_is_413() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut c = server.connect(&alice);
    let id = id_of(&upload(&mut c, "doc.txt", &[], b"x"));
    let title = "t".repeat(70 * 1024);
    let res = patch(&mut server.connect(&alice), &id, &format!("{{\"title\":\"{title}\"}}"));
    assert_problem(&res, 413, "payload-too-large");
    assert_eq!(get(&mut server.connect(&alice), &meta_path(&id)).json()["title"], "");
}
