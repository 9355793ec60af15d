//! redb never clears freed pages: a rotation and `coffer compact` rewrite the file so that
//! superseded wrapped keys and deleted documents are gone from disk, not just unlinked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::VaultError;
use coffer::store::StoreError;
use common::*;

#[test]
fn rotation_leaves_no_key_wrapped_under_the_retired_version_in_the_file() {
    let (dirs, vault) = temp_vault();
    let docs: Vec<_> = (0..5)
        .map(|i| store_document(&vault, "d.bin", &pattern(i, 70_000)))
        .collect();
    let user = add_user(&vault, "dora");
    drop(vault);
    let old_wrapped: Vec<Vec<u8>> = docs
        .iter()
        .map(|d| raw_document_record(&dirs.paths, d.id).unwrap().wrapped_dek)
        .collect();
    run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    let file = file_bytes(&dirs.database());
    for w in &old_wrapped {
        assert!(
            !contains_bytes(&file, w),
            "a data key wrapped under the retired version is still in the file"
        );
    }
    let vault = open_vault(&dirs.paths);
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(read_all(&vault, d.id).unwrap(), pattern(i as u64, 70_000));
    }
    assert_eq!(vault.user_by_name("dora").unwrap().unwrap().id, user.id);
}

#[test]
fn compact_removes_a_deleted_documents_ciphertext_from_the_file() {
    let (dirs, vault) = temp_vault();
    let keep = store_document(&vault, "keep.bin", &pattern(1, 200_000));
    let gone = store_document(&vault, "gone.bin", &pattern(2, 200_000));
    drop(vault);
    let chunk = raw_chunk(&dirs.paths, gone.id, 1).unwrap();
    let wrapped = raw_document_record(&dirs.paths, gone.id).unwrap().wrapped_dek;
    open_vault(&dirs.paths).delete(gone.id).unwrap();
    let out = run_coffer_ok(&dirs.paths, &["compact"]);
    assert!(out.contains("bytes"), "{out}");
    let file = file_bytes(&dirs.database());
    assert!(!contains_bytes(&file, &chunk[..64]), "deleted ciphertext still on disk");
    assert!(
        !contains_bytes(&file, &wrapped),
        "deleted document's wrapped key still on disk"
    );
    // Nothing else was lost, and the file is a normal coffer database again.
    let vault = open_vault(&dirs.paths);
    assert_eq!(read_all(&vault, keep.id).unwrap(), pattern(1, 200_000));
    // The kept document, and the audit log's key (made when `compact` was recorded).
    assert_eq!(
        vault.key_status().unwrap().versions.into_iter().collect::<Vec<_>>(),
        vec![(1, 2)]
    );
    assert!(!dirs.paths.data_dir.join("coffer.redb.vacuum").exists());
}

#[test]
fn vacuum_waits_for_reads_in_progress() {
    let (_dirs, mut vault) = temp_vault();
    let data = pattern(3, 300_000);
    let doc = store_document(&vault, "a.bin", &data);
    let reader = vault.read(doc.id, None).unwrap();
    let refused = vault.vacuum();
    assert!(
        matches!(refused, Err(VaultError::Store(StoreError::Busy))),
        "{refused:?}"
    );
    assert_eq!(coffer::app::documents::read_to_vec(reader).unwrap(), data);
    vault.vacuum().unwrap();
    assert_eq!(read_all(&vault, doc.id).unwrap(), data);
}

#[test]
fn vacuum_is_refused_while_another_handle_shares_the_store() {
    let (_dirs, mut vault) = temp_vault();
    let doc = store_document(&vault, "a.bin", &pattern(3, 1000));
    let shared = vault.store().clone();
    assert!(vault.vacuum().is_err());
    drop(shared);
    vault.vacuum().unwrap();
    assert_eq!(read_all(&vault, doc.id).unwrap(), pattern(3, 1000));
}

#[test]
fn a_leftover_from_an_interrupted_vacuum_is_removed_when_the_database_opens() {
    let (dirs, vault) = temp_vault();
    let doc = store_document(&vault, "a.bin", &pattern(4, 100_000));
    drop(vault);
    let leftover = dirs.paths.data_dir.join("coffer.redb.vacuum");
    std::fs::write(&leftover, b"half-written copy from a crash").unwrap();
    let vault = open_vault(&dirs.paths);
    assert!(!leftover.exists());
    assert_eq!(read_all(&vault, doc.id).unwrap(), pattern(4, 100_000));
}

#[test]
fn vacuum_through_a_symlinked_database_replaces_the_real_file() {
    let (dirs, vault) = temp_vault();
    drop(vault);
    // The database lives on another volume; data/coffer.redb is a link to it.
    let volume = dirs.root.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let real = volume.join("coffer.redb");
    std::fs::rename(dirs.database(), &real).unwrap();
    std::os::unix::fs::symlink(&real, dirs.database()).unwrap();
    let mut vault = open_vault(&dirs.paths);
    let gone = store_document(&vault, "gone.bin", &pattern(5, 200_000));
    let keep = store_document(&vault, "keep.bin", &pattern(6, 1000));
    drop(vault);
    let chunk = raw_chunk(&dirs.paths, gone.id, 1).unwrap();
    vault = open_vault(&dirs.paths);
    vault.delete(gone.id).unwrap();
    vault.vacuum().unwrap();
    drop(vault);
    assert!(
        std::fs::symlink_metadata(dirs.database())
            .unwrap()
            .file_type()
            .is_symlink(),
        "link replaced"
    );
    assert!(
        !contains_bytes(&file_bytes(&real), &chunk[..64]),
        "old file with deleted data left behind"
    );
    assert_eq!(read_all(&open_vault(&dirs.paths), keep.id).unwrap(), pattern(6, 1000));
}
