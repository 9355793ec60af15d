//! Uploads that never commit: dropped, aborted, leaked, or cut short by a crash. None may
//! become visible, and their staged chunks must be gone (at once, or on the next open).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use coffer::app::documents::ListFilter;
use coffer::app::{Vault, VaultError};
use coffer::crypto::stream::CHUNK_SIZE;
use coffer::model::DocumentId;
use coffer::store::OpenReport;
use common::*;

/// More than two 16-chunk staging batches, so the stager has written some of it.
const PARTIAL: usize = 40 * CHUNK_SIZE as usize + 123;

fn assert_invisible(vault: &Vault, id: DocumentId) {
    assert!(matches!(vault.document(id), Err(VaultError::NotFound(_))));
    assert!(matches!(vault.read(id, None), Err(VaultError::NotFound(_))));
    assert!(
        vault
            .list(ListFilter::default())
            .unwrap()
            .documents
            .iter()
            .all(|d| d.id != id)
    );
}

/// Waits until the stager has written at least `n` chunks of `id` (seen in a snapshot).
fn wait_for_staged_chunks(vault: &Vault, id: DocumentId, n: u64) {
    let start = Instant::now();
    loop {
        let staged = vault.store().snapshot().unwrap().chunk_count(id).unwrap();
        if staged >= n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "only {staged} chunks staged");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dropped_upload_is_invisible_and_its_chunks_are_removed_at_once() {
    let (dirs, vault) = temp_vault();
    let keep = store_document(&vault, "keep.bin", &pattern(41, 1000));
    let mut writer = vault.upload(new_document(some_owner(), "dropped.bin")).unwrap();
    let id = writer.id();
    writer.write(&pattern(42, PARTIAL)).unwrap();
    wait_for_staged_chunks(&vault, id, 16);
    assert_invisible(&vault, id);
    drop(writer);
    assert_invisible(&vault, id);
    assert_eq!(vault.store().snapshot().unwrap().chunk_count(id).unwrap(), 0);
    assert_eq!(vault.store().snapshot().unwrap().staged_uploads().unwrap(), 0);
    drop(vault);
    assert!(raw_chunk_indices(&dirs.paths, id).is_empty());
    assert_eq!(raw_len(&dirs.paths, STAGING), 0);
    let (vault, report) = open_vault_with_report(&dirs.paths);
    assert_eq!(report, OpenReport::default());
    assert_invisible(&vault, id);
    assert_eq!(vault.list(ListFilter::default()).unwrap().documents.len(), 1);
    assert!(read_all(&vault, keep.id).unwrap() == pattern(41, 1000));
}

#[test]
fn aborted_upload_is_invisible_and_its_chunks_are_removed() {
    let (dirs, vault) = temp_vault();
    let mut writer = vault.upload(new_document(some_owner(), "aborted.bin")).unwrap();
    let id = writer.id();
    writer.write(&pattern(43, PARTIAL)).unwrap();
    writer.abort().unwrap();
    assert_invisible(&vault, id);
    drop(vault);
    assert!(raw_chunk_indices(&dirs.paths, id).is_empty());
    assert_eq!(raw_len(&dirs.paths, STAGING), 0);
}

#[test]
fn dropped_upload_before_any_write_leaves_nothing() {
    let (dirs, vault) = temp_vault();
    let writer = vault.upload(new_document(some_owner(), "nothing.bin")).unwrap();
    let id = writer.id();
    drop(writer);
    assert_invisible(&vault, id);
    drop(vault);
    assert_eq!(raw_len(&dirs.paths, STAGING), 0);
    assert_eq!(raw_len(&dirs.paths, DOCUMENTS), 0);
}

#[test]
fn forgotten_upload_is_collected_when_the_vault_is_reopened() {
    // A writer that is leaked (never dropped) stands in for a crash mid-upload.
    let (dirs, vault) = temp_vault();
    let mut writer = vault.upload(new_document(some_owner(), "forgotten.bin")).unwrap();
    let id = writer.id();
    writer.write(&pattern(44, PARTIAL)).unwrap();
    wait_for_staged_chunks(&vault, id, 32);
    std::mem::forget(writer);
    assert_invisible(&vault, id);
    drop(vault);
    let reopened = Vault::open(&dirs.paths, &passphrase(), coffer::store::StoreOptions::default());
    // A leaked writer must not keep the database locked: a crashed process would not.
    let (vault, report) = reopened.expect("reopening the vault after a leaked (forgotten) upload writer");
    assert_eq!(report.staged_uploads_removed, 1);
    assert!(report.staged_chunks_removed >= 32, "{report:?}");
    assert_invisible(&vault, id);
    drop(vault);
    assert!(raw_chunk_indices(&dirs.paths, id).is_empty());
    assert_eq!(raw_len(&dirs.paths, STAGING), 0);
}

/// Set in the child process of the crash test: the coffer's root directory.
const CRASH_CHILD_ROOT: &str = "COFFER_TEST_CRASH_CHILD_ROOT";
const CRASH_TEST: &str = "upload_cut_short_by_a_process_crash_is_collected_on_reopen";

/// In the child: start an upload, let some chunks be staged, make them durable with an
/// unrelated durable commit, record the upload's id, and exit without running any
/// destructor (no discard, no clean database close).
fn crash_mid_upload(root: PathBuf) -> ! {
    let paths = coffer::app::Paths {
        data_dir: root.join("data"),
        keys_dir: root.join("keys"),
    };
    let vault = open_vault(&paths);
    let mut writer = vault.upload(new_document(some_owner(), "crashed.bin")).unwrap();
    writer.write(&pattern(45, PARTIAL)).unwrap();
    wait_for_staged_chunks(&vault, writer.id(), 32);
    // Staging commits are not durable on their own; a later durable commit is.
    add_user(&vault, "someone");
    std::fs::write(root.join("upload-id"), writer.id().to_string()).unwrap();
    std::process::exit(0);
}

#[test]
fn upload_cut_short_by_a_process_crash_is_collected_on_reopen() {
    if let Some(root) = std::env::var_os(CRASH_CHILD_ROOT) {
        crash_mid_upload(PathBuf::from(root));
    }
    let dirs = init_dirs();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([CRASH_TEST, "--exact", "--test-threads=1", "--nocapture"])
        .env(CRASH_CHILD_ROOT, dirs.root.path())
        .status()
        .unwrap();
    assert!(status.success(), "child: {status:?}");
    let id: DocumentId = std::fs::read_to_string(dirs.root.path().join("upload-id"))
        .unwrap()
        .parse()
        .unwrap();
    // The crashed upload's chunks are on disk before the reopen.
    assert!(raw_chunk_indices(&dirs.paths, id).len() >= 32);
    let (vault, report) = open_vault_with_report(&dirs.paths);
    assert_eq!(report.staged_uploads_removed, 1, "{report:?}");
    assert!(report.staged_chunks_removed >= 32, "{report:?}");
    assert_invisible(&vault, id);
    assert!(vault.user_by_name("someone").unwrap().is_some());
    drop(vault);
    assert!(raw_chunk_indices(&dirs.paths, id).is_empty());
    assert_eq!(raw_len(&dirs.paths, STAGING), 0);
    // A second open finds nothing left to collect.
    let (_vault, report) = open_vault_with_report(&dirs.paths);
    assert_eq!(report, OpenReport::default());
}

#[test]
fn binary_reports_and_removes_an_abandoned_upload() {
    // Leave a staged upload behind with raw writes (what a crash leaves), then run a
    // command: opening collects it and says so.
    let dirs = init_dirs();
    let id = DocumentId::random().unwrap();
    raw_write(&dirs.paths, |txn| {
        // The staging value is opaque to the collector; only the key matters.
        txn.open_table(STAGING)
            .unwrap()
            .insert(id.0, [0u8; 9].as_slice())
            .unwrap();
        let mut chunks = txn.open_table(CHUNKS).unwrap();
        for i in 0..3 {
            chunks.insert((id.0, i), [7u8; 100].as_slice()).unwrap();
        }
    });
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed 1 unfinished upload(s) (3 chunks)"), "{stderr}");
    assert!(raw_chunk_indices(&dirs.paths, id).is_empty());
    assert_eq!(raw_len(&dirs.paths, STAGING), 0);
}

#[test]
fn interleaved_uploads_each_publish_their_own_content() {
    let (_dirs, vault) = temp_vault();
    let (a, b) = (pattern(46, PARTIAL), pattern(47, PARTIAL / 2));
    let mut wa = vault.upload(new_document(some_owner(), "a")).unwrap();
    let mut wb = vault.upload(new_document(some_owner(), "b")).unwrap();
    let (mut pa, mut pb) = (a.chunks(70_000), b.chunks(35_000));
    loop {
        let (na, nb) = (pa.next(), pb.next());
        if na.is_none() && nb.is_none() {
            break;
        }
        if let Some(p) = na {
            wa.write(p).unwrap();
        }
        if let Some(p) = nb {
            wb.write(p).unwrap();
        }
    }
    let ib = wb.finish().unwrap();
    let ia = wa.finish().unwrap();
    assert!(read_all(&vault, ia.id).unwrap() == a);
    assert!(read_all(&vault, ib.id).unwrap() == b);
    assert_eq!(vault.list(ListFilter::default()).unwrap().documents.len(), 2);
}
