//! Guards of the `coffer` binary added with the HTTP hardening, driven as the real
//! binary: `serve --dev` refuses a production coffer and listens only where its own
//! command line says; `device issue` refuses an unsafe `--out` and a short PKCS#12
//! password; `serve` takes its limits from the configuration, which `config check`
//! validates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::binary::{Cli, Running, expect_ok, isolate_cheap, text};
use common::client::{ClientSetup, Connection, Signer, raw_tls, read_response};
use common::*;

/// `coffer` on a [`TestDirs`]: the test passphrase, loopback (IPv4 and IPv6) allowed.
const CLI: Cli = Cli {
    env: &[("COFFER_ALLOW_CIDRS", "127.0.0.0/8, ::1")],
};

/// `coffer` in `cwd` with default directories (`./keys`, `./data`).
fn coffer_in(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer"));
    isolate_cheap(&mut cmd, cwd);
    cmd
}

/// Panics unless the command exited with `code`; returns stderr.
#[track_caller]
fn expect_exit(out: Output, code: i32, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

#[track_caller]
fn fails(dirs: &TestDirs, args: &[&str]) -> String {
    expect_exit(
        CLI.coffer(dirs).args(args).output().expect("run coffer"),
        1,
        &format!("coffer {args:?}"),
    )
}

/// The rows (after the header) of a `list` command's table.
fn rows(stdout: &str) -> Vec<String> {
    stdout.lines().skip(1).map(str::to_owned).collect()
}

fn device_rows(dirs: &TestDirs) -> Vec<String> {
    rows(&CLI.ok(dirs, &["device", "list"]))
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let bytes = file_bytes(&p);
            (p, bytes)
        })
        .collect()
}

/// The IPv4 addresses with a listening TCP socket on `port`, from `/proc/net/tcp` (the
/// printed URL shows 127.0.0.1 for 0.0.0.0 too, so it cannot tell). `None` if the file
/// cannot be read.
fn ipv4_listeners(port: u16) -> Option<Vec<Ipv4Addr>> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        let Some((ip, p)) = local.split_once(':') else { continue };
        if *state != "0A" || u16::from_str_radix(p, 16).ok() != Some(port) {
            continue;
        }
        // The kernel prints the address as a native-endian number.
        let ip = u32::from_str_radix(ip, 16).ok()?;
        out.push(Ipv4Addr::from(ip.to_ne_bytes()));
    }
    Some(out)
}

/// Panics unless the only IPv4 listener on `addr`'s port is on 127.0.0.1.
#[track_caller]
fn assert_listens_on_loopback_only(addr: SocketAddr, what: &str) {
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST, "{what}: printed address {addr}");
    match ipv4_listeners(addr.port()) {
        Some(found) => assert_eq!(
            found,
            vec![Ipv4Addr::LOCALHOST],
            "{what}: listening sockets on port {}",
            addr.port()
        ),
        None => eprintln!("note: /proc/net/tcp unreadable; {what}: checked the printed address only"),
    }
}

// ---- 8. serve --dev refuses a coffer made by init ----

#[test]
fn serve_dev_refuses_a_coffer_made_by_init_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut init = coffer_in(d);
    init.env("COFFER_PASSPHRASE", PASSPHRASE).arg("init");
    expect_ok(init.output().unwrap(), "coffer init");
    let keys_before = snapshot(&d.join("keys"));
    let data_before = snapshot(&d.join("data"));
    let passphrase_file = write_file(d, "passphrase.txt", &format!("{PASSPHRASE}\n"));

    // With the real passphrase at hand, from the environment or a file: the dangerous
    // case, where `--dev` could open the coffer and add its demo user.
    /// (what, environment, global flags)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: [Case; 2] = [
        ("COFFER_PASSPHRASE", vec![("COFFER_PASSPHRASE", PASSPHRASE)], vec![]),
        (
            "--passphrase-file",
            vec![],
            vec!["--passphrase-file", passphrase_file.to_str().unwrap()],
        ),
    ];
    for (what, env, global) in cases {
        let mut cmd = coffer_in(d);
        cmd.envs(env)
            .args(global)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"]);
        let mut run = Running::spawn(cmd);
        let (status, stderr) = run.wait_exit(Duration::from_secs(30), &format!("serve --dev ({what})"));
        assert_eq!(status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("not made by `coffer serve --dev`"),
            "{what}: the message does not say why: {stderr}"
        );
        assert!(!d.join("keys/dev").exists(), "{what}: keys/dev was created");
        assert_eq!(
            snapshot(&d.join("keys")),
            keys_before,
            "{what}: the keys directory changed"
        );
        assert_eq!(
            snapshot(&d.join("data")),
            data_before,
            "{what}: the data directory changed"
        );
    }
    let mut list = coffer_in(d);
    list.env("COFFER_PASSPHRASE", PASSPHRASE).args(["user", "list"]);
    let users = expect_ok(list.output().unwrap(), "user list");
    assert!(rows(&users).is_empty(), "users were added: {users}");
}

// ---- 9. serve --dev listens where its command line says ----

#[test]
fn serve_dev_listen_flag_wins_over_environment_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "coffer.toml", "listen = \"0.0.0.0:0\"\n");
    let mut cmd = coffer_in(d);
    cmd.env("COFFER_LISTEN", "0.0.0.0:0")
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"]);
    let mut run = Running::spawn(cmd);
    let addr = run.listening_on("serve --dev --listen 127.0.0.1:0");
    assert_ne!(addr.port(), 0);
    assert_listens_on_loopback_only(addr, "serve --dev --listen 127.0.0.1:0 with COFFER_LISTEN=0.0.0.0:0");
    let stderr = run.kill();
    assert!(!stderr.contains("beyond this machine"), "{stderr}");
}

#[test]
fn serve_dev_ignores_listen_from_environment_and_file() {
    // Without --listen, --dev must use 127.0.0.1:8443; the test needs that port free.
    match std::net::TcpListener::bind("127.0.0.1:8443") {
        Ok(probe) => drop(probe),
        Err(e) => {
            eprintln!("skipped: 127.0.0.1:8443 is not free ({e})");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    /// (what, ./coffer.toml, environment)
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
    let cases: [Case; 2] = [
        ("COFFER_LISTEN=0.0.0.0:0", "", Some(("COFFER_LISTEN", "0.0.0.0:0"))),
        ("listen in ./coffer.toml", "listen = \"0.0.0.0:0\"\n", None),
    ];
    let mut wrong = Vec::new();
    for (what, file, env) in cases {
        write_file(d, "coffer.toml", file);
        let mut cmd = coffer_in(d);
        cmd.envs(env).args(["serve", "--dev"]);
        let mut run = Running::spawn(cmd);
        let addr = run.listening_on(&format!("serve --dev with {what}"));
        // The printed URL shows 127.0.0.1 for 0.0.0.0 as well: ask the kernel.
        let listeners = ipv4_listeners(addr.port());
        let stderr = run.kill();
        if addr != SocketAddr::from(([127, 0, 0, 1], 8443))
            || listeners.as_ref().is_some_and(|l| *l != [Ipv4Addr::LOCALHOST])
        {
            wrong.push(format!(
                "with {what}: printed {addr}, IPv4 listeners {listeners:?}; stderr: {stderr}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "serve --dev without --listen must listen on 127.0.0.1:8443 only:\n{}",
        wrong.join("\n")
    );
}

// ---- 10. device issue --out ----

#[track_caller]
fn issue_refused(dirs: &TestDirs, out: &Path, needle: &str, what: &str) {
    let stderr = fails(
        dirs,
        &["device", "issue", "--user", "alice", "--out", out.to_str().unwrap()],
    );
    assert!(
        stderr.contains(needle),
        "{what}: the message does not say {needle:?}: {stderr}"
    );
}

#[test]
fn device_issue_refuses_an_unsafe_out_and_keeps_a_safe_ones_mode() {
    use std::os::unix::fs::MetadataExt;
    let dirs = CLI.initialised_with_alice();
    let root = dirs.root.path();

    for m in [0o777, 0o770, 0o702] {
        let out = root.join(format!("open-{m:o}"));
        std::fs::create_dir(&out).unwrap();
        set_mode(&out, m);
        issue_refused(&dirs, &out, "writable by others", &format!("--out with mode {m:o}"));
        assert!(files_under(&out).is_empty(), "files written into a {m:o} directory");
        assert_eq!(mode(&out), m, "the mode of the refused directory changed");
    }

    let file = write_file(root, "a-file", "not a directory\n");
    issue_refused(&dirs, &file, "not a directory", "--out naming a file");
    assert_file_unchanged(&file, b"not a directory\n", "device issue --out FILE");

    // A symlink is not followed, even to a directory of ours.
    let target = root.join("target-dir");
    std::fs::create_dir(&target).unwrap();
    set_mode(&target, 0o700);
    let link = root.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    issue_refused(&dirs, &link, "not a directory", "--out naming a symlink");
    assert!(files_under(&target).is_empty(), "files written through a symlink");

    if rustix::process::geteuid().is_root() {
        // Root can write anywhere, so only the owner check stops it here.
        let theirs = root.join("someone-elses");
        std::fs::create_dir(&theirs).unwrap();
        set_mode(&theirs, 0o755);
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        issue_refused(&dirs, &theirs, "not owned by this user", "--out owned by another user");
        assert!(files_under(&theirs).is_empty());
    }

    assert!(device_rows(&dirs).is_empty(), "a refused issue registered a device");

    let out = root.join("mine");
    std::fs::create_dir(&out).unwrap();
    set_mode(&out, 0o755);
    let stdout = CLI.ok(
        &dirs,
        &["device", "issue", "--user", "alice", "--out", out.to_str().unwrap()],
    );
    assert!(stdout.starts_with("issued device "), "{stdout}");
    assert_eq!(files_under(&out).len(), 5, "{:?}", files_under(&out));
    assert_eq!(mode(&out), 0o755, "an existing --out changed its mode");
    assert_eq!(
        std::fs::metadata(&out).unwrap().uid(),
        rustix::process::geteuid().as_raw()
    );
    assert_eq!(device_rows(&dirs).len(), 1);
}

// ---- 11. short PKCS#12 passwords ----

#[test]
fn device_issue_refuses_a_pkcs12_password_under_twelve_characters() {
    let dirs = CLI.initialised_with_alice();
    let root = dirs.root.path();
    // 11 characters; the second is 22 bytes, so characters are what counts.
    for (i, password) in ["elevenchars", "äöüäöüäöüäö"].into_iter().enumerate() {
        assert_eq!(password.chars().count(), 11);
        let file = write_file(root, &format!("short-{i}.txt"), &format!("{password}\n"));
        let out = root.join(format!("out-{i}"));
        let stderr = fails(
            &dirs,
            &[
                "device",
                "issue",
                "--user",
                "alice",
                "--out",
                out.to_str().unwrap(),
                "--p12-password-file",
                file.to_str().unwrap(),
            ],
        );
        assert!(stderr.contains("too short"), "{password:?}: {stderr}");
        assert!(!out.exists(), "{password:?}: --out was created");
    }
    assert!(device_rows(&dirs).is_empty(), "a refused issue registered a device");

    // Twelve characters (and a trailing newline, which is not part of it) are enough.
    let file = write_file(root, "twelve.txt", "twelve chars\n");
    let out = root.join("out-ok");
    CLI.ok(
        &dirs,
        &[
            "device",
            "issue",
            "--user",
            "alice",
            "--out",
            out.to_str().unwrap(),
            "--p12-password-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(files_under(&out).len(), 5);
    assert_eq!(device_rows(&dirs).len(), 1);
}

// ---- 12. limits in the configuration ----

#[test]
fn config_check_validates_the_new_limits_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = "[limits]\nmax_connections = 64\nmax_uploads = 2\nmax_downloads = 3\n\
                max_transfers_per_device = 1\nheader_timeout_secs = 5\nbody_idle_timeout_secs = 7\n";
    write_file(d, "coffer.toml", good);
    let stdout = expect_ok(coffer_in(d).args(["config", "check"]).output().unwrap(), "config check");
    assert!(stdout.contains("coffer.toml: ok"), "{stdout}");

    let bad = [
        ("max_connections", "0"),
        ("max_connections", "1000001"),
        ("max_uploads", "0"),
        ("max_uploads", "10001"),
        ("max_downloads", "0"),
        ("max_transfers_per_device", "0"),
        ("max_transfers_per_device", "1001"),
        ("header_timeout_secs", "0"),
        ("body_idle_timeout_secs", "0"),
        ("body_idle_timeout_secs", "3601"),
    ];
    for (key, value) in bad {
        write_file(d, "coffer.toml", &format!("[limits]\n{key} = {value}\n"));
        let what = format!("limits.{key} = {value}");
        let stderr = expect_exit(coffer_in(d).args(["config", "check"]).output().unwrap(), 1, &what);
        assert!(
            stderr.contains(&format!("limits.{key}")),
            "{what}: the key is not named: {stderr}"
        );
    }
    // From the environment over a good file, too; and other commands refuse it as well.
    write_file(d, "coffer.toml", good);
    let stderr = expect_exit(
        coffer_in(d)
            .env("COFFER_MAX_UPLOADS", "0")
            .args(["config", "check"])
            .output()
            .unwrap(),
        1,
        "COFFER_MAX_UPLOADS=0",
    );
    assert!(stderr.contains("limits.max_uploads"), "{stderr}");
    let stderr = expect_exit(
        coffer_in(d)
            .env("COFFER_BODY_IDLE_TIMEOUT_SECS", "0")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap(),
        1,
        "serve with COFFER_BODY_IDLE_TIMEOUT_SECS=0",
    );
    assert!(stderr.contains("limits.body_idle_timeout_secs"), "{stderr}");
}

#[test]
fn serve_takes_transfer_limits_and_the_idle_timeout_from_the_configuration() {
    let dirs = CLI.initialised_with_alice();
    let root = dirs.root.path();
    let out = root.join("phone");
    let p12 = write_file(root, "p12.txt", "a long enough password\n");
    CLI.ok(
        &dirs,
        &[
            "device",
            "issue",
            "--user",
            "alice",
            "--out",
            out.to_str().unwrap(),
            "--p12-password-file",
            p12.to_str().unwrap(),
        ],
    );
    let config = write_file(
        root,
        "limits.toml",
        "[limits]\nmax_transfers_per_device = 1\nbody_idle_timeout_secs = 1\n",
    );
    let mut cmd = CLI.coffer(&dirs);
    // Without waiting out the 10 s after a start in which writes are refused.
    cmd.env("COFFER_MAX_FUTURE_WRITE_SECS", "0");
    cmd.arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let mut server = Running::spawn(cmd);
    let addr = server.listening_on("coffer serve");

    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    let (ca, cert, key) = (read("ca.crt"), read("device.crt"), read("device.key"));
    // The device's SigV4 credentials from the profile `device issue` wrote.
    let profile = coffer::client::Profile::load(&out.join("profile.toml")).unwrap();
    let mut signer = Signer {
        access_key: profile.access_key_id.clone(),
        secret: profile.secret_access_key.expose().to_owned(),
        region: profile.region.clone(),
        token: None,
    };
    let client = ClientSetup::new(&ca, Some((&cert, &key))).build();
    // Requests signed in the second the server started are refused.
    std::thread::sleep(Duration::from_millis(1100));
    let mut conn = Connection::open(client.clone(), addr, "localhost").expect("TLS connection");
    conn.set_signer(Some(signer.clone()));
    let login = conn
        .request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json")],
            br#"{"username":"alice","password":"correct horse battery"}"#,
        )
        .expect("login");
    assert_eq!(login.status, 200, "{}", text(&login.body));
    signer.token = Some(login.json()["token"].as_str().unwrap().to_owned());
    conn.set_signer(Some(signer.clone()));
    let res = conn.request("GET", "/v1/documents", &[], b"").expect("listing");
    assert_eq!(res.status, 200, "{}", text(&res.body));

    // An upload that sends half its body and stalls holds the device's only slot...
    let mut stalled = raw_tls(client, addr);
    let body_hash = coffer::sigv4::sha256_hex(&[7u8; 1000]);
    let headers = [("x-coffer-name", "s.bin"), ("x-amz-content-sha256", body_hash.as_str())];
    let mut head = String::from("POST /v1/documents HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    for (n, v) in signer.sign("POST", "/v1/documents", "localhost", &headers, &body_hash) {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&[7u8; 500]).unwrap();
    stalled.flush().unwrap();
    // Let the upload take the slot before the listings start racing it.
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let res = conn.request("GET", "/v1/documents", &[], b"").expect("listing");
        if res.status != 200 {
            break res;
        }
        if Instant::now() >= deadline {
            let early = read_response(&mut BufReader::new(&mut stalled));
            panic!("the listing is never refused while the upload runs; the upload got {early:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(refused.status, 429, "{}", text(&refused.body));
    assert_eq!(refused.problem(), "too-many-transfers");
    assert!(refused.header("retry-after").is_some(), "429 without Retry-After");
    // ...until the configured one-second idle timeout ends it.
    let res = read_response(&mut BufReader::new(stalled)).expect("an answer to the stalled upload");
    assert_eq!(res.status, 408, "{}", text(&res.body));
    assert_eq!(res.problem(), "request-timeout");
    let res = conn.request("GET", "/v1/documents", &[], b"").expect("listing");
    assert_eq!(res.status, 200, "{}", text(&res.body));
    assert_eq!(
        res.json()["documents"],
        serde_json::json!([]),
        "the stalled upload was kept"
    );
    server.kill();
}

#[test]
fn config_check_applies_the_global_flags_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .current_dir(dir.path())
        .env_remove("COFFER_CONFIG")
        .args(["--cache-mib", "0", "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache_mib"));
}

#[test]
fn serve_names_devices_whose_certificates_expire_within_thirty_days() {
    let dirs = CLI.initialised_with_alice();
    let root = dirs.root.path();
    let p12 = write_file(root, "p12.txt", "a long enough password\n");
    let issue = |dir: &str, days: &str| {
        let out = root.join(dir);
        let res = CLI
            .coffer(&dirs)
            .env("COFFER_DEVICE_CERT_DAYS", days)
            .args(["device", "issue", "--user", "alice", "--out"])
            .arg(&out)
            .arg("--p12-password-file")
            .arg(&p12)
            .output()
            .unwrap();
        assert!(res.status.success(), "{}", text(&res.stderr));
        coffer::client::Profile::load(&out.join("profile.toml"))
            .unwrap()
            .access_key_id
    };
    let soon = issue("soon", "10");
    let later = issue("later", "365");
    let mut cmd = CLI.coffer(&dirs);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let mut server = Running::spawn(cmd);
    server.listening_on("coffer serve");
    let stderr = server.kill();
    assert!(
        stderr.contains(&format!("device {soon} expires in 9 day(s)"))
            || stderr.contains(&format!("device {soon} expires in 10 day(s)")),
        "{stderr}"
    );
    assert!(!stderr.contains(&later), "{stderr}");
}
