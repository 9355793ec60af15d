//! What the hand-written benches share: criterion-compatible argument handling (so
//! `cargo bench` and `cargo test --benches` drive them like criterion benches), the
//! statistics they report, and their temporary directories. Included by path from each
//! bench (`#[path = "support/mod.rs"] mod support;`).
#![allow(dead_code)]

/// Criterion options that take a value (skipped when looking for a filter).
pub const VALUE_OPTIONS: &[&str] = &[
    "--warm-up-time",
    "--measurement-time",
    "--sample-size",
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--output-format",
    "--profile-time",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--nresamples",
    "--color",
    "--plotting-backend",
    "--format",
    "--logfile",
    "-c",
    "-s",
    "-b",
];

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

pub fn bench_tempdir() -> tempfile::TempDir {
    match std::env::var_os("COFFER_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(std::path::PathBuf::from(base)),
        None => tempfile::tempdir(),
    }
    .unwrap()
}

/// The command line, as criterion reads it.
pub struct Args {
    pub test: bool,
    pub list: bool,
    pub filters: Vec<String>,
}

impl Args {
    pub fn parse() -> Self {
        // As criterion: `cargo bench` passes --bench; without it (`cargo test --benches`)
        // or with --test, run the smoke test only.
        let mut bench = false;
        let mut test = false;
        let mut list = false;
        let mut filters = Vec::new();
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => bench = true,
                "--test" => test = true,
                "--list" => list = true,
                s if VALUE_OPTIONS.contains(&s) => {
                    it.next();
                }
                s if s.starts_with('-') => {}
                s => filters.push(s.to_owned()),
            }
        }
        Self {
            test: test || !bench,
            list,
            filters,
        }
    }

    pub fn wants(&self, id: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| id.contains(f.as_str()))
    }
}
