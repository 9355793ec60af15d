//! A real coffer HTTPS server on `127.0.0.1:0` over a throwaway coffer (CA and server
//! certificate made by coffer's own PKI code), with users and devices to call it as.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::app::Vault;
use coffer::app::init::{PkiPlan, init_with_pki};
use coffer::app::principals::{DeviceInfo, UserBody, UserInfo};
use coffer::config::TlsVersion;
use coffer::crypto::kdf::KdfParams;
use coffer::http::{RunningServer, ServerOptions};
use coffer::model::{DeviceId, Role, UserId};
use coffer::pki::KeyDer;
use coffer::secret::Passphrase;
use coffer::store::StoreOptions;
use rustls::ClientConfig;

use super::client::{ClientSetup, Connection, Response, Signer, TLS13_ONLY};
use super::{TestDirs, empty_dirs, passphrase};

/// Server options for tests: TLS 1.3 only, 32 MiB uploads, 500 per page, two workers.
pub fn test_options() -> ServerOptions {
    ServerOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_min: TlsVersion::Tls13,
        limits: coffer::config::Limits {
            max_upload_bytes: 32 * 1024 * 1024,
            // The concurrency tests run 16 uploads from one member's devices at once.
            max_transfers_per_device: 6,
            // Loops and concurrency tests make many requests per device; the per-device
            // budget has its own tests.
            device_requests_per_minute: 100_000,
            ..Default::default()
        },
        workers: Some(2),
        auth: coffer::config::AuthConfig {
            // Production refuses writes for 10 s after a start (writes may be dated that
            // far ahead); tests sign with the server's own clock.
            max_future_write_secs: 0,
            ..coffer::config::AuthConfig::default()
        },
        device_days: 365,
        allow: coffer::http::allowlist::Allowlist::loopback(),
        erp: coffer::erp::Erp::default(),
        audit_retention_days: coffer::app::audit::DEFAULT_RETENTION_DAYS,
        // Every test server has its health listener, on a free port.
        health_listen: Some("127.0.0.1:0".parse().expect("address")),
        min_server_cert_days: 14,
    }
}

/// A client certificate and its key, PEM, and the device record (if registered).
pub struct Identity {
    /// The registered device (`None` for a certificate no device holds).
    pub device: Option<DeviceInfo>,
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
    /// The device's SigV4 signing secret.
    pub secret: Option<String>,
    /// A session token of the device's owner (logged in when the device was issued).
    pub token: Option<String>,
}

impl Identity {
    /// The registered device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device.as_ref().expect("a registered device").id
    }

    /// The signer for this device (with its session token, if any); `None` for a
    /// certificate without a device.
    pub fn signer(&self) -> Option<Signer> {
        Some(Signer {
            access_key: self.device.as_ref()?.id.to_string(),
            secret: self.secret.clone()?,
            region: "local".to_owned(),
            token: self.token.clone(),
        })
    }
}

/// A running server over a fresh coffer. Dropping it stops the server.
pub struct TestServer {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    addr: SocketAddr,
    server: Option<RunningServer>,
    /// The unlocked coffer the server uses (shared with it); `None` once stopped.
    vault: Option<Arc<Vault>>,
    /// Keeps the temp dir alive; `None` once handed out by [`TestServer::stop`].
    dirs: Option<TestDirs>,
}

/// Starts a server with [`test_options`].
pub fn start_server() -> TestServer {
    start_server_with(test_options())
}

/// Starts a server with the given options (the listen address is forced to
/// `127.0.0.1:0`).
pub fn start_server_with(options: ServerOptions) -> TestServer {
    start_server_on("127.0.0.1:0".parse().expect("address"), options)
}

/// Starts a server with the given options on `listen` (e.g. `[::1]:0`).
pub fn start_server_on(listen: SocketAddr, options: ServerOptions) -> TestServer {
    let dirs = empty_dirs();
    init_with_pki(
        &dirs.paths,
        &passphrase(),
        KdfParams::for_tests(),
        StoreOptions::default(),
        &PkiPlan {
            sans: vec!["localhost".parse().expect("san"), "127.0.0.1".parse().expect("san")],
            ca_days: 30,
            server_days: 30,
        },
    )
    .expect("init with PKI");
    let (vault, _) = Vault::open(&dirs.paths, &passphrase(), StoreOptions::default()).expect("open vault");
    let vault = Arc::new(vault);
    let ca_pem = std::fs::read_to_string(coffer::app::pki::ca_cert_path(&dirs.paths)).expect("read ca.crt");
    let options = ServerOptions { listen, ..options };
    let server = coffer::http::start(vault.clone(), options).expect("start the server");
    // Requests signed in the second the server started are refused (replay protection
    // across restarts): wait for the next second.
    while time::OffsetDateTime::now_utc().unix_timestamp() < server.signatures_from() {
        std::thread::sleep(Duration::from_millis(20));
    }
    TestServer {
        ca_pem,
        addr: server.addr(),
        server: Some(server),
        vault: Some(vault),
        dirs: Some(dirs),
    }
}

impl TestServer {
    /// The running server (e.g. for its count of connections the allowlist refused).
    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("the server runs")
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The vault the server uses (the same `Arc`), to change users and devices under it.
    pub fn vault(&self) -> &Arc<Vault> {
        self.vault.as_ref().expect("the server is running")
    }

    /// The coffer's directories.
    pub fn dirs(&self) -> &TestDirs {
        self.dirs.as_ref().expect("the directories")
    }

    /// Adds an enabled user with a real (cheap) argon2id password hash.
    pub fn add_user(&self, name: &str, role: Role) -> UserInfo {
        let password_hash = KdfParams::for_tests()
            .hash_password(&Passphrase::new(format!("password of {name}")))
            .expect("hash password");
        self.vault()
            .add_user(UserBody {
                name: name.to_owned(),
                role,
                password_hash,
                disabled: false,
                totp: None,
            })
            .expect("add user")
    }

    /// Adds a member.
    pub fn add_member(&self, name: &str) -> UserInfo {
        self.add_user(name, Role::Member)
    }

    /// Adds an admin.
    pub fn add_admin(&self, name: &str) -> UserInfo {
        self.add_user(name, Role::Admin)
    }

    /// Adds an integration identity.
    pub fn add_integration(&self, name: &str) -> UserInfo {
        self.add_user(name, Role::Integration)
    }

    /// Issues and registers a device of `owner` whose certificate is valid for `days`,
    /// and logs its owner in on it (directly through the vault; `None` token if that
    /// fails, e.g. for a disabled owner).
    pub fn issue_device_for_days(&self, owner: UserId, days: u32) -> Identity {
        let issued = self
            .vault()
            .issue_device(owner, "test device", days)
            .expect("issue device");
        let user = self.vault().user(owner).expect("owner");
        let password = Passphrase::new(format!("password of {}", user.body.name));
        let creds = coffer::app::sessions::Credentials {
            username: &user.body.name,
            password: &password,
            totp: None,
        };
        let policy = coffer::app::sessions::SessionPolicy::from(&coffer::config::AuthConfig::default());
        let token = self
            .vault()
            .login(&issued.device, &creds, &policy, coffer::model::Timestamp::now())
            .ok()
            .map(|s| s.token.expose().to_owned());
        Identity {
            secret: issued
                .device
                .body
                .signing_secret
                .as_ref()
                .map(|s| s.expose().to_owned()),
            token,
            device: Some(issued.device),
            cert_pem: coffer::pki::to_pem(&issued.cert_der),
            key_pem: issued.key.to_pem().expect("key PEM").to_string(),
        }
    }

    /// Issues and registers a device of `owner` (certificate valid for 30 days).
    pub fn issue_device(&self, owner: UserId) -> Identity {
        self.issue_device_for_days(owner, 30)
    }

    /// A certificate signed by coffer's CA for a random device id that is not registered.
    pub fn unregistered_certificate(&self) -> Identity {
        let key = KeyDer::generate().expect("key");
        let id = DeviceId::random().expect("random id");
        let cert = self
            .vault()
            .ca()
            .expect("CA")
            .issue_device(id, &key.spki().expect("spki"), 30)
            .expect("issue certificate");
        Identity {
            device: None,
            cert_pem: coffer::pki::to_pem(&cert),
            key_pem: key.to_pem().expect("key PEM").to_string(),
            secret: None,
            token: None,
        }
    }

    /// A TLS 1.3 client configuration presenting `identity` (none: no certificate).
    pub fn client_config(&self, identity: Option<&Identity>) -> Arc<ClientConfig> {
        self.client_setup(identity).build()
    }

    /// The client set-up for `identity`, to adjust versions or resumption.
    pub fn client_setup<'a>(&'a self, identity: Option<&'a Identity>) -> ClientSetup<'a> {
        ClientSetup {
            ca_pem: &self.ca_pem,
            identity: identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str())),
            versions: TLS13_ONLY,
            resumption: false,
        }
    }

    /// Opens a connection presenting `identity` that signs its requests with the device's
    /// credentials and session; panics if the server refuses it.
    pub fn connect(&self, identity: &Identity) -> Connection {
        let mut conn = self.connect_with(self.client_config(Some(identity)));
        conn.set_signer(identity.signer());
        conn
    }

    /// Opens a connection presenting `identity` that does not sign its requests.
    pub fn connect_unsigned(&self, identity: &Identity) -> Connection {
        self.connect_with(self.client_config(Some(identity)))
    }

    /// Opens a connection without a client certificate.
    pub fn connect_anonymous(&self) -> Connection {
        self.connect_with(self.client_config(None))
    }

    /// Opens a connection with `config`; panics if the server refuses it.
    pub fn connect_with(&self, config: Arc<ClientConfig>) -> Connection {
        Connection::open(config, self.addr, "localhost").expect("TLS connection")
    }

    /// Tries a connection with `config` and one request; returns the error that ended it.
    /// Panics if any HTTP response arrives (the handshake must have been refused).
    pub fn assert_handshake_refused(&self, config: Arc<ClientConfig>) -> std::io::Error {
        match Connection::open(config, self.addr, "localhost") {
            Err(e) => e,
            Ok(mut conn) => match conn.request("GET", "/v1/documents", &[], b"") {
                Err(e) => e,
                Ok(res) => panic!(
                    "the handshake was accepted and an HTTP response arrived: {} {}",
                    res.status,
                    String::from_utf8_lossy(&res.body)
                ),
            },
        }
    }

    /// Stops the server and closes the coffer, returning its directories for raw checks.
    /// Panics if something still holds the vault a few seconds after the server stopped.
    pub fn stop(mut self) -> TestDirs {
        self.shut_down();
        let mut vault = self.vault.take().expect("the vault");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Arc::try_unwrap(vault) {
                Ok(v) => {
                    drop(v);
                    break;
                }
                Err(still_shared) => {
                    assert!(
                        Instant::now() < deadline,
                        "the vault is still referenced 5 s after the server stopped"
                    );
                    vault = still_shared;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.dirs.take().expect("the directories")
    }

    fn shut_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().expect("stop the server");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Lower-case hex of SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts the status, showing the body when it differs.
#[track_caller]
pub fn assert_status(res: &Response, status: u16) {
    assert_eq!(
        res.status,
        status,
        "expected {status}, got {}: {}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
}

/// Panics unless `res` has `status` and is a problem of type `slug`.
#[track_caller]
pub fn assert_problem(res: &Response, status: u16, slug: &str) {
    assert_eq!(
        res.status,
        status,
        "expected {status} {slug}, got {}: {}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(res.problem(), slug);
    assert_eq!(
        res.json()["status"].as_u64(),
        Some(u64::from(status)),
        "problem status field"
    );
}

// ---- document requests shared by the HTTP tests ----

/// `POST /v1/documents` with `X-Coffer-Name: name` and `extra` headers.
pub fn post(conn: &mut Connection, name: &str, extra: &[(&str, &str)], body: &[u8]) -> Response {
    let mut headers = vec![("x-coffer-name", name)];
    headers.extend_from_slice(extra);
    conn.request("POST", "/v1/documents", &headers, body)
        .expect("upload request")
}

/// Uploads and returns the 201 JSON.
#[track_caller]
pub fn upload(conn: &mut Connection, name: &str, extra: &[(&str, &str)], body: &[u8]) -> serde_json::Value {
    let res = post(conn, name, extra, body);
    assert_eq!(
        res.status,
        201,
        "upload of {name}: {}",
        String::from_utf8_lossy(&res.body)
    );
    res.json()
}

/// The `id` of a document JSON.
pub fn id_of(doc: &serde_json::Value) -> String {
    doc["id"].as_str().expect("id").to_owned()
}

/// `/v1/documents/{id}`.
pub fn content_path(id: &str) -> String {
    format!("/v1/documents/{id}")
}

/// `/v1/documents/{id}/meta`.
pub fn meta_path(id: &str) -> String {
    format!("/v1/documents/{id}/meta")
}
