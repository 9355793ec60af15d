//! `coffer verify [--deep]` as the real binary on a database altered while coffer is
//! stopped: plain verify checks structure and that every data key unwraps, `--deep` also
//! decrypts every chunk and checks each document's SHA-256; each names exactly the
//! damaged documents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::crypto::stream::CHUNK_SIZE;
use coffer::model::DocumentId;
use common::binary::text;
use common::served::{init_dirs_with_pki, run};
use common::*;

const CS: usize = CHUNK_SIZE as usize;

/// A closed coffer with three documents of four chunks each (the last one short).
fn coffer_with_documents() -> (TestDirs, Vec<DocumentId>) {
    let dirs = init_dirs_with_pki();
    let vault = open_vault(&dirs.paths);
    let ids = (0..3u64)
        .map(|i| store_document(&vault, &format!("doc{i}.pdf"), &pattern(700 + i, 3 * CS + 5000)).id)
        .collect();
    drop(vault);
    (dirs, ids)
}

/// What `coffer ARGS` printed and how it exited: (exit code, stdout, stderr).
fn verify(dirs: &TestDirs, args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(dirs, args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Panics unless `coffer ARGS` exits 0 reporting no damage.
#[track_caller]
fn assert_clean(dirs: &TestDirs, args: &[&str]) {
    let (code, stdout, stderr) = verify(dirs, args);
    assert_eq!(code, Some(0), "coffer {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("no damage found"), "coffer {args:?}: {stdout}");
    assert!(!stdout.contains("damaged:"), "coffer {args:?}: {stdout}");
}

/// Panics unless `coffer ARGS` exits 1 with one `damaged: document ID: REASON` line for
/// each of `ids` and no other `damaged:` line.
#[track_caller]
fn assert_damaged(dirs: &TestDirs, args: &[&str], ids: &[DocumentId]) {
    let (code, stdout, stderr) = verify(dirs, args);
    assert_eq!(code, Some(1), "coffer {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    let mut named: Vec<String> = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with("damaged:")) {
        let rest = line
            .strip_prefix("damaged: document ")
            .unwrap_or_else(|| panic!("coffer {args:?}: a damaged object that is not a document: {line:?}"));
        let (id, reason) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("coffer {args:?}: no reason in {line:?}"));
        assert_eq!(id.len(), 32, "{line:?}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
        assert!(!reason.trim().is_empty(), "{line:?}");
        named.push(id.to_owned());
    }
    named.sort();
    let mut want: Vec<String> = ids.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(named, want, "coffer {args:?} named these documents damaged:\n{stdout}");
    assert!(!stdout.contains("no damage found"), "coffer {args:?}: {stdout}");
}

#[test]
fn an_intact_coffer_verifies_clean_plain_and_deep() {
    let (dirs, _) = coffer_with_documents();
    assert_clean(&dirs, &["verify"]);
    assert_clean(&dirs, &["verify", "--deep"]);
}

#[test]
fn deep_verify_names_the_document_whose_chunk_was_altered_and_plain_verify_stays_clean() {
    let (dirs, ids) = coffer_with_documents();
    // The sealed chunk holds no key material: the document's data key still unwraps.
    tamper_chunk(&dirs.paths, ids[1], 1, |c| {
        let middle = c.len() / 2;
        flip_bit(c, middle, 4);
    });
    assert_clean(&dirs, &["verify"]);
    assert_damaged(&dirs, &["verify", "--deep"], &[ids[1]]);
}

#[test]
fn deep_verify_names_a_document_that_lost_its_last_chunk() {
    let (dirs, ids) = coffer_with_documents();
    // Every remaining chunk still authenticates on its own; only the end is missing.
    remove_raw_chunk(&dirs.paths, ids[2], 3);
    assert_damaged(&dirs, &["verify", "--deep"], &[ids[2]]);
}

#[test]
fn plain_verify_names_a_document_whose_data_key_no_longer_unwraps() {
    let (dirs, ids) = coffer_with_documents();
    tamper_document_record(&dirs.paths, ids[0], |doc| flip_bit(&mut doc.wrapped_dek, 20, 1));
    assert_damaged(&dirs, &["verify"], &[ids[0]]);
    assert_damaged(&dirs, &["verify", "--deep"], &[ids[0]]);
}
