//! Who may talk to the HTTPS API: the TLS handshake (client certificates, TLS versions,
//! no resumption) and the per-request device check (unknown, revoked, expired devices,
//! disabled owners), against a real server with real certificates.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use coffer::app::principals::DeviceBody;
use coffer::config::TlsVersion;
use coffer::http::ServerOptions;
use coffer::model::{DeviceId, Timestamp};
use coffer::pki::KeyDer;
use rustls::{HandshakeKind, ProtocolVersion};

use common::client::{ClientSetup, Connection, TLS12_ONLY};
use common::server::{Identity, TestServer, assert_problem, start_server, start_server_with, test_options};

fn list(conn: &mut Connection) -> common::client::Response {
    conn.request("GET", "/v1/documents", &[], b"")
        .expect("GET /v1/documents")
}

#[track_caller]
fn assert_lists(conn: &mut Connection) {
    let res = list(conn);
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
}

/// A member with a registered device.
fn member_device(server: &TestServer, name: &str) -> Identity {
    let user = server.add_member(name);
    server.issue_device(user.id)
}

/// Panics unless `e` says the server refused the connection: a TLS alert among
/// `expected`, or (when the alert raced the client's next write) the server dropping the
/// connection. A timeout, or anything else, is not a refusal.
#[track_caller]
fn assert_refused_by_server(e: &std::io::Error, expected: &[&str]) {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let text = format!("{e:?}");
    if text.contains("AlertReceived") {
        assert!(
            expected
                .iter()
                .any(|alert| text.contains(&format!("AlertReceived({alert})"))),
            "expected a TLS alert among {expected:?}, got {text}"
        );
    } else {
        assert!(
            matches!(
                e.kind(),
                BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof
            ),
            "expected the server to refuse the handshake ({expected:?}), got {text}"
        );
    }
}

#[test]
fn no_client_certificate_reaches_nothing_but_enrolment() {
    let server = start_server();
    // The handshake succeeds without a certificate (for enrolment), but an upload is
    // refused before anything is read or stored (every route: tests/enrolment.rs).
    let mut conn = server.connect_anonymous();
    let res = conn
        .request(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "anon.bin")],
            b"anonymous content",
        )
        .unwrap();
    assert_problem(&res, 401, "client-certificate-required");
    // Nothing was stored: an admin sees no document at all.
    let admin = server.add_admin("root");
    let admin = server.issue_device(admin.id);
    let res = list(&mut server.connect(&admin));
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["documents"], serde_json::json!([]));
}

#[test]
fn certificate_from_another_ca_is_refused_in_the_handshake() {
    let server = start_server();
    let (other_ca, _) = coffer::pki::Ca::generate(1).expect("foreign CA");
    let key = KeyDer::generate().expect("key");
    let cert = other_ca
        .issue_device(DeviceId(1), &key.spki().expect("spki"), 1)
        .expect("foreign certificate");
    let foreign = Identity {
        device: None,
        cert_pem: coffer::pki::to_pem(&cert),
        key_pem: key.to_pem().expect("PEM").to_string(),
        secret: None,
        token: None,
    };
    let err = server.assert_handshake_refused(server.client_config(Some(&foreign)));
    // The foreign CA bears the same name as coffer's, so the verifier finds "the" issuer
    // and the signature check fails (decrypt_error); otherwise it would be unknown_ca.
    assert_refused_by_server(&err, &["DecryptError", "UnknownCA", "BadCertificate"]);
    // The server itself is fine: a registered device gets in.
    let ok = member_device(&server, "alice");
    assert_lists(&mut server.connect(&ok));
}

#[test]
fn self_signed_certificate_is_refused_in_the_handshake() {
    let server = start_server();
    let own = rcgen::generate_simple_self_signed(vec!["device".to_owned()]).expect("self-signed certificate");
    let forged = Identity {
        device: None,
        cert_pem: own.cert.pem(),
        key_pem: own.signing_key.serialize_pem(),
        secret: None,
        token: None,
    };
    let err = server.assert_handshake_refused(server.client_config(Some(&forged)));
    assert_refused_by_server(&err, &["UnknownCA", "BadCertificate"]);
}

#[test]
fn expired_certificate_is_refused_in_the_handshake() {
    let server = start_server();
    let user = server.add_member("alice");
    // Valid until "now" (issued backdated); registered as a device too.
    let expired = server.issue_device_for_days(user.id, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let err = server.assert_handshake_refused(server.client_config(Some(&expired)));
    assert_refused_by_server(&err, &["CertificateExpired"]);
    let ok = server.issue_device(user.id);
    assert_lists(&mut server.connect(&ok));
}

#[test]
fn revoked_device_is_refused_on_its_open_keep_alive_connection() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let bob = member_device(&server, "bob");
    let mut conn = server.connect(&alice);
    let mut bob_conn = server.connect(&bob);
    assert_lists(&mut conn);
    server.vault().revoke_device(alice.device_id()).expect("revoke");
    assert_problem(&list(&mut conn), 401, "device-revoked");
    // Refused on a new connection too (the server may close the refused one).
    let res = server
        .connect(&alice)
        .request(
            "POST",
            "/v1/documents",
            &[("x-coffer-name", "late.bin")],
            b"after revocation",
        )
        .expect("POST");
    assert_problem(&res, 401, "device-revoked");
    // Only that device: bob's connection goes on.
    assert_lists(&mut bob_conn);
}

#[test]
fn revoked_device_cannot_come_back_by_resuming_a_session() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let config = ClientSetup {
        resumption: true,
        ..server.client_setup(Some(&alice))
    }
    .build();
    let mut first = server.connect_with(config.clone());
    first.set_signer(alice.signer());
    assert_eq!(first.handshake_kind(), Some(HandshakeKind::Full));
    assert_lists(&mut first);
    drop(first);
    server.vault().revoke_device(alice.device_id()).expect("revoke");
    let mut second = server.connect_with(config);
    second.set_signer(alice.signer());
    assert_eq!(
        second.handshake_kind(),
        Some(HandshakeKind::Full),
        "the server let the client resume a session"
    );
    assert_problem(&list(&mut second), 401, "device-revoked");
}

#[test]
fn tls12_sessions_are_not_resumed_either() {
    let server = start_server_with(ServerOptions {
        tls_min: TlsVersion::Tls12,
        ..test_options()
    });
    let alice = member_device(&server, "alice");
    let config = ClientSetup {
        resumption: true,
        versions: TLS12_ONLY,
        ..server.client_setup(Some(&alice))
    }
    .build();
    let mut first = server.connect_with(config.clone());
    first.set_signer(alice.signer());
    assert_lists(&mut first);
    drop(first);
    server.vault().revoke_device(alice.device_id()).expect("revoke");
    let mut second = server.connect_with(config);
    second.set_signer(alice.signer());
    assert_eq!(second.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(
        second.handshake_kind(),
        Some(HandshakeKind::Full),
        "the server let a TLS 1.2 client resume a session"
    );
    assert_problem(&list(&mut second), 401, "device-revoked");
}

#[test]
fn disabled_owner_is_refused_at_once_on_an_open_connection() {
    let server = start_server();
    let alice_user = server.add_member("alice");
    let alice = server.issue_device(alice_user.id);
    let bob = member_device(&server, "bob");
    let mut conn = server.connect(&alice);
    let mut bob_conn = server.connect(&bob);
    assert_lists(&mut conn);
    server
        .vault()
        .update_user(alice_user.id, |b| b.disabled = true)
        .expect("disable");
    assert_problem(&list(&mut conn), 403, "user-disabled");
    // A new connection too.
    assert_problem(&list(&mut server.connect(&alice)), 403, "user-disabled");
    assert_lists(&mut bob_conn);
    // Enabled again, the device works again: the check is made per request. Disabling
    // ended the owner's sessions for good, so the old token stays refused and the owner
    // logs in again on the device.
    server
        .vault()
        .update_user(alice_user.id, |b| b.disabled = false)
        .expect("enable");
    assert_problem(&list(&mut server.connect(&alice)), 401, "session-invalid");
    let mut conn = server.connect(&alice);
    conn.signer_mut().expect("a signer").token = None;
    let res = conn
        .request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json")],
            br#"{"username":"alice","password":"password of alice"}"#,
        )
        .expect("POST /v1/session");
    assert_eq!(res.status, 200, "login: {}", String::from_utf8_lossy(&res.body));
    let token = res.json()["token"].as_str().expect("token").to_owned();
    conn.signer_mut().expect("a signer").token = Some(token);
    assert_lists(&mut conn);
}

#[test]
fn ca_signed_certificate_of_no_device_is_401_device_unknown() {
    let server = start_server();
    let stranger = server.unregistered_certificate();
    assert_problem(&list(&mut server.connect(&stranger)), 401, "device-unknown");
    let res = server
        .connect(&stranger)
        .request("POST", "/v1/documents", &[("x-coffer-name", "x.bin")], b"x")
        .expect("POST");
    assert_problem(&res, 401, "device-unknown");
}

#[test]
fn device_record_past_its_expiry_is_401_device_expired() {
    let server = start_server();
    let alice = server.add_member("alice");
    // A certificate still valid for TLS, registered with an expiry already past.
    let key = KeyDer::generate().expect("key");
    let id = DeviceId::random().expect("id");
    let cert = server
        .vault()
        .ca()
        .expect("CA")
        .issue_device(id, &key.spki().expect("spki"), 30)
        .expect("certificate");
    server
        .vault()
        .register_device(
            id,
            alice.id,
            DeviceBody {
                name: "lapsed".into(),
                thumbprint: coffer::pki::thumbprint(&cert),
                revoked: false,
                signing_secret: None,
                serial: None,
                revoked_at: None,
                retired: Vec::new(),
            },
            Timestamp(Timestamp::now().0 - 1000),
        )
        .expect("register");
    let lapsed = Identity {
        device: None,
        cert_pem: coffer::pki::to_pem(&cert),
        key_pem: key.to_pem().expect("PEM").to_string(),
        secret: None,
        token: None,
    };
    assert_problem(&list(&mut server.connect(&lapsed)), 401, "device-expired");
}

#[test]
fn tls12_only_client_is_refused_by_default() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let config = ClientSetup {
        versions: TLS12_ONLY,
        ..server.client_setup(Some(&alice))
    }
    .build();
    let err = server.assert_handshake_refused(config);
    assert_refused_by_server(&err, &["ProtocolVersion"]);
}

#[test]
fn tls12_client_connects_when_enabled() {
    let server = start_server_with(ServerOptions {
        tls_min: TlsVersion::Tls12,
        ..test_options()
    });
    let alice = member_device(&server, "alice");
    let config = ClientSetup {
        versions: TLS12_ONLY,
        ..server.client_setup(Some(&alice))
    }
    .build();
    let mut conn = server.connect_with(config);
    conn.set_signer(alice.signer());
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_lists(&mut conn);
    // TLS 1.3 clients still get TLS 1.3.
    let mut modern = server.connect(&alice);
    assert_eq!(modern.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_lists(&mut modern);
}

#[test]
fn unknown_path_is_a_404_problem() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    for path in [
        "/",
        "/v1",
        "/v2/documents",
        "/v1/documents/0123456789abcdef0123456789abcdef/other",
    ] {
        let res = conn.request("GET", path, &[], b"").expect("GET");
        assert_problem(&res, 404, "not-found");
    }
}

#[test]
fn wrong_method_is_a_405_problem() {
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    let id = "0123456789abcdef0123456789abcdef";
    for (method, path) in [
        ("PUT", "/v1/documents".to_owned()),
        ("DELETE", "/v1/documents".to_owned()),
        ("POST", format!("/v1/documents/{id}")),
        ("PUT", format!("/v1/documents/{id}")),
        ("DELETE", format!("/v1/documents/{id}/meta")),
        ("POST", format!("/v1/documents/{id}/meta")),
    ] {
        let res = conn.request(method, &path, &[], b"").expect("request");
        assert_problem(&res, 405, "method-not-allowed");
    }
}

#[test]
fn wrong_method_answer_names_the_allowed_methods() {
    // RFC 9110, 15.5.6: a 405 response MUST carry an Allow header listing the methods the
    // resource supports.
    let server = start_server();
    let alice = member_device(&server, "alice");
    let mut conn = server.connect(&alice);
    let id = "0123456789abcdef0123456789abcdef";
    for (path, allowed) in [
        ("/v1/documents".to_owned(), &["GET", "POST"][..]),
        (format!("/v1/documents/{id}"), &["DELETE", "GET", "HEAD"][..]),
        (format!("/v1/documents/{id}/meta"), &["GET", "PATCH"][..]),
    ] {
        let res = conn.request("PUT", &path, &[], b"").expect("PUT");
        assert_problem(&res, 405, "method-not-allowed");
        let allow = res
            .header("allow")
            .unwrap_or_else(|| panic!("405 for {path} without an Allow header"));
        let methods: Vec<String> = allow.split(',').map(|m| m.trim().to_ascii_uppercase()).collect();
        for m in allowed {
            assert!(methods.iter().any(|x| x == m), "Allow for {path} lacks {m}: {allow}");
        }
        assert!(
            !methods.iter().any(|x| x == "PUT"),
            "Allow for {path} names PUT: {allow}"
        );
    }
}
