//! `coffer serve --dev`, the zero-setup development server, driven as the real binary in
//! an empty working directory: what it creates, what it prints, that the printed curl
//! commands work, that later starts reuse everything, and how admin commands behave next
//! to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::Running;
use common::*;

/// How long a start may take (init, certificates and the demo device on the first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A `coffer` command in `dir` with nothing from the caller's environment that could
/// choose a configuration, directories or a passphrase, and cheap argon2id.
fn coffer_in(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer"));
    isolate(&mut cmd, dir);
    // Writes may be dated 10 s ahead by default, so a fresh server refuses writes for its
    // first 10 s (no replay of what an earlier process accepted); the tests sign with the
    // server's own clock and need not wait.
    cmd.envs(CHEAP_KDF_ENV).env("COFFER_MAX_FUTURE_WRITE_SECS", "0");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `coffer serve --dev`; dropping it kills the process and waits for it.
struct DevServer {
    process: Running,
    /// The address printed on the first line.
    addr: SocketAddr,
    /// The indented commands, without their indentation.
    client_put: String,
    client_list: String,
    client_erp: String,
    login: String,
    upload: String,
    fetch: String,
}

impl DevServer {
    /// Starts `coffer serve --dev --listen 127.0.0.1:0` in `dir` with extra `env`, and
    /// reads what it prints until the fetch command.
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = coffer_in(dir);
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied());
        let mut process = Running::spawn(cmd);
        // Returns once requests signed now are accepted (from the second after the start).
        let addr = process.listening_on("serve --dev");
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let lines: Vec<String> = (0..8).map(|_| process.next_line("serve --dev")).collect();
        assert!(lines[0].starts_with("with the reference client"), "{lines:?}");
        assert!(lines[4].starts_with("with curl"), "{lines:?}");
        let indented = |l: &str, starts: &[&str]| {
            l.strip_prefix("  ")
                .filter(|c| starts.iter().any(|s| c.starts_with(s)))
                .unwrap_or_else(|| panic!("not an indented command starting with {starts:?}: {l:?}"))
                .to_owned()
        };
        let server = Self {
            addr,
            client_put: indented(&lines[1], &["/", "./"]),
            client_list: indented(&lines[2], &["/", "./"]),
            client_erp: indented(&lines[3], &["/", "./"]),
            login: indented(&lines[5], &["TOKEN=$(curl "]),
            upload: indented(&lines[6], &["ID=$(curl "]),
            fetch: indented(&lines[7], &["curl "]),
            process,
        };
        for c in [&server.login, &server.upload, &server.fetch] {
            assert!(
                c.contains("--aws-sigv4 'aws:amz:local:coffer'") && c.contains(" --user '"),
                "a curl command does not sign: {c}"
            );
        }
        let port = format!(":{}", server.addr.port());
        assert!(
            server.login.contains(&port) && server.upload.contains(&port) && server.fetch.contains(&port),
            "the commands do not use the listening port: {lines:?}"
        );
        server
    }

    /// What the server wrote on stderr so far.
    fn stderr(&self) -> String {
        self.process.stderr_now()
    }

    /// Stops the server as Ctrl-C/systemd would (SIGTERM) and waits for it to exit.
    fn stop(mut self) -> (ExitStatus, String) {
        self.process.signal(rustix::process::Signal::TERM);
        self.process.wait_exit(STOP_TIMEOUT, "serve --dev after SIGTERM")
    }
}

fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The development files, relative to the working directory.
const DEV_FILES: [&str; 6] = [
    "keys/dev/profile.toml",
    "keys/dev/passphrase",
    "keys/dev/password",
    "keys/dev/client.crt",
    "keys/dev/client.key",
    "keys/dev/hello.txt",
];

/// Everything a later start must reuse, byte for byte.
const KEPT_FILES: [&str; 9] = [
    "keys/master.key",
    "keys/ca.crt",
    "keys/server.crt",
    "keys/server-next.pub",
    "keys/dev/passphrase",
    "keys/dev/password",
    "keys/dev/client.crt",
    "keys/dev/client.key",
    "keys/dev/hello.txt",
];

fn snapshot(dir: &Path, files: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    files
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let bytes = file_bytes(&p);
            (p, bytes)
        })
        .collect()
}

/// The demo device's credentials, read from `dir`, and a minimal HTTPS/1.1 client that
/// uses them (one request per connection, `Connection: close`).
struct DemoClient {
    ca: String,
    cert: String,
    key: String,
    /// From keys/dev/profile.toml.
    access_key: String,
    secret: String,
    password: String,
    /// Session token, after [`DemoClient::login`].
    token: Option<String>,
}

/// A response: status and body.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl DemoClient {
    fn read(dir: &Path) -> Self {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let profile: toml::Table = read("keys/dev/profile.toml").parse().expect("profile TOML");
        let field = |k: &str| profile[k].as_str().unwrap_or_else(|| panic!("profile {k}")).to_owned();
        Self {
            ca: read("keys/ca.crt"),
            cert: read("keys/dev/client.crt"),
            key: read("keys/dev/client.key"),
            access_key: field("access_key_id"),
            secret: field("secret_access_key"),
            password: read("keys/dev/password").trim_end().to_owned(),
            token: None,
        }
    }

    /// Logs the demo user in (a session for the following requests).
    fn login(mut self, addr: SocketAddr) -> Self {
        let body = serde_json::json!({"username": "demo", "password": self.password}).to_string();
        let res = self.request(
            addr,
            "POST",
            "/v1/session",
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(res.status, 200, "login: {}", String::from_utf8_lossy(&res.body));
        self.token = Some(res.json()["token"].as_str().expect("token").to_owned());
        self
    }

    /// The SigV4 headers for a request, made by an independent signer (the aws-sigv4 crate).
    fn sign(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<(String, String)> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let identity = aws_credential_types::Credentials::new(
            &self.access_key,
            &self.secret,
            self.token.clone(),
            None,
            "dev profile",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("local")
            .name("coffer")
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .expect("signing params")
            .into();
        let url = format!("https://127.0.0.1{path}");
        let mut all: Vec<(&str, &str)> = vec![("host", "127.0.0.1")];
        all.extend_from_slice(headers);
        let req = SignableRequest::new(method, &url, all.into_iter(), SignableBody::Bytes(body)).expect("signable");
        let (instructions, _) = sign(req, &params).expect("sign").into_parts();
        instructions
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let chain: Vec<_> = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .map(|c| c.expect("client certificate PEM"))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).expect("client key PEM");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client identity");
        Arc::new(config)
    }

    /// One request to `addr`; the server certificate must name 127.0.0.1.
    fn request(&self, addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        use std::io::Write;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(self.config(), name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).expect("connect to the dev server");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        for (n, v) in self.sign(method, path, headers, body) {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).expect("send request head");
        tls.write_all(body).expect("send request body");
        tls.flush().unwrap();
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // A server that closes without close_notify: the response is complete if it parses.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("reading the response: {e}"),
        }
        parse_response(&raw)
    }
}

/// Parses an HTTP/1.1 response read to the end (Content-Length or chunked body).
fn parse_response(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = rest;
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
            let size_text = String::from_utf8_lossy(&rest[..end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("chunk size");
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            assert!(rest.len() >= size + 2, "truncated chunk");
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        out
    } else {
        let body = match header("content-length") {
            Some(len) => {
                let len: usize = len.parse().expect("content-length");
                assert!(rest.len() >= len, "truncated body: {} of {len} bytes", rest.len());
                &rest[..len]
            }
            None => rest,
        };
        body.to_vec()
    };
    Reply { status, body }
}

/// The device id in the demo client certificate (its common name).
fn demo_device_id(dir: &Path) -> String {
    let pem = std::fs::read_to_string(dir.join("keys/dev/client.crt")).unwrap();
    let der = coffer::pki::from_pem(&pem, "CERTIFICATE", "client.crt").unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .expect("a common name")
        .as_str()
        .unwrap()
        .to_owned()
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn printed_curl_commands_upload_and_fetch_the_sample_file() {
    if !have_curl() {
        eprintln!("curl is not on PATH: skipping printed_curl_commands_upload_and_fetch_the_sample_file");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = DevServer::start(d, &[]);

    // What the first start created.
    for f in DEV_FILES
        .iter()
        .chain(&["keys/ca.crt", "keys/master.key", "data/coffer.redb"])
    {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&d.join("keys/dev/passphrase")), 0o600, "passphrase file mode");
    assert_eq!(mode(&d.join("keys/dev/client.key")), 0o600, "client key mode");
    assert_eq!(mode(&d.join("keys/dev/password")), 0o600, "password file mode");
    assert_eq!(file_bytes(&d.join("keys/dev/hello.txt")), b"Hello from coffer.\n");
    let stderr = server.stderr();
    assert!(stderr.contains("development mode"), "no development warning: {stderr}");

    // The commands, verbatim, in the server's working directory.
    let script = format!("{}\n{}\n{}", server.login, server.upload, server.fetch);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(d)
        .env_remove("CURL_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "the printed commands failed ({}):\n{script}\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("session token: 43 characters"), "{stdout}");
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("uploaded document "))
        .unwrap_or_else(|| panic!("no upload line: {stdout}\nstderr: {}", text(&out.stderr)));
    assert!(
        is_hex_id(id),
        "not a document id {id:?}: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let fetched: String = lines.map(|l| format!("{l}\n")).collect();
    assert_eq!(fetched, "Hello from coffer.\n", "fetched content: {stdout}");
    assert_eq!(
        stdout,
        format!("session token: 43 characters\nuploaded document {id}\nHello from coffer.\n")
    );
    assert!(out.stderr.is_empty(), "curl complained: {}", text(&out.stderr));

    // The same document through an independent client, byte for byte.
    let client = DemoClient::read(d).login(server.addr);
    let res = client.request(server.addr, "GET", &format!("/v1/documents/{id}"), &[], b"");
    assert_eq!(res.status, 200);
    assert_eq!(res.body, b"Hello from coffer.\n");
    let meta = client.request(server.addr, "GET", &format!("/v1/documents/{id}/meta"), &[], b"");
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json()["name"], "hello.txt");

    // The reference client commands, verbatim: it logs in by itself, uploads, lists.
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{cmd} printed no JSON ({e}): {}", text(&out.stdout)))
    };
    let put = run(&server.client_put);
    let client_id = put["id"].as_str().expect("id of the client's upload").to_owned();
    assert_eq!(put["name"], "hello.txt");
    assert_eq!(put["size"], 19);
    assert!(
        d.join("keys/dev/profile.session.toml").is_file(),
        "the client kept no session"
    );
    assert_eq!(mode(&d.join("keys/dev/profile.session.toml")), 0o600);
    let listed = run(&server.client_list);
    let ids: Vec<&str> = listed["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .filter_map(|doc| doc["id"].as_str())
        .collect();
    assert!(ids.contains(&id) && ids.contains(&client_id.as_str()), "{listed}");
    let record = run(&server.client_erp);
    assert_eq!(record["message"], "Hello from the ERP cache.", "{record}");
    assert_eq!(mode(&d.join("keys/dev/profile.toml")), 0o600, "profile mode");
}

#[test]
fn a_second_start_reuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = DevServer::start(d, &[]);
    let content = pattern(7, 200_000);
    let client = DemoClient::read(d).login(first.addr);
    let res = client.request(
        first.addr,
        "POST",
        "/v1/documents",
        &[
            ("X-Coffer-Name", "notes.bin"),
            ("Content-Type", "application/octet-stream"),
        ],
        &content,
    );
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    let id = res.json()["id"].as_str().expect("document id").to_owned();
    let res = client.request(first.addr, "GET", &format!("/v1/documents/{id}"), &[], b"");
    assert_eq!(res.status, 200);
    assert!(res.body == content, "the document does not read back");
    let kept = snapshot(d, &KEPT_FILES);
    let (status, stderr) = first.stop();
    assert!(
        stderr.contains("created"),
        "the first start did not say it created: {stderr}"
    );
    assert!(
        stderr.contains("wrote demo device credentials"),
        "the first start did not issue credentials: {stderr}"
    );
    eprintln!("first dev server stopped: {status}");

    let second = DevServer::start(d, &[]);
    for (path, bytes) in &kept {
        assert_file_unchanged(path, bytes, "second serve --dev");
    }
    // The credentials read before the restart still work, and the document is there.
    let res = client.request(second.addr, "GET", &format!("/v1/documents/{id}"), &[], b"");
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert!(res.body == content, "the document changed across the restart");
    let (_, stderr) = second.stop();
    assert!(
        !stderr.contains("created") && !stderr.contains("wrote demo device credentials"),
        "the second start made something new: {stderr}"
    );
    for (path, bytes) in &kept {
        assert_file_unchanged(path, bytes, "after the second serve --dev");
    }

    // Still exactly one demo device and one user.
    let out = coffer_in(d).args(["device", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2, "{}", text(&out.stdout));
    let out = coffer_in(d).args(["user", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2, "{}", text(&out.stdout));
}

fn user_list_with(dir: &Path, passphrase: Option<&str>) -> Output {
    let mut cmd = coffer_in(dir);
    if let Some(p) = passphrase {
        cmd.env("COFFER_PASSPHRASE", p);
    }
    cmd.args(["user", "list"]).output().unwrap()
}

#[test]
fn coffer_passphrase_is_used_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = DevServer::start(d, &[("COFFER_PASSPHRASE", PASSPHRASE)]);
    assert!(
        !d.join("keys/dev/passphrase").exists(),
        "a development passphrase file was written although COFFER_PASSPHRASE is set"
    );
    for f in [
        "keys/dev/client.crt",
        "keys/dev/client.key",
        "keys/dev/hello.txt",
        "keys/master.key",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    // It serves.
    let res = DemoClient::read(d)
        .login(server.addr)
        .request(server.addr, "GET", "/v1/documents", &[], b"");
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    server.stop();
    assert!(!d.join("keys/dev/passphrase").exists());

    // The key file is sealed under that passphrase.
    let out = user_list_with(d, Some(PASSPHRASE));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("demo"), "{}", text(&out.stdout));
    let out = user_list_with(d, Some(WRONG_PASSPHRASE));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = user_list_with(d, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no passphrase"), "{}", text(&out.stderr));

    // A later start with the same variable reuses the coffer.
    let key_file = file_bytes(&d.join("keys/master.key"));
    let server = DevServer::start(d, &[("COFFER_PASSPHRASE", PASSPHRASE)]);
    assert_file_unchanged(&d.join("keys/master.key"), &key_file, "second start");
    drop(server);
}

#[test]
fn admin_commands_go_through_the_running_server_and_open_the_database_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = DevServer::start(d, &[]);

    // Through the admin socket: no passphrase is needed (so no warning about the
    // development one), and the answer is the server's.
    let out = coffer_in(d).args(["device", "list"]).output().unwrap();
    let stderr = text(&out.stderr);
    let through_socket = text(&out.stdout);
    assert!(out.status.success(), "device list next to a running server: {stderr}");
    assert!(
        !stderr.contains("development passphrase"),
        "it opened the database itself: {stderr}"
    );
    assert!(through_socket.contains(&demo_device_id(d)), "{through_socket}");
    // Key management goes through the socket too.
    let out = coffer_in(d).args(["key", "status"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "key status next to a running server: {stderr}");
    assert!(text(&out.stdout).contains("(current)"), "{}", text(&out.stdout));
    assert!(!stderr.contains("development passphrase"), "{stderr}");
    // A command that must have the file to itself is refused with a clear message.
    let out = coffer_in(d).arg("compact").output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "compact next to a running server: {stderr}");
    assert!(
        stderr.contains("coffer serve is running") && stderr.contains("stop the server"),
        "the message does not say to stop the server: {stderr}"
    );
    // A second dev server in the same directory is refused the same way.
    let out = coffer_in(d)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a second serve --dev: {stderr}");
    assert!(stderr.contains("holds the database"), "{stderr}");
    // `pins` needs no lock.
    let out = coffer_in(d).arg("pins").output().unwrap();
    assert!(
        out.status.success(),
        "pins next to a running server: {}",
        text(&out.stderr)
    );

    server.stop();
    let out = coffer_in(d).args(["device", "list"]).output().unwrap();
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "device list after the server stopped: {stderr}");
    assert!(
        stderr.contains("development passphrase"),
        "no warning about the development passphrase: {stderr}"
    );
    assert_eq!(stdout, through_socket, "the same list both ways");
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    let words: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(words[0], demo_device_id(d), "{stdout}");
    assert_eq!(words[1], "demo", "{stdout}");
    assert_eq!(words[2], "active", "{stdout}");
    assert!(rows[0].ends_with("development device"), "{stdout}");
}

#[test]
fn an_existing_coffer_without_the_dev_passphrase_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = coffer_in(d)
        .env("COFFER_PASSPHRASE", PASSPHRASE)
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key_file = file_bytes(&d.join("keys/master.key"));

    let mut child = coffer_in(d)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve --dev kept running over a coffer it cannot unlock");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // It says why, instead of asking for the real passphrase.
    assert!(stderr.contains("not made by `coffer serve --dev`"), "{stderr}");
    assert!(
        !d.join("keys/dev/passphrase").exists(),
        "a new development passphrase was written"
    );
    assert_file_unchanged(
        &d.join("keys/master.key"),
        &key_file,
        "serve --dev without the passphrase",
    );
}
