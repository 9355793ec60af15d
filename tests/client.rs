//! The reference client (`coffer::client`, what `coffer client` runs) against a real server:
//! a profile on disk, real certificates, SigV4, sessions kept in the state file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use coffer::client::{Client, ClientError, Profile, PutOptions};
use coffer::secret::{Passphrase, SecretString};
use common::server::*;
use common::*;

/// Writes the identity's files and a profile for it into `dir`; returns the profile path.
fn write_profile(server: &TestServer, identity: &Identity, dir: &Path, password: Option<&str>) -> PathBuf {
    std::fs::write(dir.join("ca.crt"), &server.ca_pem).unwrap();
    std::fs::write(dir.join("device.crt"), &identity.cert_pem).unwrap();
    std::fs::write(dir.join("device.key"), &identity.key_pem).unwrap();
    if let Some(p) = password {
        std::fs::write(dir.join("password"), format!("{p}\n")).unwrap();
    }
    let profile = Profile {
        endpoint: format!("https://localhost:{}", server.addr().port()),
        region: "local".into(),
        service: "coffer".into(),
        access_key_id: identity.device_id().to_string(),
        secret_access_key: SecretString::new(identity.secret.clone().unwrap()),
        ca: "ca.crt".into(),
        cert: "device.crt".into(),
        key: "device.key".into(),
        username: "anna".into(),
        password_file: password.map(|_| "password".into()),
    };
    let path = dir.join("profile.toml");
    std::fs::write(&path, profile.to_toml()).unwrap();
    path
}

fn refused_kind(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Refused { status, kind, .. } => (status, kind),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[test]
fn put_get_meta_list_rm_round_trip_with_automatic_login() {
    let server = start_server();
    let anna = server.add_member("anna");
    let device = server.issue_device(anna.id);
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(&server, &device, dir.path(), Some("password of anna"));
    let client = Client::open(&profile).unwrap();
    assert_eq!(client.state_path(), dir.path().join("profile.session.toml"));

    // 3 MiB + 5 bytes: several chunks; the client logs in by itself (password file).
    let data = pattern(42, 3 * 1024 * 1024 + 5);
    let file = dir.path().join("contract.pdf");
    std::fs::write(&file, &data).unwrap();
    let doc = client
        .put(
            &file,
            &PutOptions {
                title: Some("Vertrag Müller".into()),
                tags: vec!["signed".into(), "a,b".into()],
                team: true,
                content_type: Some("application/pdf".into()),
                ..PutOptions::default()
            },
        )
        .unwrap();
    assert!(client.state_path().is_file(), "the session was not kept");
    let id = doc["id"].as_str().unwrap().to_owned();
    assert_eq!(doc["name"], "contract.pdf");
    assert_eq!(doc["title"], "Vertrag Müller");
    assert_eq!(doc["tags"], serde_json::json!(["signed", "a,b"]));
    assert_eq!(doc["visibility"], "team");
    assert_eq!(doc["sha256"], sha256_hex(&data));

    let out = dir.path().join("back.pdf");
    assert_eq!(client.get(&id, Some(&out)).unwrap(), data.len() as u64);
    assert!(std::fs::read(&out).unwrap() == data, "downloaded bytes differ");
    assert_eq!(client.meta(&id).unwrap()["content_type"], "application/pdf");
    let listed = client.list("limit=5").unwrap();
    assert_eq!(listed["documents"][0]["id"], id.as_str());

    client.rm(&id).unwrap();
    let (status, kind) = refused_kind(client.get(&id, Some(&out)).unwrap_err());
    assert_eq!((status, kind.as_str()), (404, "not-found"));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "a failed download touched the old file"
    );
}

#[test]
fn an_ended_session_is_renewed_once_and_logout_forgets_it() {
    let server = start_server();
    let anna = server.add_member("anna");
    let device = server.issue_device(anna.id);
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(&server, &device, dir.path(), Some("password of anna"));
    let client = Client::open(&profile).unwrap();
    client.list("").unwrap();
    let first = std::fs::read_to_string(client.state_path()).unwrap();

    // The server ends every session of the user: the client logs in again by itself.
    server.vault().end_user_sessions(anna.id).unwrap();
    client.list("").unwrap();
    let second = std::fs::read_to_string(client.state_path()).unwrap();
    assert_ne!(first, second, "the client did not log in again");

    client.logout().unwrap();
    assert!(!client.state_path().exists(), "logout kept the session file");
    let now = coffer::model::Timestamp::now();
    let live = server.vault().live_sessions(now).unwrap();
    assert!(
        live.iter().all(|s| s.device != device.device_id()),
        "logout left the session on the server"
    );
}

#[test]
fn without_a_password_the_client_asks_for_a_login_and_a_wrong_one_is_refused() {
    let server = start_server();
    let anna = server.add_member("anna");
    let device = server.issue_device(anna.id);
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(&server, &device, dir.path(), None);
    let client = Client::open(&profile).unwrap();
    match client.list("") {
        Err(ClientError::NotLoggedIn(p)) => assert!(p.contains("profile.toml")),
        other => panic!("expected NotLoggedIn, got {:?}", other.map(|_| ())),
    }
    let wrong = client
        .login(&Passphrase::new("not the password".into()), None)
        .unwrap_err();
    let (status, kind) = refused_kind(wrong);
    assert_eq!((status, kind.as_str()), (401, "login-failed"));
    assert!(!client.state_path().exists());
    client.login(&Passphrase::new("password of anna".into()), None).unwrap();
    assert_eq!(client.list("").unwrap()["documents"], serde_json::json!([]));
}

#[test]
fn a_wrong_secret_or_a_broken_profile_is_a_clear_error() {
    let server = start_server();
    let anna = server.add_member("anna");
    let mut device = server.issue_device(anna.id);
    let dir = tempfile::tempdir().unwrap();
    device.secret = Some("A".repeat(40));
    let profile = write_profile(&server, &device, dir.path(), Some("password of anna"));
    let err = Client::open(&profile).unwrap().list("").unwrap_err();
    let shown = err.to_string();
    let (status, kind) = refused_kind(err);
    assert_eq!((status, kind.as_str()), (401, "signature-mismatch"), "{shown}");

    std::fs::write(&profile, "endpoint = \"https://x\"\nunknown = 1\n").unwrap();
    let err = Client::open(&profile).err().expect("a broken profile opens");
    assert!(err.to_string().contains("profile.toml"), "{err}");
    std::fs::write(dir.path().join("device.key"), "not a key").unwrap();
    let profile = write_profile(&server, &device, dir.path(), None);
    std::fs::write(dir.path().join("device.key"), "not a key").unwrap();
    let err = Client::open(&profile).err().expect("a profile with a bad key opens");
    assert!(err.to_string().contains("device.key"), "{err}");
}
