//! The `coffer` binary: init, wrong passphrases, passphrase change, status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::{UnlockError, Vault};
use coffer::secret::Passphrase;
use coffer::store::StoreOptions;
use common::*;

/// A coffer initialised by the binary, holding one document (so the database is not
/// trivially empty), closed.
fn initialised_with_binary() -> TestDirs {
    let dirs = empty_dirs();
    let out = init_with_binary(&dirs.paths);
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let vault = open_vault(&dirs.paths);
    store_document(&vault, "doc.bin", &pattern(51, 100_000));
    drop(vault);
    dirs
}

#[test]
fn init_creates_a_key_file_and_a_database_that_unlock() {
    let dirs = empty_dirs();
    let out = init_with_binary(&dirs.paths);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("created {}", dirs.key_file().display())),
        "{stdout}"
    );
    assert!(dirs.key_file().is_file() && dirs.database().is_file());
    // Cheap parameters were recorded in the key file.
    let vault = open_vault(&dirs.paths);
    assert_eq!(
        vault.key_status().unwrap().kdf,
        coffer::crypto::kdf::KdfParams::for_tests()
    );
}

#[test]
fn init_with_kdf_parameters_from_the_environment() {
    let dirs = empty_dirs();
    let out = coffer_command(&dirs.paths)
        .env("COFFER_PASSPHRASE", PASSPHRASE)
        .env("COFFER_KDF_MEMORY_KIB", "128")
        .env("COFFER_KDF_ITERATIONS", "2")
        .env("COFFER_KDF_PARALLELISM", "1")
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = run_coffer_ok(&dirs.paths, &["key", "status"]);
    assert!(stdout.contains("argon2id: 128 KiB, 2 iterations, 1 lanes"), "{stdout}");
}

#[test]
fn init_with_a_passphrase_file_unlocks_with_the_same_passphrase() {
    let dirs = empty_dirs();
    let file = write_file(dirs.root.path(), "pass", &format!("{PASSPHRASE}\n"));
    let out = coffer_command(&dirs.paths)
        .arg("--passphrase-file")
        .arg(&file)
        .arg("init")
        .args(CHEAP_KDF)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_keys_dir_clean(&dirs);
    // The trailing newline is not part of the passphrase.
    open_vault(&dirs.paths);
}

#[test]
fn init_twice_refuses_and_leaves_the_key_file_untouched() {
    let dirs = initialised_with_binary();
    let key_before = file_bytes(&dirs.key_file());
    let db_before = file_bytes(&dirs.database());
    let out = init_with_binary(&dirs.paths);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_file_unchanged(&dirs.key_file(), &key_before, "second init");
    assert_file_unchanged(&dirs.database(), &db_before, "second init");
    // Still opens with the original passphrase.
    open_vault(&dirs.paths);
}

#[test]
fn init_refuses_an_existing_database_without_a_key_file() {
    let dirs = initialised_with_binary();
    std::fs::remove_file(dirs.key_file()).unwrap();
    let db_before = file_bytes(&dirs.database());
    let out = init_with_binary(&dirs.paths);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert!(!dirs.key_file().exists());
    assert_file_unchanged(&dirs.database(), &db_before, "init over an existing database");
}

#[test]
fn init_refuses_a_short_passphrase() {
    let dirs = empty_dirs();
    let mut args = vec!["init"];
    args.extend(CHEAP_KDF);
    let out = run_coffer(&dirs.paths, "short", &args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short"));
    assert!(!dirs.key_file().exists() && !dirs.database().exists());
}

#[test]
fn wrong_passphrase_exits_2_and_changes_nothing() {
    let dirs = initialised_with_binary();
    let key_before = file_bytes(&dirs.key_file());
    let db_before = file_bytes(&dirs.database());
    for args in [&["key", "status"][..], &["key", "rotate"], &["key", "passphrase"]] {
        let out = run_coffer(&dirs.paths, WRONG_PASSPHRASE, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "coffer {args:?}: {stderr}");
        assert!(stderr.contains("wrong passphrase"), "coffer {args:?}: {stderr}");
        assert!(!stderr.contains(WRONG_PASSPHRASE) && !stderr.contains(PASSPHRASE));
        assert!(out.stdout.is_empty(), "coffer {args:?} printed to stdout");
        let context = format!("coffer {args:?} with a wrong passphrase");
        assert_file_unchanged(&dirs.key_file(), &key_before, &context);
        assert_file_unchanged(&dirs.database(), &db_before, &context);
    }
    // No temporary files were left next to them either.
    assert_eq!(files_under(&dirs.paths.keys_dir), keys_dir_files(&dirs));
    assert_eq!(files_under(&dirs.paths.data_dir), vec![dirs.database()]);
}

#[test]
fn wrong_passphrase_from_a_file_exits_2() {
    let dirs = initialised_with_binary();
    let key_before = file_bytes(&dirs.key_file());
    let file = write_file(dirs.root.path(), "wrong", &format!("{WRONG_PASSPHRASE}\n"));
    let out = coffer_command(&dirs.paths)
        .arg("--passphrase-file")
        .arg(&file)
        .args(["key", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert_file_unchanged(&dirs.key_file(), &key_before, "wrong passphrase from a file");
}

#[test]
fn passphrase_file_with_trailing_newline_unlocks() {
    let dirs = initialised_with_binary();
    let file = write_file(dirs.root.path(), "pass", &format!("{PASSPHRASE}\n"));
    let out = coffer_command(&dirs.paths)
        .arg("--passphrase-file")
        .arg(&file)
        .args(["key", "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tampered_key_file_is_refused_like_a_wrong_passphrase() {
    let dirs = initialised_with_binary();
    let mut key = file_bytes(&dirs.key_file());
    let last = key.len() - 1;
    flip_bit(&mut key, last, 0);
    std::fs::write(dirs.key_file(), &key).unwrap();
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert_file_unchanged(&dirs.key_file(), &key, "tampered key file");
}

#[test]
fn missing_passphrase_is_an_error_without_a_terminal() {
    let dirs = initialised_with_binary();
    let out = coffer_command(&dirs.paths).args(["key", "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no passphrase"));
}

#[test]
fn missing_key_file_says_to_run_init() {
    let dirs = empty_dirs();
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("coffer init"));
}

#[test]
fn passphrase_change_retires_the_old_passphrase() {
    let dirs = initialised_with_binary();
    let stored_before = raw_documents_and_chunks(&dirs.paths);
    let new = "a brand new passphrase";
    let file = write_file(dirs.root.path(), "new-pass", &format!("{new}\n"));
    let out = run_coffer(
        &dirs.paths,
        PASSPHRASE,
        &["key", "passphrase", "--new-passphrase-file", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // No record or chunk is re-encrypted.
    assert!(
        raw_documents_and_chunks(&dirs.paths) == stored_before,
        "stored records changed"
    );

    let old = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    assert_eq!(old.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&old.stderr).contains("wrong passphrase"));
    let fresh = run_coffer(&dirs.paths, new, &["key", "status"]);
    assert!(fresh.status.success(), "{}", String::from_utf8_lossy(&fresh.stderr));
    assert_keys_dir_clean(&dirs);

    // The library agrees, and the document still reads.
    assert!(matches!(
        Vault::open(&dirs.paths, &passphrase(), StoreOptions::default()),
        Err(UnlockError::WrongPassphrase(_))
    ));
    let (vault, _) = Vault::open(&dirs.paths, &Passphrase::new(new.into()), StoreOptions::default()).unwrap();
    let docs = vault.list(Default::default()).unwrap().documents;
    assert_eq!(docs.len(), 1);
    assert!(read_all(&vault, docs[0].id).unwrap() == pattern(51, 100_000));
}

#[test]
fn passphrase_change_refuses_a_short_new_passphrase() {
    let dirs = initialised_with_binary();
    let key_before = file_bytes(&dirs.key_file());
    let file = write_file(dirs.root.path(), "short", "short\n");
    let out = run_coffer(
        &dirs.paths,
        PASSPHRASE,
        &["key", "passphrase", "--new-passphrase-file", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short"));
    assert_file_unchanged(&dirs.key_file(), &key_before, "short new passphrase");
}

#[test]
fn status_shows_one_current_version_after_init() {
    let dirs = initialised_with_binary();
    let stdout = run_coffer_ok(&dirs.paths, &["key", "status"]);
    // One document plus the three service secrets (CA, server and next server keys).
    assert_eq!(status_versions(&stdout), vec![(1, 4, true)], "{stdout}");
    assert!(stdout.contains("argon2id: 64 KiB, 1 iterations, 1 lanes"), "{stdout}");
    assert!(!stdout.contains("unfinished"));
}

#[test]
fn usage_error_exits_2() {
    let dirs = empty_dirs();
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}
