//! Peak resident memory while storing and reading back one large document.
//!
//! For each document size the bench re-executes itself as a child process (`--child
//! <bytes>`), so every size starts from a fresh process and the high-water marks never mix.
//! The child stores a document generated on the fly in 64 KiB writes (the document is never
//! held in memory), reads it back whole while checking every byte, and prints `VmHWM` and
//! `VmRSS` from `/proc/self/status` after each phase. The high-water mark is reset between
//! phases (`echo 5 > /proc/self/clear_refs`), so each phase's figure is its own peak.
//!
//! ```text
//! cargo bench --bench rss                 # 64 MiB and 1 GiB documents
//! cargo bench --bench rss -- --test       # one small document, as a smoke test
//!                                         # (also what `cargo test --benches` runs)
//! ```
//!
//! The database lives in a fresh temporary directory under `$COFFER_BENCH_DIR` if set,
//! else the system temp dir. redb's cache is set explicitly to
//! `coffer::store::DEFAULT_CACHE_BYTES` (32 MiB), as `coffer` runs by default.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_docs)]

#[path = "support/mod.rs"]
mod support;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use coffer::app::documents::NewDocument;
use coffer::app::{Paths, Vault};
use coffer::crypto::kdf::KdfParams;
use coffer::model::{UserId, Visibility};
use coffer::secret::Passphrase;
use coffer::store::{DEFAULT_CACHE_BYTES, StoreOptions};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Size of each `DocumentWriter::write` call, as an HTTP body stream would deliver it.
const WRITE_PIECE: usize = 64 * 1024;
/// The target: peak RSS of the 1 GiB document below this.
const RSS_TARGET: u64 = 64 * MIB;
const PASSPHRASE: &str = "correct horse battery staple";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, size] = args.as_slice()
        && flag == "--child"
    {
        child(size.parse().expect("--child takes a size in bytes"));
        return;
    }
    parent(&args);
}

fn label(size: u64) -> String {
    match size {
        s if s >= GIB && s % GIB == 0 => format!("{}GiB", s / GIB),
        s if s >= MIB && s % MIB == 0 => format!("{}MiB", s / MIB),
        s => format!("{s}B"),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------
// Parent: parse criterion-style arguments, run one child per size, summarise
// ---------------------------------------------------------------------------------------

fn parent(args: &[String]) {
    // As criterion: `cargo bench` passes --bench; without it (`cargo test --benches`) or
    // with --test, run the small smoke test only.
    let mut bench = false;
    let mut test = false;
    let mut list = false;
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => bench = true,
            "--test" => test = true,
            "--list" => list = true,
            s if support::VALUE_OPTIONS.contains(&s) => {
                it.next();
            }
            s if s.starts_with('-') => {} // --exact, --quiet, --noplot, ...: nothing to do here
            s => filters.push(s.to_owned()),
        }
    }
    let test = test || !bench;
    let sizes: &[u64] = if test { &[4 * MIB] } else { &[64 * MIB, GIB] };
    let wanted: Vec<u64> = sizes
        .iter()
        .copied()
        .filter(|&s| filters.is_empty() || filters.iter().any(|f| format!("rss/{}", label(s)).contains(f.as_str())))
        .collect();
    if list {
        for s in &wanted {
            println!("rss/{}: benchmark", label(*s));
        }
        return;
    }
    if wanted.is_empty() {
        return;
    }

    let exe = std::env::current_exe().expect("own executable");
    println!(
        "Peak RSS per phase, one child process per document size (redb cache {} MiB{})",
        DEFAULT_CACHE_BYTES as u64 / MIB,
        if test { "; --test: small document only" } else { "" }
    );
    let mut results = Vec::new();
    for size in wanted {
        let out = Command::new(&exe)
            .arg("--child")
            .arg(size.to_string())
            .output()
            .expect("run child");
        std::io::stdout().write_all(&out.stdout).unwrap();
        std::io::stderr().write_all(&out.stderr).unwrap();
        assert!(
            out.status.success(),
            "rss child for {} failed: {}",
            label(size),
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .expect("child printed no RESULT line");
        let kib: Vec<u64> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
        results.push((size, kib));
    }

    println!();
    println!("Summary: peak RSS (VmHWM) per phase, MiB");
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8}",
        "document", "open", "put", "get", "max"
    );
    for (size, kib) in &results {
        let (open, put, get) = (kib[1], kib[2], kib[3]);
        let max = open.max(put).max(get);
        println!(
            "{:<12} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            label(*size),
            mib(open),
            mib(put),
            mib(get),
            mib(max)
        );
    }
    if let Some((_, kib)) = results.iter().find(|(s, _)| *s == GIB) {
        let max = kib[1..4].iter().copied().max().unwrap_or(0) * KIB;
        let verdict = if max < RSS_TARGET { "met" } else { "MISSED" };
        println!(
            "target peak RSS for 1GiB < {} MiB: {:.1} MiB ({verdict})",
            RSS_TARGET / MIB,
            max as f64 / MIB as f64
        );
    }
}

// ---------------------------------------------------------------------------------------
// Child: one document of `size` bytes, in a fresh process
// ---------------------------------------------------------------------------------------

/// `VmHWM` and `VmRSS` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets the high-water mark to the current RSS; false if the kernel refused.
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// Fills `buf` with the document's bytes at `offset` (a multiple of 8): little-endian
/// splitmix64 of each 8-byte word's index, so any range can be regenerated to check it.
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

fn report(size: u64, phase: &str, bytes: u64, secs: f64) -> u64 {
    let (hwm, rss) = memory_kib();
    let rate = if secs > 0.0 && bytes > 0 {
        format!(", {bytes} bytes in {secs:.2} s ({:.0} MB/s)", bytes as f64 / secs / 1e6)
    } else {
        String::new()
    };
    println!(
        "rss/{:<6} {:<5} VmHWM {:>7.1} MiB  VmRSS {:>7.1} MiB{rate}",
        label(size),
        phase,
        mib(hwm),
        mib(rss)
    );
    hwm
}

fn child(size: u64) {
    let dir = match std::env::var_os("COFFER_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(PathBuf::from(base)),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let paths = Paths {
        data_dir: dir.path().join("data"),
        keys_dir: dir.path().join("keys"),
    };
    // Set deliberately: redb's own default cache is 1 GiB.
    let options = StoreOptions {
        cache_bytes: DEFAULT_CACHE_BYTES,
    };
    let passphrase = || Passphrase::new(PASSPHRASE.to_owned());
    coffer::app::init::init(&paths, &passphrase(), KdfParams::for_tests(), options).unwrap();
    let (vault, _) = Vault::open(&paths, &passphrase(), options).unwrap();
    let open_hwm = report(size, "open", 0, 0.0);

    // Put: generated on the fly, one 64 KiB piece at a time.
    let reset = reset_hwm();
    let start = Instant::now();
    let mut w = vault
        .upload(NewDocument {
            owner: UserId(1),
            name: "big.bin".into(),
            content_type: "application/octet-stream".into(),
            title: String::new(),
            tags: Vec::new(),
            visibility: Visibility::Private,
        })
        .unwrap();
    let mut piece = vec![0u8; WRITE_PIECE];
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(WRITE_PIECE as u64) as usize;
        fill(offset, &mut piece[..n]);
        w.write(&piece[..n]).unwrap();
        offset += n as u64;
    }
    let info = w.finish().unwrap();
    assert_eq!(info.size, size);
    let put_hwm = report(size, "put", size, start.elapsed().as_secs_f64());

    // Get: the whole document, every byte checked against the generator.
    reset_hwm();
    let start = Instant::now();
    let mut expected = Vec::new();
    let mut offset = 0u64;
    for got in vault.read(info.id, None).unwrap() {
        let got = got.unwrap();
        expected.resize(got.len(), 0);
        fill(offset, &mut expected);
        assert!(got == expected, "content differs at byte offset {offset}");
        offset += got.len() as u64;
    }
    assert_eq!(offset, size, "read back a different length");
    let get_hwm = report(size, "get", size, start.elapsed().as_secs_f64());

    if !reset {
        println!("note: /proc/self/clear_refs refused; the put and get peaks are cumulative");
    }
    println!("RESULT {size} {open_hwm} {put_hwm} {get_hwm}");
}
