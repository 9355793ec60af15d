//! One process at a time per keys directory, and a key file must belong to its database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::{UnlockError, Vault};
use coffer::store::StoreOptions;
use common::*;
use redb::ReadableTable;

#[test]
fn a_second_open_of_the_same_coffer_is_refused_while_the_first_holds_it() {
    let (dirs, vault) = temp_vault();
    let second = Vault::open(&dirs.paths, &passphrase(), StoreOptions::default());
    assert!(matches!(second, Err(UnlockError::Busy { .. })), "{second:?}");
    // The binary says so too, and changes nothing.
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "rotate"]);
    assert_eq!(out.status.code(), Some(1));
    // It names the holder (this test process) and says what to do.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds the database"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", std::process::id())), "{stderr}");
    assert!(stderr.contains("stop it first"), "{stderr}");
    drop(vault);
    open_vault(&dirs.paths);
}

#[test]
fn a_key_file_from_another_coffer_is_refused() {
    let a = init_dirs();
    let b = init_dirs();
    std::fs::copy(b.key_file(), a.key_file()).unwrap();
    let opened = Vault::open(&a.paths, &passphrase(), StoreOptions::default());
    assert!(matches!(opened, Err(UnlockError::KeyMismatch(1))), "{opened:?}");
    let out = run_coffer(&a.paths, PASSPHRASE, &["key", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not belong to this database"));
}

#[test]
fn an_old_copy_of_the_key_file_holding_a_retired_version_is_refused() {
    let (dirs, vault) = temp_vault();
    store_document(&vault, "a.bin", &pattern(1, 1000));
    drop(vault);
    let old_key_file = file_bytes(&dirs.key_file());
    run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    std::fs::write(dirs.key_file(), &old_key_file).unwrap();
    let opened = Vault::open(&dirs.paths, &passphrase(), StoreOptions::default());
    assert!(matches!(opened, Err(UnlockError::RetiredKey(1))), "{opened:?}");
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("old copy"));
}

#[test]
fn rotation_never_reuses_a_version_number_the_database_has_seen() {
    let (_dirs, mut vault) = temp_vault();
    // A rotation that died after recording version 2's check value, before the key file
    // got version 2: the next rotation must not call a different key "2".
    vault.store().set_key_check(2, [7; 32]).unwrap();
    let target = vault.begin_rotation().unwrap().target();
    assert_eq!(target, 3);
    assert_eq!(vault.rotate(|_| {}).unwrap().current, 3);
}

#[test]
fn a_planted_rotation_marker_does_not_turn_a_rotation_into_a_no_op() {
    let (dirs, vault) = temp_vault();
    store_document(&vault, "a.bin", &pattern(1, 1000));
    vault.store().set_rotation_target(Some(1)).unwrap();
    drop(vault);
    let out = run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    assert!(out.contains("master key version 2 is current"), "{out}");
    assert!(!out.contains("resumed"), "{out}");
}

#[test]
fn a_damaged_record_does_not_block_the_rotation_of_the_others() {
    let (dirs, vault) = temp_vault();
    let good = store_document(&vault, "good.bin", &pattern(1, 5000));
    let bad = store_document(&vault, "bad.bin", &pattern(2, 5000));
    drop(vault);
    tamper_document_record(&dirs.paths, bad.id, |d| flip_bit(&mut d.wrapped_dek, 40, 1));
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "rotate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("damaged: document {}", bad.id)), "{stderr}");
    let vault = open_vault(&dirs.paths);
    let status = vault.key_status().unwrap();
    // The good document moved to v2 (beside the audit log's key, made when the rotation
    // was recorded); v1 stays for the damaged one.
    assert_eq!(status.versions.into_iter().collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    assert_eq!(read_all(&vault, good.id).unwrap(), pattern(1, 5000));
}

#[test]
fn a_key_file_whose_versions_this_database_never_saw_is_refused_and_left_untouched() {
    // "prod" has rotated twice (only v3 in its key file); "staging" only knows v1.
    let prod = init_dirs();
    run_coffer_ok(&prod.paths, &["key", "rotate"]);
    run_coffer_ok(&prod.paths, &["key", "rotate"]);
    let staging = init_dirs();
    let mixed = coffer::app::Paths {
        data_dir: staging.paths.data_dir.clone(),
        keys_dir: prod.paths.keys_dir.clone(),
    };
    let prod_key_file = file_bytes(&prod.key_file());
    let out = run_coffer(&mixed, PASSPHRASE, &["key", "rotate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not belong to this database"));
    assert_eq!(
        file_bytes(&prod.key_file()),
        prod_key_file,
        "prod's key file was changed"
    );
}

#[test]
fn a_record_kept_on_an_old_version_by_damage_does_not_block_the_next_rotation() {
    let (dirs, vault) = temp_vault();
    let good = store_document(&vault, "good.bin", &pattern(1, 5000));
    let bad = store_document(&vault, "bad.bin", &pattern(2, 5000));
    drop(vault);
    tamper_document_record(&dirs.paths, bad.id, |d| flip_bit(&mut d.wrapped_dek, 40, 1));
    assert_eq!(
        run_coffer(&dirs.paths, PASSPHRASE, &["key", "rotate"]).status.code(),
        Some(1)
    );
    // The next rotation starts a new version instead of "resuming" forever.
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "rotate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("master key version 3 is current"), "{stdout}");
    assert!(!stdout.contains("resumed"), "{stdout}");
    let vault = open_vault(&dirs.paths);
    let versions: Vec<_> = vault.key_status().unwrap().versions.into_iter().collect();
    assert_eq!(
        versions,
        // The good document and the audit log's key on v3.
        vec![(1, 1), (3, 2)],
        "v2 retired, v1 kept for the damaged record"
    );
    assert_eq!(read_all(&vault, good.id).unwrap(), pattern(1, 5000));
}

#[test]
fn a_record_that_no_longer_decodes_is_reported_by_list_status_and_rotate() {
    let (dirs, vault) = temp_vault();
    let good = store_document(&vault, "good.bin", &pattern(1, 5000));
    let bad = store_document(&vault, "bad.bin", &pattern(2, 5000));
    drop(vault);
    // Cut the record short: it no longer decodes at all.
    raw_write(&dirs.paths, |txn| {
        let mut t = txn.open_table(DOCUMENTS).unwrap();
        let bytes = t.get(bad.id.0).unwrap().unwrap().value().to_vec();
        t.insert(bad.id.0, &bytes[..bytes.len() - 1]).unwrap();
    });
    let vault = open_vault(&dirs.paths);
    let listing = vault.list(coffer::app::documents::ListFilter::default()).unwrap();
    assert_eq!(listing.damaged, vec![bad.id]);
    assert_eq!(listing.documents.len(), 1);
    assert_eq!(vault.key_status().unwrap().undecodable, 1);
    drop(vault);
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "rotate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("document {} (record unreadable)", bad.id)),
        "{stderr}"
    );
    let vault = open_vault(&dirs.paths);
    assert_eq!(read_all(&vault, good.id).unwrap(), pattern(1, 5000));
    // Its version is unknown, so no version was retired: restoring it must still work.
    assert_eq!(
        vault.key_status().unwrap().versions.into_iter().collect::<Vec<_>>(),
        // The good document and the audit log's key.
        vec![(1, 0), (2, 2)]
    );
}
