//! SigV4 request signatures against a real server, signed by an independent implementation
//! (the `aws-sigv4` crate, as AWS SDKs sign) and sent byte for byte over an unsigned test
//! connection: accepted requests, every changed byte refused, the clock window, the scope
//! and header policy, replays of writes, requests older than the server, access keys of
//! other devices, and the per-device failure budget.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufReader, Write};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use coffer::config::AuthConfig;
use coffer::http::ServerOptions;

use common::client::{Response, raw_tls, read_response};
use common::server::{
    Identity, TestServer, assert_problem, assert_status, id_of, meta_path, start_server, start_server_with,
    test_options, upload,
};

// ---- an independent signer, and requests sent exactly as built ----

/// A request as it goes on the wire (the head is written in this order, `host: localhost`
/// first, `content-length` last when the request has a body).
#[derive(Clone, Debug)]
struct Wire {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nhost: localhost\r\n", self.method, self.target);
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if !(self.body.is_empty() && matches!(self.method.as_str(), "GET" | "HEAD" | "DELETE")) {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// Sends these exact bytes on a new connection presenting `who`'s certificate.
    fn send(&self, server: &TestServer, who: &Identity) -> Response {
        let mut stream = raw_tls(server.client_config(Some(who)), server.addr());
        stream.write_all(&self.bytes()).expect("send the request");
        stream.flush().expect("flush");
        read_response(&mut BufReader::new(stream)).expect("a response")
    }

    /// The value of header `name`.
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    /// A copy with header `name` set to `value` (added if absent).
    fn with_header(&self, name: &str, value: &str) -> Self {
        let mut out = self.clone();
        match out.headers.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(slot) => slot.1 = value.to_owned(),
            None => out.headers.push((name.to_owned(), value.to_owned())),
        }
        out
    }

    /// A copy without header `name`.
    fn without_header(&self, name: &str) -> Self {
        let mut out = self.clone();
        out.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        out
    }

    /// A copy with the request target changed.
    fn with_target(&self, target: &str) -> Self {
        Self {
            target: target.to_owned(),
            ..self.clone()
        }
    }

    /// A copy with the body changed.
    fn with_body(&self, body: &[u8]) -> Self {
        Self {
            body: body.to_vec(),
            ..self.clone()
        }
    }
}

/// `s` with its byte at `at` replaced by the next character (`a` → `b`, `9` → `0`, `f` →
/// `0`), which keeps hex ids hex and the length unchanged.
fn bump(s: &str, at: usize) -> String {
    let mut bytes = s.as_bytes().to_vec();
    bytes[at] = match bytes[at] {
        b'9' => b'0',
        b'f' => b'0',
        b'z' => b'a',
        b => b + 1,
    };
    String::from_utf8(bytes).expect("ASCII")
}

/// The `x-amz-date` one second after `amz_date`.
fn one_second_later(amz_date: &str) -> String {
    let t = coffer::sigv4::parse_amz_date(amz_date).expect("x-amz-date");
    coffer::sigv4::amz_date(t + time::Duration::seconds(1))
}

/// How the `aws-sigv4` crate is asked to sign.
#[derive(Clone, Debug)]
struct Aws {
    access_key: String,
    secret: String,
    token: Option<String>,
    region: String,
    service: String,
    time: SystemTime,
    /// Send (and sign) `x-amz-content-sha256`.
    declare_sha256: bool,
    /// Send the session token without signing it.
    token_unsigned: bool,
}

impl Aws {
    /// The device's credentials and its owner's session token, signing now.
    fn of(who: &Identity) -> Self {
        Self {
            access_key: who.device_id().to_string(),
            secret: who.secret.clone().expect("signing secret"),
            token: who.token.clone(),
            region: "local".to_owned(),
            service: "coffer".to_owned(),
            time: SystemTime::now(),
            declare_sha256: false,
            token_unsigned: false,
        }
    }

    fn at(self, time: SystemTime) -> Self {
        Self { time, ..self }
    }

    fn declaring_sha256(self) -> Self {
        Self {
            declare_sha256: true,
            ..self
        }
    }

    /// Signs `method target` with `headers` (all signed, with `host: localhost`) and `body`.
    fn sign(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Wire {
        let identity = Credentials::new(
            self.access_key.clone(),
            self.secret.clone(),
            self.token.clone(),
            None,
            "test",
        )
        .into();
        let mut settings = SigningSettings::default();
        if self.declare_sha256 {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        if self.token_unsigned {
            settings.session_token_mode = SessionTokenMode::Exclude;
        }
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.time)
            .settings(settings)
            .build()
            .expect("signing params")
            .into();
        let mut signed: Vec<(&str, &str)> = vec![("host", "localhost")];
        signed.extend_from_slice(headers);
        let uri = format!("https://localhost{target}");
        let request = SignableRequest::new(method, uri, signed.iter().copied(), SignableBody::Bytes(body))
            .expect("signable request");
        let (instructions, _signature) = sign(request, &params).expect("sign").into_parts();
        let mut out: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        for (n, v) in instructions.headers() {
            out.push((n.to_owned(), v.to_owned()));
        }
        Wire {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: out,
            body: body.to_vec(),
        }
    }
}

/// Signs with coffer's own SigV4 primitives, with every part chosen by the test: the
/// `x-amz-date`, the credential scope's date, region and service, and the signed headers.
/// The signature is correct for what it claims, so only the policy can refuse it.
#[allow(clippy::too_many_arguments)]
fn hand_signed(
    who: &Identity,
    method: &str,
    target: &str,
    amz_date: &str,
    scope_date: &str,
    signed_headers: &[&str],
    with_token: bool,
) -> Wire {
    use coffer::sigv4;
    let mut headers: Vec<(String, String)> = vec![("x-amz-date".to_owned(), amz_date.to_owned())];
    if with_token {
        headers.push((
            "x-amz-security-token".to_owned(),
            who.token.clone().expect("a session token"),
        ));
    }
    let mut all: Vec<(&str, &[u8])> = vec![("host", b"localhost")];
    all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = sigv4::Request {
        method,
        path,
        query,
        headers: all,
    };
    let names: Vec<String> = signed_headers.iter().map(|s| (*s).to_owned()).collect();
    let canonical = sigv4::canonical_request(&request, &names, sigv4::EMPTY_SHA256, sigv4::PathForm::Normalized)
        .expect("canonical");
    let scope = format!("{scope_date}/local/coffer/aws4_request");
    let key = sigv4::signing_key(who.secret.as_deref().expect("secret"), scope_date, "local", "coffer");
    let signature = sigv4::signature(&key, &sigv4::string_to_sign(amz_date, &scope, &canonical));
    headers.push((
        "authorization".to_owned(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={}",
            who.device_id(),
            names.join(";"),
            sigv4::hex(&signature)
        ),
    ));
    Wire {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
    }
}

/// A member with one device (its owner logged in).
fn member(server: &TestServer, name: &str) -> Identity {
    let user = server.add_member(name);
    server.issue_device(user.id)
}

/// Options whose failure budgets do not get in the way of many refusals in one test.
fn lenient_options() -> ServerOptions {
    ServerOptions {
        auth: AuthConfig {
            device_failures_per_minute: 1000,
            ip_failures_per_minute: 1000,
            ..test_options().auth
        },
        ..test_options()
    }
}

/// The names of the documents `who` sees (listed with coffer's own signing).
fn stored_names(server: &TestServer, who: &Identity) -> Vec<String> {
    let mut conn = server.connect(who);
    let res = conn.request("GET", "/v1/documents", &[], b"").expect("list");
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let mut names: Vec<String> = res.json()["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

/// The title of document `id` (read with coffer's own signing).
fn title_of(server: &TestServer, who: &Identity, id: &str) -> String {
    let mut conn = server.connect(who);
    let res = conn.request("GET", &meta_path(id), &[], b"").expect("meta");
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    res.json()["title"].as_str().expect("title").to_owned()
}

// ---- accepted, and refused when one byte changes ----

#[test]
fn aws_signed_list_is_accepted_and_a_changed_path_query_or_header_is_refused() {
    let server = start_server_with(lenient_options());
    let anna = member(&server, "anna");
    upload(&mut server.connect(&anna), "a.txt", &[], b"content");
    let ok = Aws::of(&anna).sign("GET", "/v1/documents?limit=50", &[("x-coffer-nonce", "abc123")], b"");
    let res = ok.send(&server, &anna);
    assert_status(&res, 200);
    assert_eq!(res.json()["documents"].as_array().expect("documents").len(), 1);

    // One byte of the path, of the query, of a signed header, of the date, of the token.
    let changed = [
        ("path", ok.with_target("/v1/documentt?limit=50")),
        ("query", ok.with_target("/v1/documents?limit=51")),
        ("query name", ok.with_target("/v1/documents?limiu=50")),
        ("x-coffer-nonce", ok.with_header("x-coffer-nonce", "abc124")),
        // One second later (not earlier: that could predate the server's start).
        (
            "x-amz-date",
            ok.with_header("x-amz-date", &one_second_later(ok.header("x-amz-date"))),
        ),
        (
            "x-amz-security-token",
            ok.with_header("x-amz-security-token", &bump(ok.header("x-amz-security-token"), 5)),
        ),
    ];
    for (what, wire) in changed {
        let res = wire.send(&server, &anna);
        assert_eq!(res.status, 401, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "signature-mismatch");
    }
    // The original still works (a read may be repeated).
    assert_status(&ok.send(&server, &anna), 200);
}

#[test]
fn aws_signed_upload_is_accepted_and_a_changed_byte_stores_nothing() {
    let server = start_server_with(lenient_options());
    let anna = member(&server, "anna");
    let body = b"the uploaded content, signed with aws-sigv4".to_vec();
    let headers = [("x-coffer-name", "signed.txt"), ("content-type", "text/plain")];
    let plain = Aws::of(&anna).sign("POST", "/v1/documents?v=1", &headers, &body);
    let declared = Aws::of(&anna)
        .declaring_sha256()
        .sign("POST", "/v1/documents?v=1", &headers, &body);
    assert_eq!(
        declared.header("x-amz-content-sha256"),
        common::server::sha256_hex(&body)
    );
    let mut other_body = body.clone();
    other_body[4] ^= 1;

    for (what, wire) in [
        ("path", plain.with_target("/v1/documentt?v=1")),
        ("query", plain.with_target("/v1/documents?v=2")),
        ("x-coffer-name", plain.with_header("x-coffer-name", "signee.txt")),
        ("content-type", plain.with_header("content-type", "text/plaim")),
        ("body", plain.with_body(&other_body)),
        ("path (declared hash)", declared.with_target("/v1/documentt?v=1")),
        (
            "x-coffer-name (declared hash)",
            declared.with_header("x-coffer-name", "signee.txt"),
        ),
    ] {
        let res = wire.send(&server, &anna);
        assert_eq!(res.status, 401, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "signature-mismatch");
    }
    // A body that differs from its signed x-amz-content-sha256.
    let res = declared.with_body(&other_body).send(&server, &anna);
    assert_problem(&res, 400, "payload-hash-mismatch");
    assert!(stored_names(&server, &anna).is_empty(), "a refused upload was stored");

    // Both unchanged forms are accepted.
    let res = plain.send(&server, &anna);
    assert_status(&res, 201);
    assert_eq!(res.json()["name"], "signed.txt");
    assert_eq!(res.json()["sha256"], common::server::sha256_hex(&body));
    let declared = Aws::of(&anna).declaring_sha256().sign(
        "POST",
        "/v1/documents?v=1",
        &[("x-coffer-name", "declared.txt"), ("content-type", "text/plain")],
        &body,
    );
    assert_status(&declared.send(&server, &anna), 201);
    assert_eq!(stored_names(&server, &anna), ["declared.txt", "signed.txt"]);
}

#[test]
fn aws_signed_metadata_patch_is_accepted_and_a_changed_byte_is_refused() {
    let server = start_server_with(lenient_options());
    let anna = member(&server, "anna");
    let id = id_of(&upload(&mut server.connect(&anna), "doc.txt", &[], b"content"));
    let target = format!("{}?v=1", meta_path(&id));
    let body = br#"{"title":"signed title"}"#.to_vec();
    let headers = [("content-type", "application/json"), ("x-coffer-nonce", "n1")];
    let plain = Aws::of(&anna).sign("PATCH", &target, &headers, &body);
    let declared = Aws::of(&anna)
        .declaring_sha256()
        .sign("PATCH", &target, &headers, &body);
    let other_body = br#"{"title":"signed titme"}"#;
    // Position of the id's first character in the target.
    let at = "/v1/documents/".len();

    for (what, wire) in [
        ("path (id)", plain.with_target(&bump(&target, at))),
        ("query", plain.with_target(&format!("{}?v=2", meta_path(&id)))),
        ("x-coffer-nonce", plain.with_header("x-coffer-nonce", "n2")),
        ("body", plain.with_body(other_body)),
        ("path (declared hash)", declared.with_target(&bump(&target, at))),
    ] {
        let res = wire.send(&server, &anna);
        assert_eq!(res.status, 401, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "signature-mismatch");
    }
    let res = declared.with_body(other_body).send(&server, &anna);
    assert_problem(&res, 400, "payload-hash-mismatch");
    assert_eq!(title_of(&server, &anna, &id), "", "a refused PATCH changed the title");

    let res = plain.send(&server, &anna);
    assert_status(&res, 200);
    assert_eq!(res.json()["title"], "signed title");
    let declared = Aws::of(&anna).declaring_sha256().sign(
        "PATCH",
        &meta_path(&id),
        &[("content-type", "application/json")],
        br#"{"title":"declared title"}"#,
    );
    let res = declared.send(&server, &anna);
    assert_status(&res, 200);
    assert_eq!(title_of(&server, &anna, &id), "declared title");
}

#[test]
fn aws_signed_delete_is_accepted_and_a_changed_byte_is_refused() {
    let server = start_server_with(lenient_options());
    let anna = member(&server, "anna");
    let id = id_of(&upload(&mut server.connect(&anna), "doomed.txt", &[], b"content"));
    let keep = id_of(&upload(&mut server.connect(&anna), "kept.txt", &[], b"content"));
    let target = format!("/v1/documents/{id}?v=1");
    let ok = Aws::of(&anna).sign("DELETE", &target, &[("x-coffer-nonce", "d1")], b"");
    let at = "/v1/documents/".len();
    for (what, wire) in [
        // Another existing document: the signature names one document only.
        ("path (other id)", ok.with_target(&format!("/v1/documents/{keep}?v=1"))),
        ("path (one byte)", ok.with_target(&bump(&target, at + 31))),
        ("query", ok.with_target(&format!("/v1/documents/{id}?v=2"))),
        ("x-coffer-nonce", ok.with_header("x-coffer-nonce", "d2")),
    ] {
        let res = wire.send(&server, &anna);
        assert_eq!(res.status, 401, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "signature-mismatch");
    }
    assert_eq!(stored_names(&server, &anna), ["doomed.txt", "kept.txt"]);
    let res = ok.send(&server, &anna);
    assert_status(&res, 204);
    assert_eq!(stored_names(&server, &anna), ["kept.txt"]);
}

// ---- the clock ----

#[test]
fn clock_skew_over_five_minutes_is_refused_with_the_server_time() {
    let server = start_server_with(lenient_options());
    let anna = member(&server, "anna");
    for (what, at) in [
        ("+6 min", SystemTime::now() + Duration::from_secs(360)),
        ("-6 min", SystemTime::now() - Duration::from_secs(360)),
    ] {
        let res = Aws::of(&anna)
            .at(at)
            .sign("GET", "/v1/documents", &[], b"")
            .send(&server, &anna);
        assert_eq!(res.status, 401, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "request-time-skewed");
        let server_time = res.json()["server_time"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no server_time in {}", String::from_utf8_lossy(&res.body)))
            .to_owned();
        let parsed = coffer::sigv4::parse_amz_date(&server_time).expect("server_time in x-amz-date form");
        let now = time::OffsetDateTime::now_utc();
        assert!(
            (now - parsed).whole_seconds().abs() <= 5,
            "{what}: server_time {server_time} is not the server's clock"
        );
        // A write is refused just the same (and stores nothing).
        let res = Aws::of(&anna)
            .at(at)
            .sign("POST", "/v1/documents", &[("x-coffer-name", "late.txt")], b"x")
            .send(&server, &anna);
        assert_problem(&res, 401, "request-time-skewed");
    }
    assert!(stored_names(&server, &anna).is_empty());
}

#[test]
fn four_minutes_of_skew_is_accepted() {
    let server = start_server();
    let anna = member(&server, "anna");
    let ahead = SystemTime::now() + Duration::from_secs(240);
    let res = Aws::of(&anna)
        .at(ahead)
        .sign("GET", "/v1/documents", &[], b"")
        .send(&server, &anna);
    assert_status(&res, 200);
    // Writes may be dated only `auth.max_future_write_secs` ahead (tests/http_hardening.rs);
    // four minutes behind predates this fresh server, so the window is shown with a read.
}

#[test]
fn request_signed_before_the_server_started_is_refused() {
    // Taken before the server starts (and more than a second before its first accepted
    // second): well inside the clock window, but older than the server.
    let before = SystemTime::now() - Duration::from_secs(2);
    let server = start_server();
    let anna = member(&server, "anna");
    let old = Aws::of(&anna).at(before);
    let res = old.sign("GET", "/v1/documents", &[], b"").send(&server, &anna);
    assert_problem(&res, 401, "signed-before-start");
    let res = old
        .sign("POST", "/v1/documents", &[("x-coffer-name", "old.txt")], b"x")
        .send(&server, &anna);
    assert_problem(&res, 401, "signed-before-start");
    // Signed again now, the same requests are served.
    assert_status(
        &Aws::of(&anna)
            .sign("GET", "/v1/documents", &[], b"")
            .send(&server, &anna),
        200,
    );
    assert!(stored_names(&server, &anna).is_empty());
}

// ---- the scope and the signed headers ----

#[test]
fn credential_date_other_than_the_x_amz_date_is_signature_invalid() {
    let server = start_server();
    let anna = member(&server, "anna");
    let now = time::OffsetDateTime::now_utc();
    let amz_date = coffer::sigv4::amz_date(now);
    let today = &amz_date[..8];
    let yesterday = coffer::sigv4::amz_date(now - time::Duration::days(1))[..8].to_owned();
    let headers = ["host", "x-amz-date", "x-amz-security-token"];
    // The control: the same hand-made signature with today's scope is served.
    let res = hand_signed(&anna, "GET", "/v1/documents", &amz_date, today, &headers, true).send(&server, &anna);
    assert_status(&res, 200);
    let res = hand_signed(&anna, "GET", "/v1/documents", &amz_date, &yesterday, &headers, true).send(&server, &anna);
    assert_problem(&res, 401, "signature-invalid");
}

#[test]
fn host_and_x_amz_date_must_be_signed() {
    let server = start_server();
    let anna = member(&server, "anna");
    let amz_date = coffer::sigv4::amz_date(time::OffsetDateTime::now_utc());
    let today = amz_date[..8].to_owned();
    for signed in [
        &["x-amz-date", "x-amz-security-token"][..],
        &["host", "x-amz-security-token"][..],
    ] {
        let res = hand_signed(&anna, "GET", "/v1/documents", &amz_date, &today, signed, true).send(&server, &anna);
        assert_eq!(res.status, 401, "{signed:?}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "signature-invalid");
    }
}

#[test]
fn missing_signature_is_signature_required() {
    let server = start_server();
    let anna = member(&server, "anna");
    let mut conn = server.connect_unsigned(&anna);
    let res = conn.request("GET", "/v1/documents", &[], b"").expect("request");
    assert_problem(&res, 401, "signature-required");
    // A session token alone is no signature.
    let mut conn = server.connect_unsigned(&anna);
    let token = anna.token.clone().expect("token");
    let res = conn
        .request(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "unsigned.txt"), ("x-amz-security-token", &token)],
            b"unsigned",
        )
        .expect("request");
    assert_problem(&res, 401, "signature-required");
    assert!(stored_names(&server, &anna).is_empty());
}

#[test]
fn wrong_region_or_service_is_signature_invalid() {
    let server = start_server();
    let anna = member(&server, "anna");
    let right = Aws::of(&anna);
    for (what, aws) in [
        (
            "region us-east-1",
            Aws {
                region: "us-east-1".into(),
                ..right.clone()
            },
        ),
        (
            "service s3",
            Aws {
                service: "s3".into(),
                ..right.clone()
            },
        ),
    ] {
        let res = aws.sign("GET", "/v1/documents", &[], b"").send(&server, &anna);
        assert_eq!(res.status, 401, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "signature-invalid");
    }
    assert_status(&right.sign("GET", "/v1/documents", &[], b"").send(&server, &anna), 200);
}

#[test]
fn unsigned_coffer_or_token_header_is_signature_invalid() {
    let server = start_server();
    let anna = member(&server, "anna");
    // X-Coffer-Name added after signing.
    let res = Aws::of(&anna)
        .sign("POST", "/v1/documents", &[], b"content")
        .with_header("x-coffer-name", "sneaked.txt")
        .send(&server, &anna);
    assert_problem(&res, 401, "signature-invalid");
    // X-Coffer-Title sent next to a signed X-Coffer-Name.
    let res = Aws::of(&anna)
        .sign("POST", "/v1/documents", &[("x-coffer-name", "ok.txt")], b"content")
        .with_header("x-coffer-title", "sneaked")
        .send(&server, &anna);
    assert_problem(&res, 401, "signature-invalid");
    // A read with an unsigned x-coffer-nonce.
    let res = Aws::of(&anna)
        .sign("GET", "/v1/documents", &[], b"")
        .with_header("x-coffer-nonce", "unsigned")
        .send(&server, &anna);
    assert_problem(&res, 401, "signature-invalid");
    // The session token sent but left out of the signature (aws-sigv4's Exclude mode).
    let wire = Aws {
        token_unsigned: true,
        ..Aws::of(&anna)
    }
    .sign("GET", "/v1/documents", &[], b"");
    assert!(
        wire.header("authorization").contains("SignedHeaders=host;x-amz-date,"),
        "{}",
        wire.header("authorization")
    );
    assert_eq!(
        wire.header("x-amz-security-token"),
        anna.token.as_deref().expect("token")
    );
    let res = wire.send(&server, &anna);
    assert_problem(&res, 401, "signature-invalid");
    assert!(stored_names(&server, &anna).is_empty());
}

// ---- replays ----

#[test]
fn replayed_upload_is_refused_and_stores_nothing() {
    let server = start_server();
    let anna = member(&server, "anna");
    // Without x-amz-content-sha256 (the signature is checked once the body is read) and
    // with it (checked before).
    for (name, aws) in [
        ("plain.txt", Aws::of(&anna)),
        ("declared.txt", Aws::of(&anna).declaring_sha256()),
    ] {
        let wire = aws.sign("POST", "/v1/documents", &[("x-coffer-name", name)], b"once only");
        assert_status(&wire.send(&server, &anna), 201);
        let res = wire.send(&server, &anna);
        assert_eq!(res.status, 409, "{name}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 409, "replayed-request");
    }
    assert_eq!(stored_names(&server, &anna), ["declared.txt", "plain.txt"]);
}

#[test]
fn replayed_metadata_patch_is_refused() {
    let server = start_server();
    let anna = member(&server, "anna");
    let id = id_of(&upload(&mut server.connect(&anna), "doc.txt", &[], b"content"));
    let json = [("content-type", "application/json")];
    let first = Aws::of(&anna).sign("PATCH", &meta_path(&id), &json, br#"{"title":"one"}"#);
    assert_status(&first.send(&server, &anna), 200);
    let second = Aws::of(&anna).sign("PATCH", &meta_path(&id), &json, br#"{"title":"two"}"#);
    assert_status(&second.send(&server, &anna), 200);
    // Replaying the first would set the title back.
    let res = first.send(&server, &anna);
    assert_problem(&res, 409, "replayed-request");
    assert_eq!(title_of(&server, &anna, &id), "two");
}

#[test]
fn replayed_delete_is_refused() {
    let server = start_server();
    let anna = member(&server, "anna");
    let id = id_of(&upload(&mut server.connect(&anna), "doc.txt", &[], b"content"));
    let wire = Aws::of(&anna).sign("DELETE", &format!("/v1/documents/{id}"), &[], b"");
    assert_status(&wire.send(&server, &anna), 204);
    let res = wire.send(&server, &anna);
    assert_problem(&res, 409, "replayed-request");
}

#[test]
fn identical_reads_in_one_second_are_both_served() {
    let server = start_server();
    let anna = member(&server, "anna");
    let wire = Aws::of(&anna).sign("GET", "/v1/documents", &[], b"");
    assert_status(&wire.send(&server, &anna), 200);
    assert_status(&wire.send(&server, &anna), 200);
}

#[test]
fn the_same_write_with_different_nonces_is_accepted_twice() {
    let server = start_server();
    let anna = member(&server, "anna");
    // The same clock reading for both: only the signed nonce differs.
    let aws = Aws::of(&anna).at(SystemTime::now());
    for nonce in ["first", "second"] {
        let wire = aws.sign(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "twice.txt"), ("x-coffer-nonce", nonce)],
            b"same",
        );
        assert_status(&wire.send(&server, &anna), 201);
    }
    assert_eq!(stored_names(&server, &anna), ["twice.txt", "twice.txt"]);
    // And a metadata PATCH likewise.
    let id = id_of(&upload(&mut server.connect(&anna), "doc.txt", &[], b"content"));
    for nonce in ["first", "second"] {
        let wire = aws.sign(
            "PATCH",
            &meta_path(&id),
            &[("content-type", "application/json"), ("x-coffer-nonce", nonce)],
            br#"{"title":"t"}"#,
        );
        assert_status(&wire.send(&server, &anna), 200);
    }
}

// ---- whose key, and the failure budget ----

#[test]
fn access_key_of_another_device_is_refused() {
    let server = start_server();
    let anna = member(&server, "anna");
    let annas_second = server.issue_device(anna.device.as_ref().expect("device").owner);
    let bob = member(&server, "bob");
    for other in [&annas_second, &bob] {
        // Anna's certificate, the other device's id and secret (and its session).
        let res = Aws::of(other)
            .sign("GET", "/v1/documents", &[], b"")
            .send(&server, &anna);
        assert_problem(&res, 401, "access-key-mismatch");
        let res = Aws::of(other)
            .sign("POST", "/v1/documents", &[("x-coffer-name", "x.txt")], b"x")
            .send(&server, &anna);
        assert_problem(&res, 401, "access-key-mismatch");
    }
    assert!(stored_names(&server, &anna).is_empty());
    assert!(stored_names(&server, &bob).is_empty());
}

#[test]
fn failure_budget_stops_a_failing_device_but_not_its_neighbour() {
    let server = start_server_with(ServerOptions {
        auth: AuthConfig {
            device_failures_per_minute: 3,
            // The address's budget is spent too: a device that is not failing is still
            // served from it (devices behind one NAT address).
            ip_failures_per_minute: 3,
            ..test_options().auth
        },
        ..test_options()
    });
    let anna = member(&server, "anna");
    let bob = member(&server, "bob");
    let wrong = Aws {
        secret: "not the device's secret".into(),
        ..Aws::of(&anna)
    };
    for _ in 0..3 {
        let res = wrong.sign("GET", "/v1/documents", &[], b"").send(&server, &anna);
        assert_problem(&res, 401, "signature-mismatch");
    }
    let res = Aws::of(&anna)
        .sign("GET", "/v1/documents", &[], b"")
        .send(&server, &anna);
    assert_problem(&res, 429, "too-many-auth-failures");
    let wait: u64 = res
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // Bob's device, from the same 127.0.0.1, is served.
    let res = Aws::of(&bob).sign("GET", "/v1/documents", &[], b"").send(&server, &bob);
    assert_status(&res, 200);
    let res = Aws::of(&bob)
        .sign("POST", "/v1/documents", &[("x-coffer-name", "bob.txt")], b"x")
        .send(&server, &bob);
    assert_status(&res, 201);
}

#[test]
fn paths_with_empty_dot_or_dot_dot_segments_are_refused_before_the_signature() {
    let server = start_server_with(lenient_options());
    let anna = member(&server, "anna");
    let id = id_of(&upload(&mut server.connect(&anna), "a.txt", &[], b"content"));
    // Each correctly signed by the independent signer (which normalizes the path), yet
    // refused: the normalized signature would not cover every byte of the path.
    for target in [
        "/v1//documents".to_owned(),
        "/v1/./documents".to_owned(),
        format!("/v1/documents/x/../{id}"),
        format!("/v1/documents/{id}/."),
    ] {
        let res = Aws::of(&anna).sign("GET", &target, &[], b"").send(&server, &anna);
        assert_problem(&res, 401, "signature-invalid");
        assert!(
            res.json()["detail"].as_str().unwrap_or("").contains("segments"),
            "{target}: {}",
            String::from_utf8_lossy(&res.body)
        );
    }
    // A trailing slash removes nothing: it is covered, and simply not a route.
    let res = Aws::of(&anna)
        .sign("GET", &format!("/v1/documents/{id}/"), &[], b"")
        .send(&server, &anna);
    assert_problem(&res, 404, "not-found");
    // The plain path with the same signer works.
    let res = Aws::of(&anna)
        .sign("GET", &format!("/v1/documents/{id}"), &[], b"")
        .send(&server, &anna);
    assert_status(&res, 200);
}
