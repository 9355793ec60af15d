//! `coffer erp stats|purge` as the real binary: on the database opened directly (server
//! stopped) and through the running server's admin socket, where the counters of the
//! live cache show; and a configuration error in `[erp]` named before any passphrase is
//! asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::binary::{Cli, Running, expect_ok, text};
use common::client::{ClientSetup, Connection, Signer, unique_nonce};
use common::*;

const CLI: Cli = Cli {
    env: &[
        ("COFFER_ALLOW_CIDRS", "127.0.0.0/8"),
        ("COFFER_MAX_FUTURE_WRITE_SECS", "0"),
    ],
};

const CONFIG: &str = r#"
[erp.collections.customers]
read_roles = ["member", "integration"]
ttl = "15m"

[erp.collections.prices]
read_roles = ["admin"]
"#;

fn with_config(mut cmd: Command, config: &Path) -> Command {
    cmd.env("COFFER_CONFIG", config);
    cmd
}

fn coffer(dirs: &TestDirs, config: &Path, args: &[&str]) -> String {
    let mut cmd = with_config(CLI.coffer(dirs), config);
    expect_ok(cmd.args(args).output().unwrap(), &format!("coffer {args:?}"))
}

fn stats(dirs: &TestDirs, config: &Path, through_socket: bool) -> serde_json::Value {
    let cmd = if through_socket {
        CLI.without_passphrase(dirs)
    } else {
        CLI.coffer(dirs)
    };
    let mut cmd = with_config(cmd, config);
    let out = expect_ok(cmd.args(["erp", "stats", "--json"]).output().unwrap(), "erp stats");
    serde_json::from_str(&out).unwrap()
}

fn row<'v>(stats: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
    stats
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {stats}"))
}

/// An integration identity `bot` and its device (certificate, key, secret).
fn integration_device(dirs: &TestDirs, config: &Path) -> (String, String, String, String, String) {
    let password = write_file(dirs.root.path(), "bot.password", "a long enough password\n");
    coffer(
        dirs,
        config,
        &[
            "user",
            "add",
            "bot",
            "--role",
            "integration",
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    let out: PathBuf = dirs.root.path().join("bot-device");
    let p12 = write_file(dirs.root.path(), "bot.p12pass", "a long enough password\n");
    let mut cmd = with_config(CLI.coffer(dirs), config);
    cmd.args(["device", "issue", "--user", "bot", "--out"])
        .arg(&out)
        .arg("--p12-password-file")
        .arg(&p12);
    expect_ok(cmd.output().unwrap(), "device issue");
    let profile = coffer::client::Profile::load(&out.join("profile.toml")).unwrap();
    let read = |f: &Path| std::fs::read_to_string(out.join(f)).unwrap();
    (
        profile.access_key_id.clone(),
        profile.secret_access_key.expose().to_owned(),
        read(&profile.ca),
        read(&profile.cert),
        read(&profile.key),
    )
}

#[test]
fn stats_and_purge_work_with_the_server_stopped_and_through_its_socket() {
    let dirs = CLI.initialised_with_alice();
    let config = write_file(dirs.root.path(), "coffer.toml", CONFIG);
    let (id, secret, ca, cert, key) = integration_device(&dirs, &config);

    // Nothing stored yet, no server: configured collections with zero records, no counters.
    let s = stats(&dirs, &config, false);
    assert_eq!(row(&s, "customers")["records"], 0);
    assert!(row(&s, "customers")["counters"].is_null(), "{s}");

    let mut cmd = with_config(CLI.coffer(&dirs), &config);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let mut server = Running::spawn(cmd);
    let addr = server.listening_on("coffer serve");
    let client = ClientSetup::new(&ca, Some((&cert, &key))).build();
    let mut conn = Connection::open(client, addr, "localhost").unwrap();
    conn.set_signer(Some(Signer {
        access_key: id,
        secret,
        region: "local".into(),
        token: None,
    }));
    for (k, v) in [("C-1", r#"{"name":"Acme"}"#), ("C-2", r#"{"name":"Globex"}"#)] {
        let nonce = unique_nonce();
        let r = conn
            .request(
                "PUT",
                &format!("/v1/erp/customers/{k}"),
                &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
                v.as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", text(&r.body));
    }
    for _ in 0..3 {
        let r = conn.request("GET", "/v1/erp/customers/C-1", &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", text(&r.body));
    }
    let r = conn.request("GET", "/v1/erp/customers/nobody", &[], b"").unwrap();
    assert_eq!(r.status, 404);

    // Through the socket (no passphrase given): the live counters.
    let s = stats(&dirs, &config, true);
    let customers = row(&s, "customers");
    assert_eq!(customers["records"], 2, "{s}");
    assert_eq!(customers["bytes"], 32, "{s}");
    assert_eq!(customers["counters"]["hits"], 3, "{s}");
    assert_eq!(customers["counters"]["misses"], 1, "{s}");
    assert_eq!(row(&s, "prices")["records"], 0);
    let table = expect_ok(
        with_config(CLI.without_passphrase(&dirs), &config)
            .args(["erp", "stats"])
            .output()
            .unwrap(),
        "erp stats",
    );
    assert!(table.contains("customers") && table.contains("HITS"), "{table}");

    let out = expect_ok(
        with_config(CLI.without_passphrase(&dirs), &config)
            .args(["erp", "purge", "customers", "C-1"])
            .output()
            .unwrap(),
        "erp purge KEY",
    );
    assert!(out.contains("removed"), "{out}");
    let r = conn.request("GET", "/v1/erp/customers/C-1", &[], b"").unwrap();
    assert_eq!(r.status, 404, "purged through the socket, gone at once");
    drop(conn);
    drop(server);

    // Server stopped: the database is opened directly.
    let s = stats(&dirs, &config, false);
    assert_eq!(row(&s, "customers")["records"], 1, "{s}");
    let out = coffer(&dirs, &config, &["erp", "purge", "customers"]);
    assert!(out.contains("removed 1 record"), "{out}");
    let out = coffer(&dirs, &config, &["erp", "purge", "customers"]);
    assert!(out.contains("nothing removed"), "{out}");
    let bad = CLI
        .coffer(&dirs)
        .env("COFFER_CONFIG", &config)
        .args(["erp", "purge", "customers", ".."])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad.stderr));
}

#[test]
fn a_bad_erp_section_is_named_before_the_passphrase() {
    let dirs = CLI.initialised_with_alice();
    for (config, key) in [
        (
            "[erp.collections.customers]\nread_roles = [\"member\"]\nupstream = \"https://erp.internal/customers\"\n",
            "erp.collections.customers.upstream",
        ),
        (
            "[erp.collections.customers]\nread_roles = [\"member\"]\nupstream = \"https://erp.internal/c/{key}\"\nupstream_bearer_token_file = \"/nonexistent/token\"\n",
            "/nonexistent/token",
        ),
    ] {
        let path = write_file(dirs.root.path(), "bad.toml", config);
        let out = CLI
            .without_passphrase(&dirs)
            .env("COFFER_CONFIG", &path)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(!stderr.to_lowercase().contains("passphrase"), "{stderr}");
    }
}
