//! Throughput benches: the raw AEAD baseline, one chunk sealed and opened, and documents
//! stored and read back through [`coffer::app::Vault`].
//!
//! Every figure is also printed as a ratio to `baseline/xchacha20poly1305_64k` (the
//! `chacha20poly1305` crate's own XChaCha20-Poly1305 on one core) measured in the same run.
//!
//! ```text
//! cargo bench --bench store                     # measure (see docs/performance.md)
//! cargo bench --bench store -- --test           # run every bench once, measure nothing
//! ```
//!
//! The database lives in a fresh temporary directory under `$COFFER_BENCH_DIR` if set,
//! else the system temp dir (use a real disk, not tmpfs: publishing fsyncs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use coffer::app::documents::NewDocument;
use coffer::app::{Paths, Vault};
use coffer::crypto::kdf::KdfParams;
use coffer::crypto::stream::{CHUNK_SIZE, ChunkCipher, Layout, NONCE_PREFIX_LEN};
use coffer::model::{DocumentId, UserId, Visibility};
use coffer::secret::{Passphrase, SecretKey};
use coffer::store::StoreOptions;
use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Size of each `DocumentWriter::write` call, as an HTTP body stream would deliver it.
const WRITE_PIECE: usize = 64 * KIB;
const CHUNK: usize = CHUNK_SIZE as usize;
const PASSPHRASE: &str = "correct horse battery staple";

/// Deterministic, incompressible-looking bytes (splitmix64).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_fn(|k| {
        k.fill(byte);
        Ok::<_, ()>(())
    })
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// Reference and chunk benches
// ---------------------------------------------------------------------------------------

fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    let aead = XChaCha20Poly1305::new(key(1).expose().into());
    let nonce = XNonce::from([7u8; 24]);
    let mut buf = pseudo_random(CHUNK, 1);
    g.bench_function("xchacha20poly1305_64k", |b| {
        b.iter(|| {
            let tag = aead
                .encrypt_inout_detached(&nonce, b"", black_box(buf.as_mut_slice()).into())
                .unwrap();
            black_box(tag)
        })
    });
    g.finish();
}

fn chunk(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    let cipher = ChunkCipher::new(&key(2), 42, [3; NONCE_PREFIX_LEN]);
    let layout = Layout {
        size: CHUNK as u64,
        chunk_size: CHUNK_SIZE,
    };

    let mut buf = pseudo_random(CHUNK, 2);
    buf.reserve_exact(16);
    g.bench_function("seal", |b| {
        b.iter(|| {
            buf.truncate(CHUNK);
            cipher.seal_chunk(0, true, black_box(&mut buf)).unwrap();
        })
    });

    let mut sealed = pseudo_random(CHUNK, 3);
    cipher.seal_chunk(0, true, &mut sealed).unwrap();
    g.bench_function("open", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |buf| cipher.open_chunk(layout, 0, black_box(buf)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Store benches
// ---------------------------------------------------------------------------------------

/// A vault on a fresh database in a temporary directory (removed on drop).
struct BenchVault {
    vault: Vault,
    _dir: tempfile::TempDir,
}

impl BenchVault {
    fn new() -> Self {
        let dir = match std::env::var_os("COFFER_BENCH_DIR") {
            Some(base) => tempfile::tempdir_in(PathBuf::from(base)),
            None => tempfile::tempdir(),
        }
        .unwrap();
        let paths = Paths {
            data_dir: dir.path().join("data"),
            keys_dir: dir.path().join("keys"),
        };
        let options = StoreOptions::default();
        coffer::app::init::init(&paths, &passphrase(), KdfParams::for_tests(), options).unwrap();
        let (vault, _) = Vault::open(&paths, &passphrase(), options).unwrap();
        Self { vault, _dir: dir }
    }

    /// Uploads `data` in [`WRITE_PIECE`] writes and publishes it (durably).
    fn put(&self, data: &[u8]) -> DocumentId {
        let mut w = self.vault.upload(new_document()).unwrap();
        for piece in data.chunks(WRITE_PIECE) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap().id
    }

    /// Reads a whole document, dropping each piece as it comes; returns its length.
    fn get(&self, id: DocumentId) -> u64 {
        let mut n = 0u64;
        for piece in self.vault.read(id, None).unwrap() {
            n += black_box(piece.unwrap()).len() as u64;
        }
        n
    }
}

fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE.to_owned())
}

fn new_document() -> NewDocument {
    NewDocument {
        owner: UserId(1),
        name: "bench.bin".into(),
        content_type: "application/octet-stream".into(),
        title: String::new(),
        tags: Vec::new(),
        visibility: Visibility::Private,
    }
}

fn store(c: &mut Criterion) {
    let bv = BenchVault::new();
    let mut g = c.benchmark_group("store");
    // Each iteration is milliseconds to a second: flat sampling, few samples.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);

    for (label, size) in [("1MiB", MIB), ("64MiB", 64 * MIB)] {
        let data = pseudo_random(size, size as u64);
        g.throughput(Throughput::Bytes(size as u64));

        // Put: upload, write, durable publish. The document is deleted after being timed,
        // so the database stays the same size (freed pages are reused).
        g.bench_function(BenchmarkId::new("put", label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let id = bv.put(&data);
                    total += start.elapsed();
                    bv.vault.delete(id).unwrap();
                }
                total
            })
        });

        // Get: one stored document read back whole, each iteration.
        let id = bv.put(&data);
        assert_eq!(bv.get(id), size as u64);
        g.bench_function(BenchmarkId::new("get", label), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(bv.get(id));
                }
                start.elapsed()
            })
        });
        bv.vault.delete(id).unwrap();
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Summary: every figure of this run as a ratio to the baseline of this run
// ---------------------------------------------------------------------------------------

/// (criterion id, bytes per iteration) of every bench, baseline first.
fn benches() -> Vec<(&'static str, u64)> {
    vec![
        ("baseline/xchacha20poly1305_64k", CHUNK as u64),
        ("chunk/seal", CHUNK as u64),
        ("chunk/open", CHUNK as u64),
        ("store/put/1MiB", MIB as u64),
        ("store/get/1MiB", MIB as u64),
        ("store/put/64MiB", 64 * MIB as u64),
        ("store/get/64MiB", 64 * MIB as u64),
    ]
}

/// Criterion's output directory (same rule as criterion's own default).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // `cargo bench` runs benches with the package root as working directory.
    PathBuf::from("target/criterion")
}

/// Criterion's typical estimate (slope if any, else mean) in ns per iteration, from an
/// `estimates.json` written after `since`.
fn estimate_ns(id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir().join(id).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json = std::fs::read_to_string(path).ok()?;
    let point_after = |key: &str| -> Option<f64> {
        let rest = &json[json.find(key)? + key.len()..];
        let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
        let end = rest.find([',', '}'])?;
        rest[..end].trim().parse().ok()
    };
    if json.contains("\"slope\":null") {
        point_after("\"mean\":")
    } else {
        point_after("\"slope\":")
    }
}

fn summary(since: SystemTime) {
    let rows: Vec<_> = benches()
        .into_iter()
        .filter_map(|(id, bytes)| estimate_ns(id, since).map(|ns| (id, bytes as f64 / ns * 1e9 / MIB as f64)))
        .collect();
    if rows.is_empty() {
        return; // --test, --list, or a filter that ran nothing
    }
    let base = rows
        .iter()
        .find(|(id, _)| id.starts_with("baseline/"))
        .map(|&(_, mibs)| mibs);
    println!();
    println!("Summary (criterion's typical estimate; ratio to the baseline of this run):");
    println!("{:<34} {:>10} {:>8}", "bench", "MiB/s", "ratio");
    for (id, mibs) in &rows {
        let ratio = base.map_or_else(|| "n/a".to_owned(), |b| format!("{:.3}", mibs / b));
        println!("{:<34} {:>10.0} {:>8}", id, mibs, ratio);
    }
    if base.is_none() {
        println!("(the baseline did not run in this invocation: no ratios)");
    }
    let ratio_of = |id: &str| {
        let mibs = rows.iter().find(|(r, _)| *r == id)?.1;
        Some(mibs / base?)
    };
    for (id, target) in [("store/put/64MiB", 0.30), ("store/get/64MiB", 0.35)] {
        if let Some(r) = ratio_of(id) {
            let verdict = if r >= target { "met" } else { "MISSED" };
            println!("target {id} >= {target:.2} x baseline: {r:.3} ({verdict})");
        }
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    baseline(&mut c);
    chunk(&mut c);
    store(&mut c);
    c.final_summary();
    summary(since);
}
