//! The admin subcommands of the `coffer` binary: `init` (PKI files), `pins`,
//! `cert renew-server`, `user`, `device` and `config check`, driven as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use coffer::pki::{KeyDer, San, cert_info, from_pem};
use coffer::secret::Passphrase;
use common::*;
use sha2::{Digest, Sha256};

/// `coffer --data-dir .. --keys-dir ..` for `dirs`, in its temp dir, with the test
/// passphrase and cheap argon2id in the environment.
fn coffer(dirs: &TestDirs) -> Command {
    let mut cmd = coffer_command(&dirs.paths);
    isolate(&mut cmd, dirs.root.path());
    cmd.envs(CHEAP_KDF_ENV).env("COFFER_PASSPHRASE", PASSPHRASE);
    cmd
}

/// `coffer` with no directory flags and nothing in the environment, in `cwd`.
fn bare_coffer(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer"));
    isolate(&mut cmd, cwd);
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("run the coffer binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics with the command's output unless it succeeded; returns stdout.
#[track_caller]
fn expect_ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
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

/// Runs `coffer ARGS` for `dirs` and returns stdout, panicking on failure.
#[track_caller]
fn ok(dirs: &TestDirs, args: &[&str]) -> String {
    expect_ok(output(coffer(dirs).args(args)), &format!("coffer {args:?}"))
}

/// Runs `coffer ARGS` for `dirs`, expects exit `code`, returns stderr.
#[track_caller]
fn fails(dirs: &TestDirs, args: &[&str], code: i32) -> String {
    expect_exit(output(coffer(dirs).args(args)), code, &format!("coffer {args:?}"))
}

/// A coffer made by `coffer init` (cheap argon2id) with the given `--san`s.
fn initialised_with(sans: &[&str]) -> TestDirs {
    let dirs = empty_dirs();
    let mut args = vec!["init"];
    args.extend(CHEAP_KDF);
    for s in sans {
        args.extend(["--san", s]);
    }
    ok(&dirs, &args);
    dirs
}

fn initialised() -> TestDirs {
    initialised_with(&[])
}

fn keys_file(dirs: &TestDirs, name: &str) -> PathBuf {
    dirs.paths.keys_dir.join(name)
}

/// The DER of the first certificate of a PEM file.
fn cert_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    from_pem(&pem, "CERTIFICATE", "certificate").expect("PEM certificate")
}

/// `sha256/` + base64(SHA-256(SPKI DER)), computed here rather than by coffer.
fn pin_of(spki_der: &[u8]) -> String {
    format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
    )
}

/// The pin of the server certificate's key, and of the next key, read from the files.
fn pins_from_files(dirs: &TestDirs) -> (String, String) {
    let server = cert_info(&cert_der(&keys_file(dirs, "server.crt")), "server.crt").unwrap();
    let next_pem = std::fs::read_to_string(keys_file(dirs, "server-next.pub")).unwrap();
    let next_spki = from_pem(&next_pem, "PUBLIC KEY", "server-next.pub").expect("PEM public key");
    (pin_of(&server.spki), pin_of(&next_spki))
}

/// `coffer pins` without any passphrase source: (current, next), checking the format.
fn pins_from_command(dirs: &TestDirs) -> (String, String) {
    let mut cmd = coffer_command(&dirs.paths);
    isolate(&mut cmd, dirs.root.path());
    let stdout = expect_ok(output(cmd.arg("pins")), "coffer pins");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let current = lines[0]
        .strip_suffix("  current server key")
        .unwrap_or_else(|| panic!("first line: {stdout}"));
    let next = lines[1]
        .strip_suffix("  next server key (backup pin)")
        .unwrap_or_else(|| panic!("second line: {stdout}"));
    (current.to_owned(), next.to_owned())
}

fn sans(names: &[&str]) -> Vec<San> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

fn server_sans(dirs: &TestDirs) -> Vec<San> {
    cert_info(&cert_der(&keys_file(dirs, "server.crt")), "server.crt")
        .unwrap()
        .sans
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `openssl verify -CAfile CA CERT` succeeds (skipped without openssl).
#[track_caller]
fn assert_openssl_verifies(ca: &Path, cert: &Path) {
    if !have("openssl") {
        eprintln!("openssl not found: skipping the openssl chain check");
        return;
    }
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out.stdout).contains("OK"),
        "openssl verify {}: {}{}",
        cert.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---- init and pins ----

#[test]
fn init_writes_the_pki_files_and_pins_match_them() {
    let dirs = empty_dirs();
    let mut args = vec!["init"];
    args.extend(CHEAP_KDF);
    let stdout = ok(&dirs, &args);
    for f in ["master.key", "ca.crt", "server.crt", "server-next.pub"] {
        assert!(keys_file(&dirs, f).is_file(), "keys/{f} missing after init");
    }
    assert!(dirs.database().is_file(), "data/coffer.redb missing after init");
    // Private keys are sealed in the database, never in clear on disk.
    for f in files_under(&dirs.paths.keys_dir) {
        let bytes = file_bytes(&f);
        assert!(
            !contains_bytes(&bytes, b"PRIVATE KEY"),
            "{} holds a clear private key",
            f.display()
        );
    }
    // The default names.
    assert_eq!(server_sans(&dirs), sans(&["localhost", "127.0.0.1", "::1"]));
    assert_openssl_verifies(&keys_file(&dirs, "ca.crt"), &keys_file(&dirs, "server.crt"));

    let (current, next) = pins_from_files(&dirs);
    assert_ne!(current, next, "the backup pin must be a different key");
    assert_eq!(current.len(), "sha256/".len() + 44);
    // init prints both pins.
    assert!(
        stdout.contains(&current) && stdout.contains(&next),
        "init output lacks the pins: {stdout}"
    );
    // `coffer pins` needs no passphrase and prints the same.
    assert_eq!(pins_from_command(&dirs), (current.clone(), next.clone()));

    let mut cmd = coffer_command(&dirs.paths);
    isolate(&mut cmd, dirs.root.path());
    let json = expect_ok(output(cmd.args(["pins", "--json"])), "coffer pins --json");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    let obj = v.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 2, "{json}");
    assert_eq!(v["current"], serde_json::Value::String(current));
    assert_eq!(v["next"], serde_json::Value::String(next));
}

#[test]
fn init_names_the_given_sans_and_refuses_a_bad_one() {
    let dirs = initialised_with(&["coffer.example.com", "10.1.2.3", "Files.Example.org", "fd00::7"]);
    assert_eq!(
        server_sans(&dirs),
        sans(&["coffer.example.com", "10.1.2.3", "files.example.org", "fd00::7"])
    );

    let dirs = empty_dirs();
    let mut args = vec!["init", "--san", "not a host name"];
    args.extend(CHEAP_KDF);
    let stderr = fails(&dirs, &args, 2);
    assert!(stderr.contains("not a host name"), "{stderr}");
    assert!(!dirs.key_file().exists(), "a refused init left a key file");
    assert!(!dirs.database().exists(), "a refused init left a database");
}

// ---- cert renew-server ----

#[test]
fn renew_server_changes_the_certificate_but_not_the_key() {
    let dirs = initialised_with(&["coffer.example.com", "10.1.2.3"]);
    let cert_path = keys_file(&dirs, "server.crt");
    let ca_before = file_bytes(&keys_file(&dirs, "ca.crt"));
    let next_before = file_bytes(&keys_file(&dirs, "server-next.pub"));
    let cert_before = file_bytes(&cert_path);
    let info_before = cert_info(&cert_der(&cert_path), "before").unwrap();
    let pins_before = pins_from_command(&dirs);

    // Without --san: the names of the current certificate are kept.
    let stdout = ok(&dirs, &["cert", "renew-server"]);
    assert!(stdout.contains("renewed"), "{stdout}");
    let cert_after = file_bytes(&cert_path);
    assert_ne!(cert_after, cert_before, "renew-server did not write a new certificate");
    let info = cert_info(&cert_der(&cert_path), "after").unwrap();
    assert_eq!(info.spki, info_before.spki, "the server key changed");
    assert_eq!(info.sans, sans(&["coffer.example.com", "10.1.2.3"]));
    assert!(info.not_after >= info_before.not_after);
    assert_eq!(pins_from_command(&dirs), pins_before, "pins changed on renewal");
    assert_eq!(pins_from_files(&dirs), pins_before);
    assert_openssl_verifies(&keys_file(&dirs, "ca.crt"), &cert_path);

    // With --san: the names are replaced.
    let second_before = cert_after;
    ok(
        &dirs,
        &[
            "cert",
            "renew-server",
            "--san",
            "new.example.com",
            "--san",
            "192.168.7.9",
        ],
    );
    let info = cert_info(&cert_der(&cert_path), "replaced").unwrap();
    assert_ne!(file_bytes(&cert_path), second_before);
    assert_eq!(info.sans, sans(&["new.example.com", "192.168.7.9"]));
    assert_eq!(info.spki, info_before.spki, "the server key changed");
    assert_eq!(pins_from_command(&dirs), pins_before, "pins changed on renewal");
    assert_openssl_verifies(&keys_file(&dirs, "ca.crt"), &cert_path);

    // The lifetime comes from the configuration (here the environment).
    let out = output(
        coffer(&dirs)
            .env("COFFER_SERVER_CERT_DAYS", "10")
            .args(["cert", "renew-server"]),
    );
    expect_ok(out, "renew-server with COFFER_SERVER_CERT_DAYS=10");
    let info = cert_info(&cert_der(&cert_path), "short").unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (info.not_after - (now + 10 * 86_400)).abs() < 3_600,
        "not_after {} is not 10 days from now ({now})",
        info.not_after
    );
    assert_eq!(info.sans, sans(&["new.example.com", "192.168.7.9"]));
    assert_eq!(pins_from_command(&dirs), pins_before);

    // The CA and the next key are untouched.
    assert_file_unchanged(&keys_file(&dirs, "ca.crt"), &ca_before, "renew-server");
    assert_file_unchanged(&keys_file(&dirs, "server-next.pub"), &next_before, "renew-server");

    // It needs the passphrase: a wrong one changes nothing.
    let current = file_bytes(&cert_path);
    let out = output(
        coffer(&dirs)
            .env("COFFER_PASSPHRASE", WRONG_PASSPHRASE)
            .args(["cert", "renew-server"]),
    );
    expect_exit(out, 2, "renew-server with a wrong passphrase");
    assert_file_unchanged(&cert_path, &current, "renew-server with a wrong passphrase");
}

// ---- users ----

/// (name, role, status, id) rows of `coffer user list`.
fn user_rows(dirs: &TestDirs) -> Vec<(String, String, String, String)> {
    let stdout = ok(dirs, &["user", "list"]);
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(header.starts_with("name"), "{stdout}");
    lines
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 4, "user row {l:?}");
            (w[0].to_owned(), w[1].to_owned(), w[2].to_owned(), w[3].to_owned())
        })
        .collect()
}

/// `coffer user add NAME --role ROLE --password-file F`; returns the printed id.
fn add_user_cli(dirs: &TestDirs, name: &str, role: &str, password: &str) -> String {
    let file = write_file(dirs.root.path(), &format!("{name}.password"), &format!("{password}\n"));
    let stdout = ok(
        dirs,
        &[
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-file",
            file.to_str().unwrap(),
        ],
    );
    let prefix = format!("added {name} ({role}), id ");
    let id = stdout
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("unexpected output of user add: {stdout}"));
    assert!(is_hex_id(id), "{stdout}");
    id.to_owned()
}

#[test]
fn users_are_added_listed_and_disabled() {
    let dirs = initialised();
    let alice = add_user_cli(&dirs, "alice", "member", "correct horse battery");
    let bob = add_user_cli(&dirs, "bob", "admin", "bob's long password");
    let erp = add_user_cli(&dirs, "erp", "integration", "integration secret!");
    let row = |n: &str, r: &str, s: &str, id: &str| (n.to_owned(), r.to_owned(), s.to_owned(), id.to_owned());
    assert_eq!(
        user_rows(&dirs),
        vec![
            row("alice", "member", "active", &alice),
            row("bob", "admin", "active", &bob),
            row("erp", "integration", "active", &erp),
        ]
    );

    let stdout = ok(&dirs, &["user", "disable", "alice"]);
    assert!(stdout.contains("disabled alice"), "{stdout}");
    assert_eq!(
        user_rows(&dirs),
        vec![
            row("alice", "member", "disabled", &alice),
            row("bob", "admin", "active", &bob),
            row("erp", "integration", "active", &erp),
        ]
    );

    // The password is stored as an argon2id hash with the configured (cheap) cost.
    let vault = open_vault(&dirs.paths);
    let stored = vault.user_by_name("bob").unwrap().expect("bob stored");
    let hash = &stored.body.password_hash;
    assert!(
        hash.starts_with("$argon2id$") && hash.contains("m=64,t=1,p=1"),
        "{hash}"
    );
    assert!(coffer::crypto::kdf::verify_password(
        hash,
        &Passphrase::new("bob's long password".to_owned())
    ));
    assert!(!coffer::crypto::kdf::verify_password(
        hash,
        &Passphrase::new("bob's long passworD".to_owned())
    ));
}

#[test]
fn user_commands_refuse_bad_input() {
    let dirs = initialised();
    add_user_cli(&dirs, "alice", "member", "correct horse battery");

    // Unknown user.
    let stderr = fails(&dirs, &["user", "disable", "nobody"], 1);
    assert!(stderr.contains("nobody") && stderr.contains("no user"), "{stderr}");

    // Duplicate name.
    let pw = write_file(dirs.root.path(), "pw", "another good password\n");
    let pw = pw.to_str().unwrap();
    let stderr = fails(
        &dirs,
        &["user", "add", "alice", "--role", "admin", "--password-file", pw],
        1,
    );
    assert!(stderr.contains("already exists"), "{stderr}");

    // Too short: 11 characters (the trailing newline does not count).
    let short = write_file(dirs.root.path(), "short", "elevenchars\n");
    let stderr = fails(
        &dirs,
        &[
            "user",
            "add",
            "shorty",
            "--role",
            "member",
            "--password-file",
            short.to_str().unwrap(),
        ],
        1,
    );
    assert!(stderr.contains("too short"), "{stderr}");

    // No password file and no terminal.
    let stderr = fails(&dirs, &["user", "add", "noterm", "--role", "member"], 1);
    assert!(stderr.contains("--password-file"), "{stderr}");

    // Unknown role: a usage error.
    fails(
        &dirs,
        &["user", "add", "boss", "--role", "boss", "--password-file", pw],
        2,
    );

    // None of them was added; alice is unchanged.
    let rows = user_rows(&dirs);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str()),
        ("alice", "member", "active")
    );

    // Exactly 12 characters is enough.
    add_user_cli(&dirs, "twelve", "member", "twelve chars");
    assert_eq!(user_rows(&dirs).len(), 2);
}

// ---- devices ----

/// (id, user, status, expires, name) rows of `coffer device list`.
fn device_rows(dirs: &TestDirs) -> Vec<(String, String, String, String, String)> {
    let stdout = ok(dirs, &["device", "list"]);
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(header.starts_with("id"), "{stdout}");
    lines
        .map(|l| {
            let mut words = l.split_whitespace().map(str::to_owned);
            let mut next = || words.next().unwrap_or_else(|| panic!("short device row {l:?}"));
            let (id, user, status, expires) = (next(), next(), next(), next());
            let name = words.collect::<Vec<_>>().join(" ");
            (id, user, status, expires, name)
        })
        .collect()
}

struct Issued {
    id: String,
    out: PathBuf,
    /// The generated PKCS#12 password, when one was printed.
    password: Option<String>,
    /// The signing secret, printed once.
    secret: String,
}

/// `coffer device issue --user USER --out OUT EXTRA...`, checking the printed lines.
fn issue(dirs: &TestDirs, user: &str, out: &Path, extra: &[&str]) -> Issued {
    let mut args = vec!["device", "issue", "--user", user, "--out", out.to_str().unwrap()];
    args.extend(extra);
    let stdout = ok(dirs, &args);
    let first = stdout.lines().next().unwrap_or_default();
    let id = first
        .strip_prefix("issued device ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected output of device issue: {stdout}"));
    assert!(is_hex_id(id), "{stdout}");
    assert!(first.contains(&format!("for {user}")), "{stdout}");
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PKCS#12 password (shown once): "))
        .map(str::to_owned);
    assert!(
        stdout.contains(&format!("access key id (the device id): {id}")),
        "{stdout}"
    );
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("signing secret (shown once; also in profile.toml): "))
        .unwrap_or_else(|| panic!("no signing secret printed: {stdout}"))
        .to_owned();
    assert_eq!(secret.len(), 40, "{secret:?}");
    Issued {
        id: id.to_owned(),
        out: out.to_path_buf(),
        password,
        secret,
    }
}

fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    cert.subject()
        .iter_common_name()
        .next()
        .expect("a common name")
        .as_str()
        .expect("a string CN")
        .to_owned()
}

/// The four files are there, consistent with each other and with the coffer's CA, and
/// the PKCS#12 bundle opens with `password` (and not with another one) and holds the key
/// and the certificate.
fn check_credentials(dirs: &TestDirs, issued: &Issued, password: &str, legacy: bool) {
    let out = &issued.out;
    for f in ["device.crt", "device.key", "device.p12", "ca.crt", "profile.toml"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&out.join("device.key")), 0o600, "device.key mode");
    // The client profile: the device's SigV4 credentials and the files beside it.
    assert_eq!(mode(&out.join("profile.toml")), 0o600, "profile.toml mode");
    let profile = coffer::client::Profile::load(&out.join("profile.toml")).expect("a valid profile");
    assert_eq!(profile.access_key_id, issued.id);
    assert_eq!(profile.secret_access_key.expose(), issued.secret);
    assert_eq!((profile.region.as_str(), profile.service.as_str()), ("local", "coffer"));
    assert_eq!(profile.endpoint, "https://localhost:8443", "the default endpoint");
    assert_eq!(
        (profile.ca.to_str(), profile.cert.to_str(), profile.key.to_str()),
        (Some("ca.crt"), Some("device.crt"), Some("device.key"))
    );
    assert_eq!(profile.password_file, None, "a real profile holds no password");
    assert_eq!(
        file_bytes(&out.join("ca.crt")),
        file_bytes(&keys_file(dirs, "ca.crt")),
        "ca.crt differs from the coffer's CA"
    );
    let cert = cert_der(&out.join("device.crt"));
    assert_eq!(common_name(&cert), issued.id, "the device id is the common name");
    let key_pem = std::fs::read_to_string(out.join("device.key")).unwrap();
    let key = from_pem(&key_pem, "PRIVATE KEY", "device.key").expect("PEM PKCS#8 key");
    assert_eq!(
        KeyDer::new(key.clone()).spki().unwrap(),
        cert_info(&cert, "device.crt").unwrap().spki,
        "device.key does not belong to device.crt"
    );
    assert_openssl_verifies(&out.join("ca.crt"), &out.join("device.crt"));

    // The PKCS#12 bundle.
    let p12 = file_bytes(&out.join("device.p12"));
    let store = p12_keystore::KeyStore::from_pkcs12(&p12, password, p12_keystore::Pkcs12ImportPolicy::Strict)
        .unwrap_or_else(|e| panic!("the PKCS#12 bundle does not open with its password: {e}"));
    let (_, chain) = store.private_key_chain().expect("a private key chain in the bundle");
    assert_eq!(
        chain.key().as_der(),
        key.as_slice(),
        "the bundle's key is not device.key"
    );
    let certs: Vec<&[u8]> = chain.certs().iter().map(|c| c.as_der()).collect();
    assert_eq!(
        certs.first().copied(),
        Some(cert.as_slice()),
        "the bundle's leaf is not device.crt"
    );
    let ca = cert_der(&keys_file(dirs, "ca.crt"));
    assert!(certs.contains(&ca.as_slice()), "the bundle lacks the CA");
    let wrong = format!("{password}x");
    assert!(
        p12_keystore::KeyStore::from_pkcs12(&p12, &wrong, p12_keystore::Pkcs12ImportPolicy::Strict).is_err(),
        "the PKCS#12 bundle opens with a wrong password"
    );

    if !have("openssl") {
        eprintln!("openssl not found: skipping the openssl PKCS#12 check");
        return;
    }
    let info = |pw: &str| {
        Command::new("openssl")
            .args(["pkcs12", "-info", "-noout", "-passin"])
            .arg(format!("pass:{pw}"))
            .arg("-in")
            .arg(out.join("device.p12"))
            .output()
            .unwrap()
    };
    let good = info(password);
    let shown = format!("{}{}", text(&good.stdout), text(&good.stderr));
    assert!(good.status.success(), "openssl pkcs12 refused the bundle: {shown}");
    if legacy {
        assert!(
            shown.contains("pbeWithSHA1And3-KeyTripleDES-CBC") && shown.contains("MAC: sha1"),
            "not a 3DES/SHA-1 bundle: {shown}"
        );
    } else {
        assert!(
            shown.contains("AES-256-CBC") && shown.contains("MAC: sha256"),
            "not an AES-256/SHA-256 bundle: {shown}"
        );
        assert!(!shown.contains("TripleDES"), "{shown}");
    }
    assert!(
        !info(&wrong).status.success(),
        "openssl opened the bundle with a wrong password"
    );
}

fn today_plus_days(days: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(days))
        .date()
        .to_string()
}

#[test]
fn device_issue_writes_credentials_that_open() {
    let dirs = initialised();
    add_user_cli(&dirs, "anna", "member", "correct horse battery");
    let out = dirs.root.path().join("out").join("anna");
    let issued = issue(&dirs, "anna", &out, &["--name", "Anna's iPhone"]);
    let password = issued
        .password
        .clone()
        .expect("a generated PKCS#12 password is printed");
    assert!(password.len() >= 16, "weak generated password {password:?}");
    check_credentials(&dirs, &issued, &password, false);

    let rows = device_rows(&dirs);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (id, user, status, expires, name) = &rows[0];
    assert_eq!(id, &issued.id);
    assert_eq!(user, "anna");
    assert_eq!(status, "active");
    assert_eq!(name, "Anna's iPhone");
    // Default lifetime: 365 days (a day's slack for midnight).
    assert!(
        [today_plus_days(365), today_plus_days(366)].contains(expires),
        "expires {expires}"
    );

    // A second device gets a fresh password, a fresh key and the default name.
    let issued2 = issue(&dirs, "anna", &dirs.root.path().join("second"), &[]);
    let password2 = issued2.password.clone().expect("a password");
    assert_ne!(password2, password);
    assert_ne!(issued2.id, issued.id);
    check_credentials(&dirs, &issued2, &password2, false);
    assert_ne!(
        file_bytes(&issued2.out.join("device.key")),
        file_bytes(&out.join("device.key"))
    );
    let rows = device_rows(&dirs);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].0, issued2.id);
    assert_eq!(rows[1].4, "device of anna");

    // The lifetime comes from the configuration (here the environment).
    let third = dirs.root.path().join("third");
    let out = output(coffer(&dirs).env("COFFER_DEVICE_CERT_DAYS", "30").args([
        "device",
        "issue",
        "--user",
        "anna",
        "--out",
        third.to_str().unwrap(),
    ]));
    expect_ok(out, "device issue with COFFER_DEVICE_CERT_DAYS=30");
    let info = cert_info(&cert_der(&third.join("device.crt")), "device.crt").unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (info.not_after - (now + 30 * 86_400)).abs() < 3_600,
        "not_after {} is not 30 days from now ({now})",
        info.not_after
    );
    let rows = device_rows(&dirs);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        [today_plus_days(30), today_plus_days(31)].contains(&rows[2].3),
        "expires {}",
        rows[2].3
    );
}

#[test]
fn device_issue_legacy_bundle_with_a_password_file() {
    let dirs = initialised();
    add_user_cli(&dirs, "ben", "member", "correct horse battery");
    let pw = write_file(dirs.root.path(), "p12pw", "mdm import password\n");
    let out = dirs.root.path().join("legacy");
    let issued = issue(
        &dirs,
        "ben",
        &out,
        &["--p12-password-file", pw.to_str().unwrap(), "--legacy-p12"],
    );
    assert_eq!(issued.password, None, "a password from a file must not be printed");
    check_credentials(&dirs, &issued, "mdm import password", true);

    // The same password file, modern flavour.
    let issued = issue(
        &dirs,
        "ben",
        &dirs.root.path().join("modern"),
        &["--p12-password-file", pw.to_str().unwrap()],
    );
    assert_eq!(issued.password, None);
    check_credentials(&dirs, &issued, "mdm import password", false);
}

#[test]
fn device_issue_never_overwrites_files() {
    let dirs = initialised();
    add_user_cli(&dirs, "carl", "member", "correct horse battery");
    let out = dirs.root.path().join("out");
    let issued = issue(&dirs, "carl", &out, &[]);
    let names = ["device.crt", "device.key", "device.p12", "ca.crt", "profile.toml"];
    let before: Vec<Vec<u8>> = names.iter().map(|f| file_bytes(&out.join(f))).collect();

    let stderr = fails(
        &dirs,
        &["device", "issue", "--user", "carl", "--out", out.to_str().unwrap()],
        1,
    );
    assert!(stderr.contains("already exists"), "{stderr}");
    for (f, bytes) in names.iter().zip(&before) {
        assert_file_unchanged(&out.join(f), bytes, "second device issue into the same directory");
    }
    assert_eq!(
        files_under(&out).len(),
        5,
        "extra files in --out: {:?}",
        files_under(&out)
    );
    // The refused issue registered no device.
    let rows = device_rows(&dirs);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, issued.id);

    // One existing file is enough to refuse, and nothing else is written.
    let other = dirs.root.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let mine = write_file(&other, "ca.crt", "my own file\n");
    let stderr = fails(
        &dirs,
        &["device", "issue", "--user", "carl", "--out", other.to_str().unwrap()],
        1,
    );
    assert!(stderr.contains("ca.crt"), "{stderr}");
    assert_file_unchanged(&mine, b"my own file\n", "device issue into a directory with a ca.crt");
    assert_eq!(files_under(&other), vec![mine]);
    assert_eq!(device_rows(&dirs).len(), 1);
}

#[test]
fn device_issue_for_an_unknown_user_fails() {
    let dirs = initialised();
    let out = dirs.root.path().join("out");
    let stderr = fails(
        &dirs,
        &["device", "issue", "--user", "ghost", "--out", out.to_str().unwrap()],
        1,
    );
    assert!(stderr.contains("ghost"), "{stderr}");
    assert!(!out.exists(), "--out was created for an unknown user");
    assert!(device_rows(&dirs).is_empty());
}

#[test]
fn device_revoke_marks_it_revoked() {
    let dirs = initialised();
    add_user_cli(&dirs, "dora", "member", "correct horse battery");
    let a = issue(&dirs, "dora", &dirs.root.path().join("a"), &["--name", "phone a"]);
    let b = issue(&dirs, "dora", &dirs.root.path().join("b"), &["--name", "phone b"]);
    let status = |rows: &[(String, String, String, String, String)], id: &str| {
        rows.iter()
            .find(|r| r.0 == id)
            .map(|r| r.2.clone())
            .unwrap_or_else(|| panic!("device {id} not listed: {rows:?}"))
    };
    let rows = device_rows(&dirs);
    assert_eq!(status(&rows, &a.id), "active");
    assert_eq!(status(&rows, &b.id), "active");

    let stdout = ok(&dirs, &["device", "revoke", &a.id]);
    assert!(stdout.contains(&format!("revoked device {}", a.id)), "{stdout}");
    let rows = device_rows(&dirs);
    assert_eq!(rows.len(), 2);
    assert_eq!(status(&rows, &a.id), "revoked");
    assert_eq!(status(&rows, &b.id), "active");

    // An id that is no device, and one that is no id at all.
    let unknown = "0123456789abcdef0123456789abcdef";
    let stderr = fails(&dirs, &["device", "revoke", unknown], 1);
    assert!(stderr.contains(unknown) && stderr.contains("no device"), "{stderr}");
    fails(&dirs, &["device", "revoke", "not-an-id"], 2);
    let rows = device_rows(&dirs);
    assert_eq!(status(&rows, &a.id), "revoked");
    assert_eq!(status(&rows, &b.id), "active");
}

// ---- configuration ----

const GOOD_CONFIG: &str = r#"
listen = "127.0.0.1:9443"
cache_mib = 16

[tls]
min_version = "1.2"

[limits]
max_upload_bytes = 1048576
max_page_size = 100

[argon2]
memory_kib = 65536
iterations = 3
parallelism = 1

[pki]
ca_days = 3650
server_days = 90
device_days = 30
"#;

/// `coffer config check ARGS` in `dir` with extra environment.
fn config_check(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    output(
        bare_coffer(dir)
            .args(["config", "check"])
            .args(args)
            .envs(env.iter().copied()),
    )
}

#[test]
fn config_check_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "coffer-prod.toml", GOOD_CONFIG);
    let stdout = expect_ok(config_check(dir.path(), &[file.to_str().unwrap()], &[]), "config check");
    assert!(stdout.contains("ok") && stdout.contains("coffer-prod.toml"), "{stdout}");
    // Through --config and $COFFER_CONFIG too.
    let stdout = expect_ok(
        config_check(dir.path(), &["--config", file.to_str().unwrap()], &[]),
        "config check --config",
    );
    assert!(stdout.contains("coffer-prod.toml: ok"), "{stdout}");
    let stdout = expect_ok(
        config_check(dir.path(), &[], &[("COFFER_CONFIG", file.to_str().unwrap())]),
        "COFFER_CONFIG=F config check",
    );
    assert!(stdout.contains("coffer-prod.toml: ok"), "{stdout}");
    // ./coffer.toml when present.
    write_file(dir.path(), "coffer.toml", GOOD_CONFIG);
    let stdout = expect_ok(config_check(dir.path(), &[], &[]), "config check with ./coffer.toml");
    assert!(stdout.contains("coffer.toml: ok"), "{stdout}");
    // An empty file is all defaults.
    let empty = write_file(dir.path(), "empty.toml", "");
    expect_ok(config_check(dir.path(), &[empty.to_str().unwrap()], &[]), "empty file");
}

#[test]
fn config_check_names_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("typo.toml", "lisen = \"0.0.0.0:8443\"\n", &["`lisen`"]),
        ("nested.toml", "[limits]\nmax_upload = 1\n", &["`max_upload`"]),
        ("section.toml", "[limit]\nmax_upload_bytes = 1\n", &["`limit`"]),
        ("range.toml", "[pki]\ndevice_days = 0\n", &["pki.device_days"]),
        ("server.toml", "[pki]\nserver_days = 4000\n", &["pki.server_days"]),
        ("cache.toml", "cache_mib = 0\n", &["cache_mib"]),
        ("type.toml", "[limits]\nmax_page_size = \"many\"\n", &["max_page_size"]),
        ("tls.toml", "[tls]\nmin_version = \"1.1\"\n", &["min_version"]),
        ("listen.toml", "listen = \"nowhere\"\n", &["listen"]),
        ("syntax.toml", "listen = \n", &["syntax.toml"]),
    ];
    for (name, body, needles) in cases {
        let file = write_file(dir.path(), name, body);
        let stderr = expect_exit(config_check(dir.path(), &[file.to_str().unwrap()], &[]), 1, name);
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{name}: stderr does not name {needle:?}: {stderr}"
            );
        }
        assert!(stderr.starts_with("error:"), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: not one line: {stderr}");
    }

    // A bad environment variable over a good file.
    let good = write_file(dir.path(), "good.toml", GOOD_CONFIG);
    let stderr = expect_exit(
        config_check(
            dir.path(),
            &[good.to_str().unwrap()],
            &[("COFFER_MAX_UPLOAD_BYTES", "abc")],
        ),
        1,
        "COFFER_MAX_UPLOAD_BYTES=abc",
    );
    assert!(stderr.contains("COFFER_MAX_UPLOAD_BYTES"), "{stderr}");
    // A variable that parses but is out of range names the key it sets.
    let stderr = expect_exit(
        config_check(
            dir.path(),
            &[good.to_str().unwrap()],
            &[("COFFER_DEVICE_CERT_DAYS", "0")],
        ),
        1,
        "COFFER_DEVICE_CERT_DAYS=0",
    );
    assert!(stderr.contains("pki.device_days"), "{stderr}");

    // A missing file is named.
    let stderr = expect_exit(config_check(dir.path(), &["absent.toml"], &[]), 1, "missing file");
    assert!(stderr.contains("absent.toml"), "{stderr}");

    // Other commands refuse a bad configuration too, naming the key.
    let bad = dir.path().join("range.toml");
    let out = output(bare_coffer(dir.path()).arg("--config").arg(&bad).arg("pins"));
    let stderr = expect_exit(out, 1, "pins with a bad configuration");
    assert!(stderr.contains("pki.device_days"), "{stderr}");
}

/// `coffer init` run in `cwd` with cheap argon2id flags and the test passphrase.
fn init_in(cwd: &Path, global: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bare_coffer(cwd);
    cmd.args(global)
        .arg("init")
        .args(CHEAP_KDF)
        .env("COFFER_PASSPHRASE", PASSPHRASE)
        .envs(env.iter().copied());
    output(&mut cmd)
}

#[test]
fn directories_come_from_flag_then_env_then_file() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let cwd = r.join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let config = write_file(
        r,
        "coffer.conf",
        &format!(
            "data_dir = \"{}\"\nkeys_dir = \"{}\"\n",
            r.join("file-data").display(),
            r.join("file-keys").display()
        ),
    );
    let config = config.to_str().unwrap();
    let exists = |d: &str, f: &str| r.join(d).join(f).is_file();

    // The file alone.
    expect_ok(init_in(&cwd, &["--config", config], &[]), "init --config");
    assert!(exists("file-data", "coffer.redb") && exists("file-keys", "master.key"));
    assert!(exists("file-keys", "server.crt") && exists("file-keys", "ca.crt"));
    assert!(
        !cwd.join("data").exists() && !cwd.join("keys").exists(),
        "defaults were used"
    );
    // Other commands read the same file: the pins of that coffer.
    let out = output(bare_coffer(&cwd).args(["--config", config, "pins"]));
    expect_ok(out, "pins --config");
    // ... also through $COFFER_CONFIG, with the passphrase.
    let out = output(
        bare_coffer(&cwd)
            .env("COFFER_CONFIG", config)
            .env("COFFER_PASSPHRASE", PASSPHRASE)
            .args(["user", "list"]),
    );
    expect_ok(out, "COFFER_CONFIG=F user list");

    // The environment beats the file.
    let env_dirs = [
        ("COFFER_DATA_DIR", r.join("env-data")),
        ("COFFER_KEYS_DIR", r.join("env-keys")),
    ];
    let env: Vec<(&str, &str)> = env_dirs.iter().map(|(k, v)| (*k, v.to_str().unwrap())).collect();
    expect_ok(init_in(&cwd, &["--config", config], &env), "init with env");
    assert!(exists("env-data", "coffer.redb") && exists("env-keys", "master.key"));

    // A flag beats both.
    let flag_data = r.join("flag-data");
    let flag_keys = r.join("flag-keys");
    let out = init_in(
        &cwd,
        &[
            "--config",
            config,
            "--data-dir",
            flag_data.to_str().unwrap(),
            "--keys-dir",
            flag_keys.to_str().unwrap(),
        ],
        &env,
    );
    expect_ok(out, "init with flags");
    assert!(exists("flag-data", "coffer.redb") && exists("flag-keys", "master.key"));

    // Each init made exactly one coffer where it was told to: none was made twice.
    for d in ["file-data", "env-data", "flag-data"] {
        assert_eq!(files_under(&r.join(d)).len(), 1, "{d}: {:?}", files_under(&r.join(d)));
    }
    assert!(
        !cwd.join("data").exists() && !cwd.join("keys").exists(),
        "defaults were used"
    );
}

#[test]
fn default_directories_are_relative_to_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    expect_ok(init_in(dir.path(), &[], &[]), "init with defaults");
    assert!(dir.path().join("keys/master.key").is_file());
    assert!(dir.path().join("data/coffer.redb").is_file());
    // ./coffer.toml is read when present.
    let other = dir.path().join("elsewhere");
    write_file(
        dir.path(),
        "coffer.toml",
        &format!("keys_dir = \"{}\"\n", other.display()),
    );
    let stderr = expect_exit(
        output(bare_coffer(dir.path()).arg("pins")),
        1,
        "pins with ./coffer.toml",
    );
    assert!(stderr.contains("elsewhere"), "./coffer.toml was not read: {stderr}");
}

#[test]
fn device_issue_takes_the_endpoint_from_the_flag_or_public_url() {
    let dirs = initialised();
    add_user_cli(&dirs, "dora", "member", "correct horse battery");
    let out = dirs.root.path().join("flag");
    issue(&dirs, "dora", &out, &["--endpoint", "https://coffer.example.com:9443/"]);
    let profile = coffer::client::Profile::load(&out.join("profile.toml")).unwrap();
    assert_eq!(profile.endpoint, "https://coffer.example.com:9443");
    assert_eq!(profile.username, "dora");

    let second = dirs.root.path().join("env");
    let res = output(
        coffer(&dirs)
            .env("COFFER_PUBLIC_URL", "https://files.example.org")
            .args(["device", "issue", "--user", "dora", "--out", second.to_str().unwrap()]),
    );
    expect_ok(res, "device issue with COFFER_PUBLIC_URL");
    let profile = coffer::client::Profile::load(&second.join("profile.toml")).unwrap();
    assert_eq!(profile.endpoint, "https://files.example.org");

    let stderr = fails(
        &dirs,
        &[
            "device",
            "issue",
            "--user",
            "dora",
            "--out",
            dirs.root.path().join("bad").to_str().unwrap(),
            "--endpoint",
            "http://plain.example.com",
        ],
        1,
    );
    assert!(stderr.contains("https://"), "{stderr}");
    assert!(!dirs.root.path().join("bad").exists(), "a refused issue wrote files");
}

#[test]
fn user_totp_prints_a_uri_and_qr_code_and_unlock_names_the_user() {
    let dirs = initialised();
    add_user_cli(&dirs, "erik", "member", "correct horse battery");
    let stdout = ok(&dirs, &["user", "totp", "erik"]);
    let uri = stdout
        .lines()
        .find(|l| l.starts_with("otpauth://totp/coffer:erik?secret="))
        .unwrap_or_else(|| panic!("no otpauth URI: {stdout}"));
    let secret = uri.split("secret=").nth(1).and_then(|r| r.split('&').next()).unwrap();
    assert_eq!(secret.len(), 32, "160-bit base32 seed: {secret}");
    assert!(uri.contains("&digits=6&period=30"), "{uri}");
    // The QR code: block characters in several lines.
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains('█') || l.contains('▀') || l.contains('▄'))
            .count()
            > 10,
        "{stdout}"
    );
    // A second enrolment replaces the seed.
    let again = ok(&dirs, &["user", "totp", "erik"]);
    assert!(!again.contains(secret), "the seed did not change");
    let off = ok(&dirs, &["user", "totp", "erik", "--disable"]);
    assert!(off.contains("removed the second factor"), "{off}");
    let done = ok(&dirs, &["user", "unlock", "erik"]);
    assert!(done.contains("cleared the failed logins of erik"), "{done}");
    let stderr = fails(&dirs, &["user", "unlock", "nobody"], 1);
    assert!(stderr.contains("no user named \"nobody\""), "{stderr}");
    let stderr = fails(&dirs, &["user", "totp", "nobody"], 1);
    assert!(stderr.contains("coffer user list"), "{stderr}");
}
