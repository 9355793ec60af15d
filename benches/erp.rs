//! ERP cache reads under load: `GET /v1/erp/{collection}/{key}` hits for 1 KiB records,
//! signed, over mutual TLS with keep-alive, 50 concurrent connections on loopback; requests
//! per second and p50/p99 latency of coffer next to a Node.js `https` server that serves
//! the same records from memory (`benches/erp-baseline.js`), measured by one load generator.
//!
//! **The servers** (all up for the whole run; repetitions alternate between them):
//! - `erp/get/coffer`: `coffer::http::start` in this process over a fresh coffer (cheap
//!   argon2id, default store options), one worker per CPU (the product's default, made
//!   explicit), default limits, TLS 1.3, and the production authentication default
//!   (`AuthConfig::default()`: SigV4 signatures and member sessions required; only
//!   `max_future_write_secs` is 0, as in the tests, so the untimed writes need not wait 10 s
//!   after the start: it concerns writes only). One ERP collection, `customers`
//!   (`read_roles = ["member"]`, `ttl = "24h"`, no upstream), configured through
//!   `Config::from_toml` and `Erp::from_config` into `ServerOptions.erp`. Before any
//!   timing an `integration` device writes every record with a signed
//!   `PUT /v1/erp/customers/{key}` (each with its own `x-coffer-nonce`): 1,000 records
//!   (`ERP_BENCH_KEYS`) of exactly 1,024 bytes of compact JSON each (serde_json's canonical
//!   form, so the bytes read back are the bytes written whether coffer keeps the text or
//!   re-serialises it). Every timed request is therefore a fresh cache hit: coffer checks the
//!   certificate's device, the signature, the member's session and role, looks the key up
//!   (HMAC index), reads and decrypts the record from redb (envelope: unwrap the DEK,
//!   XChaCha20-Poly1305 open) and answers it. The cache's own counters are read after the run
//!   (`Erp::counters`), and must show hits only.
//! - `erp/get/bare`: coffer's TLS stack and nothing else, in this process: an actix-web
//!   server of this bench with `coffer::http::tls::server_config` (the coffer's server
//!   identity and CA: TLS 1.3, ring, client certificates required, no resumption), the
//!   product's `on_connect`, one worker per CPU and `TCP_NODELAY`, and one route answering
//!   the same records from a `HashMap` with the same header shape. Like Node it checks
//!   nothing but the client certificate: the ceiling of any implementation on this stack
//!   (context for the target, which no figure but coffer's is held to).
//! - `erp/get/node`: `node benches/erp-baseline.js` (`ERP_BENCH_NODE` names the binary), one
//!   process, `node:https` with `requestCert`/`rejectUnauthorized`, TLS 1.3, the coffer's CA
//!   as client-certificate roots and the coffer's own server certificate and key (issued by
//!   that CA: `Vault::server_identity`), serving the same 1,000 records (handed over as a
//!   JSON file of key → record text) from a `Map`, with the same header shape (JSON content
//!   type, a strong ETag computed at load, `Age`, `Cache-Status`, `Cache-Control`). It
//!   ignores the signature and token headers: its only check is the client certificate.
//!   This is the issue's baseline.
//! - `erp/get/node-cluster`: the same script with `--workers N` (`node:cluster`, N = the
//!   CPU count, the primary handing connections out round-robin): what a Node deployment
//!   that uses every core of this machine does. Reported for context; the target is set
//!   against the single process.
//!
//!   If `node` cannot be started the Node figures are skipped with a message (the coffer
//!   figure still runs; `cargo test --benches` passes without Node).
//!
//! **The load** (the same code for every server): C connections (`ERP_BENCH_CONNECTIONS`,
//! default 50), each its own client thread and its own keep-alive TLS 1.3 connection
//! presenting its own device certificate (C member devices issued by the coffer's CA through
//! `Vault::issue_device`, as the other benches do; each device's owner logged in through
//! `Vault::login`, untimed, giving one session per device), with the rustls client
//! configuration of `tests/common/client.rs` (ring, no resumption) and a deliberately lean
//! request loop: a request head written into a reused buffer, one TLS write, the response read
//! into a reused buffer and checked (status 200, `Content-Length`, body byte-equal to the
//! record). Every request is signed afresh: SigV4 over `host`, `x-amz-date` and
//! `x-amz-security-token` (the session token) with the project's signer
//! (`coffer::sigv4::authorization`); the signing key is derived once per device and day, as
//! SDK signers cache it, and the `x-amz-date` text is formatted once per second (it is the
//! same text within a second). Node receives the same signed heads and ignores them.
//! Connection `i` walks the keys in order from key `i·K/C` (wrapping), so the load spreads
//! over every record. Each connection's handshake and first request are untimed; that first
//! request checks the whole answer (status, `Content-Type`, ETag shape, coffer's
//! `Cache-Status: coffer; hit`, and the ETag the PUT returned; the negotiated TLS version,
//! cipher suite and key exchange are printed once per server). A barrier starts all threads;
//! each sends requests back to back (closed loop: one request in flight per connection)
//! until D seconds (`ERP_BENCH_SECS`, default 10) have passed. Requests/s = requests
//! completed / time from the start to the last thread's end. Latency = each request's time
//! from writing its head to reading its last byte, collected per thread and sorted (p50, p99
//! nearest-rank over all requests of all repetitions). With C requests always outstanding,
//! the mean latency is about C / throughput (Little's law): latency here is under saturation,
//! not at a light load.
//!
//! **Runs**: each server first gets an untimed warm-up load of 2 s, then R repetitions
//! (`ERP_BENCH_REPS`, default 5); repetition r runs the servers in an order rotated by r, each
//! with new connections, so every server sees the same machine conditions.
//!
//! **CPU**: over each timed span, the process's CPU (`CLOCK_PROCESS_CPUTIME_ID`) and each
//! client thread's (`CLOCK_THREAD_CPUTIME_ID`), both to the nanosecond (a client thread uses
//! a few ms per second: ticks would round it away), the Node processes' (`/proc/PID/stat` of
//! the primary and its workers) and the whole machine's busy time (`/proc/stat`), those two
//! in 10 ms ticks. Client = the client threads; server = for coffer and bare, the process
//! minus the client threads, for Node its processes; other = the rest of the machine (other
//! processes: should be ~0; above 0.1 cores the summary warns that the run was disturbed).
//! Shown as cores kept busy and CPU µs per request. The client shares the machine with the
//! server, so a cheaper client leaves more CPU to the server: hence the lean loop. Signing
//! every request costs the client about 3 µs of its ~20 µs (see the pieces), so it is not
//! memoised. When the servers are CPU-bound, requests/s ≈ cores / (client µs + server µs),
//! and the server CPU per request is the load-robust comparison ("the rate with the clients
//! elsewhere").
//!
//! **Pieces** (`erp/pieces`): alone in a loop on one thread, mean time per call: the client's
//! signing, head building and response parsing for one request, and the server-side pieces
//! of a coffer ERP read that the public API exposes: the signature check with the day's
//! key, the session check, the device lookup by thumbprint, the owner lookup, the record
//! read (`Vault::erp_get`: index HMAC, redb lookup, DEK unwrap, open) and the cache read as
//! the handler awaits it (`Erp::read`, which runs `erp_get` on tokio's blocking pool; wall
//! time on a current-thread runtime, so it includes the hand-over to the pool and back).
//!
//! **Target**: requests/s of coffer ≥ 2 × the single Node process (ratio of the medians),
//! reported with the median of the paired repetitions' ratios and the server CPU per
//! request ratio. Context lines, with no target: coffer against the Node cluster and
//! against bare, and bare against Node.
//!
//! ```text
//! cargo bench --bench erp              # measure (about 4 minutes)
//! cargo bench --bench erp -- --test    # 100 keys, one repetition of 1 s: a smoke test
//!                                      # (also what `cargo test --benches` runs)
//! cargo bench --bench erp -- coffer    # a filter, as criterion's: only ids containing it
//! cargo bench --bench erp -- --list
//! ```
//!
//! Databases live in fresh temporary directories under `$COFFER_BENCH_DIR` if set, else the
//! system temp dir. The bench asserts correctness (every timed response is a 200 with the
//! record's exact bytes; coffer's counters show hits only), never timings: it prints a table
//! and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_docs)]

#[path = "../tests/common/client.rs"]
mod client;
#[path = "support/mod.rs"]
mod support;

use support::{Args, bench_tempdir, env_count, median, min_max};

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{App, HttpResponse, HttpServer, web};
use coffer::app::init::PkiPlan;
use coffer::app::principals::UserBody;
use coffer::app::sessions::{Credentials, SessionPolicy};
use coffer::app::{Paths, Vault};
use coffer::config::{AuthConfig, Config, Limits, TlsVersion};
use coffer::crypto::kdf::KdfParams;
use coffer::erp::{Erp, ReadOptions};
use coffer::http::{RunningServer, ServerOptions};
use coffer::model::{Role, Timestamp};
use coffer::secret::Passphrase;
use coffer::sigv4;
use coffer::store::StoreOptions;
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use client::{ClientSetup, Connection, RawStream, Signer, raw_tls, unique_nonce};

const PASSPHRASE: &str = "correct horse battery staple";
const MEMBER: &str = "bench";
const MEMBER_PASSWORD: &str = "bench member password";
const INTEGRATION: &str = "erp-feed";
const COLLECTION: &str = "customers";
/// Size of every record's JSON text, bytes.
const RECORD_SIZE: usize = 1024;
const TARGET_RATIO: f64 = 2.0;
/// The server name the client connects to (a SAN of the server certificate).
const SERVER_NAME: &str = "localhost";
/// The coffer configuration the bench runs with (only `[erp]` differs from the defaults).
const CONFIG_TOML: &str = r#"
[erp]

[erp.collections.customers]
read_roles = ["member"]
# Fresh for the whole run: every timed read is a hit.
ttl = "24h"
"#;
/// The Node.js baseline.
const NODE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/erp-baseline.js");

fn key_name(i: usize) -> String {
    format!("cust-{i:05}")
}

/// Record `i`: compact JSON (serde_json's canonical form: keys sorted) of exactly
/// [`RECORD_SIZE`] bytes, padded in a `notes` field.
fn record(i: usize) -> String {
    let country = ["DE", "FR", "NL", "IT", "ES"][i % 5];
    let mut value = serde_json::json!({
        "id": key_name(i),
        "name": format!("Customer {i}"),
        "country": country,
        "credit_limit": 1000 * (i % 97 + 1),
        "vat_id": format!("DE{:09}", (i * 7919) % 1_000_000_000),
        "active": !i.is_multiple_of(13),
        "notes": "",
    });
    let base = serde_json::to_string(&value).unwrap().len();
    assert!(base < RECORD_SIZE, "record {i}: {base} bytes before padding");
    let notes: String = (0..RECORD_SIZE - base)
        .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
        .collect();
    value["notes"] = notes.into();
    let text = serde_json::to_string(&value).unwrap();
    assert_eq!(text.len(), RECORD_SIZE, "record {i}");
    text
}

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

// ---------------------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------------------

/// CPU time (user + system) of another process so far, seconds, from `/proc/PID/stat`
/// (10 ms ticks); `None` once it is gone.
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ
}

fn clock_secs(id: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(id);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// This process's CPU time so far (every thread, exited ones included), seconds, to the
/// nanosecond (`/proc/self/stat` counts 10 ms ticks).
fn self_cpu() -> f64 {
    clock_secs(rustix::time::ClockId::ProcessCPUTime)
}

/// The calling thread's CPU time so far, seconds, to the nanosecond: a client thread uses a
/// few ms per second of the run, so ticks would round most of it away.
fn thread_cpu() -> f64 {
    clock_secs(rustix::time::ClockId::ThreadCPUTime)
}

/// CPU time the whole machine spent busy so far (user, nice, system, irq, softirq, steal
/// over every CPU), seconds, from `/proc/stat`.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat (Linux only)");
    let line = stat.lines().next().expect("cpu line");
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / 100.0 // USER_HZ
}

/// The direct children of `pid` (scanning `/proc`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |v| v.trim_start_matches([' ', '\t', ':']));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs ({model}), Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

// ---------------------------------------------------------------------------------------
// The clients: devices, their signers, the lean request loop
// ---------------------------------------------------------------------------------------

/// One client identity: a member device with its own certificate and session.
struct Device {
    config: Arc<ClientConfig>,
    signer: Signer,
    cert_der: Vec<u8>,
}

/// Signs GETs as `client::Signer` does, without its per-request allocations around the
/// project's signer: the signing key is derived once per day, the `x-amz-date` text once per
/// second; the canonical request and the signature are computed for every request.
struct RequestSigner {
    access_key: String,
    secret: String,
    region: String,
    token: String,
    signed_headers: Vec<String>,
    day_key: Option<(String, zeroize::Zeroizing<[u8; 32]>)>,
    second: i64,
    amz_date: String,
}

impl RequestSigner {
    fn new(signer: &Signer) -> Self {
        Self {
            access_key: signer.access_key.clone(),
            secret: signer.secret.clone(),
            region: signer.region.clone(),
            token: signer.token.clone().expect("a member device signs with its session"),
            signed_headers: vec!["host".into(), "x-amz-date".into(), "x-amz-security-token".into()],
            day_key: None,
            second: i64::MIN,
            amz_date: String::new(),
        }
    }

    /// The `authorization` value for `GET path` now; [`amz_date`](Self::amz_date) is the
    /// `x-amz-date` it signed.
    fn sign_get(&mut self, path: &str) -> String {
        let now = time::OffsetDateTime::now_utc();
        let second = now.unix_timestamp();
        if second != self.second {
            self.second = second;
            self.amz_date = sigv4::amz_date(now);
            let day = &self.amz_date[..8];
            if self.day_key.as_ref().is_none_or(|(d, _)| d != day) {
                let key = sigv4::signing_key(&self.secret, day, &self.region, "coffer");
                self.day_key = Some((day.to_owned(), key));
            }
        }
        let req = sigv4::Request {
            method: "GET",
            path,
            query: "",
            headers: vec![
                ("host", SERVER_NAME.as_bytes()),
                ("x-amz-date", self.amz_date.as_bytes()),
                ("x-amz-security-token", self.token.as_bytes()),
            ],
        };
        let creds = sigv4::Credentials {
            access_key: &self.access_key,
            secret: &self.secret,
            region: &self.region,
            service: "coffer",
            key: self.day_key.clone(),
        };
        sigv4::authorization(&req, &creds, &self.amz_date, &self.signed_headers, sigv4::EMPTY_SHA256).expect("sign")
    }

    /// Writes the whole signed head of `GET path` into `out` (cleared first).
    fn head(&mut self, path: &str, out: &mut Vec<u8>) {
        let authorization = self.sign_get(path);
        out.clear();
        for piece in [
            "GET ",
            path,
            " HTTP/1.1\r\nhost: ",
            SERVER_NAME,
            "\r\nx-amz-date: ",
            &self.amz_date,
            "\r\nx-amz-security-token: ",
            &self.token,
            "\r\nauthorization: ",
            &authorization,
            "\r\n\r\n",
        ] {
            out.extend_from_slice(piece.as_bytes());
        }
    }
}

/// Where a response's parts are in the read buffer.
struct Framing {
    status: u16,
    head_len: usize,
    body_len: usize,
}

/// A keep-alive mTLS connection with reused buffers.
struct LoadConn {
    tls: RawStream,
    signer: RequestSigner,
    head: Vec<u8>,
    buf: Vec<u8>,
    len: usize,
}

impl LoadConn {
    fn open(device: &Device, addr: SocketAddr) -> Self {
        // `raw_tls`: TCP_NODELAY, a 15 s read timeout (a stuck server fails the bench
        // instead of hanging it), handshake completed.
        Self {
            tls: raw_tls(device.config.clone(), addr),
            signer: RequestSigner::new(&device.signer),
            head: Vec::with_capacity(1024),
            buf: vec![0; 64 * 1024],
            len: 0,
        }
    }

    /// Sends a signed `GET path` and reads its whole response into the buffer.
    fn get(&mut self, path: &str) -> Result<Framing, String> {
        self.signer.head(path, &mut self.head);
        self.tls.write_all(&self.head).map_err(|e| format!("write: {e}"))?;
        self.len = 0;
        let framing = loop {
            if let Some(f) = frame(&self.buf[..self.len])? {
                break f;
            }
            self.fill()?;
        };
        let total = framing.head_len + framing.body_len;
        if total > self.buf.len() {
            return Err(format!("response of {total} bytes"));
        }
        while self.len < total {
            self.fill()?;
        }
        if self.len != total {
            return Err(format!("{} bytes past the response", self.len - total));
        }
        Ok(framing)
    }

    fn fill(&mut self) -> Result<(), String> {
        if self.len == self.buf.len() {
            return Err("response head too large".into());
        }
        match self.tls.read(&mut self.buf[self.len..]) {
            Ok(0) => Err("connection closed".into()),
            Ok(n) => {
                self.len += n;
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    fn body(&self, f: &Framing) -> &[u8] {
        &self.buf[f.head_len..f.head_len + f.body_len]
    }

    /// The response's headers (names lower-cased), for the untimed checks.
    fn headers(&self, f: &Framing) -> Vec<(String, String)> {
        String::from_utf8_lossy(&self.buf[..f.head_len])
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect()
    }

    /// Negotiated TLS version, cipher suite, key exchange group.
    fn tls_description(&self) -> String {
        let c = &self.tls.conn;
        format!(
            "{:?}, {:?}, {:?}",
            c.protocol_version(),
            c.negotiated_cipher_suite().map(|s| s.suite()),
            c.negotiated_key_exchange_group().map(|g| g.name())
        )
        .replace("Some(", "")
        .replace(')', "")
    }
}

/// Parses a response head at the start of `bytes`: `None` until it is complete. A body
/// needs a `Content-Length` (both servers send one for these responses).
fn frame(bytes: &[u8]) -> Result<Option<Framing>, String> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &bytes[..end];
    let status = head
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line in {:?}", String::from_utf8_lossy(head)))?;
    let mut body_len = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            body_len = std::str::from_utf8(&line[15..])
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        }
    }
    let body_len = match (status, body_len) {
        (304 | 204, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(format!("no content-length in {:?}", String::from_utf8_lossy(head))),
    };
    Ok(Some(Framing {
        status,
        head_len: end + 4,
        body_len,
    }))
}

// ---------------------------------------------------------------------------------------
// The fixture: one coffer (its PKI serves Node too), its devices and records
// ---------------------------------------------------------------------------------------

struct Fixture {
    vault: Arc<Vault>,
    ca_pem: String,
    /// One member device per connection.
    devices: Vec<Device>,
    /// The integration device that writes the records.
    writer: Device,
    auth: AuthConfig,
    keys: Vec<String>,
    paths: Vec<String>,
    records: Vec<String>,
    /// ETags coffer answered to the PUTs (filled once coffer has started).
    etags: Vec<String>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(connections: usize, key_count: usize) -> Self {
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
        let ca_pem = std::fs::read_to_string(coffer::app::pki::ca_cert_path(&paths)).unwrap();
        let auth = AuthConfig {
            // Writes only (see the module docs); reads are checked exactly as by default.
            max_future_write_secs: 0,
            ..AuthConfig::default()
        };
        let password_hash = |p: &str| {
            KdfParams::for_tests()
                .hash_password(&Passphrase::new(p.to_owned()))
                .unwrap()
        };
        let member = vault
            .add_user(UserBody {
                name: MEMBER.into(),
                role: Role::Member,
                password_hash: password_hash(MEMBER_PASSWORD),
                disabled: false,
                totp: None,
            })
            .unwrap();
        let feed = vault
            .add_user(UserBody {
                name: INTEGRATION.into(),
                role: Role::Integration,
                password_hash: password_hash("integration password, never used"),
                disabled: false,
                totp: None,
            })
            .unwrap();
        let issue = |owner, name: &str, login: bool| {
            let issued = vault.issue_device(owner, name, 30).unwrap();
            // The member logs in on each device through the vault (what `POST /v1/session`
            // does), before the server starts; the integration device only signs.
            let token = login.then(|| {
                let session = vault
                    .login(
                        &issued.device,
                        &Credentials {
                            username: MEMBER,
                            password: &Passphrase::new(MEMBER_PASSWORD.to_owned()),
                            totp: None,
                        },
                        &SessionPolicy::from(&auth),
                        Timestamp::now(),
                    )
                    .unwrap();
                session.token.expose().to_owned()
            });
            let cert_pem = coffer::pki::to_pem(&issued.cert_der);
            let key_pem = issued.key.to_pem().unwrap();
            Device {
                config: ClientSetup::new(&ca_pem, Some((&cert_pem, &key_pem))).build(),
                signer: Signer {
                    access_key: issued.device.id.to_string(),
                    secret: issued
                        .device
                        .body
                        .signing_secret
                        .as_ref()
                        .expect("a new device has a signing secret")
                        .expose()
                        .to_owned(),
                    region: auth.region.clone(),
                    token,
                },
                cert_der: issued.cert_der.clone(),
            }
        };
        let devices = (0..connections)
            .map(|i| issue(member.id, &format!("bench-{i}"), true))
            .collect();
        let writer = issue(feed.id, "erp-feed", false);
        let keys: Vec<String> = (0..key_count).map(key_name).collect();
        Self {
            paths: keys.iter().map(|k| format!("/v1/erp/{COLLECTION}/{k}")).collect(),
            records: (0..key_count).map(record).collect(),
            keys,
            etags: Vec::new(),
            vault: Arc::new(vault),
            ca_pem,
            devices,
            writer,
            auth,
            dir,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The servers
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Coffer,
    Bare,
    Node,
    NodeCluster,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Coffer, Kind::Bare, Kind::Node, Kind::NodeCluster];

    fn name(self) -> &'static str {
        match self {
            Kind::Coffer => "coffer",
            Kind::Bare => "bare",
            Kind::Node => "node",
            Kind::NodeCluster => "node-cluster",
        }
    }

    fn id(self) -> String {
        format!("erp/get/{}", self.name())
    }
}

/// A running Node baseline; stopped (stdin closed, then killed if need be) when dropped.
struct NodeServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The primary and its cluster workers.
    pids: Vec<u32>,
    addr: SocketAddr,
}

impl NodeServer {
    /// `Ok(None)`: `node` is not installed.
    fn start(fixture: &Fixture, workers: usize) -> Result<Option<Self>, String> {
        let dir = fixture.dir.path().join(format!("node-{workers}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_der, key) = fixture.vault.server_identity().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = write("ca.pem", &fixture.ca_pem);
        let cert = write("server.pem", &coffer::pki::to_pem(&cert_der));
        let key = write("server.key", &key.to_pem().unwrap());
        let records: serde_json::Map<String, serde_json::Value> = fixture
            .keys
            .iter()
            .zip(&fixture.records)
            .map(|(k, r)| (k.clone(), serde_json::Value::String(r.clone())))
            .collect();
        let records = write("records.json", &serde_json::to_string(&records).unwrap());
        let stderr_path = dir.join("node.stderr");
        let node = std::env::var_os("ERP_BENCH_NODE").unwrap_or_else(|| "node".into());
        let arg = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
        let spawned = Command::new(&node)
            .args([
                NODE_SCRIPT,
                "--ca",
                &arg(&ca),
                "--cert",
                &arg(&cert),
                "--key",
                &arg(&key),
            ])
            .args([
                "--records",
                &arg(&records),
                "--collection",
                COLLECTION,
                "--host",
                "127.0.0.1",
            ])
            .args(["--port", "0", "--workers", &workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", node.to_string_lossy())),
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(lines.read_line(&mut line).map(|_| line));
            // Keep draining (the script prints nothing else, but never block it).
            let _ = std::io::copy(&mut lines, &mut std::io::sink());
        });
        let mut server = Self {
            child,
            stdin,
            pids: Vec::new(),
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let line = rx.recv_timeout(Duration::from_secs(30));
        let port = match &line {
            Ok(Ok(l)) => l.trim().parse::<u16>().ok(),
            _ => None,
        };
        let Some(port) = port else {
            drop(server);
            return Err(format!(
                "{} {NODE_SCRIPT} did not print its port ({line:?}): {}",
                node.to_string_lossy(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            ));
        };
        server.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let primary = server.child.id();
        server.pids = std::iter::once(primary).chain(children_of(primary)).collect();
        Ok(Some(server))
    }

    fn cpu_secs(&self) -> f64 {
        self.pids.iter().filter_map(|&pid| proc_cpu_secs(pid)).sum()
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the script exits when its stdin closes
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's own server: coffer's TLS stack and nothing else. `coffer::http::tls::server_config`
/// with the coffer's server identity and CA (TLS 1.3, ring, client certificates required, no
/// resumption), the product's `on_connect`, one worker per CPU and `TCP_NODELAY`, as
/// `coffer::http::start` sets them; one actix-web route answering the records from a map.
/// It checks nothing but the client certificate, like the Node baseline: the ceiling of any
/// implementation on this stack.
struct BareServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

/// Key → (record, ETag) of the bare server.
type BareRecords = HashMap<String, (web::Bytes, String)>;

async fn bare_get(path: web::Path<(String, String)>, records: web::Data<BareRecords>) -> HttpResponse {
    let (collection, key) = path.into_inner();
    match records.get(&key).filter(|_| collection == COLLECTION) {
        Some((body, etag)) => HttpResponse::Ok()
            .insert_header((header::ETAG, etag.as_str()))
            .insert_header((header::AGE, "0"))
            .insert_header(("cache-status", "bare; hit"))
            .insert_header((header::CACHE_CONTROL, "private, no-cache"))
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(body.clone()),
        None => HttpResponse::NotFound().finish(),
    }
}

impl BareServer {
    fn start(fixture: &Fixture, workers: usize) -> Self {
        let (cert_der, key) = fixture.vault.server_identity().unwrap();
        let ca_der = CertificateDer::from_pem_slice(fixture.ca_pem.as_bytes()).unwrap();
        let cert = Arc::new(coffer::http::tls::ServerCert::new(cert_der, &key, TlsVersion::Tls13).unwrap());
        let tls = coffer::http::tls::server_config(&ca_der, cert, TlsVersion::Tls13).unwrap();
        let records: BareRecords = fixture
            .keys
            .iter()
            .zip(&fixture.records)
            .map(|(k, r)| {
                // Strong, 22 characters of [0-9a-f] (the shape coffer's has).
                let etag = format!("\"{}\"", &sigv4::sha256_hex(r.as_bytes())[..22]);
                (k.clone(), (web::Bytes::from(r.clone()), etag))
            })
            .collect();
        let records = web::Data::new(records);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("bench-bare".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(records.clone())
                            .route("/v1/erp/{collection}/{key}", web::get().to(bare_get))
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
        let handle = rx.recv().expect("the bare server did not start");
        Self { addr, handle, thread }
    }

    fn stop(self) {
        actix_web::rt::System::new().block_on(self.handle.stop(true));
        self.thread.join().unwrap().unwrap();
    }
}

fn node_version() -> Option<String> {
    let node = std::env::var_os("ERP_BENCH_NODE").unwrap_or_else(|| "node".into());
    let out = Command::new(node).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Starts coffer on the fixture's vault and writes every record through it (untimed).
fn start_coffer(fixture: &mut Fixture, workers: usize) -> (RunningServer, Erp) {
    let config = Config::from_toml(CONFIG_TOML, "erp-bench.toml").unwrap();
    config.validate().unwrap();
    let erp = Erp::from_config(&config.erp).unwrap();
    let server = coffer::http::start(
        fixture.vault.clone(),
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_min: TlsVersion::Tls13,
            // A bench device makes far more requests than a phone: no per-device budget.
            limits: Limits {
                device_requests_per_minute: 1_000_000,
                ..Limits::default()
            },
            workers: Some(workers),
            auth: fixture.auth.clone(),
            device_days: 365,
            allow: coffer::http::allowlist::Allowlist::loopback(),
            erp: erp.clone(),
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

    // The records, by the integration device, one signed PUT each (each a commit).
    let started = Instant::now();
    let mut conn = Connection::open(fixture.writer.config.clone(), server.addr(), SERVER_NAME).unwrap();
    conn.set_signer(Some(fixture.writer.signer.clone()));
    fixture.etags = fixture
        .paths
        .iter()
        .zip(&fixture.records)
        .map(|(path, record)| {
            let nonce = unique_nonce();
            let res = conn
                .request(
                    "PUT",
                    path,
                    &[("content-type", "application/json"), ("x-coffer-nonce", nonce.as_str())],
                    record.as_bytes(),
                )
                .unwrap();
            assert!(
                res.status == 201 || res.status == 200,
                "coffer PUT {path}: status {}: {}",
                res.status,
                String::from_utf8_lossy(&res.body)
            );
            res.json()["etag"]
                .as_str()
                .unwrap_or_else(|| panic!("coffer PUT {path}: no etag in {}", String::from_utf8_lossy(&res.body)))
                .to_owned()
        })
        .collect();
    println!(
        "coffer: {} records of {RECORD_SIZE} B written by signed PUTs in {:.2} s (untimed)",
        fixture.records.len(),
        started.elapsed().as_secs_f64()
    );
    (server, erp)
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// One timed load on one server.
struct Run {
    requests: u64,
    secs: f64,
    /// The client threads' CPU.
    client_cpu: f64,
    /// The server's CPU: coffer, this process minus the client threads; Node, its processes.
    server_cpu: f64,
    /// The rest of the machine's busy time.
    other_cpu: f64,
    /// Every request's latency, ns, sorted.
    latencies: Vec<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn cores(&self, cpu: f64) -> f64 {
        cpu / self.secs
    }

    fn us_per_request(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.requests as f64
    }
}

/// What one client thread did.
struct ClientResult {
    latencies: Vec<u64>,
    cpu: f64,
    /// Requests that failed (a status other than 200, a wrong body, an I/O error), and the
    /// first few described.
    failures: u64,
    examples: Vec<String>,
}

/// A server under load: where it listens and how to count its CPU.
struct Target<'a> {
    kind: Kind,
    addr: SocketAddr,
    node: Option<&'a NodeServer>,
}

/// The untimed first request of a connection: the whole answer checked.
fn check_first(target: &Target, fixture: &Fixture, conn: &mut LoadConn, k: usize) -> usize {
    let path = &fixture.paths[k];
    let f = conn
        .get(path)
        .unwrap_or_else(|e| panic!("{} GET {path}: {e}", target.kind.name()));
    let body = conn.body(&f);
    assert_eq!(
        f.status,
        200,
        "{} GET {path}: {}",
        target.kind.name(),
        String::from_utf8_lossy(body)
    );
    assert!(
        body == fixture.records[k].as_bytes(),
        "{} GET {path}: the body is not the record written: {}",
        target.kind.name(),
        String::from_utf8_lossy(body)
    );
    let headers = conn.headers(&f);
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(
        header("content-type"),
        Some("application/json"),
        "{} GET {path}",
        target.kind.name()
    );
    let etag = header("etag").unwrap_or_default();
    let inner = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or("");
    assert!(
        inner.len() == 22
            && inner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{} GET {path}: ETag {etag:?}",
        target.kind.name()
    );
    if target.kind == Kind::Coffer {
        let status = header("cache-status").unwrap_or_default();
        assert!(
            status.starts_with("coffer; hit"),
            "coffer GET {path}: Cache-Status {status:?}"
        );
        assert_eq!(
            inner,
            fixture.etags[k].trim_matches('"'),
            "coffer GET {path}: the ETag is not the one the PUT answered"
        );
    }
    f.head_len + f.body_len
}

fn load(target: &Target, fixture: &Fixture, secs: f64, describe: bool) -> Run {
    let clients = fixture.devices.len();
    let keys = fixture.keys.len();
    // Connections first, each used once (untimed): handshake done, certificate accepted.
    let conns: Vec<(LoadConn, usize)> = fixture
        .devices
        .iter()
        .enumerate()
        .map(|(i, device)| {
            let mut conn = LoadConn::open(device, target.addr);
            let start = i * keys / clients;
            let size = check_first(target, fixture, &mut conn, start);
            if describe && i == 0 {
                println!(
                    "{}: {}; a response is {size} bytes ({RECORD_SIZE} B body)",
                    target.kind.id(),
                    conn.tls_description()
                );
            }
            (conn, (start + 1) % keys)
        })
        .collect();
    let barrier = Arc::new(Barrier::new(clients + 1));
    let duration = Duration::from_secs_f64(secs);
    let node_cpu = || target.node.map_or(0.0, NodeServer::cpu_secs);
    let (results, elapsed, process_cpu, server_cpu, machine) = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, (mut conn, mut k))| {
                let barrier = barrier.clone();
                std::thread::Builder::new()
                    .name(format!("erp-client-{i}"))
                    .spawn_scoped(s, move || {
                        let mut latencies = Vec::with_capacity(64 * 1024);
                        let (mut failures, mut examples) = (0u64, Vec::new());
                        barrier.wait();
                        let cpu_start = thread_cpu();
                        let start = Instant::now();
                        while start.elapsed() < duration {
                            let path = &fixture.paths[k];
                            let t0 = Instant::now();
                            let outcome = conn.get(path);
                            let ns = t0.elapsed().as_nanos();
                            let problem = match &outcome {
                                Ok(f) if f.status == 200 && conn.body(f) == fixture.records[k].as_bytes() => None,
                                Ok(f) if f.status == 200 => Some(format!("GET {path}: 200 with another body")),
                                Ok(f) => Some(format!(
                                    "GET {path}: status {}: {}",
                                    f.status,
                                    String::from_utf8_lossy(conn.body(f))
                                )),
                                Err(e) => Some(format!("GET {path}: {e}")),
                            };
                            match problem {
                                None => latencies.push(u64::try_from(ns).unwrap_or(u64::MAX)),
                                Some(p) => {
                                    failures += 1;
                                    if examples.len() < 3 {
                                        examples.push(p);
                                    }
                                    if outcome.is_err() {
                                        break; // the connection is unusable
                                    }
                                }
                            }
                            k = (k + 1) % keys;
                        }
                        ClientResult {
                            latencies,
                            cpu: thread_cpu() - cpu_start,
                            failures,
                            examples,
                        }
                    })
                    .unwrap()
            })
            .collect();
        barrier.wait();
        let (cpu0, node0, machine0) = (self_cpu(), node_cpu(), machine_busy_secs());
        let start = Instant::now();
        let results: Vec<ClientResult> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let elapsed = start.elapsed().as_secs_f64();
        (
            results,
            elapsed,
            self_cpu() - cpu0,
            node_cpu() - node0,
            machine_busy_secs() - machine0,
        )
    });
    let failures: u64 = results.iter().map(|r| r.failures).sum();
    if failures > 0 {
        let examples: Vec<&String> = results.iter().flat_map(|r| &r.examples).take(10).collect();
        panic!(
            "{}: {failures} failed requests of {}; e.g. {examples:#?}",
            target.kind.id(),
            failures + results.iter().map(|r| r.latencies.len() as u64).sum::<u64>()
        );
    }
    let client_cpu: f64 = results.iter().map(|r| r.cpu).sum();
    let mut latencies: Vec<u64> = results.into_iter().flat_map(|r| r.latencies).collect();
    latencies.sort_unstable();
    let server_cpu = match target.kind {
        Kind::Coffer | Kind::Bare => process_cpu - client_cpu,
        Kind::Node | Kind::NodeCluster => server_cpu,
    };
    let node_share = if target.node.is_some() { server_cpu } else { 0.0 };
    Run {
        requests: latencies.len() as u64,
        secs: elapsed,
        client_cpu,
        server_cpu: server_cpu.max(0.0),
        other_cpu: (machine - process_cpu - node_share).max(0.0),
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

/// The client's work and the server-side checks of one ERP read, each alone on this thread;
/// with `erp` (coffer ran and holds the records), the cache read too.
fn pieces(fixture: &Fixture, erp: Option<&Erp>, secs: f64) -> Vec<Piece> {
    let device = &fixture.devices[0];
    let path = fixture.paths[0].as_str();
    let mut out = Vec::new();
    let mut piece = |name, what, (ns, calls): (f64, u64)| out.push(Piece { name, what, ns, calls });

    let mut signer = RequestSigner::new(&device.signer);
    piece(
        "client sign",
        "RequestSigner::sign_get: canonical request, HMACs (day key cached) [client]",
        time_per_call(secs, || {
            black_box(signer.sign_get(black_box(path)));
        }),
    );
    let mut head = Vec::new();
    piece(
        "client head",
        "RequestSigner::head: the above + the head written [client]",
        time_per_call(secs, || {
            signer.head(black_box(path), &mut head);
            black_box(&head);
        }),
    );
    let record = fixture.records[0].as_bytes();
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\netag: \"0123456789abcdefghijkl\"\r\n\
         age: 0\r\ncache-status: coffer; hit; ttl=86399\r\ncache-control: private, no-cache\r\n\r\n",
        record.len()
    )
    .into_bytes();
    response.extend_from_slice(record);
    piece(
        "client parse",
        "frame() + body compare of one response [client]",
        time_per_call(secs, || {
            let f = frame(black_box(&response)).unwrap().unwrap();
            assert!(&response[f.head_len..f.head_len + f.body_len] == record);
        }),
    );

    // A request head as the server sees it.
    let authorization = signer.sign_get(path);
    let request = sigv4::Request {
        method: "GET",
        path,
        query: "",
        headers: vec![
            ("host", SERVER_NAME.as_bytes()),
            ("x-amz-date", signer.amz_date.as_bytes()),
            ("x-amz-security-token", signer.token.as_bytes()),
            ("authorization", authorization.as_bytes()),
        ],
    };
    let parsed = sigv4::Authorization::parse(&authorization).unwrap();
    let key = sigv4::signing_key(&signer.secret, &parsed.date, &parsed.region, &parsed.service);
    let amz_date = signer.amz_date.clone();
    piece(
        "server signature",
        "parse Authorization, sigv4::verify (key cached per day)",
        time_per_call(secs, || {
            let auth = sigv4::Authorization::parse(black_box(&authorization)).unwrap();
            sigv4::verify(&request, &auth, &amz_date, sigv4::EMPTY_SHA256, &key).unwrap();
        }),
    );
    let vault = &fixture.vault;
    let thumbprint = coffer::pki::thumbprint(&device.cert_der);
    let info = vault.device_by_thumbprint(&thumbprint).unwrap().expect("device");
    let policy = SessionPolicy::from(&fixture.auth);
    piece(
        "server session",
        "Vault::check_session (SHA-256, read txn, lookup)",
        time_per_call(secs, || {
            let valid = vault
                .check_session(black_box(&signer.token), &info, &policy, Timestamp::now())
                .unwrap();
            assert!(valid.is_ok(), "session refused: {valid:?}");
        }),
    );
    piece(
        "server device",
        "Vault::device_by_thumbprint",
        time_per_call(secs, || {
            black_box(vault.device_by_thumbprint(black_box(&thumbprint)).unwrap());
        }),
    );
    piece(
        "server owner",
        "Vault::user of the device's owner",
        time_per_call(secs, || {
            black_box(vault.user(info.owner).unwrap());
        }),
    );
    let Some(erp) = erp else {
        return out;
    };
    let mut k = 0;
    let mut next_key = || {
        k = (k + 1) % fixture.keys.len();
        fixture.keys[k].as_str()
    };
    piece(
        "server ERP get",
        "Vault::erp_get: index HMAC, redb lookup, DEK unwrap, open (record)",
        time_per_call(secs, || {
            let record = vault.erp_get(COLLECTION, next_key()).unwrap().expect("stored");
            assert_eq!(record.value.len(), RECORD_SIZE);
        }),
    );
    // What the handler awaits: the same read moved to tokio's blocking pool and back.
    let collection = erp.collection(COLLECTION).expect("configured");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    piece(
        "server ERP read",
        "Erp::read of a hit: the above and the cache logic, wall time [runtime]",
        time_per_call(secs, || {
            let served = runtime
                .block_on(erp.read(vault, collection, next_key(), info.id, &ReadOptions::single()))
                .unwrap();
            assert_eq!(served.record.value.len(), RECORD_SIZE);
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

fn main() {
    let args = Args::parse();
    // `ERP_BENCH_LOG=json` (or `human`): coffer writes its request log line for every
    // request, as `coffer serve` does (to stderr: redirect it), to measure what logging
    // costs. Unset: no log subscriber.
    if let Ok(format) = std::env::var("ERP_BENCH_LOG") {
        let format = format.parse().unwrap_or_else(|e| panic!("ERP_BENCH_LOG: {e}"));
        coffer::telemetry::init(format, coffer::config::LogLevel::Info);
    }
    let connections = env_count("ERP_BENCH_CONNECTIONS", 50);
    let (reps, secs, warm_secs, piece_secs, key_count) = if args.test {
        (1, 1.0, 0.2, 0.05, env_count("ERP_BENCH_KEYS", 100))
    } else {
        (
            env_count("ERP_BENCH_REPS", 5),
            env_count("ERP_BENCH_SECS", 10) as f64,
            2.0,
            1.0,
            env_count("ERP_BENCH_KEYS", 1000),
        )
    };
    let kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| args.wants(&k.id())).collect();
    let run_pieces = args.wants("erp/pieces");
    if args.list {
        for k in &kinds {
            println!("{}: benchmark", k.id());
        }
        if run_pieces {
            println!("erp/pieces: benchmark");
        }
        return;
    }
    if kinds.is_empty() && !run_pieces {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "GET /v1/erp/{COLLECTION}/{{key}} hits, {RECORD_SIZE} B records over {key_count} keys, signed, mTLS (TLS 1.3) \
         keep-alive on loopback; {connections} connections x {secs:.0} s, {reps} repetition(s){}",
        if args.test { "; --test: smoke run" } else { "" }
    );
    println!(
        "machine: {}; coffer and bare {cpus} workers; node {}",
        machine_description(),
        node_version().unwrap_or_else(|| "not found".into())
    );

    let setup = Instant::now();
    let mut fixture = Fixture::new(connections, key_count);
    println!(
        "setup: coffer with {connections} member devices (one session each) and an integration device in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let coffer = kinds.contains(&Kind::Coffer).then(|| start_coffer(&mut fixture, cpus));
    let bare = kinds.contains(&Kind::Bare).then(|| BareServer::start(&fixture, cpus));
    let mut nodes: Vec<(Kind, NodeServer)> = Vec::new();
    for (kind, workers) in [(Kind::Node, 1), (Kind::NodeCluster, cpus)] {
        if !kinds.contains(&kind) {
            continue;
        }
        match NodeServer::start(&fixture, workers) {
            Ok(Some(server)) => nodes.push((kind, server)),
            Ok(None) => println!(
                "{}: SKIPPED: `{}` not found (install Node.js or set ERP_BENCH_NODE)",
                kind.id(),
                std::env::var("ERP_BENCH_NODE").unwrap_or_else(|_| "node".into())
            ),
            Err(e) if args.test => println!("{}: SKIPPED: {e}", kind.id()),
            Err(e) => panic!("{}: {e}", kind.id()),
        }
    }
    let mut targets: Vec<Target> = Vec::new();
    if let Some((server, _)) = &coffer {
        targets.push(Target {
            kind: Kind::Coffer,
            addr: server.addr(),
            node: None,
        });
    }
    if let Some(server) = &bare {
        targets.push(Target {
            kind: Kind::Bare,
            addr: server.addr,
            node: None,
        });
    }
    for (kind, server) in &nodes {
        targets.push(Target {
            kind: *kind,
            addr: server.addr,
            node: Some(server),
        });
    }

    // Every GET coffer answered (the untimed first request of each connection included),
    // to compare with its hit counter. First an untimed warm-up of each server.
    let mut coffer_gets = 0u64;
    let connections_u64 = connections as u64;
    for t in &targets {
        let run = load(t, &fixture, warm_secs, true);
        if t.kind == Kind::Coffer {
            coffer_gets += run.requests + connections_u64;
        }
    }
    let mut runs: Vec<(Kind, Vec<Run>)> = targets.iter().map(|t| (t.kind, Vec::new())).collect();
    for rep in 0..reps {
        let mut order: Vec<&Target> = targets.iter().collect();
        if !order.is_empty() {
            let n = order.len();
            order.rotate_left(rep % n);
        }
        for t in order {
            let run = load(t, &fixture, secs, false);
            if t.kind == Kind::Coffer {
                coffer_gets += run.requests + connections_u64;
            }
            println!(
                "erp rep {:>2} {:<13} {:>7.0} req/s  p50 {:>5.2} ms  p99 {:>5.2} ms  cores client {:.2} server {:.2} \
                 other {:.2}  CPU µs/request client {:.1} server {:.1}",
                rep + 1,
                t.kind.name(),
                run.rate(),
                ms(quantile(&run.latencies, 0.50)),
                ms(quantile(&run.latencies, 0.99)),
                run.cores(run.client_cpu),
                run.cores(run.server_cpu),
                run.cores(run.other_cpu),
                run.us_per_request(run.client_cpu),
                run.us_per_request(run.server_cpu),
            );
            runs.iter_mut().find(|(k, _)| *k == t.kind).unwrap().1.push(run);
        }
    }

    let counters = coffer
        .as_ref()
        .map(|(_, erp)| erp.counters(COLLECTION).expect("the collection's counters"));
    let pieces = if run_pieces {
        pieces(&fixture, coffer.as_ref().map(|(_, erp)| erp), piece_secs)
    } else {
        Vec::new()
    };
    drop(targets);
    drop(nodes);
    if let Some((server, _)) = coffer {
        server.stop().unwrap();
    }
    if let Some(server) = bare {
        server.stop();
    }

    println!();
    println!("Summary: requests/s (median and range of the repetitions); latency over every request of every");
    println!("repetition; CPU (medians) as cores kept busy and µs per request, for the client threads, the");
    println!("server (coffer, bare: this process minus the client threads; node: its processes) and other processes");
    println!(
        "{:<22} {:>3} {:>7} {:>13} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7}",
        "figure", "n", "req/s", "range", "p50 ms", "p99 ms", "client", "server", "other", "µs cli", "µs srv"
    );
    for (kind, v) in &runs {
        if v.is_empty() {
            continue;
        }
        let rates: Vec<f64> = v.iter().map(Run::rate).collect();
        let (lo, hi) = min_max(&rates);
        let mut all: Vec<u64> = v.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        all.sort_unstable();
        let med = |f: &dyn Fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        println!(
            "{:<22} {:>3} {:>7.0} {:>13} {:>7.2} {:>7.2} {:>6.2} {:>6.2} {:>6.2} {:>7.1} {:>7.1}",
            kind.id(),
            v.len(),
            median(&rates),
            format!("{lo:.0}-{hi:.0}"),
            ms(quantile(&all, 0.50)),
            ms(quantile(&all, 0.99)),
            med(&|r| r.cores(r.client_cpu)),
            med(&|r| r.cores(r.server_cpu)),
            med(&|r| r.cores(r.other_cpu)),
            med(&|r| r.us_per_request(r.client_cpu)),
            med(&|r| r.us_per_request(r.server_cpu)),
        );
    }
    let busiest_other = runs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(_, v)| median(&v.iter().map(|r| r.cores(r.other_cpu)).collect::<Vec<_>>()))
        .fold(0.0, f64::max);
    if busiest_other > 0.10 {
        println!(
            "WARNING: other processes kept up to {busiest_other:.2} cores busy during the runs: the machine was not \
             quiet, requests/s are disturbed (server CPU per request less so); rerun on a quiet machine"
        );
    }
    if let Some(c) = &counters {
        println!(
            "coffer ERP counters ({COLLECTION}, before the pieces): hits {}, misses {}, stale {}, refreshes {}, \
             errors {}, upstream calls {}; GETs answered 200 {coffer_gets}",
            c.hits, c.misses, c.stale, c.refreshes, c.errors, c.upstream_calls
        );
        assert_eq!(
            (c.hits, c.misses + c.stale + c.refreshes + c.errors + c.upstream_calls),
            (coffer_gets, 0),
            "coffer: every GET should have been a fresh hit"
        );
    }

    if !pieces.is_empty() {
        println!();
        println!("Pieces of one request, each alone on one thread (mean):");
        for p in &pieces {
            println!(
                "  {:<17} {:>7.2} µs  {} ({} calls)",
                p.name,
                p.ns / 1e3,
                p.what,
                p.calls
            );
        }
    }

    let get = |k: Kind| {
        runs.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_slice())
            .filter(|v| !v.is_empty())
    };
    let of = |v: &[Run], f: &dyn Fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    println!();
    if get(Kind::Coffer).is_some() && get(Kind::Node).is_none() {
        println!("target coffer >= {TARGET_RATIO:.1} x node: not measured (no Node figure)");
    }
    // The target, then context: coffer against the Node cluster and against its own bare
    // TLS stack, and that stack against Node (the most any implementation on it could show).
    for (a, b, targeted) in [
        (Kind::Coffer, Kind::Node, true),
        (Kind::Coffer, Kind::NodeCluster, false),
        (Kind::Coffer, Kind::Bare, false),
        (Kind::Bare, Kind::Node, false),
    ] {
        let (Some(x), Some(y)) = (get(a), get(b)) else {
            continue;
        };
        let ratio = of(x, &Run::rate) / of(y, &Run::rate);
        // Load-robust companions: repetition i of both ran back to back; and server CPU
        // per request, which moves much less with the client's share than wall time.
        let paired: Vec<f64> = x.iter().zip(y).map(|(x, y)| x.rate() / y.rate()).collect();
        let cpu_ratio = of(y, &|r| r.us_per_request(r.server_cpu)) / of(x, &|r| r.us_per_request(r.server_cpu));
        let head = if targeted {
            format!(
                "target {} >= {TARGET_RATIO:.1} x {}: {ratio:.2} ({})",
                a.name(),
                b.name(),
                verdict(ratio >= TARGET_RATIO)
            )
        } else {
            format!("{} / {} (context, no target): {ratio:.2}", a.name(), b.name())
        };
        println!(
            "{head}; {:.0} vs {:.0} req/s; median of paired repetitions {:.2}; server CPU per request \
             {}/{} {cpu_ratio:.2}",
            of(x, &Run::rate),
            of(y, &Run::rate),
            median(&paired),
            b.name(),
            a.name()
        );
    }
    std::io::stdout().flush().unwrap();
}
