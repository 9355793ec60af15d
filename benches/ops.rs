//! Operations on a large store: online backup, verified restore, a backup's check alone
//! (`coffer restore --check`) and `coffer verify --deep`.
//!
//! **The store**, built once per run before any timing: a fresh coffer (cheap argon2id,
//! `StoreOptions::default()`, i.e. a 32 MiB redb cache) holding 2,000 documents of 1 MiB
//! each (`COFFER_BENCH_OPS_DOCS` changes the count), 2 GiB of content in all, every one
//! written through `Vault::upload` in 64 KiB writes and published durably, so they are real
//! sealed documents (their own data keys, chunked XChaCha20-Poly1305). The content is
//! deterministic and incompressible (splitmix64, a different seed per document). A first
//! backup of it is written (untimed) for the benches that read one.
//!
//! **The figures** (criterion, flat sampling, 10 samples of one iteration each after one
//! warm-up iteration; throughput in decimal MB/s, as the issue's targets are stated):
//! - `ops/backup`: `Vault::backup` of the whole store to a new file, through its final
//!   `fsync`, rename and directory sync. Bytes: the backup file's size. The file is
//!   removed after each iteration, untimed. Target ≥ 300 MB/s.
//! - `ops/verify_backup`: `coffer::app::backup::verify_backup` (unlock the key file, read
//!   and authenticate every frame, check every entry and the trailer). Bytes: the file.
//! - `ops/restore`: `coffer::app::backup::restore` into a second data directory (with a
//!   copy of the key file, as after losing a disk), keeping a replaced database as the CLI
//!   does by default: pass 1 verifies the whole file, pass 2 builds the database beside
//!   the live one, then the final durable commit, the rename into place and the directory
//!   sync. Bytes: the file. The previous iteration's database is deleted before each one
//!   (untimed), so there is one restored copy on disk at a time and nothing to keep. After
//!   the figure the restored database is opened and verified (untimed). Target ≥ 200 MB/s.
//! - `ops/verify_deep`: `Vault::verify(deep = true)` on the open vault: every data key
//!   unwrapped, every chunk decrypted, every content hash compared. Bytes: the content.
//!
//! Every figure is also printed at the end as the median and range of its 10 samples, with
//! the process's peak RSS during it (`VmHWM` from `/proc/self/status`, reset through
//! `/proc/self/clear_refs` before each figure, so it is that figure's own peak) and, for the
//! restore, the median split between its phases (pass 1, pass 2, durable finish and swap,
//! told apart by the progress callback). Backup and restore must run in bounded memory.
//! On a shared machine, the cores this process kept busy over each figure are shown next to
//! those everything else did (from `/proc/stat`; kernel writeback threads count there): a
//! figure taken while `others` is well above zero was disturbed.
//!
//! ```text
//! cargo bench --bench ops                   # measure (needs ~7 GiB free, see below)
//! cargo bench --bench ops -- --test         # 20 documents, every figure once: a smoke test
//!                                           # (also what `cargo test --benches` runs)
//! cargo bench --bench ops -- restore        # a filter, as criterion's
//! ```
//!
//! Everything lives in a fresh temporary directory under `$COFFER_BENCH_DIR` if set, else
//! the system temp dir, removed at the end: the store (about 1.6 × the content: redb's
//! overhead for 64 KiB values), a backup, and the backup being written or a restored copy:
//! about 4.5 × the content, 9.5 GB for 2 GiB (the bench refuses to start with less free).
//! Use a real disk, not tmpfs: the figures include `fsync`. The files stay in the page cache
//! on a machine with a few GiB of free memory, so reads are warm: these are CPU and write
//! figures, not cold-disk ones. Criterion warns that it cannot complete 10 samples in the
//! measurement time: intended, it keeps one iteration per sample.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_docs)]

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer::app::backup::{restore, verify_backup};
use coffer::app::documents::NewDocument;
use coffer::app::{Paths, Vault};
use coffer::crypto::kdf::KdfParams;
use coffer::model::{UserId, Visibility};
use coffer::secret::Passphrase;
use coffer::store::StoreOptions;
use criterion::{Criterion, SamplingMode, Throughput};

use support::{Args, bench_tempdir, env_count, median, min_max};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Size of each `DocumentWriter::write` call, as an HTTP body stream would deliver it.
const WRITE_PIECE: usize = 64 * KIB;
/// Documents of the measured store, and of the `--test` one.
const DOCUMENTS: usize = 2_000;
const TEST_DOCUMENTS: usize = 20;
const DOCUMENT_BYTES: usize = MIB;
const PASSPHRASE: &str = "correct horse battery staple";
/// The issue's targets, decimal MB/s of backup file.
const BACKUP_TARGET_MBS: f64 = 300.0;
const RESTORE_TARGET_MBS: f64 = 200.0;

/// Deterministic, incompressible-looking bytes (splitmix64), as in benches/store.rs.
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

fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE.to_owned())
}

fn new_document(n: usize) -> NewDocument {
    NewDocument {
        owner: UserId(1),
        name: format!("bench-{n:05}.bin"),
        content_type: "application/octet-stream".into(),
        title: String::new(),
        tags: Vec::new(),
        visibility: Visibility::Private,
    }
}

fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

// ---------------------------------------------------------------------------------------
// Memory: the process's peak RSS per figure
// ---------------------------------------------------------------------------------------

/// `VmHWM` and `VmRSS` of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * KIB as u64
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time in clock ticks (1/100 s): (every CPU's busy time, this process's own).
/// Busy is user, nice, system, irq, softirq and steal, as /tmp/wait_quiet.py counts it.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat (Linux only)");
    let all: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7].iter().map(|&i| all[i]).sum();
    let own = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces), from `state`: utime and
    // stime are the 12th and 13th (every thread of the process).
    let fields: Vec<&str> = own[own.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let own = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (busy, own)
}

/// Resets the high-water mark to the current RSS; false if the kernel refused.
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// The store under test, a backup of it, and a second coffer directory to restore into.
struct Fixture {
    vault: Vault,
    dir: tempfile::TempDir,
    /// Restores go here: the same key file, its own data directory.
    target: Paths,
    /// Written once, untimed; read by `verify_backup` and `restore`.
    backup: PathBuf,
    backup_bytes: u64,
    content_bytes: u64,
    documents: u64,
}

impl Fixture {
    fn build(documents: usize) -> Self {
        let dir = bench_tempdir();
        let content = (documents * DOCUMENT_BYTES) as u64;
        check_free_space(dir.path(), content);
        let paths = Paths {
            data_dir: dir.path().join("data"),
            keys_dir: dir.path().join("keys"),
        };
        let options = StoreOptions::default();
        coffer::app::init::init(&paths, &passphrase(), KdfParams::for_tests(), options).unwrap();
        let (vault, _) = Vault::open(&paths, &passphrase(), options).unwrap();

        let start = Instant::now();
        for n in 0..documents {
            let data = pseudo_random(DOCUMENT_BYTES, n as u64 + 1);
            let mut w = vault.upload(new_document(n)).unwrap();
            for piece in data.chunks(WRITE_PIECE) {
                w.write(piece).unwrap();
            }
            assert_eq!(w.finish().unwrap().size, DOCUMENT_BYTES as u64);
        }
        let secs = start.elapsed().as_secs_f64();
        let db_bytes = std::fs::metadata(paths.database()).unwrap().len();
        println!(
            "store: {documents} documents of {} KiB uploaded in {secs:.1} s ({:.0} MB/s); database {:.0} MB at {}",
            DOCUMENT_BYTES / KIB,
            mbs(content, secs),
            db_bytes as f64 / 1e6,
            dir.path().display()
        );

        let backup = dir.path().join("store.cbk");
        let summary = vault.backup(&backup, false, &mut |_, _| {}).unwrap();
        assert_eq!(summary.documents(), documents as u64);
        println!("store: first backup (untimed) {}", summary.describe());

        let target = Paths {
            data_dir: dir.path().join("restored/data"),
            keys_dir: dir.path().join("restored/keys"),
        };
        std::fs::create_dir_all(&target.keys_dir).unwrap();
        std::fs::copy(paths.key_file(), target.key_file()).unwrap();

        Self {
            vault,
            target,
            backup,
            backup_bytes: summary.file_bytes,
            content_bytes: content,
            documents: documents as u64,
            dir,
        }
    }
}

fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{}: {e}", path.display()),
        _ => {}
    }
}

/// Refuses to start without room for the store (redb keeps 1 MiB documents in about
/// 1.6 × their size), a backup, and a second backup or a restored copy.
fn check_free_space(dir: &Path, content: u64) {
    let fs = rustix::fs::statvfs(dir).unwrap();
    let free = fs.f_bavail * fs.f_frsize;
    let need = content / 2 * 9 + 64 * MIB as u64;
    assert!(
        free >= need,
        "{} has {:.1} GiB free, the bench needs {:.1} GiB: set COFFER_BENCH_DIR to a roomier disk",
        dir.display(),
        free as f64 / (1u64 << 30) as f64,
        need as f64 / (1u64 << 30) as f64
    );
}

// ---------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------

/// What one figure measured: each iteration's time (the warm-up's first), peak RSS.
struct Figure {
    id: &'static str,
    bytes: u64,
    times: Vec<Duration>,
    /// Restore only: (pass 1, pass 2, finish and swap) of each iteration.
    phases: Vec<[Duration; 3]>,
    rss_before: u64,
    rss_peak: u64,
    hwm_reset: bool,
    /// Wall time and CPU ticks (every CPU's busy, this process's) over the whole figure.
    started: (Instant, u64, u64),
    /// Cores this process kept busy, and cores everything else did (other processes, and
    /// kernel threads such as writeback) over the whole figure.
    cores: (f64, f64),
}

impl Figure {
    fn new(id: &'static str, bytes: u64) -> Self {
        let hwm_reset = reset_hwm();
        let (busy, own) = cpu_ticks();
        Self {
            id,
            bytes,
            times: Vec::new(),
            phases: Vec::new(),
            rss_before: memory().1,
            rss_peak: 0,
            hwm_reset,
            started: (Instant::now(), busy, own),
            cores: (0.0, 0.0),
        }
    }

    fn done(&mut self) {
        self.rss_peak = memory().0;
        let (busy, own) = cpu_ticks();
        let (start, busy0, own0) = self.started;
        let secs = start.elapsed().as_secs_f64() * 100.0;
        let own = own.saturating_sub(own0);
        self.cores = (
            own as f64 / secs,
            busy.saturating_sub(busy0).saturating_sub(own) as f64 / secs,
        );
    }

    /// The timed iterations: all but criterion's warm-up (the first), unless it was alone.
    fn samples(&self) -> &[Duration] {
        if self.times.len() > 1 {
            &self.times[1..]
        } else {
            &self.times
        }
    }
}

fn bench_all(c: &mut Criterion, fx: &Fixture, args: &Args) -> Vec<Figure> {
    let mut g = c.benchmark_group("ops");
    // Each iteration takes seconds: one iteration per sample, few samples, a single
    // warm-up iteration (the warm-up doubles its count until this time has passed).
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(1));
    let mut figures = Vec::new();

    // Backup: a new file each time, removed afterwards.
    if args.wants("ops/backup") {
        let out = fx.dir.path().join("timed.cbk");
        let mut fig = Figure::new("ops/backup", fx.backup_bytes);
        g.throughput(Throughput::BytesDecimal(fx.backup_bytes));
        g.bench_function("backup", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let summary = fx.vault.backup(&out, false, &mut |_, _| {}).unwrap();
                    let took = start.elapsed();
                    assert_eq!(summary.file_bytes, fx.backup_bytes);
                    std::fs::remove_file(&out).unwrap();
                    fig.times.push(took);
                    total += took;
                }
                total
            })
        });
        fig.done();
        figures.push(fig);
    }

    // Check a backup alone, as `coffer restore --check` does.
    if args.wants("ops/verify_backup") {
        let mut fig = Figure::new("ops/verify_backup", fx.backup_bytes);
        g.throughput(Throughput::BytesDecimal(fx.backup_bytes));
        g.bench_function("verify_backup", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let summary = verify_backup(&fx.target, &passphrase(), &fx.backup, &mut |_, _| {}).unwrap();
                    let took = start.elapsed();
                    assert_eq!(summary.documents(), fx.documents);
                    fig.times.push(took);
                    total += took;
                }
                total
            })
        });
        fig.done();
        figures.push(fig);
    }

    // Restore into the second directory, over the previous iteration's database.
    if args.wants("ops/restore") {
        let mut fig = Figure::new("ops/restore", fx.backup_bytes);
        g.throughput(Throughput::BytesDecimal(fx.backup_bytes));
        g.bench_function("restore", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // One restored copy on disk at a time: the previous one goes first.
                    remove_if_present(&fx.target.database());
                    let start = Instant::now();
                    let mut pass2: Option<Instant> = None;
                    let mut pass2_last = start;
                    let report = restore(
                        &fx.target,
                        &passphrase(),
                        &fx.backup,
                        true,
                        StoreOptions::default(),
                        &mut |phase, _, _| {
                            if phase == 2 {
                                let now = Instant::now();
                                pass2.get_or_insert(now);
                                pass2_last = now;
                            }
                        },
                    )
                    .unwrap();
                    let end = Instant::now();
                    assert_eq!(report.summary.documents(), fx.documents);
                    assert!(report.kept.is_none());
                    let pass2 = pass2.unwrap_or(end);
                    fig.phases.push([
                        pass2 - start,
                        pass2_last.max(pass2) - pass2,
                        end - pass2_last.max(pass2),
                    ]);
                    fig.times.push(end - start);
                    total += end - start;
                }
                total
            })
        });
        fig.done();
        figures.push(fig);
        // The restored database opens with the key file and holds every document.
        let (restored, _) = Vault::open(&fx.target, &passphrase(), StoreOptions::default()).unwrap();
        let report = restored.verify(false, &mut |_, _| {}).unwrap();
        assert_eq!(report.documents, fx.documents);
        assert!(report.damaged.is_empty(), "restored database: {:?}", report.damaged);
        drop(restored);
        let bytes = std::fs::metadata(fx.target.database()).unwrap().len();
        println!(
            "ops/restore: the restored database ({:.0} MB) opens and verifies",
            bytes as f64 / 1e6
        );
        remove_if_present(&fx.target.database());
    }

    // verify --deep on the live vault.
    if args.wants("ops/verify_deep") {
        let mut fig = Figure::new("ops/verify_deep", fx.content_bytes);
        g.throughput(Throughput::BytesDecimal(fx.content_bytes));
        g.bench_function("verify_deep", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let report = fx.vault.verify(true, &mut |_, _| {}).unwrap();
                    let took = start.elapsed();
                    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
                    assert_eq!(report.bytes, fx.content_bytes);
                    fig.times.push(took);
                    total += took;
                }
                total
            })
        });
        fig.done();
        figures.push(fig);
    }
    g.finish();
    figures
}

fn summary(figures: &[Figure], test: bool) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("Summary: MB/s (1e6 bytes) of the samples; the process's peak RSS during each figure; cores");
    println!("busy over the figure: this process's, and everything else's (other processes, kernel writeback)");
    println!(
        "{:<18} {:>12} {:>8} {:>17} {:>4} {:>10} {:>10} {:>6} {:>6}",
        "figure", "bytes", "median", "range", "n", "RSS before", "peak RSS", "own", "others"
    );
    for f in figures {
        let rates: Vec<f64> = f.samples().iter().map(|t| mbs(f.bytes, t.as_secs_f64())).collect();
        let (lo, hi) = min_max(&rates);
        println!(
            "{:<18} {:>12} {:>8.0} {:>8.0} - {:>6.0} {:>4} {:>6.1} MiB {:>6.1} MiB {:>6.2} {:>6.2}",
            f.id,
            f.bytes,
            median(&rates),
            lo,
            hi,
            rates.len(),
            f.rss_before as f64 / MIB as f64,
            f.rss_peak as f64 / MIB as f64,
            f.cores.0,
            f.cores.1,
        );
        if !f.hwm_reset {
            println!("  (note: /proc/self/clear_refs refused; this peak includes everything before it)");
        }
    }
    if let Some(f) = figures.iter().find(|f| !f.phases.is_empty()) {
        let skip = usize::from(f.phases.len() > 1);
        let phase = |i: usize| median(&f.phases[skip..].iter().map(|p| ms(p[i])).collect::<Vec<_>>());
        println!(
            "ops/restore phases (median ms): pass 1 verify {:.0}, pass 2 build {:.0}, durable finish + swap {:.0}",
            phase(0),
            phase(1),
            phase(2)
        );
    }
    if test {
        println!("(--test: a small store, each figure once; no target applies)");
        return;
    }
    for (id, target) in [("ops/backup", BACKUP_TARGET_MBS), ("ops/restore", RESTORE_TARGET_MBS)] {
        if let Some(f) = figures.iter().find(|f| f.id == id) {
            let rates: Vec<f64> = f.samples().iter().map(|t| mbs(f.bytes, t.as_secs_f64())).collect();
            let m = median(&rates);
            let verdict = if m >= target { "met" } else { "MISSED" };
            println!("target {id} >= {target:.0} MB/s: {m:.0} MB/s ({verdict})");
        }
    }
}

fn main() {
    let args = Args::parse();
    let mut c = Criterion::default().configure_from_args();
    if args.list {
        // Criterion lists the ids without running them; the store is not built.
        let mut g = c.benchmark_group("ops");
        for id in ["backup", "verify_backup", "restore", "verify_deep"] {
            g.bench_function(id, |b| b.iter(|| ()));
        }
        g.finish();
        return;
    }
    if !["ops/backup", "ops/verify_backup", "ops/restore", "ops/verify_deep"]
        .iter()
        .any(|id| args.wants(id))
    {
        return;
    }
    let documents = env_count(
        "COFFER_BENCH_OPS_DOCS",
        if args.test { TEST_DOCUMENTS } else { DOCUMENTS },
    );
    let fx = Fixture::build(documents);
    let figures = bench_all(&mut c, &fx, &args);
    c.final_summary();
    summary(&figures, args.test);
}
