//! The HTTPS API under load over mutual TLS on loopback, next to the same mTLS stack with
//! the storage taken out. Two parts, in one run:
//!
//! 1. **Transfers of a 64 MiB document**, several repetitions of each figure, interleaved so
//!    every figure sees the same machine conditions (odd repetitions swap each pair):
//!    - `http/discard/64MiB`: `POST /discard` on a server of this bench that reads the body
//!      and drops it (the transport alone);
//!    - `http/upload/64MiB`: `POST /v1/documents` (hash, encrypt, stage, durable publish);
//!      each uploaded document is deleted afterwards, untimed;
//!    - `http/memory/64MiB`: `GET /memory` on the bench's server, which streams the same
//!      64 MiB from a static buffer in 65,472-byte pieces (a chunk's plaintext) with a
//!      `Content-Length` (the transport alone);
//!    - `http/download/64MiB`: `GET /v1/documents/{id}` (read, decrypt, stream).
//!
//!    Both servers run in this process, each on its own thread with one worker per CPU (the
//!    product's default), `TCP_NODELAY` on as the product sets it, the TLS configuration of
//!    `coffer::http::tls::server_config` (TLS 1.3, ring, client certificates checked against
//!    coffer's CA, no resumption) and the product's `on_connect` hook. The product server
//!    runs with the production authentication default (`AuthConfig::default()`: SigV4
//!    signatures and user sessions required). The client is `tests/common/client.rs`
//!    presenting a device certificate issued by the product and signing every request with
//!    that device's secret and a session token of its owner (logged in through the vault,
//!    untimed, before the server starts); an upload declares its body's SHA-256, computed
//!    beforehand, in `x-amz-content-sha256` and carries a unique `x-coffer-nonce` (a write's
//!    signature may be accepted once only). Requests to the bench's own server are signed the
//!    same way, so both carry the same head; that server checks nothing. Every
//!    transfer gets a fresh connection whose handshake is not timed. Time runs from the
//!    request head to the last byte of the response (for an upload: to the 201, i.e. after
//!    the durable publish). The first transfer of each figure is an untimed warm-up that
//!    checks every byte (and the upload's SHA-256). Alongside the throughput, the process's
//!    CPU time over the same span (client and servers together, from `/proc/self/stat`,
//!    10 ms ticks) is shown as cores kept busy and CPU ms per MiB.
//!    Targets: upload ≥ 0.6 × discard, download ≥ 0.6 × memory (ratios of the medians).
//!
//! 2. **Server RSS during a 1 GiB upload** (`http/rss/1GiB`): the `coffer` binary runs as a
//!    child process (`serve --dev` in a fresh directory each repetition, cheap argon2id,
//!    redb cache 32 MiB and signatures and sessions required, as by default). The client
//!    reads the demo device's credentials from `keys/dev/profile.toml` and the demo user's
//!    password from `keys/dev/password`, logs in with a signed `POST /v1/session` (untimed,
//!    before the memory figures), then streams a signed upload of 1 GiB from a generator
//!    (never held in memory) carrying the session token. A streamed upload declares its
//!    SHA-256 in `x-amz-content-sha256`, so the generator's content is hashed once up
//!    front (untimed; the server's SHA-256 in the 201 is checked against it). A sampler
//!    reads the child's `/proc/PID/status` every 5 ms. The child's high-water mark is reset
//!    just before the upload (`/proc/PID/clear_refs`), so `VmHWM` is the upload's own peak.
//!    Target: below 96 MiB. The upload's client-side throughput and the server process's CPU
//!    time are reported too.
//!
//! ```text
//! cargo bench --bench http              # measure (see docs/performance.md)
//! cargo bench --bench http -- --test    # 4 MiB / 16 MiB, one repetition: a smoke test
//!                                       # (also what `cargo test --benches` runs)
//! cargo bench --bench http -- upload    # a filter, as criterion's: only ids containing it
//! cargo bench --bench http -- --list
//! ```
//!
//! `HTTP_BENCH_REPS` sets the repetitions of part 1 (default 15), `HTTP_BENCH_DOC_MIB` its
//! document size in MiB (default 64), `HTTP_BENCH_RSS_REPS` the repetitions of part 2
//! (default 3). Databases live in fresh temporary directories under
//! `$COFFER_BENCH_DIR` if set, else the system temp dir (use a real disk, not tmpfs:
//! publishing fsyncs). The bench asserts correctness (status codes, sizes, content), never
//! timings: it prints a table and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_docs)]

#[path = "../tests/common/client.rs"]
mod client;
#[path = "support/mod.rs"]
mod support;

use support::{Args, bench_tempdir, env_count, median, min_max};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};
use coffer::app::init::PkiPlan;
use coffer::app::principals::UserBody;
use coffer::app::sessions::{Credentials, SessionPolicy};
use coffer::app::{Paths, Vault};
use coffer::config::{AuthConfig, Limits, TlsVersion};
use coffer::crypto::kdf::KdfParams;
use coffer::crypto::stream::CHUNK_SIZE;
use coffer::http::ServerOptions;
use coffer::model::{Role, Timestamp};
use coffer::secret::Passphrase;
use coffer::store::StoreOptions;
use futures_util::StreamExt;
use rustls::ClientConfig;
use sha2::{Digest, Sha256};

use client::{ClientSetup, Connection, Signer, unique_nonce};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Size of each client write of a request body (rustls cuts it into 16 KiB records).
const CLIENT_PIECE: usize = 256 * 1024;
/// Pieces the memory endpoint streams: one chunk's plaintext, as the product's reader.
const MEMORY_PIECE: usize = CHUNK_SIZE as usize;
const PASSPHRASE: &str = "correct horse battery staple";
/// The bench member's name and password (hashed with cheap argon2id; the session is opened
/// with it).
const MEMBER: &str = "bench";
const MEMBER_PASSWORD: &str = "bench member password";
const TARGET_UPLOAD_RATIO: f64 = 0.6;
const TARGET_DOWNLOAD_RATIO: f64 = 0.6;
const RSS_TARGET: u64 = 96 * MIB;
/// How often the RSS sampler reads `/proc/PID/status`.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(5);

fn label(size: u64) -> String {
    match size {
        s if s >= GIB && s % GIB == 0 => format!("{}GiB", s / GIB),
        s if s >= MIB && s % MIB == 0 => format!("{}MiB", s / MIB),
        s => format!("{s}B"),
    }
}

fn mibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

/// Byte `offset`.. of the content (offset a multiple of 8): little-endian splitmix64 of each
/// 8-byte word's index, so any range can be regenerated (same rule as rss.rs).
fn fill(offset: u64, buf: &mut [u8]) {
    assert_eq!(offset % 8, 0);
    let first = offset / 8;
    for (i, word) in buf.chunks_mut(8).enumerate() {
        let mut z = (first + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let bytes = (z ^ (z >> 31)).to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// A request body generated on the fly: `len` bytes of [`fill`]'s content.
struct Generator {
    offset: u64,
    len: u64,
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.offset;
        let mut n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if (n as u64) < left {
            n -= n % 8; // keep the next offset a multiple of 8
        }
        fill(self.offset, &mut buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Lower-case hex SHA-256 of [`Generator`]'s first `len` bytes, hashed piece by piece.
fn generator_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut source = Generator { offset: 0, len };
    let mut buf = vec![0u8; CLIENT_PIECE];
    loop {
        let n = source.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    coffer::sigv4::hex(&hasher.finalize())
}

/// Waits until requests signed now are accepted by a server whose first accepted second is
/// `from` (Unix seconds).
fn wait_for_second(from: i64) {
    while time::OffsetDateTime::now_utc().unix_timestamp() < from {
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// The bench's own server: the same mTLS stack, no storage
// ---------------------------------------------------------------------------------------

/// The content `GET /memory` serves (and the client uploads): set once before the server
/// starts.
static CONTENT: OnceLock<&'static [u8]> = OnceLock::new();

/// `POST /discard`: reads the whole body and drops it; answers its size and in how many
/// pieces actix-web delivered it (what the product's upload handler sees too).
async fn discard(mut payload: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    let (mut size, mut pieces) = (0u64, 0u64);
    while let Some(piece) = payload.next().await {
        size += piece?.len() as u64;
        pieces += 1;
    }
    Ok(HttpResponse::Created().json(serde_json::json!({ "size": size, "pieces": pieces })))
}

/// `GET /memory`: the content from a static buffer, in chunk-sized pieces, with a length.
async fn memory() -> HttpResponse {
    let data = Bytes::from_static(CONTENT.get().expect("content set before the server starts"));
    let len = data.len();
    let pieces = (0..len)
        .step_by(MEMORY_PIECE)
        .map(move |start| Ok::<_, std::io::Error>(data.slice(start..(start + MEMORY_PIECE).min(len))));
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(SizedStream::new(len as u64, futures_util::stream::iter(pieces)))
}

struct TransportServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl TransportServer {
    /// Starts on its own thread, as `coffer::http::start` does: the same worker count, the
    /// same `on_connect`, and, like it, `TCP_NODELAY` on. Its other settings (connection
    /// cap, header and disconnect timeouts) cost nothing per byte.
    fn start(tls: rustls::ServerConfig, workers: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("bench-transport".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(|| {
                        App::new()
                            .route("/discard", web::post().to(discard))
                            .route("/memory", web::get().to(memory))
                    })
                    .on_connect(coffer::http::auth::on_connect)
                    .workers(workers)
                    .tcp_nodelay(true)
                    .listen_rustls_0_23(listener, tls)?
                    .run();
                    let _ = tx.send(server.handle());
                    server.await
                })
            })
            .unwrap();
        let handle = rx.recv().expect("transport server did not start");
        Self { addr, handle, thread }
    }

    fn stop(self) {
        drop(self.handle.stop(true));
        self.thread.join().unwrap().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A client config, where to connect, how to sign, and whose CPU time to count (`None`:
/// this process, which then holds the client and the servers).
struct Target {
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    /// The device's credentials and session token; every request is signed with them.
    signer: Option<Signer>,
    pid: Option<u32>,
}

/// CPU time (user + system) of a process so far, seconds, from `/proc/PID/stat` (clock
/// ticks of 10 ms; exited threads included).
fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).expect("/proc/PID/stat (Linux only)");
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ
}

/// One timed transfer: wall time, and CPU time of the counted process over the same span.
#[derive(Clone, Copy, Debug)]
struct Sample {
    bytes: u64,
    secs: f64,
    cpu_secs: f64,
}

impl Sample {
    fn mibs(&self) -> f64 {
        mibs(self.bytes, self.secs)
    }

    /// Cores kept busy on average (CPU time / wall time).
    fn cores(&self) -> f64 {
        self.cpu_secs / self.secs
    }
}

struct Timer {
    pid: Option<u32>,
    start: Instant,
    cpu: f64,
}

impl Timer {
    fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            cpu: cpu_secs(pid),
            start: Instant::now(),
        }
    }

    fn stop(self, bytes: u64) -> Sample {
        let secs = self.start.elapsed().as_secs_f64();
        Sample {
            bytes,
            secs,
            cpu_secs: cpu_secs(self.pid) - self.cpu,
        }
    }
}

impl Target {
    fn connect(&self) -> Connection {
        let mut conn = Connection::open(self.config.clone(), self.addr, "localhost").expect("mTLS handshake");
        conn.set_signer(self.signer.clone());
        conn
    }

    /// Uploads `len` bytes of `body`, whose SHA-256 is `sha256` (lower-case hex), on a fresh
    /// connection; returns the time from the request head to the end of the response, and
    /// the response's JSON.
    fn upload(&self, path: &str, len: u64, body: impl Read, sha256: &str) -> (Sample, serde_json::Value) {
        let mut conn = self.connect();
        // A write's signature is accepted once: uploads signed in the same second differ by
        // their nonce.
        let nonce = unique_nonce();
        let headers = [
            ("x-coffer-name", "bench.bin"),
            ("content-type", "application/octet-stream"),
            ("x-coffer-nonce", nonce.as_str()),
        ];
        let timer = Timer::start(self.pid);
        let res = conn
            .request_streamed("POST", path, &headers, len, body, CLIENT_PIECE, sha256)
            .unwrap();
        let sample = timer.stop(len);
        assert_eq!(res.status, 201, "{path}: {}", String::from_utf8_lossy(&res.body));
        let json = res.json();
        assert_eq!(json["size"].as_u64(), Some(len), "{path}: size in the response");
        (sample, json)
    }

    /// Downloads `path` on a fresh connection, checking the content against `expected` if
    /// given; returns the time from the request head to the last body byte.
    fn download(&self, path: &str, expected_len: u64, expected: Option<&[u8]>) -> Sample {
        let mut conn = self.connect();
        let mut got = 0u64;
        let mut same = true;
        let timer = Timer::start(self.pid);
        let (status, _) = conn
            .get_streamed(path, &[], |piece| {
                if let Some(e) = expected {
                    let at = got as usize;
                    same &= e.get(at..at + piece.len()) == Some(piece);
                }
                got += piece.len() as u64;
            })
            .unwrap();
        let sample = timer.stop(expected_len);
        assert_eq!(status, 200, "{path}");
        assert_eq!(got, expected_len, "{path}: length");
        assert!(same, "{path}: content differs");
        sample
    }

    fn delete(&self, id: &str) {
        let res = self
            .connect()
            .request("DELETE", &format!("/v1/documents/{id}"), &[], b"")
            .unwrap();
        assert_eq!(res.status, 204, "delete: {}", String::from_utf8_lossy(&res.body));
    }
}

// ---------------------------------------------------------------------------------------
// Part 1: transfers of one document, product vs transport, in-process servers
// ---------------------------------------------------------------------------------------

/// The four figures of part 1, in the order of even repetitions (odd ones swap each pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Figure {
    Discard,
    Upload,
    Memory,
    Download,
}

impl Figure {
    const ALL: [Figure; 4] = [Figure::Discard, Figure::Upload, Figure::Memory, Figure::Download];

    fn name(self) -> &'static str {
        match self {
            Figure::Discard => "discard",
            Figure::Upload => "upload",
            Figure::Memory => "memory",
            Figure::Download => "download",
        }
    }

    fn id(self, size: u64) -> String {
        format!("http/{}/{}", self.name(), label(size))
    }

    fn what(self) -> &'static str {
        match self {
            Figure::Discard => "transport  POST /discard",
            Figure::Upload => "product    POST /v1/documents",
            Figure::Memory => "transport  GET /memory",
            Figure::Download => "product    GET /v1/documents/{id}",
        }
    }
}

/// Every repetition's sample, per figure that ran.
type Transfers = Vec<(Figure, Vec<Sample>)>;

fn transfers(size: u64, reps: usize, figures: &[Figure]) -> Transfers {
    let mut content = vec![0u8; size as usize];
    fill(0, &mut content);
    let content: &'static [u8] = Box::leak(content.into_boxed_slice());
    CONTENT.set(content).expect("one transfer run per process");
    let sha256: String = Sha256::digest(content).iter().map(|b| format!("{b:02x}")).collect();

    // The product: a fresh coffer with its PKI, one member and one device.
    let dir = bench_tempdir();
    let paths = Paths {
        data_dir: dir.path().join("data"),
        keys_dir: dir.path().join("keys"),
    };
    let passphrase = || Passphrase::new(PASSPHRASE.to_owned());
    let plan = PkiPlan {
        sans: vec!["localhost".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        ca_days: 30,
        server_days: 30,
    };
    let options = StoreOptions::default();
    coffer::app::init::init_with_pki(&paths, &passphrase(), KdfParams::for_tests(), options, &plan).unwrap();
    let (vault, _) = Vault::open(&paths, &passphrase(), options).unwrap();
    let user = vault
        .add_user(UserBody {
            name: MEMBER.into(),
            role: Role::Member,
            password_hash: KdfParams::for_tests()
                .hash_password(&Passphrase::new(MEMBER_PASSWORD.to_owned()))
                .unwrap(),
            disabled: false,
            totp: None,
        })
        .unwrap();
    let device = vault.issue_device(user.id, "bench", 30).unwrap();
    // The production default: signatures and sessions required. The member logs in on its
    // device through the vault (what `POST /v1/session` does), before the server owns it.
    // (Writes dated up to 10 s ahead are accepted in production, so a fresh server refuses
    // writes for 10 s; the bench signs with the server's own clock and does not wait.)
    let auth = AuthConfig {
        max_future_write_secs: 0,
        ..AuthConfig::default()
    };
    let session = vault
        .login(
            &device.device,
            &Credentials {
                username: MEMBER,
                password: &Passphrase::new(MEMBER_PASSWORD.to_owned()),
                totp: None,
            },
            &SessionPolicy::from(&auth),
            Timestamp::now(),
        )
        .unwrap();
    let signer = Signer {
        access_key: device.device.id.to_string(),
        secret: device
            .device
            .body
            .signing_secret
            .as_ref()
            .expect("a new device has a signing secret")
            .expose()
            .to_owned(),
        region: auth.region.clone(),
        token: Some(session.token.expose().to_owned()),
    };
    let ca_pem = coffer::pki::to_pem(&device.ca_der);
    let cert_pem = coffer::pki::to_pem(&device.cert_der);
    let key_pem = device.key.to_pem().unwrap();
    let (server_cert, server_key) = vault.server_identity().unwrap();
    let cert = Arc::new(coffer::http::tls::ServerCert::new(server_cert, &server_key, TlsVersion::Tls13).unwrap());
    let tls = coffer::http::tls::server_config(&device.ca_der, cert, TlsVersion::Tls13).unwrap();
    drop(server_key);

    // Both servers: one worker per CPU (the product's default, made explicit here).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let product = coffer::http::start(
        Arc::new(vault),
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_min: TlsVersion::Tls13,
            limits: Limits {
                max_upload_bytes: 2 << 30,
                device_requests_per_minute: 1_000_000,
                ..Limits::default()
            },
            workers: Some(workers),
            auth,
            device_days: 365,
            allow: coffer::http::allowlist::Allowlist::loopback(),
            erp: coffer::erp::Erp::default(),
            audit_retention_days: coffer::app::audit::DEFAULT_RETENTION_DAYS,
            health_listen: None,
            min_server_cert_days: 14,
        },
    )
    .unwrap();
    let transport = TransportServer::start(tls, workers);
    // Requests signed in the second the server started are refused.
    wait_for_second(product.signatures_from());

    let config = ClientSetup::new(&ca_pem, Some((&cert_pem, &key_pem))).build();
    let product_t = Target {
        config: config.clone(),
        addr: product.addr(),
        signer: Some(signer.clone()),
        pid: None,
    };
    // Signed too (the server ignores it), so both servers get the same request heads.
    let transport_t = Target {
        config,
        addr: transport.addr,
        signer: Some(signer),
        pid: None,
    };

    // The document downloads read, uploaded (untimed) with its SHA-256 checked.
    let doc_id = figures.contains(&Figure::Download).then(|| {
        let (_, doc) = product_t.upload("/v1/documents", size, content, &sha256);
        assert_eq!(doc["sha256"].as_str(), Some(sha256.as_str()), "upload: SHA-256");
        doc["id"].as_str().expect("id").to_owned()
    });
    let doc_path = doc_id.as_ref().map(|id| format!("/v1/documents/{id}"));
    let run = |figure: Figure, check: bool| -> Sample {
        match figure {
            Figure::Discard => transport_t.upload("/discard", size, content, &sha256).0,
            Figure::Upload => {
                let (sample, json) = product_t.upload("/v1/documents", size, content, &sha256);
                if check {
                    assert_eq!(json["sha256"].as_str(), Some(sha256.as_str()), "upload: SHA-256");
                }
                // Untimed: keep the database at one document, as store.rs does.
                product_t.delete(json["id"].as_str().expect("id"));
                sample
            }
            Figure::Memory => transport_t.download("/memory", size, check.then_some(content)),
            Figure::Download => product_t.download(doc_path.as_deref().unwrap(), size, check.then_some(content)),
        }
    };

    // Warm-up, untimed, with every byte checked.
    for &f in figures {
        run(f, true);
    }
    if figures.contains(&Figure::Discard) {
        let (_, json) = transport_t.upload("/discard", size, content, &sha256);
        let pieces = json["pieces"].as_u64().unwrap_or(0).max(1);
        println!(
            "the server received the {} body in {pieces} pieces (mean {:.1} KiB)",
            label(size),
            size as f64 / pieces as f64 / 1024.0
        );
    }
    let mut out: Transfers = figures.iter().map(|&f| (f, Vec::new())).collect();
    for rep in 0..reps {
        // Odd repetitions swap each pair, so neither side always runs after the other.
        let mut order = Figure::ALL;
        if rep % 2 == 1 {
            order.swap(0, 1);
            order.swap(2, 3);
        }
        let mut line = format!("http/{} rep {:>2}:", label(size), rep + 1);
        for f in order.into_iter().filter(|f| figures.contains(f)) {
            let sample = run(f, false);
            out.iter_mut().find(|(g, _)| *g == f).unwrap().1.push(sample);
        }
        for (f, samples) in &out {
            let s = samples.last().unwrap();
            line.push_str(&format!(
                "  {} {:>5.0} MiB/s {:.2} cores",
                f.name(),
                s.mibs(),
                s.cores()
            ));
        }
        println!("{line}");
    }

    if let Some(id) = &doc_id {
        product_t.delete(id);
    }
    product.stop().unwrap();
    transport.stop();
    out
}

// ---------------------------------------------------------------------------------------
// Part 2: server RSS during a large upload, product server in a child process
// ---------------------------------------------------------------------------------------

/// Fields of `/proc/PID/status`, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Status {
    vm_rss: u64,
    vm_hwm: u64,
    rss_anon: u64,
    rss_file: u64,
}

fn status(pid: u32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Some(Status {
        vm_rss: field("VmRSS:"),
        vm_hwm: field("VmHWM:"),
        rss_anon: field("RssAnon:"),
        rss_file: field("RssFile:"),
    })
}

struct RssRun {
    /// VmRSS once the server listens, before the upload.
    idle_kib: u64,
    /// Largest VmRSS sampled during the upload.
    sampled_kib: u64,
    /// RssAnon and RssFile at that sample.
    sampled_anon_kib: u64,
    sampled_file_kib: u64,
    /// VmHWM after the upload (reset before it, if the kernel allowed).
    hwm_kib: u64,
    hwm_reset: bool,
    samples: usize,
    /// Client-side throughput, with the server's CPU time.
    upload: Sample,
}

impl RssRun {
    fn peak_kib(&self) -> u64 {
        self.hwm_kib.max(self.sampled_kib)
    }
}

/// Kills and reaps the child when dropped, whatever happens in between.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Waits (up to 30 s) for a file the child writes, e.g. the dev profile, which `serve --dev`
/// writes just after it starts listening.
fn wait_for_file(path: &Path, child: &mut ChildGuard, stderr_path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.is_file() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "coffer serve --dev exited ({status}) before writing {}: {}",
                path.display(),
                std::fs::read_to_string(stderr_path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `size` bytes of [`Generator`]'s content, whose SHA-256 is `sha256`, uploaded to a
/// `serve --dev` child as its demo user.
fn rss_run(size: u64, sha256: &str) -> RssRun {
    let dir = bench_tempdir();
    let stderr_path = dir.path().join("server.stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer"));
    cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("COFFER_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("COFFER_KDF_MEMORY_KIB", "64")
        .env("COFFER_KDF_ITERATIONS", "1")
        .env("COFFER_MAX_FUTURE_WRITE_SECS", "0")
        .env("COFFER_MAX_UPLOAD_BYTES", (2 * GIB).to_string());
    let mut child = ChildGuard(cmd.spawn().expect("start the coffer binary"));
    let pid = child.0.id();

    // "coffer listening on https://127.0.0.1:PORT", then keep draining stdout.
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    // The server's first accepted second is at most one after the second it was seen
    // listening in (it is fixed just before the listener starts).
    let mut listening_at = 0;
    while addr.is_none() {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!(
                "coffer serve --dev exited before listening: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        addr = line
            .trim()
            .strip_prefix("coffer listening on https://")
            .map(|a| a.parse::<SocketAddr>().expect("listen address"));
        listening_at = time::OffsetDateTime::now_utc().unix_timestamp();
    }
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));

    let keys = dir.path().join("keys");
    let profile_path = keys.join("dev/profile.toml");
    wait_for_file(&profile_path, &mut child, &stderr_path);
    let profile: toml::Table = read_file(&profile_path).parse().expect("profile.toml");
    let field = |k: &str| {
        profile[k]
            .as_str()
            .unwrap_or_else(|| panic!("profile.toml: {k}"))
            .to_owned()
    };
    let password = read_file(&keys.join("dev/password")).trim_end().to_owned();
    let ca_pem = read_file(&keys.join("ca.crt"));
    let cert_pem = read_file(&keys.join("dev/client.crt"));
    let key_pem = read_file(&keys.join("dev/client.key"));
    let mut target = Target {
        config: ClientSetup::new(&ca_pem, Some((&cert_pem, &key_pem))).build(),
        addr: addr.unwrap(),
        signer: Some(Signer {
            access_key: field("access_key_id"),
            secret: field("secret_access_key"),
            region: field("region"),
            token: None,
        }),
        pid: Some(pid), // the server's CPU time alone
    };

    // Log in as the demo user (signed, untimed, before the memory figures).
    wait_for_second(listening_at + 1);
    let body = serde_json::json!({ "username": field("username"), "password": password }).to_string();
    let res = target
        .connect()
        .request(
            "POST",
            "/v1/session",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(res.status, 200, "login: {}", String::from_utf8_lossy(&res.body));
    let token = res.json()["token"].as_str().expect("session token").to_owned();
    target.signer.as_mut().expect("signer").token = Some(token);

    let idle = status(pid).expect("child status");
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = Status::default();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = status(pid) {
                    n += 1;
                    if s.vm_rss > peak.vm_rss {
                        peak = s;
                    }
                }
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            (peak, n)
        })
    };
    let (upload, json) = target.upload("/v1/documents", size, Generator { offset: 0, len: size }, sha256);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(json["sha256"].as_str(), Some(sha256), "upload: SHA-256");
    let (peak, samples) = sampler.join().unwrap();
    let after = status(pid).expect("child status");
    drop(child);
    RssRun {
        idle_kib: idle.vm_rss,
        sampled_kib: peak.vm_rss,
        sampled_anon_kib: peak.rss_anon,
        sampled_file_kib: peak.rss_file,
        hwm_kib: if hwm_reset {
            after.vm_hwm
        } else {
            after.vm_hwm.max(idle.vm_hwm)
        },
        hwm_reset,
        samples,
        upload,
    }
}

// ---------------------------------------------------------------------------------------
// Main: run, then print the table
// ---------------------------------------------------------------------------------------

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() {
    let args = Args::parse();
    let (default_doc, big_size) = if args.test {
        (4 * MIB, 16 * MIB)
    } else {
        (64 * MIB, GIB)
    };
    let doc_size = std::env::var("HTTP_BENCH_DOC_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * MIB;
    let doc_size = if doc_size == 0 { default_doc } else { doc_size };
    let reps = if args.test { 1 } else { env_count("HTTP_BENCH_REPS", 15) };
    let rss_reps = if args.test {
        1
    } else {
        env_count("HTTP_BENCH_RSS_REPS", 3)
    };
    let figures: Vec<Figure> = Figure::ALL
        .into_iter()
        .filter(|f| args.wants(&f.id(doc_size)))
        .collect();
    let rss_id = format!("http/rss/{}", label(big_size));
    let run_rss = args.wants(&rss_id);
    if args.list {
        for f in &figures {
            println!("{}: benchmark", f.id(doc_size));
        }
        if run_rss {
            println!("{rss_id}: benchmark");
        }
        return;
    }
    if figures.is_empty() && !run_rss {
        return;
    }
    println!(
        "HTTP API over mTLS on loopback (TLS 1.3, ring, client certificate; {} CPUs){}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.test {
            "; --test: small sizes, one repetition"
        } else {
            ""
        }
    );

    let t = if figures.is_empty() {
        Vec::new()
    } else {
        transfers(doc_size, reps, &figures)
    };
    let rss: Vec<RssRun> = if run_rss {
        // Untimed: the streamed upload declares its SHA-256 before the body.
        let hashing = Instant::now();
        let big_sha256 = generator_sha256(big_size);
        println!(
            "SHA-256 of the {} generator computed up front in {:.1} s",
            label(big_size),
            hashing.elapsed().as_secs_f64()
        );
        (0..rss_reps)
            .map(|i| {
                let r = rss_run(big_size, &big_sha256);
                println!(
                    "{rss_id} rep {}: idle {:.1} MiB, peak VmRSS sampled {:.1} MiB (anon {:.1}, file {:.1}; {} samples), \
                     VmHWM {:.1} MiB{}; upload {:.0} MiB/s, server {:.2} cores",
                    i + 1,
                    r.idle_kib as f64 / 1024.0,
                    r.sampled_kib as f64 / 1024.0,
                    r.sampled_anon_kib as f64 / 1024.0,
                    r.sampled_file_kib as f64 / 1024.0,
                    r.samples,
                    r.hwm_kib as f64 / 1024.0,
                    if r.hwm_reset { "" } else { " (not reset: since start)" },
                    r.upload.mibs(),
                    r.upload.cores()
                );
                r
            })
            .collect()
    } else {
        Vec::new()
    };

    println!();
    println!("Summary: client-side throughput in MiB/s (median and range of the repetitions); CPU time");
    println!("over the same span, as cores kept busy and as CPU ms per MiB (medians)");
    println!(
        "{:<24} {:<36} {:>3} {:>7} {:>13} {:>6} {:>7}",
        "figure", "request", "n", "MiB/s", "range", "cores", "ms/MiB"
    );
    let row = |id: &str, what: &str, v: &[Sample]| {
        let rates: Vec<f64> = v.iter().map(Sample::mibs).collect();
        let cores: Vec<f64> = v.iter().map(Sample::cores).collect();
        let cost: Vec<f64> = v
            .iter()
            .map(|s| s.cpu_secs * 1e3 / (s.bytes as f64 / MIB as f64))
            .collect();
        let (lo, hi) = min_max(&rates);
        println!(
            "{:<24} {:<36} {:>3} {:>7.0} {:>13} {:>6.2} {:>7.2}",
            id,
            what,
            v.len(),
            median(&rates),
            format!("{lo:.0}-{hi:.0}"),
            median(&cores),
            median(&cost)
        );
    };
    for (f, samples) in &t {
        row(&f.id(doc_size), f.what(), samples);
    }
    if !rss.is_empty() {
        let v: Vec<Sample> = rss.iter().map(|r| r.upload).collect();
        row(
            &format!("http/upload/{}", label(big_size)),
            "product    POST, server process only",
            &v,
        );
    }
    println!(
        "(rows of {}: client and both servers share this process and the CPUs)",
        label(doc_size)
    );

    let samples = |f: Figure| t.iter().find(|(g, _)| *g == f).map(|(_, v)| v.as_slice());
    let of = |v: &[Sample], m: fn(&Sample) -> f64| median(&v.iter().map(m).collect::<Vec<_>>());
    println!();
    for (name, real, base, target) in [
        ("upload", Figure::Upload, Figure::Discard, TARGET_UPLOAD_RATIO),
        ("download", Figure::Download, Figure::Memory, TARGET_DOWNLOAD_RATIO),
    ] {
        let (Some(r), Some(b)) = (samples(real), samples(base)) else {
            continue;
        };
        let ratio = of(r, Sample::mibs) / of(b, Sample::mibs);
        // Load-robust companions: repetition i of both figures ran back to back; and CPU
        // per byte, which moves much less with other load than wall time does.
        let paired: Vec<f64> = r.iter().zip(b).map(|(r, b)| r.mibs() / b.mibs()).collect();
        let cost = |v: &[Sample]| of(v, |s| s.cpu_secs / s.bytes as f64);
        println!(
            "target {name} >= {target:.1} x {}: {ratio:.2} ({}; {:.0} vs {:.0} MiB/s); median of paired \
             repetitions {:.2}; CPU cost ratio {:.2}",
            base.name(),
            verdict(ratio >= target),
            of(r, Sample::mibs),
            of(b, Sample::mibs),
            median(&paired),
            cost(b) / cost(r),
        );
    }
    if !rss.is_empty() {
        let peaks: Vec<f64> = rss.iter().map(|r| r.peak_kib() as f64 / 1024.0).collect();
        let idle: Vec<f64> = rss.iter().map(|r| r.idle_kib as f64 / 1024.0).collect();
        let (lo, hi) = min_max(&peaks);
        println!(
            "target server peak RSS during a {} upload < {} MiB: median {:.1} MiB (range {:.1}-{:.1}; idle {:.1}) ({})",
            label(big_size),
            RSS_TARGET / MIB,
            median(&peaks),
            lo,
            hi,
            median(&idle),
            verdict(hi < (RSS_TARGET / MIB) as f64)
        );
    }
    std::io::stdout().flush().unwrap();
}
