//! Checking a record as JSON allocates next to nothing: a parsed tree would take many
//! times the text (about 100x for `[{"":0},...]`), which pushes and a hostile upstream
//! could use to exhaust memory. Measured as the process's peak RSS (Linux), reset just
//! before the check; this file holds one test so nothing else runs meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_large_record_is_checked_without_building_it() {
    let mut text = String::from("[");
    while text.len() < 4 * 1024 * 1024 {
        text.push_str("{\"\":0},");
    }
    text.push_str("{\"\":0}]");
    // "5": reset the peak to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let before = peak_rss_kib();
    coffer::erp::check_json(text.as_bytes()).expect("valid JSON");
    let grown = peak_rss_kib().saturating_sub(before);
    // A parsed tree of this text takes ~400 MiB.
    assert!(
        grown < 32 * 1024,
        "checking 4 MiB of JSON raised the peak RSS by {grown} KiB"
    );
}
