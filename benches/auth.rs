//! What request authentication costs: small signed requests per second over mutual TLS on
//! loopback, against the same request with signatures and sessions switched off. One run
//! holds two in-process coffer servers:
//!
//! - `auth/meta/on`: `ServerOptions.auth` = `AuthConfig::default()` (the production
//!   default): every request carries an AWS SigV4 signature made with the device's secret,
//!   and the member's session token in `X-Amz-Security-Token` (signed). The client signs
//!   each request afresh (new canonical request and signature; the signing key is derived
//!   once per day, as SDK signers cache it, and so does the server; the token comes from
//!   `Vault::login`, untimed, before the server starts).
//! - `auth/meta/off`: the same with `signatures` and `sessions` false; the client sends no
//!   signature and no token.
//!
//! Each server gets a fresh coffer of its own (cheap argon2id, default store options) with
//! one member, one device and one small document (1 KiB, uploaded over HTTP before the
//! timing), one worker per CPU (the product's default, made explicit), default limits,
//! TLS 1.3. Both modes still identify the caller by its client certificate on every request
//! (device and owner looked up in the vault): only the signature and session checks differ.
//!
//! The load: N client threads (`AUTH_BENCH_CLIENTS`, default 16), each with its own
//! keep-alive connection (the `tests/common/client.rs` client, the product's device
//! certificate), send `GET /v1/documents/{id}/meta` back to back for D seconds
//! (`AUTH_BENCH_SECS`, default 5). Connections are opened and used once before the timing
//! (handshake and first request untimed), and a barrier starts all threads together. Each
//! server first gets an untimed warm-up load (D/5 seconds, at most 1 s).
//! Requests/s is the requests completed divided by the time from the start to the last
//! thread's end; latency is each request's time from writing its head to reading the last
//! byte of its response. Repetitions (`AUTH_BENCH_REPS`, default 5) alternate which mode
//! runs first (on/off, then off/on, ...), each with new connections, so both modes see the
//! same machine conditions. Reported per mode: requests/s (median, min, max over the
//! repetitions), p50 and p99 latency over all requests of all repetitions, and CPU time
//! over the same spans (`/proc/self/stat` for the whole process, `/proc/thread-self/stat`
//! of each client thread for the client's share; the rest is the server's; 10 ms ticks), as
//! cores kept busy and as CPU µs per request, and the cores other processes kept busy
//! meanwhile (`/proc/stat`), since the machine may be shared. Target: ratio of the medians
//! on/off ≥ 0.90, i.e. the checks cost under 10% of throughput. The on server's session
//! records its last use at most once a minute (a write off the worker thread), as in
//! production.
//!
//! The client and the server share this process and the machine's CPUs, so the on figure
//! also pays the client's signing. To separate the two, the bench also times, alone in a
//! loop on one thread (`auth/pieces`): the client's `Signer::sign` for this request, and the
//! server-side pieces of a request through the public API: the signature check (parse the
//! `Authorization` header, `sigv4::verify` with the day's key), the session lookup
//! (`Vault::check_session`), and, paid in both modes, the device lookup by thumbprint and
//! the owner lookup. The summary also estimates the server's own cost: the server CPU
//! per request off/on (the ratio a CPU-bound server would see with its clients elsewhere),
//! and the process's extra CPU per request minus the client's signing.
//!
//! ```text
//! cargo bench --bench auth              # measure
//! cargo bench --bench auth -- --test    # one repetition of 1 s: a smoke test
//!                                       # (also what `cargo test --benches` runs)
//! cargo bench --bench auth -- on        # a filter, as criterion's: only ids containing it
//! cargo bench --bench auth -- --list
//! ```
//!
//! Databases live in fresh temporary directories under `$COFFER_BENCH_DIR` if set, else the
//! system temp dir. The bench asserts correctness (every response is a 200; the untimed first
//! request of each connection checks the document's JSON), never timings: it prints a table
//! and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_docs)]

#[path = "../tests/common/client.rs"]
mod client;
#[path = "support/mod.rs"]
mod support;

use support::{Args, bench_tempdir, env_count, median, min_max};

use std::hint::black_box;
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use coffer::app::init::PkiPlan;
use coffer::app::principals::UserBody;
use coffer::app::sessions::{Credentials, SessionPolicy};
use coffer::app::{Paths, Vault};
use coffer::config::{AuthConfig, Limits, TlsVersion};
use coffer::crypto::kdf::KdfParams;
use coffer::http::{RunningServer, ServerOptions};
use coffer::model::{Role, Timestamp};
use coffer::secret::Passphrase;
use coffer::sigv4;
use coffer::store::StoreOptions;
use rustls::ClientConfig;

use client::{ClientSetup, Connection, Signer, unique_nonce};

const PASSPHRASE: &str = "correct horse battery staple";
const MEMBER: &str = "bench";
const MEMBER_PASSWORD: &str = "bench member password";
/// Size of the one document.
const DOC_SIZE: usize = 1024;
const TARGET_RATIO: f64 = 0.90;

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// CPU time (user + system) so far, seconds, from a `/proc/.../stat` file (clock ticks of
/// 10 ms): `/proc/self/stat` for the process (exited threads included),
/// `/proc/thread-self/stat` for the calling thread.
fn cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).expect("/proc/.../stat (Linux only)");
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ
}

/// CPU time the whole machine spent busy so far (user, nice, system, irq, softirq, steal
/// over every CPU), seconds, from `/proc/stat`: with the process's own CPU time it shows
/// how much other work shared the CPUs.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat (Linux only)");
    let line = stat.lines().next().expect("cpu line");
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / 100.0 // USER_HZ
}

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// The two servers
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Signatures and sessions required (the production default).
    On,
    /// Both off.
    Off,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::On => "on",
            Mode::Off => "off",
        }
    }

    fn id(self) -> String {
        format!("auth/meta/{}", self.name())
    }

    fn what(self) -> &'static str {
        match self {
            Mode::On => "signature + session checked",
            Mode::Off => "certificate only",
        }
    }
}

/// A coffer server over a fresh coffer, its client side, and the document it serves.
struct Product {
    mode: Mode,
    server: Option<RunningServer>,
    /// Shared with the server, for the pieces timed alone.
    vault: Arc<Vault>,
    config: Arc<ClientConfig>,
    /// The device's credentials and session (`None` for [`Mode::Off`]).
    signer: Option<Signer>,
    /// The device's certificate, DER.
    cert_der: Vec<u8>,
    /// `/v1/documents/{id}/meta` of the one document.
    meta_path: String,
    doc_id: String,
    _dir: tempfile::TempDir,
}

impl Product {
    fn start(mode: Mode, workers: usize) -> Self {
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
        let auth = match mode {
            // (No wait for writes after the start; the bench only reads.)
            Mode::On => AuthConfig {
                max_future_write_secs: 0,
                ..AuthConfig::default()
            },
            Mode::Off => AuthConfig {
                signatures: false,
                sessions: false,
                ..AuthConfig::default()
            },
        };
        // The member logs in on its device through the vault (what `POST /v1/session`
        // does), before the server starts.
        let signer = (mode == Mode::On).then(|| {
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
            Signer {
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
            }
        });
        let ca_pem = coffer::pki::to_pem(&device.ca_der);
        let cert_pem = coffer::pki::to_pem(&device.cert_der);
        let key_pem = device.key.to_pem().unwrap();
        let config = ClientSetup::new(&ca_pem, Some((&cert_pem, &key_pem))).build();

        let vault = Arc::new(vault);
        let server = coffer::http::start(
            vault.clone(),
            ServerOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls_min: TlsVersion::Tls13,
                // A bench device makes far more requests than a phone: no per-device budget.
                limits: Limits {
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
        // Requests signed in the second the server started are refused.
        while time::OffsetDateTime::now_utc().unix_timestamp() < server.signatures_from() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut product = Self {
            mode,
            server: Some(server),
            vault,
            config,
            signer,
            cert_der: device.cert_der.clone(),
            meta_path: String::new(),
            doc_id: String::new(),
            _dir: dir,
        };

        // The one document (untimed).
        let content: Vec<u8> = (0..DOC_SIZE).map(|i| (i % 251) as u8).collect();
        let nonce = unique_nonce();
        let res = product
            .connect()
            .request(
                "POST",
                "/v1/documents",
                &[
                    ("x-coffer-name", "bench.txt"),
                    ("content-type", "text/plain"),
                    ("x-coffer-nonce", nonce.as_str()),
                ],
                &content,
            )
            .unwrap();
        assert_eq!(
            res.status,
            201,
            "{} upload: {}",
            mode.name(),
            String::from_utf8_lossy(&res.body)
        );
        product.doc_id = res.json()["id"].as_str().expect("id").to_owned();
        product.meta_path = format!("/v1/documents/{}/meta", product.doc_id);
        product
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().expect("running").addr()
    }

    /// A new connection, signing if the mode requires it; handshake complete.
    fn connect(&self) -> Connection {
        let mut conn = Connection::open(self.config.clone(), self.addr(), "localhost").expect("mTLS handshake");
        conn.set_signer(self.signer.clone());
        conn
    }

    /// One `GET .../meta` on `conn`, checking the whole answer (warm-up).
    fn check_meta(&self, conn: &mut Connection) {
        let res = conn.request("GET", &self.meta_path, &[], b"").unwrap();
        assert_eq!(
            res.status,
            200,
            "{} GET meta: {}",
            self.mode.name(),
            String::from_utf8_lossy(&res.body)
        );
        let json = res.json();
        assert_eq!(json["id"].as_str(), Some(self.doc_id.as_str()), "meta: id");
        assert_eq!(json["size"].as_u64(), Some(DOC_SIZE as u64), "meta: size");
    }

    fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// One repetition of one mode.
struct Run {
    requests: u64,
    secs: f64,
    /// Whole process (clients and server) over the span.
    cpu_secs: f64,
    /// The client threads' share of it.
    client_cpu_secs: f64,
    /// The whole machine's busy CPU time over the span (this process included).
    machine_busy_secs: f64,
    /// Every request's latency, ns.
    latencies: Vec<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn cores(&self) -> f64 {
        self.cpu_secs / self.secs
    }

    /// Cores kept busy by other processes over the span.
    fn other_cores(&self) -> f64 {
        ((self.machine_busy_secs - self.cpu_secs) / self.secs).max(0.0)
    }

    /// CPU µs per request: all, server (all minus the client threads), client.
    fn cpu_us(&self) -> (f64, f64, f64) {
        let per = |s: f64| s * 1e6 / self.requests as f64;
        (
            per(self.cpu_secs),
            per(self.cpu_secs - self.client_cpu_secs),
            per(self.client_cpu_secs),
        )
    }
}

/// What one client thread did.
struct ClientResult {
    requests: u64,
    latencies: Vec<u64>,
    cpu_secs: f64,
    /// The first response that was not a 200, if any.
    failure: Option<String>,
}

fn load(product: &Product, clients: usize, secs: f64) -> Run {
    // Connections first, each used once (untimed): the handshake is complete and the server
    // has accepted the certificate before the timing starts.
    let conns: Vec<Connection> = (0..clients)
        .map(|_| {
            let mut c = product.connect();
            product.check_meta(&mut c);
            c
        })
        .collect();
    let barrier = Arc::new(Barrier::new(clients + 1));
    let duration = Duration::from_secs_f64(secs);
    let path = product.meta_path.as_str();
    let (results, elapsed, cpu) = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut conn)| {
                let barrier = barrier.clone();
                std::thread::Builder::new()
                    .name(format!("auth-client-{i}"))
                    .spawn_scoped(s, move || {
                        let mut latencies = Vec::with_capacity(64 * 1024);
                        let mut failure = None;
                        barrier.wait();
                        let cpu_start = cpu_secs("/proc/thread-self/stat");
                        let start = Instant::now();
                        while start.elapsed() < duration {
                            let t0 = Instant::now();
                            let res = conn.request("GET", path, &[], b"").unwrap();
                            let ns = t0.elapsed().as_nanos();
                            if res.status != 200 {
                                failure =
                                    Some(format!("status {}: {}", res.status, String::from_utf8_lossy(&res.body)));
                                break;
                            }
                            latencies.push(u64::try_from(ns).unwrap_or(u64::MAX));
                        }
                        ClientResult {
                            requests: latencies.len() as u64,
                            latencies,
                            cpu_secs: cpu_secs("/proc/thread-self/stat") - cpu_start,
                            failure,
                        }
                    })
                    .unwrap()
            })
            .collect();
        barrier.wait();
        let cpu_start = cpu_secs("/proc/self/stat");
        let machine_start = machine_busy_secs();
        let start = Instant::now();
        let results: Vec<ClientResult> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = (
            cpu_secs("/proc/self/stat") - cpu_start,
            machine_busy_secs() - machine_start,
        );
        (results, elapsed, cpu)
    });
    if let Some(f) = results.iter().find_map(|r| r.failure.as_ref()) {
        panic!("{} GET {path}: {f}", product.mode.id());
    }
    let mut latencies: Vec<u64> = results.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    latencies.sort_unstable();
    Run {
        requests: results.iter().map(|r| r.requests).sum(),
        secs: elapsed,
        cpu_secs: cpu.0,
        machine_busy_secs: cpu.1,
        client_cpu_secs: results.iter().map(|r| r.cpu_secs).sum(),
        latencies,
    }
}

// ---------------------------------------------------------------------------------------
// Pieces timed alone
// ---------------------------------------------------------------------------------------

/// Mean ns per call of `f`, called for about `secs` (after a short warm-up).
fn time_per_call(secs: f64, mut f: impl FnMut()) -> (f64, u64) {
    for _ in 0..100 {
        f();
    }
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        calls += 64;
    }
    (start.elapsed().as_nanos() as f64 / calls as f64, calls)
}

struct Piece {
    name: &'static str,
    what: &'static str,
    ns: f64,
    calls: u64,
}

/// The client's signing and the server-side checks of one `GET .../meta`, each alone on
/// this thread, on the `on` server's vault (shared with its idle server).
fn pieces(on: &Product, secs: f64) -> Vec<Piece> {
    let signer = on.signer.as_ref().expect("the on server has a signer");
    let path = on.meta_path.as_str();
    let mut out = Vec::new();
    let mut piece = |name, what, (ns, calls): (f64, u64)| out.push(Piece { name, what, ns, calls });

    piece(
        "client sign",
        "Signer::sign (canonical request, key, HMACs) [client]",
        time_per_call(secs, || {
            black_box(signer.sign("GET", black_box(path), "localhost", &[], sigv4::EMPTY_SHA256));
        }),
    );

    // A request head as the server sees it: host, the signer's headers.
    let added = signer.sign("GET", path, "localhost", &[], sigv4::EMPTY_SHA256);
    let mut headers: Vec<(&str, &[u8])> = vec![("host", b"localhost")];
    headers.extend(added.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let request = sigv4::Request {
        method: "GET",
        path,
        query: "",
        headers,
    };
    let value = request.single("authorization").unwrap().unwrap();
    let amz_date = request.single("x-amz-date").unwrap().unwrap();
    let token = request.single("x-amz-security-token").unwrap().unwrap();
    let secret = signer.secret.as_str();
    // The server derives the signing key once per device and day.
    let parsed = sigv4::Authorization::parse(value).unwrap();
    let key = sigv4::signing_key(secret, &parsed.date, &parsed.region, &parsed.service);
    piece(
        "server signature",
        "parse Authorization, sigv4::verify (key cached per day)",
        time_per_call(secs, || {
            let auth = sigv4::Authorization::parse(black_box(value)).unwrap();
            sigv4::verify(&request, &auth, amz_date, sigv4::EMPTY_SHA256, &key).unwrap();
        }),
    );

    let thumbprint = coffer::pki::thumbprint(&on.cert_der);
    let device = on.vault.device_by_thumbprint(&thumbprint).unwrap().expect("device");
    let policy = SessionPolicy::from(&AuthConfig::default());
    piece(
        "server session",
        "Vault::check_session (SHA-256, read txn, lookup)",
        time_per_call(secs, || {
            let valid = on
                .vault
                .check_session(black_box(token), &device, &policy, Timestamp::now())
                .unwrap();
            assert!(valid.is_ok(), "session refused: {valid:?}");
        }),
    );
    piece(
        "server device (both)",
        "Vault::device_by_thumbprint (paid with auth off too)",
        time_per_call(secs, || {
            black_box(on.vault.device_by_thumbprint(black_box(&thumbprint)).unwrap());
        }),
    );
    piece(
        "server owner (both)",
        "Vault::user of the device's owner (paid with auth off too)",
        time_per_call(secs, || {
            black_box(on.vault.user(device.owner).unwrap());
        }),
    );
    out
}

// ---------------------------------------------------------------------------------------
// Main: run, then print the table
// ---------------------------------------------------------------------------------------

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn main() {
    let args = Args::parse();
    let clients = env_count("AUTH_BENCH_CLIENTS", 16);
    let (reps, secs, piece_secs) = if args.test {
        (1, 1.0, 0.05)
    } else {
        (
            env_count("AUTH_BENCH_REPS", 5),
            env_count("AUTH_BENCH_SECS", 5) as f64,
            1.0,
        )
    };
    let modes: Vec<Mode> = [Mode::On, Mode::Off]
        .into_iter()
        .filter(|m| args.wants(&m.id()))
        .collect();
    let run_pieces = args.wants("auth/pieces");
    if args.list {
        for m in &modes {
            println!("{}: benchmark", m.id());
        }
        if run_pieces {
            println!("auth/pieces: benchmark");
        }
        return;
    }
    if modes.is_empty() && !run_pieces {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "GET /v1/documents/{{id}}/meta over mTLS on loopback (TLS 1.3, keep-alive; {cpus} CPUs, {cpus} server \
         workers; {clients} client threads x {secs:.0} s, {reps} repetition(s)){}",
        if args.test { "; --test: smoke run" } else { "" }
    );

    // Both servers up for the whole run (the `on` one is also needed for the pieces).
    let mut products: Vec<Product> = Vec::new();
    for m in [Mode::On, Mode::Off] {
        if modes.contains(&m) || (m == Mode::On && run_pieces) {
            products.push(Product::start(m, cpus));
        }
    }
    let product = |m: Mode| products.iter().find(|p| p.mode == m).expect("started");

    // Warm-up, untimed: a short load on each.
    for &m in &modes {
        load(product(m), clients, (secs / 5.0).min(1.0));
    }
    let mut runs: Vec<(Mode, Vec<Run>)> = modes.iter().map(|&m| (m, Vec::new())).collect();
    for rep in 0..reps {
        // Odd repetitions run off first.
        let mut order = modes.clone();
        if rep % 2 == 1 {
            order.reverse();
        }
        let mut line = format!("auth rep {:>2}:", rep + 1);
        for m in order {
            let run = load(product(m), clients, secs);
            let (all, server, client) = run.cpu_us();
            line.push_str(&format!(
                "  {} {:>6.0} req/s p50 {:.2} ms p99 {:.2} ms {:.2} cores ({:.0}/{:.0}/{:.0} µs CPU per request \
                 all/server/client; other load {:.2} cores)",
                m.name(),
                run.rate(),
                ms(quantile(&run.latencies, 0.50)),
                ms(quantile(&run.latencies, 0.99)),
                run.cores(),
                all,
                server,
                client,
                run.other_cores()
            ));
            runs.iter_mut().find(|(n, _)| *n == m).unwrap().1.push(run);
        }
        println!("{line}");
    }
    let pieces = if run_pieces {
        pieces(product(Mode::On), piece_secs)
    } else {
        Vec::new()
    };
    for p in products {
        p.stop();
    }

    println!();
    println!("Summary: requests/s (median and range of the repetitions), latency over every request of");
    println!("every repetition, CPU (medians): cores kept busy and µs per request for the whole process,");
    println!("the server (process minus client threads) and the client threads; cores kept busy by other");
    println!("processes over the same spans");
    println!(
        "{:<14} {:<28} {:>3} {:>7} {:>13} {:>7} {:>7} {:>5} {:>6} {:>6} {:>6} {:>5}",
        "figure", "request", "n", "req/s", "range", "p50 ms", "p99 ms", "cores", "µs", "server", "client", "other"
    );
    for (m, v) in &runs {
        let rates: Vec<f64> = v.iter().map(Run::rate).collect();
        let (lo, hi) = min_max(&rates);
        let mut all: Vec<u64> = v.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        all.sort_unstable();
        let cpu = |f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        println!(
            "{:<14} {:<28} {:>3} {:>7.0} {:>13} {:>7.2} {:>7.2} {:>5.2} {:>6.1} {:>6.1} {:>6.1} {:>5.2}",
            m.id(),
            m.what(),
            v.len(),
            median(&rates),
            format!("{lo:.0}-{hi:.0}"),
            ms(quantile(&all, 0.50)),
            ms(quantile(&all, 0.99)),
            cpu(Run::cores),
            cpu(|r| r.cpu_us().0),
            cpu(|r| r.cpu_us().1),
            cpu(|r| r.cpu_us().2),
            cpu(Run::other_cores),
        );
    }
    println!("(client threads and both servers share this process and the CPUs)");

    if !pieces.is_empty() {
        println!();
        println!("Pieces of one request, each alone on one thread (mean):");
        for p in &pieces {
            println!(
                "  {:<22} {:>7.2} µs  {} ({} calls)",
                p.name,
                p.ns / 1e3,
                p.what,
                p.calls
            );
        }
    }

    let get = |m: Mode| runs.iter().find(|(n, _)| *n == m).map(|(_, v)| v.as_slice());
    if let (Some(on), Some(off)) = (get(Mode::On), get(Mode::Off)) {
        let of = |v: &[Run], f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let ratio = of(on, Run::rate) / of(off, Run::rate);
        // Load-robust companion: repetition i of both modes ran back to back.
        let paired: Vec<f64> = on.iter().zip(off).map(|(a, b)| a.rate() / b.rate()).collect();
        println!();
        println!(
            "target on/off >= {TARGET_RATIO:.2}: {ratio:.3} ({}; {:.0} vs {:.0} req/s); median of paired repetitions {:.3}",
            verdict(ratio >= TARGET_RATIO),
            of(on, Run::rate),
            of(off, Run::rate),
            median(&paired),
        );
        let (d_all, d_server, d_client) = (
            of(on, |r| r.cpu_us().0) - of(off, |r| r.cpu_us().0),
            of(on, |r| r.cpu_us().1) - of(off, |r| r.cpu_us().1),
            of(on, |r| r.cpu_us().2) - of(off, |r| r.cpu_us().2),
        );
        println!(
            "CPU per request, on minus off: {d_all:+.1} µs (server {d_server:+.1} µs, client {d_client:+.1} µs); \
             server CPU per request off/on {:.3} (the ratio a CPU-bound server would see with the clients \
             elsewhere)",
            of(off, |r| r.cpu_us().1) / of(on, |r| r.cpu_us().1),
        );
        if let Some(sign) = pieces.iter().find(|p| p.name == "client sign") {
            let server_pieces: f64 = pieces
                .iter()
                .filter(|p| p.name == "server signature" || p.name == "server session")
                .map(|p| p.ns / 1e3)
                .sum();
            println!(
                "client signing alone: {:.2} µs per request, {:.3} cores at the on rate; server signature + \
                 session alone: {server_pieces:.2} µs per request; process CPU difference minus client \
                 signing: {:+.1} µs",
                sign.ns / 1e3,
                sign.ns / 1e9 * of(on, Run::rate),
                d_all - sign.ns / 1e3,
            );
        }
    }
    std::io::stdout().flush().unwrap();
}
