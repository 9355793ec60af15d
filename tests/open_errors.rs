//! Opening a coffer that is not in a state to open: each case gets its own clear message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use redb::TableDefinition;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[test]
fn a_missing_database_says_to_run_init_and_creates_nothing() {
    let dirs = init_dirs();
    std::fs::remove_file(dirs.database()).unwrap();
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no database at") && stderr.contains("coffer init"),
        "{stderr}"
    );
    assert!(!dirs.database().exists());
}

#[test]
fn a_database_from_a_newer_coffer_is_refused_with_a_message_to_upgrade() {
    let dirs = init_dirs();
    raw_write(&dirs.paths, |txn| {
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 2u32.to_be_bytes().as_slice())
            .unwrap();
    });
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("schema version 2") && stderr.contains("upgrade coffer"),
        "{stderr}"
    );
}

#[test]
fn a_key_file_readable_by_others_draws_a_warning() {
    let dirs = init_dirs();
    std::fs::set_permissions(dirs.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_coffer(&dirs.paths, PASSPHRASE, &["key", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("readable by other users") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}
