//! The HTTP document API end to end: a real server on 127.0.0.1:0, real mutual-TLS
//! clients with device certificates from coffer's own CA, real uploads and downloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use coffer::http::ServerOptions;
use coffer::model::DocumentId;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::{Value, json};
use sha2::Digest;

use common::client::{Connection, Response, signed_head, unique_nonce};
use common::server::{
    Identity, TestServer, assert_problem, content_path, id_of, meta_path, post, sha256_hex, start_server,
    start_server_with, test_options, upload,
};
use common::{RawContents, STAGING, TestDirs, pattern, raw_documents_and_chunks, raw_len};

/// Plaintext bytes per stored chunk.
const CHUNK: usize = 65_472;
const MIB: usize = 1024 * 1024;

// ---- helpers ----

/// A member (or admin) with a registered device, and a connection as that device.
struct Caller {
    identity: Identity,
    conn: Connection,
}

fn member(server: &TestServer, name: &str) -> Caller {
    let user = server.add_member(name);
    let identity = server.issue_device(user.id);
    let conn = server.connect(&identity);
    Caller { identity, conn }
}

fn admin(server: &TestServer, name: &str) -> Caller {
    let user = server.add_admin(name);
    let identity = server.issue_device(user.id);
    let conn = server.connect(&identity);
    Caller { identity, conn }
}

fn get(conn: &mut Connection, path: &str, headers: &[(&str, &str)]) -> Response {
    conn.request("GET", path, headers, b"").expect("GET")
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

fn delete(conn: &mut Connection, id: &str) -> Response {
    conn.request("DELETE", &content_path(id), &[], b"").expect("DELETE")
}

/// One listing page: the ids in order, and the next cursor.
#[track_caller]
fn list_page(conn: &mut Connection, query: &str) -> (Vec<Value>, Option<String>) {
    let path = if query.is_empty() {
        "/v1/documents".to_owned()
    } else {
        format!("/v1/documents?{query}")
    };
    let res = get(conn, &path, &[]);
    assert_eq!(res.status, 200, "{path}: {}", String::from_utf8_lossy(&res.body));
    let body = res.json();
    let docs = body["documents"].as_array().expect("documents array").clone();
    let next = match &body["next_cursor"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("next_cursor is neither null nor a string: {other}"),
    };
    (docs, next)
}

/// Ids of the first listing page (with the default page size).
fn listed_ids(conn: &mut Connection, query: &str) -> Vec<String> {
    list_page(conn, query).0.iter().map(id_of).collect()
}

fn random_id() -> String {
    DocumentId::random().expect("random id").to_string()
}

fn timestamp(v: &Value) -> time::OffsetDateTime {
    let s = v.as_str().expect("timestamp string");
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

/// Downloads `path` piece by piece, comparing against `expected` as it goes.
#[track_caller]
fn assert_download_streamed(conn: &mut Connection, path: &str, expected: &[u8]) {
    let mut offset = 0usize;
    let mut first_mismatch = None;
    let mut hasher = sha2::Sha256::new();
    let (status, headers) = conn
        .get_streamed(path, &[], |piece| {
            hasher.update(piece);
            let end = offset + piece.len();
            if first_mismatch.is_none() {
                let want = expected.get(offset..end.min(expected.len())).unwrap_or(&[]);
                if want != piece {
                    first_mismatch = Some(offset);
                }
            }
            offset = end;
        })
        .expect("streamed download");
    assert_eq!(status, 200);
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(header("content-length"), Some(expected.len().to_string().as_str()));
    assert_eq!(offset, expected.len(), "downloaded length");
    assert_eq!(first_mismatch, None, "first differing byte offset");
    assert_eq!(common::server::hex(&hasher.finalize()), sha256_hex(expected));
}

/// Stops the server, closes the coffer, and returns what is in its database.
fn stop_and_read_raw(server: TestServer) -> (TestDirs, RawContents, u64) {
    let dirs = server.stop();
    let raw = raw_documents_and_chunks(&dirs.paths);
    let staged = raw_len(&dirs.paths, STAGING);
    (dirs, raw, staged)
}

/// Panics unless the database holds exactly the documents `ids` (and their chunks) and
/// nothing is staged.
#[track_caller]
fn assert_only_documents(raw: &RawContents, staged: u64, ids: &[&str]) {
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
    assert_eq!(staged, 0, "staging entries left in the database");
}

/// A TLS stream without the test client's framing, to send what it cannot (a chunked
/// request body).
fn raw_tls(server: &TestServer, identity: &Identity) -> StreamOwned<ClientConnection, TcpStream> {
    let name = ServerName::try_from("localhost".to_owned()).expect("server name");
    let conn = ClientConnection::new(server.client_config(Some(identity)), name).expect("client connection");
    let tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("handshake");
    }
    stream
}

/// Sends `POST /v1/documents` with a `Transfer-Encoding: chunked` body of `body`, in
/// 64 KiB chunks (stops sending if the server closes), and reads the response. Signed as
/// `identity` with the body's SHA-256, which `declare_hash` also sends (signed) in
/// `x-amz-content-sha256`; otherwise the server verifies the signature once it has read
/// the body.
fn post_chunked(
    server: &TestServer,
    identity: &Identity,
    name: &str,
    body: &[u8],
    declare_hash: bool,
) -> std::io::Result<Response> {
    let mut stream = raw_tls(server, identity);
    let hash = sha256_hex(body);
    let mut headers = vec![
        ("x-coffer-name", name),
        ("content-type", "application/octet-stream"),
        ("transfer-encoding", "chunked"),
    ];
    if declare_hash {
        headers.push(("x-amz-content-sha256", &hash));
    }
    let head = signed_head(
        identity.signer().as_ref(),
        "POST",
        "/v1/documents",
        "localhost",
        &headers,
        &hash,
    );
    stream.write_all(head.as_bytes())?;
    let mut sent_all = true;
    for piece in body.chunks(64 * 1024) {
        let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
        frame.extend_from_slice(piece);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).is_err() {
            sent_all = false; // the server answered early and closed
            break;
        }
    }
    if sent_all {
        stream.write_all(b"0\r\n\r\n")?;
    }
    let _ = stream.flush();
    read_response(&mut BufReader::new(stream))
}

/// Reads one response whose body has a Content-Length.
fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed inside the head"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("header line");
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().expect("content-length"))
        .expect("a content-length");
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Response { status, headers, body })
}

/// Options with a small upload limit.
fn small_limit(limit: usize) -> ServerOptions {
    let base = test_options();
    ServerOptions {
        limits: coffer::config::Limits {
            max_upload_bytes: limit as u64,
            ..base.limits.clone()
        },
        ..base
    }
}

// ---- uploads and downloads ----

#[track_caller]
fn assert_round_trip(conn: &mut Connection, size: usize, seed: u64) {
    let data = pattern(seed, size);
    let name = format!("doc-{size}.bin");
    let res = post(
        conn,
        &name,
        &[
            ("content-type", "application/pdf"),
            ("x-coffer-title", "Signed%20contract"),
        ],
        &data,
    );
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let doc = res.json();
    let id = id_of(&doc);
    let sha = sha256_hex(&data);
    assert_eq!(doc["size"], json!(size), "size in the 201 JSON");
    assert_eq!(doc["sha256"], json!(sha), "sha256 in the 201 JSON");
    assert_eq!(doc["name"], json!(name));
    assert_eq!(doc["title"], json!("Signed contract"));
    assert_eq!(doc["content_type"], json!("application/pdf"));
    assert_eq!(doc["visibility"], json!("private"));
    let etag = format!("\"{sha}\"");
    assert_eq!(res.header("etag"), Some(etag.as_str()), "ETag of the 201");
    let location = res.header("location").expect("Location").to_owned();
    assert_eq!(location, content_path(&id));

    let got = get(conn, &location, &[]);
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(got.header("etag"), Some(etag.as_str()));
    assert_eq!(got.header("content-type"), Some("application/pdf"));
    assert!(got.body == data, "size {size}: downloaded bytes differ");
}

#[test]
fn upload_then_download_is_byte_identical_for_empty_one_byte_and_two_chunk_documents() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    for (size, seed) in [(0, 1), (1, 2), (65_537, 3)] {
        assert_round_trip(&mut alice.conn, size, seed);
    }
}

#[test]
fn twenty_mib_streamed_upload_downloads_byte_identical() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let data = pattern(20, 20 * MIB);
    let sha = sha256_hex(&data);
    let res = alice
        .conn
        .request_streamed(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "big.bin")],
            data.len() as u64,
            &data[..],
            256 * 1024,
            &sha,
        )
        .expect("streamed upload");
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let doc = res.json();
    assert_eq!(doc["size"], json!(20 * MIB));
    assert_eq!(doc["sha256"], json!(sha));
    assert_eq!(res.header("etag"), Some(format!("\"{sha}\"").as_str()));
    let location = res.header("location").expect("Location").to_owned();
    assert_eq!(location, content_path(&id_of(&doc)));
    // A fresh connection, so the download does not depend on the upload's.
    let mut conn = server.connect(&alice.identity);
    assert_download_streamed(&mut conn, &location, &data);
}

#[test]
fn percent_encoded_name_title_and_tags_are_decoded() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let doc = upload(
        &mut alice.conn,
        "Vertrag%20M%C3%BCller%2C%20K%C3%B6ln.pdf",
        &[
            ("x-coffer-title", "Caf%C3%A9%20%E2%82%AC5"),
            ("x-coffer-tags", "caf%C3%A9, signed ,a%2Cb"),
        ],
        b"content",
    );
    assert_eq!(doc["name"], json!("Vertrag Müller, Köln.pdf"));
    assert_eq!(doc["title"], json!("Café €5"));
    assert_eq!(doc["tags"], json!(["café", "signed", "a,b"]));
    let meta = get(&mut alice.conn, &meta_path(&id_of(&doc)), &[]).json();
    assert_eq!(meta, doc, "the stored metadata is what the upload answered");
}

// ---- ranges and conditional requests ----

/// A member, a connection, and a 200,000-byte document (four chunks) uploaded by them.
fn ranged_fixture() -> (TestServer, Caller, String, Vec<u8>) {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let data = pattern(7, 200_000);
    let id = id_of(&upload(&mut alice.conn, "ranged.bin", &[], &data));
    (server, alice, id, data)
}

#[track_caller]
fn assert_partial(res: &Response, data: &[u8], start: usize, end_inclusive: usize) {
    assert_eq!(res.status, 206, "{}", String::from_utf8_lossy(&res.body));
    let want = format!("bytes {start}-{end_inclusive}/{}", data.len());
    assert_eq!(res.header("content-range"), Some(want.as_str()));
    let len = end_inclusive + 1 - start;
    assert_eq!(res.header("content-length"), Some(len.to_string().as_str()));
    assert!(
        res.body == data[start..=end_inclusive],
        "bytes {start}-{end_inclusive} differ from the upload"
    );
}

#[test]
fn range_of_the_first_bytes() {
    let (_server, mut alice, id, data) = ranged_fixture();
    let res = get(&mut alice.conn, &content_path(&id), &[("range", "bytes=0-99")]);
    assert_partial(&res, &data, 0, 99);
}

#[test]
fn range_across_chunk_boundaries() {
    let (_server, mut alice, id, data) = ranged_fixture();
    // Straddles the first boundary only.
    let (a, b) = (CHUNK - 100, CHUNK + 99);
    let res = get(
        &mut alice.conn,
        &content_path(&id),
        &[("range", &format!("bytes={a}-{b}"))],
    );
    assert_partial(&res, &data, a, b);
    // Starts inside chunk 0 and ends inside chunk 2.
    let (a, b) = (CHUNK - 1, 2 * CHUNK + 1);
    let res = get(
        &mut alice.conn,
        &content_path(&id),
        &[("range", &format!("bytes={a}-{b}"))],
    );
    assert_partial(&res, &data, a, b);
    // Exactly one whole middle chunk.
    let (a, b) = (CHUNK, 2 * CHUNK - 1);
    let res = get(
        &mut alice.conn,
        &content_path(&id),
        &[("range", &format!("bytes={a}-{b}"))],
    );
    assert_partial(&res, &data, a, b);
}

#[test]
fn suffix_range_gives_the_last_bytes() {
    let (_server, mut alice, id, data) = ranged_fixture();
    let res = get(&mut alice.conn, &content_path(&id), &[("range", "bytes=-500")]);
    assert_partial(&res, &data, data.len() - 500, data.len() - 1);
    // A suffix longer than the document is the whole document, as a 206.
    let res = get(&mut alice.conn, &content_path(&id), &[("range", "bytes=-900000")]);
    assert_partial(&res, &data, 0, data.len() - 1);
}

#[test]
fn open_ended_range_runs_to_the_end() {
    let (_server, mut alice, id, data) = ranged_fixture();
    let res = get(&mut alice.conn, &content_path(&id), &[("range", "bytes=130000-")]);
    assert_partial(&res, &data, 130_000, data.len() - 1);
    // The last byte alone.
    let last = data.len() - 1;
    let res = get(
        &mut alice.conn,
        &content_path(&id),
        &[("range", &format!("bytes={last}-"))],
    );
    assert_partial(&res, &data, last, last);
}

#[test]
fn unsatisfiable_range_is_416_with_the_size() {
    let (_server, mut alice, id, data) = ranged_fixture();
    for range in [
        format!("bytes={}-", data.len()),
        "bytes=-0".to_owned(),
        "bytes=999999-1000000".to_owned(),
    ] {
        let res = get(&mut alice.conn, &content_path(&id), &[("range", &range)]);
        assert_problem(&res, 416, "range-not-satisfiable");
        assert_eq!(
            res.header("content-range"),
            Some(format!("bytes */{}", data.len()).as_str()),
            "{range}"
        );
    }
    // The connection is still usable, and the document intact.
    let res = get(&mut alice.conn, &content_path(&id), &[]);
    assert_eq!(res.status, 200);
    assert!(res.body == data);
}

#[test]
fn if_none_match_with_the_etag_is_304() {
    let (_server, mut alice, id, data) = ranged_fixture();
    let etag = format!("\"{}\"", sha256_hex(&data));
    let res = get(&mut alice.conn, &content_path(&id), &[("if-none-match", &etag)]);
    assert_eq!(res.status, 304);
    assert!(res.body.is_empty());
    assert_eq!(res.header("etag"), Some(etag.as_str()));
    // Another tag: the content.
    let other = format!("\"{}\"", sha256_hex(b"something else"));
    let res = get(&mut alice.conn, &content_path(&id), &[("if-none-match", &other)]);
    assert_eq!(res.status, 200);
    assert!(res.body == data);
}

#[test]
fn if_range_serves_the_range_only_for_the_current_etag() {
    let (_server, mut alice, id, data) = ranged_fixture();
    let etag = format!("\"{}\"", sha256_hex(&data));
    let res = get(
        &mut alice.conn,
        &content_path(&id),
        &[("range", "bytes=10-19"), ("if-range", &etag)],
    );
    assert_partial(&res, &data, 10, 19);
    let stale = format!("\"{}\"", sha256_hex(b"an older version"));
    let res = get(
        &mut alice.conn,
        &content_path(&id),
        &[("range", "bytes=10-19"), ("if-range", &stale)],
    );
    assert_eq!(res.status, 200, "a stale If-Range gets the whole document");
    assert_eq!(res.header("content-range"), None);
    assert!(res.body == data);
}

#[test]
fn head_gives_the_headers_and_length_without_a_body() {
    let (_server, mut alice, id, data) = ranged_fixture();
    let res = alice.conn.request("HEAD", &content_path(&id), &[], b"").expect("HEAD");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-length"), Some(data.len().to_string().as_str()));
    assert_eq!(res.header("etag"), Some(format!("\"{}\"", sha256_hex(&data)).as_str()));
    assert_eq!(res.header("accept-ranges"), Some("bytes"));
    assert_eq!(res.header("content-type"), Some("application/octet-stream"));
    // Had the server sent a body after the HEAD head, the next response on this
    // keep-alive connection would start inside it.
    let next = get(&mut alice.conn, &meta_path(&id), &[]);
    assert_eq!(next.status, 200, "the response after HEAD");
    assert_eq!(next.json()["id"], json!(id));
    // A ranged HEAD announces the range's length.
    let res = alice
        .conn
        .request("HEAD", &content_path(&id), &[("range", "bytes=0-9")], b"")
        .expect("HEAD");
    assert_eq!(res.status, 206);
    assert_eq!(res.header("content-length"), Some("10"));
    assert_eq!(
        res.header("content-range"),
        Some(format!("bytes 0-9/{}", data.len()).as_str())
    );
    let next = get(&mut alice.conn, &meta_path(&id), &[]);
    assert_eq!(next.status, 200, "the response after a ranged HEAD");
}

// ---- concurrency ----

#[test]
fn sixteen_concurrent_uploads_are_all_intact() {
    let server = start_server();
    let user = server.add_member("alice");
    // Sixteen devices of one member, one upload each (as sixteen phones would).
    let devices: Vec<Identity> = (0..16).map(|_| server.issue_device(user.id)).collect();
    let barrier = std::sync::Barrier::new(16);
    let uploaded: Vec<(String, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16u64)
            .zip(&devices)
            .map(|(i, identity)| {
                let (server, barrier) = (&server, &barrier);
                s.spawn(move || {
                    let data = pattern(1000 + i, MIB + (i as usize) * 128 * 1024 + i as usize);
                    let mut conn = server.connect(identity);
                    barrier.wait();
                    let res = conn
                        .request_streamed(
                            "POST",
                            "/v1/documents",
                            &[("x-coffer-name", &format!("concurrent-{i}.bin"))],
                            data.len() as u64,
                            &data[..],
                            32 * 1024,
                            &sha256_hex(&data),
                        )
                        .expect("upload");
                    assert_eq!(res.status, 201, "upload {i}: {}", String::from_utf8_lossy(&res.body));
                    let doc = res.json();
                    assert_eq!(doc["sha256"], json!(sha256_hex(&data)), "upload {i}");
                    (id_of(&doc), data)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("upload thread")).collect()
    });
    let mut conn = server.connect(&devices[0]);
    for (id, data) in &uploaded {
        assert_download_streamed(&mut conn, &content_path(id), data);
    }
    let mut listed = listed_ids(&mut conn, "");
    let mut ids: Vec<String> = uploaded.iter().map(|(id, _)| id.clone()).collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids, "the listing holds the 16 documents, each once");
    drop(conn);
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (_dirs, raw, staged) = stop_and_read_raw(server);
    assert_only_documents(&raw, staged, &id_refs);
}

// ---- authorisation ----

#[test]
fn another_users_private_document_is_indistinguishable_from_a_missing_one() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let mut bob = member(&server, "bob");
    let data = pattern(3, 1000);
    let doc = upload(&mut alice.conn, "alice-private.pdf", &[], &data);
    let id = id_of(&doc);
    let missing = random_id();

    let patch_body = r#"{"title":"bob was here"}"#;
    type Call = fn(&mut Connection, &str, &str) -> Response;
    let calls: [(&str, Call); 5] = [
        ("GET content", |c, id, _| get(c, &content_path(id), &[])),
        ("HEAD content", |c, id, _| {
            c.request("HEAD", &content_path(id), &[], b"").expect("HEAD")
        }),
        ("GET meta", |c, id, _| get(c, &meta_path(id), &[])),
        ("PATCH meta", |c, id, body| patch(c, id, body)),
        ("DELETE", |c, id, _| delete(c, id)),
    ];
    for (what, call) in calls {
        let hidden = call(&mut bob.conn, &id, patch_body);
        let absent = call(&mut bob.conn, &missing, patch_body);
        assert_eq!(hidden.status, 404, "{what} of another user's private document");
        if what != "HEAD content" {
            assert_eq!(hidden.problem(), "not-found", "{what}");
        }
        assert_eq!(hidden.status, absent.status, "{what}: status");
        assert_eq!(hidden.body, absent.body, "{what}: body differs from a missing id's");
        for h in ["content-type", "content-length", "content-range", "etag"] {
            assert_eq!(hidden.header(h), absent.header(h), "{what}: header {h}");
        }
    }
    assert!(
        !listed_ids(&mut bob.conn, "").contains(&id),
        "bob's listing shows alice's private document"
    );
    assert!(listed_ids(&mut bob.conn, "").is_empty());
    // Nothing bob tried changed it.
    let meta = get(&mut alice.conn, &meta_path(&id), &[]);
    assert_eq!(meta.json(), doc, "alice's document changed");
    let content = get(&mut alice.conn, &content_path(&id), &[]);
    assert!(content.body == data);
}

#[test]
fn team_document_is_readable_by_another_member_who_cannot_change_it() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let mut bob = member(&server, "bob");
    let data = pattern(4, 70_000);
    let doc = upload(
        &mut alice.conn,
        "team.pdf",
        &[("x-coffer-visibility", "team"), ("x-coffer-tags", "shared")],
        &data,
    );
    let id = id_of(&doc);
    assert_eq!(doc["visibility"], json!("team"));

    let content = get(&mut bob.conn, &content_path(&id), &[]);
    assert_eq!(content.status, 200);
    assert!(content.body == data, "bob reads different bytes");
    let meta = get(&mut bob.conn, &meta_path(&id), &[]);
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json(), doc);
    assert_eq!(listed_ids(&mut bob.conn, ""), vec![id.clone()]);

    assert_problem(
        &patch(&mut bob.conn, &id, r#"{"title":"bob's now"}"#),
        403,
        "not-permitted",
    );
    assert_problem(
        &patch(&mut bob.conn, &id, r#"{"visibility":"private"}"#),
        403,
        "not-permitted",
    );
    assert_problem(&delete(&mut bob.conn, &id), 403, "not-permitted");

    let after = get(&mut alice.conn, &meta_path(&id), &[]);
    assert_eq!(after.json(), doc, "bob changed alice's team document");
    assert!(get(&mut alice.conn, &content_path(&id), &[]).body == data);
}

#[test]
fn admin_reads_and_deletes_a_members_private_document() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let mut root = admin(&server, "root");
    let data = pattern(5, 5000);
    let doc = upload(&mut alice.conn, "private.pdf", &[], &data);
    let id = id_of(&doc);

    let content = get(&mut root.conn, &content_path(&id), &[]);
    assert_eq!(content.status, 200);
    assert!(content.body == data);
    assert_eq!(get(&mut root.conn, &meta_path(&id), &[]).json(), doc);
    assert_eq!(listed_ids(&mut root.conn, ""), vec![id.clone()]);

    let res = delete(&mut root.conn, &id);
    assert_eq!(res.status, 204, "{}", String::from_utf8_lossy(&res.body));
    assert_problem(&get(&mut alice.conn, &content_path(&id), &[]), 404, "not-found");
    assert!(listed_ids(&mut alice.conn, "").is_empty());
}

#[test]
fn admin_can_change_a_members_private_document() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let mut root = admin(&server, "root");
    let id = id_of(&upload(&mut alice.conn, "private.pdf", &[], b"x"));
    let res = patch(&mut root.conn, &id, r#"{"title":"reviewed"}"#);
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(
        get(&mut alice.conn, &meta_path(&id), &[]).json()["title"],
        json!("reviewed")
    );
}

#[test]
fn integration_role_is_refused_documents() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let id = id_of(&upload(
        &mut alice.conn,
        "team.pdf",
        &[("x-coffer-visibility", "team")],
        b"team content",
    ));
    let erp = server.add_integration("erp");
    let erp_device = server.issue_device(erp.id);
    let mut conn = server.connect(&erp_device);

    assert_problem(&get(&mut conn, "/v1/documents", &[]), 403, "role-not-permitted");
    // Refused before its body is read: that connection is closed after the answer.
    let res = post(&mut server.connect(&erp_device), "erp.bin", &[], b"data");
    assert_problem(&res, 403, "role-not-permitted");
    assert_problem(&get(&mut conn, &content_path(&id), &[]), 403, "role-not-permitted");
    assert_problem(&get(&mut conn, &meta_path(&id), &[]), 403, "role-not-permitted");
    assert_problem(&patch(&mut conn, &id, r#"{"title":"x"}"#), 403, "role-not-permitted");
    assert_problem(&delete(&mut conn, &id), 403, "role-not-permitted");
    // Nothing was stored or removed.
    assert_eq!(listed_ids(&mut alice.conn, ""), vec![id]);
}

// ---- size limit ----

#[test]
fn upload_of_exactly_the_limit_is_accepted() {
    let server = start_server_with(small_limit(MIB));
    let mut alice = member(&server, "alice");
    let data = pattern(9, MIB);
    let doc = upload(&mut alice.conn, "limit.bin", &[], &data);
    assert_eq!(doc["size"], json!(MIB));
    assert!(get(&mut alice.conn, &content_path(&id_of(&doc)), &[]).body == data);
}

#[test]
fn oversized_upload_with_content_length_is_413_and_leaves_nothing() {
    let server = start_server_with(small_limit(MIB));
    let mut alice = member(&server, "alice");
    let kept = id_of(&upload(&mut alice.conn, "small.bin", &[], &pattern(1, 1000)));

    let data = pattern(10, 3 * MIB);
    let mut conn = server.connect(&alice.identity);
    let res = conn
        .request_streamed(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "too-big.bin")],
            data.len() as u64,
            &data[..],
            64 * 1024,
            &sha256_hex(&data),
        )
        .expect("an HTTP answer to the oversized upload");
    assert_problem(&res, 413, "payload-too-large");
    drop(conn);
    // One byte over is refused too.
    let mut conn = server.connect(&alice.identity);
    let res = post(&mut conn, "one-over.bin", &[], &pattern(11, MIB + 1));
    assert_problem(&res, 413, "payload-too-large");
    drop(conn);

    assert_eq!(listed_ids(&mut alice.conn, ""), vec![kept.clone()]);
    drop(alice);
    let (_dirs, raw, staged) = stop_and_read_raw(server);
    assert_only_documents(&raw, staged, &[&kept]);
}

#[test]
fn chunked_upload_within_the_limit_is_stored() {
    let server = start_server_with(small_limit(MIB));
    let mut alice = member(&server, "alice");
    let data = pattern(12, MIB);
    for (name, declare_hash) in [("chunked.bin", false), ("chunked-declared.bin", true)] {
        let res = post_chunked(&server, &alice.identity, name, &data, declare_hash).expect("response");
        assert_eq!(res.status, 201, "{name}: {}", String::from_utf8_lossy(&res.body));
        let doc = res.json();
        assert_eq!(doc["size"], json!(MIB));
        assert_eq!(doc["sha256"], json!(sha256_hex(&data)));
        assert!(get(&mut alice.conn, &content_path(&id_of(&doc)), &[]).body == data);
    }
}

#[test]
fn chunked_upload_one_byte_over_the_limit_is_413_and_leaves_nothing() {
    let server = start_server_with(small_limit(MIB));
    let mut alice = member(&server, "alice");
    let kept = id_of(&upload(&mut alice.conn, "small.bin", &[], &pattern(1, 1000)));
    for declare_hash in [false, true] {
        let res = post_chunked(
            &server,
            &alice.identity,
            "over.bin",
            &pattern(13, MIB + 1),
            declare_hash,
        )
        .expect("response");
        assert_problem(&res, 413, "payload-too-large");
    }
    assert_eq!(listed_ids(&mut alice.conn, ""), vec![kept.clone()]);
    drop(alice);
    let (_dirs, raw, staged) = stop_and_read_raw(server);
    assert_only_documents(&raw, staged, &[&kept]);
}

#[test]
fn chunked_upload_far_over_the_limit_is_413_and_leaves_nothing() {
    let server = start_server_with(small_limit(MIB));
    let mut alice = member(&server, "alice");
    let kept = id_of(&upload(&mut alice.conn, "small.bin", &[], &pattern(1, 1000)));
    for declare_hash in [false, true] {
        let res = post_chunked(
            &server,
            &alice.identity,
            "far-over.bin",
            &pattern(14, 3 * MIB),
            declare_hash,
        )
        .expect("an HTTP answer to the oversized chunked upload");
        assert_problem(&res, 413, "payload-too-large");
    }
    assert_eq!(listed_ids(&mut alice.conn, ""), vec![kept.clone()]);
    drop(alice);
    let (_dirs, raw, staged) = stop_and_read_raw(server);
    assert_only_documents(&raw, staged, &[&kept]);
}

#[test]
fn upload_cut_short_by_the_client_leaves_nothing() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let kept = id_of(&upload(&mut alice.conn, "small.bin", &[], &pattern(1, 1000)));
    {
        let mut stream = raw_tls(&server, &alice.identity);
        // Signed for the whole 2 MiB body it announces, of which it sends only a part.
        let head = signed_head(
            alice.identity.signer().as_ref(),
            "POST",
            "/v1/documents",
            "localhost",
            &[("x-coffer-name", "cut.bin"), ("content-length", "2097152")],
            &sha256_hex(&pattern(15, 2 * MIB)),
        );
        stream.write_all(head.as_bytes()).expect("head");
        stream.write_all(&pattern(15, 300 * 1024)).expect("part of the body");
        stream.flush().expect("flush");
        // Give the server time to stage a few chunks, then vanish.
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(listed_ids(&mut alice.conn, ""), vec![kept.clone()]);
    drop(alice);
    let (_dirs, raw, staged) = stop_and_read_raw(server);
    assert_only_documents(&raw, staged, &[&kept]);
}

// ---- listing ----

#[test]
fn listing_is_newest_first() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id_of(&upload(&mut alice.conn, &format!("doc-{i}"), &[], b"x")));
        std::thread::sleep(Duration::from_millis(5));
    }
    ids.reverse();
    let (docs, next) = list_page(&mut alice.conn, "");
    assert_eq!(docs.iter().map(id_of).collect::<Vec<_>>(), ids);
    assert_eq!(next, None);
    let created: Vec<_> = docs.iter().map(|d| timestamp(&d["created"])).collect();
    assert!(
        created.windows(2).all(|w| w[0] > w[1]),
        "created times not descending: {created:?}"
    );
}

#[test]
fn pagination_covers_every_visible_document_exactly_once() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let mut bob = member(&server, "bob");
    let mut visible = Vec::new();
    for i in 0..7 {
        visible.push(id_of(&upload(&mut alice.conn, &format!("a-{i}"), &[], b"a")));
        if i % 2 == 0 {
            visible.push(id_of(&upload(
                &mut bob.conn,
                &format!("b-team-{i}"),
                &[("x-coffer-visibility", "team")],
                b"b",
            )));
        } else {
            upload(&mut bob.conn, &format!("b-private-{i}"), &[], b"b");
        }
    }
    // 7 own + 4 team = 11 visible of 14: pages of 3, 3, 3, 2.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let query = match &cursor {
            None => "limit=3".to_owned(),
            Some(c) => format!("limit=3&cursor={c}"),
        };
        let (docs, next) = list_page(&mut alice.conn, &query);
        sizes.push(docs.len());
        seen.extend(docs.iter().cloned());
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(sizes, vec![3, 3, 3, 2]);
    let seen_ids: Vec<String> = seen.iter().map(id_of).collect();
    // Newest first across pages: the same order as one unpaginated listing.
    assert_eq!(seen_ids, listed_ids(&mut alice.conn, ""));
    let mut sorted = seen_ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen_ids.len(), "a document appeared twice");
    visible.sort();
    assert_eq!(sorted, visible, "pages do not hold exactly the visible documents");
}

#[test]
fn page_size_is_capped_by_max_page_size() {
    let base = test_options();
    let server = start_server_with(ServerOptions {
        limits: coffer::config::Limits {
            max_page_size: 4,
            ..base.limits.clone()
        },
        ..base
    });
    let mut alice = member(&server, "alice");
    for i in 0..6 {
        upload(&mut alice.conn, &format!("d{i}"), &[], b"x");
    }
    let (docs, next) = list_page(&mut alice.conn, "");
    assert_eq!(docs.len(), 4, "default page size");
    assert!(next.is_some());
    let (docs, _) = list_page(&mut alice.conn, "limit=100");
    assert_eq!(docs.len(), 4, "limit above the maximum");
}

#[test]
fn listing_filters_by_tag_and_name_prefix() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let inv_signed = id_of(&upload(
        &mut alice.conn,
        "invoice-1.pdf",
        &[("x-coffer-tags", "signed,2024")],
        b"1",
    ));
    let inv_draft = id_of(&upload(
        &mut alice.conn,
        "invoice-2.pdf",
        &[("x-coffer-tags", "draft")],
        b"2",
    ));
    let contract = id_of(&upload(
        &mut alice.conn,
        "contract.pdf",
        &[("x-coffer-tags", "signed,caf%C3%A9")],
        b"3",
    ));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(listed_ids(&mut alice.conn, "tag=signed")),
        sorted(vec![inv_signed.clone(), contract.clone()])
    );
    assert_eq!(listed_ids(&mut alice.conn, "tag=draft"), vec![inv_draft.clone()]);
    assert_eq!(listed_ids(&mut alice.conn, "tag=caf%C3%A9"), vec![contract.clone()]);
    assert!(listed_ids(&mut alice.conn, "tag=sign").is_empty(), "tags match whole");
    assert_eq!(
        sorted(listed_ids(&mut alice.conn, "name_prefix=invoice-")),
        sorted(vec![inv_signed.clone(), inv_draft])
    );
    assert_eq!(listed_ids(&mut alice.conn, "name_prefix=contract"), vec![contract]);
    assert_eq!(
        listed_ids(&mut alice.conn, "name_prefix=invoice&tag=signed"),
        vec![inv_signed]
    );
    assert!(listed_ids(&mut alice.conn, "name_prefix=nothing").is_empty());
}

#[test]
fn bad_listing_queries_are_invalid_request() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    for query in ["cursor=not-a-cursor", "limit=abc", "unknown=1"] {
        let res = get(&mut alice.conn, &format!("/v1/documents?{query}"), &[]);
        assert_problem(&res, 400, "invalid-request");
    }
}

// ---- metadata ----

#[test]
fn patch_meta_changes_title_tags_visibility_and_updated() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let mut bob = member(&server, "bob");
    let data = pattern(16, 3000);
    let doc = upload(&mut alice.conn, "contract.pdf", &[("x-coffer-tags", "draft")], &data);
    let id = id_of(&doc);
    assert_eq!(doc["created"], doc["updated"]);
    std::thread::sleep(Duration::from_millis(20));

    let res = patch(
        &mut alice.conn,
        &id,
        r#"{"title":"Signed contract","tags":["signed","2024"],"visibility":"team"}"#,
    );
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let changed = res.json();
    assert_eq!(changed["title"], json!("Signed contract"));
    assert_eq!(changed["tags"], json!(["signed", "2024"]));
    assert_eq!(changed["visibility"], json!("team"));
    for same in ["id", "name", "size", "sha256", "owner", "content_type", "created"] {
        assert_eq!(changed[same], doc[same], "{same} changed");
    }
    assert!(
        timestamp(&changed["updated"]) > timestamp(&doc["updated"]),
        "updated did not move: {} -> {}",
        doc["updated"],
        changed["updated"]
    );
    assert_eq!(
        get(&mut alice.conn, &meta_path(&id), &[]).json(),
        changed,
        "stored metadata"
    );
    // The visibility change is effective: bob sees it now.
    assert_eq!(get(&mut bob.conn, &meta_path(&id), &[]).json(), changed);
    // A partial patch leaves the other fields.
    let res = patch(&mut alice.conn, &id, r#"{"title":"Final"}"#);
    assert_eq!(res.status, 200);
    let partial = res.json();
    assert_eq!(partial["title"], json!("Final"));
    assert_eq!(partial["tags"], changed["tags"]);
    assert_eq!(partial["visibility"], json!("team"));
    // Back to private: bob loses it.
    assert_eq!(patch(&mut alice.conn, &id, r#"{"visibility":"private"}"#).status, 200);
    assert_problem(&get(&mut bob.conn, &meta_path(&id), &[]), 404, "not-found");
    // Content untouched.
    assert!(get(&mut alice.conn, &content_path(&id), &[]).body == data);
}

#[test]
fn bad_patch_bodies_are_invalid_request_and_change_nothing() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let doc = upload(&mut alice.conn, "contract.pdf", &[("x-coffer-tags", "draft")], b"x");
    let id = id_of(&doc);
    let long_title = format!(r#"{{"title":"{}"}}"#, "t".repeat(1025));
    for body in [
        r#"{"title":"x","owner":"00000000000000000000000000000000"}"#,
        r#"{"visibility":"public"}"#,
        r#"{"tags":"signed"}"#,
        r#"{"title":"#,
        "not json",
        r#"{"tags":["ok","bad\nline"]}"#,
        r#"{"tags":[""]}"#,
        long_title.as_str(),
    ] {
        // A fresh connection each: the server closes one whose JSON body it refused.
        let res = patch(&mut server.connect(&alice.identity), &id, body);
        assert_problem(&res, 400, "invalid-request");
    }
    // Without a JSON content type (refused before the body is read: the server closes
    // that connection after answering).
    let res = server
        .connect(&alice.identity)
        .request("PATCH", &meta_path(&id), &[], br#"{"title":"x"}"#)
        .expect("PATCH");
    assert_problem(&res, 400, "invalid-request");
    assert_eq!(
        get(&mut server.connect(&alice.identity), &meta_path(&id), &[]).json(),
        doc,
        "a bad PATCH changed the document"
    );
}

#[test]
fn upload_without_a_name_or_with_bad_headers_is_invalid_request() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let res = server
        .connect(&alice.identity)
        .request("POST", "/v1/documents", &[("x-coffer-title", "no name")], b"data")
        .expect("POST");
    assert_problem(&res, 400, "invalid-request");
    for (name, extra) in [
        ("bad-visibility.pdf", ("x-coffer-visibility", "public")),
        ("%FF%FE.pdf", ("x-coffer-title", "invalid UTF-8 name")),
        ("line%0Abreak.pdf", ("x-coffer-title", "control character")),
        ("ok.pdf", ("x-coffer-title", "%C3")),
        ("", ("x-coffer-title", "empty name")),
    ] {
        // A fresh connection each: a refused upload's connection is closed.
        let res = post(&mut server.connect(&alice.identity), name, &[extra], b"data");
        assert_problem(&res, 400, "invalid-request");
    }
    assert!(listed_ids(&mut alice.conn, "").is_empty());
    drop(alice);
    let (_dirs, raw, staged) = stop_and_read_raw(server);
    assert_only_documents(&raw, staged, &[]);
}

#[test]
fn deleted_document_is_gone() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let other = id_of(&upload(&mut alice.conn, "other.pdf", &[], b"other"));
    let id = id_of(&upload(&mut alice.conn, "doomed.pdf", &[], &pattern(17, 100_000)));
    let res = delete(&mut alice.conn, &id);
    assert_eq!(res.status, 204, "{}", String::from_utf8_lossy(&res.body));
    assert!(res.body.is_empty());
    assert_problem(&get(&mut alice.conn, &content_path(&id), &[]), 404, "not-found");
    assert_problem(&get(&mut alice.conn, &meta_path(&id), &[]), 404, "not-found");
    // The same DELETE again: a new request, not a replay of the first one (which may have
    // been signed within the same second), so it carries its own nonce.
    let nonce = unique_nonce();
    let res = alice
        .conn
        .request("DELETE", &content_path(&id), &[("x-coffer-nonce", &nonce)], b"")
        .expect("DELETE");
    assert_problem(&res, 404, "not-found");
    assert_eq!(listed_ids(&mut alice.conn, ""), vec![other.clone()]);
    drop(alice);
    let (_dirs, raw, staged) = stop_and_read_raw(server);
    assert_only_documents(&raw, staged, &[&other]);
}

#[test]
fn malformed_document_ids_are_not_found() {
    let server = start_server();
    let mut alice = member(&server, "alice");
    let id = id_of(&upload(&mut alice.conn, "doc.pdf", &[], b"x"));
    for bad in ["not-an-id", &id.to_uppercase(), &id[..31], &format!("{id}0")] {
        assert_problem(&get(&mut alice.conn, &content_path(bad), &[]), 404, "not-found");
        assert_problem(&get(&mut alice.conn, &meta_path(bad), &[]), 404, "not-found");
    }
}
