//! User sessions over HTTPS: login (`POST /v1/session`) and logout, tokens bound to the
//! device they were issued to, expiry and idle expiry, revoked devices and disabled users,
//! lockout after failed logins, TOTP, and malformed logins. Requests are signed by the test
//! client (coffer's own SigV4); the session token is set per connection.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::sessions::{Credentials, SessionPolicy};
use coffer::config::AuthConfig;
use coffer::crypto::totp;
use coffer::http::ServerOptions;
use coffer::model::Timestamp;
use coffer::secret::Passphrase;

use common::client::{Connection, Response};
use common::server::{Identity, TestServer, assert_problem, start_server, start_server_with, test_options};

const MINUTE_MS: i64 = 60_000;

fn password_of(name: &str) -> String {
    format!("password of {name}")
}

fn login_body(username: &str, password: &str, code: Option<&str>) -> Vec<u8> {
    let mut body = serde_json::json!({ "username": username, "password": password });
    if let Some(code) = code {
        body["totp"] = serde_json::Value::from(code);
    }
    serde_json::to_vec(&body).expect("JSON")
}

/// A signed connection of `who` carrying `token` (none: no `X-Amz-Security-Token`).
fn connect_with_token(server: &TestServer, who: &Identity, token: Option<&str>) -> Connection {
    let mut conn = server.connect(who);
    conn.signer_mut().expect("a signing connection").token = token.map(str::to_owned);
    conn
}

/// A fresh value for the signed `X-Coffer-Nonce` header: without one, the same write
/// signed twice within a second is the same signature, which the server refuses as a
/// replay (as it should).
fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("n{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `POST /v1/session` with `body`, signed by `who`'s device, on a fresh connection
/// without a session token.
fn post_login(server: &TestServer, who: &Identity, body: &[u8]) -> Response {
    let nonce = nonce();
    connect_with_token(server, who, None)
        .request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
            body,
        )
        .expect("login request")
}

/// `DELETE /v1/session` on a fresh connection of `who` with `token`.
fn logout(server: &TestServer, who: &Identity, token: Option<&str>) -> Response {
    let nonce = nonce();
    connect_with_token(server, who, token)
        .request("DELETE", "/v1/session", &[("x-coffer-nonce", &nonce)], b"")
        .expect("logout request")
}

/// Logs `name` in on `who`'s device; returns the token.
#[track_caller]
fn log_in(server: &TestServer, who: &Identity, name: &str) -> String {
    let res = post_login(server, who, &login_body(name, &password_of(name), None));
    assert_eq!(res.status, 200, "login: {}", String::from_utf8_lossy(&res.body));
    res.json()["token"].as_str().expect("token").to_owned()
}

/// `GET /v1/documents` on a fresh connection of `who` with `token`.
fn list(server: &TestServer, who: &Identity, token: Option<&str>) -> Response {
    connect_with_token(server, who, token)
        .request("GET", "/v1/documents", &[], b"")
        .expect("list request")
}

#[track_caller]
fn assert_ok(res: &Response, status: u16) {
    assert_eq!(
        res.status,
        status,
        "expected {status}, got {}: {}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
}

/// Logs the owner of `who` in through the vault as if at `at`, with a session lifetime of
/// `ttl_ms`; returns the token.
fn vault_login_at(server: &TestServer, who: &Identity, name: &str, ttl_ms: i64, at: Timestamp) -> String {
    let policy = SessionPolicy {
        ttl_ms,
        ..SessionPolicy::from(&AuthConfig::default())
    };
    let password = Passphrase::new(password_of(name));
    let creds = Credentials {
        username: name,
        password: &password,
        totp: None,
    };
    server
        .vault()
        .login(who.device.as_ref().expect("device"), &creds, &policy, at)
        .expect("vault login")
        .token
        .expose()
        .to_owned()
}

fn minutes_ago(minutes: i64) -> Timestamp {
    Timestamp(Timestamp::now().0 - minutes * MINUTE_MS)
}

#[test]
fn login_returns_a_token_that_works_until_logout() {
    let server = start_server();
    let anna_user = server.add_member("anna");
    let anna = server.issue_device(anna_user.id);
    let before = time::OffsetDateTime::now_utc();
    let res = post_login(&server, &anna, &login_body("anna", &password_of("anna"), None));
    assert_ok(&res, 200);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let json = res.json();
    let token = json["token"].as_str().expect("token").to_owned();
    assert!(token.len() >= 32, "token {token:?}");
    assert_ne!(Some(&token), anna.token.as_ref(), "a new session has a new token");
    let expires = json["expires"].as_str().expect("expires");
    let expires = time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("expires {expires:?} is not RFC 3339: {e}"));
    let ttl = expires - before;
    let default_ttl = time::Duration::seconds(i64::from(AuthConfig::default().session_ttl_secs));
    assert!(
        ttl >= default_ttl - time::Duration::seconds(1) && ttl <= default_ttl + time::Duration::seconds(60),
        "expires {expires} is not the session lifetime after the login"
    );

    // The token works for documents: a read and a write.
    assert_ok(&list(&server, &anna, Some(&token)), 200);
    let mut conn = connect_with_token(&server, &anna, Some(&token));
    common::server::upload(&mut conn, "with session.txt", &[], b"content");

    // Logout ends it.
    assert_ok(&logout(&server, &anna, Some(&token)), 204);
    assert_problem(&list(&server, &anna, Some(&token)), 401, "session-invalid");
    // Logging out again with the ended token is refused like any use of it.
    assert_problem(&logout(&server, &anna, Some(&token)), 401, "session-invalid");
    // Only that session ended: the device's other one still works.
    assert_ok(&list(&server, &anna, anna.token.as_deref()), 200);
}

#[test]
fn document_request_without_token_is_session_required() {
    let server = start_server();
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    assert_problem(&list(&server, &anna, None), 401, "session-required");
    let res = connect_with_token(&server, &anna, None)
        .request("POST", "/v1/documents", &[("x-coffer-name", "x.txt")], b"x")
        .expect("upload");
    assert_problem(&res, 401, "session-required");
    assert_problem(&logout(&server, &anna, None), 401, "session-required");
    // With the session, nothing was stored.
    let res = list(&server, &anna, anna.token.as_deref());
    assert_ok(&res, 200);
    assert_eq!(res.json()["documents"].as_array().expect("documents").len(), 0);
}

#[test]
fn token_used_with_another_devices_certificate_is_session_invalid() {
    let server = start_server();
    let anna_user = server.add_member("anna");
    let anna = server.issue_device(anna_user.id);
    let annas_second = server.issue_device(anna_user.id);
    let bob_user = server.add_member("bob");
    let bob = server.issue_device(bob_user.id);
    let token = log_in(&server, &anna, "anna");
    // The same user's other device, and another user's device, each signing correctly
    // with its own credentials.
    assert_problem(&list(&server, &annas_second, Some(&token)), 401, "session-invalid");
    assert_problem(&list(&server, &bob, Some(&token)), 401, "session-invalid");
    let res = connect_with_token(&server, &bob, Some(&token))
        .request("POST", "/v1/documents", &[("x-coffer-name", "x.txt")], b"x")
        .expect("upload");
    assert_problem(&res, 401, "session-invalid");
    // On the device it was issued to, it still works.
    let res = list(&server, &anna, Some(&token));
    assert_ok(&res, 200);
    assert_eq!(res.json()["documents"].as_array().expect("documents").len(), 0);
}

#[test]
fn expired_session_is_session_invalid() {
    let server = start_server();
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    // Logged in 10 minutes ago for 5 minutes (not idle: the idle limit is 30 minutes).
    let expired = vault_login_at(&server, &anna, "anna", 5 * MINUTE_MS, minutes_ago(10));
    assert_problem(&list(&server, &anna, Some(&expired)), 401, "session-invalid");
    // The control: logged in 10 minutes ago for an hour.
    let live = vault_login_at(&server, &anna, "anna", 60 * MINUTE_MS, minutes_ago(10));
    assert_ok(&list(&server, &anna, Some(&live)), 200);
}

#[test]
fn idle_session_is_session_invalid() {
    let server = start_server();
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    let idle_mins = i64::from(AuthConfig::default().session_idle_secs) / 60;
    // Unused since its login one minute past the idle limit, well within its lifetime.
    let idle = vault_login_at(&server, &anna, "anna", 8 * 60 * MINUTE_MS, minutes_ago(idle_mins + 1));
    assert_problem(&list(&server, &anna, Some(&idle)), 401, "session-invalid");
    // The control: unused for one minute less than the limit.
    let recent = vault_login_at(&server, &anna, "anna", 8 * 60 * MINUTE_MS, minutes_ago(idle_mins - 1));
    assert_ok(&list(&server, &anna, Some(&recent)), 200);
}

#[test]
fn revoked_devices_token_is_refused_and_its_sessions_end() {
    let server = start_server();
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    let other = server.issue_device(user.id);
    let token = log_in(&server, &anna, "anna");
    assert_ok(&list(&server, &anna, Some(&token)), 200);
    let device = anna.device_id();
    let sessions_of = |d| {
        server
            .vault()
            .live_sessions(Timestamp::now())
            .expect("live sessions")
            .iter()
            .filter(|s| s.device == d)
            .count()
    };
    // The login at issue and the one over HTTP.
    assert_eq!(sessions_of(device), 2);
    server.vault().revoke_device(device).expect("revoke");
    assert_problem(&list(&server, &anna, Some(&token)), 401, "device-revoked");
    assert_eq!(sessions_of(device), 0, "the revoked device's sessions remain");
    // The owner's other device keeps its session.
    assert_eq!(sessions_of(other.device_id()), 1);
    assert_ok(&list(&server, &other, other.token.as_deref()), 200);
}

#[test]
fn disabled_users_token_is_refused_and_not_revived_by_enabling() {
    let server = start_server();
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    let token = log_in(&server, &anna, "anna");
    assert_ok(&list(&server, &anna, Some(&token)), 200);
    server
        .vault()
        .update_user(user.id, |b| b.disabled = true)
        .expect("disable");
    assert_problem(&list(&server, &anna, Some(&token)), 403, "user-disabled");
    server
        .vault()
        .update_user(user.id, |b| b.disabled = false)
        .expect("enable");
    assert_problem(&list(&server, &anna, Some(&token)), 401, "session-invalid");
    assert_problem(&list(&server, &anna, anna.token.as_deref()), 401, "session-invalid");
    // A new login works.
    let fresh = log_in(&server, &anna, "anna");
    assert_ok(&list(&server, &anna, Some(&fresh)), 200);
}

#[test]
fn five_wrong_passwords_lock_the_account_until_unlocked() {
    // A device budget large enough that the account lock is what answers.
    let server = start_server_with(ServerOptions {
        auth: AuthConfig {
            device_failures_per_minute: 100,
            ..test_options().auth
        },
        ..test_options()
    });
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    let max = AuthConfig::default().max_login_failures;
    assert_eq!(max, 5);
    let wrong = login_body("anna", "not the password", None);
    for attempt in 1..max {
        let res = post_login(&server, &anna, &wrong);
        assert_eq!(
            res.status,
            401,
            "attempt {attempt}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert_problem(&res, 401, "login-failed");
    }
    let res = post_login(&server, &anna, &wrong);
    assert_problem(&res, 429, "account-locked");
    // The right password while the lock lasts.
    let right = login_body("anna", &password_of("anna"), None);
    let res = post_login(&server, &anna, &right);
    assert_problem(&res, 429, "account-locked");
    let wait: u64 = res
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After seconds");
    let lockout = u64::from(AuthConfig::default().lockout_secs);
    assert!((1..=lockout).contains(&wait), "Retry-After {wait}");
    assert_eq!(server.vault().login_state(user.id).expect("login state").failures, max);

    server.vault().unlock_user(user.id).expect("unlock");
    let res = post_login(&server, &anna, &right);
    assert_ok(&res, 200);
    let token = res.json()["token"].as_str().expect("token").to_owned();
    assert_ok(&list(&server, &anna, Some(&token)), 200);
    assert_eq!(server.vault().login_state(user.id).expect("login state").failures, 0);
}

#[test]
fn totp_is_required_checked_and_single_use() {
    let server = start_server();
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    let seed = server
        .vault()
        .set_totp(user.id, true)
        .expect("enrol TOTP")
        .expect("a seed");
    let password = password_of("anna");

    let res = post_login(&server, &anna, &login_body("anna", &password, None));
    assert_problem(&res, 401, "totp-required");

    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).expect("after 1970");
    let step = totp::step_at(now);
    let code_of = |s: u64| format!("{:06}", totp::code(seed.expose(), s, totp::DIGITS));
    // A code that none of the steps the server may accept produces.
    let nearby: Vec<String> = (step - 1..=step + 2).map(code_of).collect();
    let wrong = (0..)
        .map(|i| {
            format!(
                "{:06}",
                (totp::code(seed.expose(), step, totp::DIGITS) + 1 + i) % 1_000_000
            )
        })
        .find(|c| !nearby.contains(c))
        .expect("a wrong code");
    let res = post_login(&server, &anna, &login_body("anna", &password, Some(&wrong)));
    assert_problem(&res, 401, "login-failed");
    // The right code with a wrong password is no better.
    let right = code_of(step);
    let res = post_login(&server, &anna, &login_body("anna", "not the password", Some(&right)));
    assert_problem(&res, 401, "login-failed");

    let res = post_login(&server, &anna, &login_body("anna", &password, Some(&right)));
    assert_ok(&res, 200);
    let token = res.json()["token"].as_str().expect("token").to_owned();
    assert_ok(&list(&server, &anna, Some(&token)), 200);
    // The same code once more: refused (it was used).
    let res = post_login(&server, &anna, &login_body("anna", &password, Some(&right)));
    assert_problem(&res, 401, "login-failed");
}

#[test]
fn integration_identity_cannot_log_in() {
    let server = start_server();
    let user = server.add_integration("scanner");
    let scanner = server.issue_device(user.id);
    let res = post_login(&server, &scanner, &login_body("scanner", &password_of("scanner"), None));
    assert_problem(&res, 403, "role-not-permitted");
}

#[test]
fn malformed_login_body_is_invalid_request() {
    let server = start_server();
    let user = server.add_member("anna");
    let anna = server.issue_device(user.id);
    let password = password_of("anna");
    let unknown_field = serde_json::to_vec(&serde_json::json!({
        "username": "anna", "password": password, "remember": true
    }))
    .expect("JSON");
    let no_password = serde_json::to_vec(&serde_json::json!({ "username": "anna" })).expect("JSON");
    let wrong_type = serde_json::to_vec(&serde_json::json!({ "username": "anna", "password": 12345 })).expect("JSON");
    for (what, body) in [
        ("bad JSON", br#"{"username": "anna", "password": "#.to_vec()),
        ("not an object", b"[]".to_vec()),
        ("empty", Vec::new()),
        ("unknown field", unknown_field),
        ("no password", no_password),
        ("password not a string", wrong_type),
    ] {
        let res = post_login(&server, &anna, &body);
        assert_eq!(res.status, 400, "{what}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 400, "invalid-request");
    }
    // None of them counted as a failed login.
    assert_eq!(server.vault().login_state(user.id).expect("login state").failures, 0);
}

#[test]
fn another_users_name_on_this_device_is_login_failed() {
    let server = start_server();
    let anna_user = server.add_member("anna");
    let anna = server.issue_device(anna_user.id);
    server.add_member("bob");
    // Bob's name and password on Anna's device; Anna's name with Bob's password.
    for (name, password) in [("bob", password_of("bob")), ("anna", password_of("bob"))] {
        let res = post_login(&server, &anna, &login_body(name, &password, None));
        assert_eq!(res.status, 401, "{name}: {}", String::from_utf8_lossy(&res.body));
        assert_problem(&res, 401, "login-failed");
    }
    assert_ok(
        &post_login(&server, &anna, &login_body("anna", &password_of("anna"), None)),
        200,
    );
}
