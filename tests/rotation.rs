//! Master key rotation: everything stays readable, the retired version leaves the key
//! file, and an interrupted rotation is completed by re-running `coffer key rotate`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use coffer::app::Vault;
use coffer::app::documents::ListFilter;
use coffer::app::principals::DeviceInfo;
use coffer::crypto::stream::CHUNK_SIZE;
use coffer::model::{DocumentId, UserId};
use common::*;

/// What a populated coffer holds, to check after a rotation.
struct Contents {
    documents: Vec<(DocumentId, Vec<u8>)>,
    users: Vec<(String, UserId)>,
    devices: Vec<DeviceInfo>,
}

/// Stores `n_docs` documents of varied sizes, three users and two devices.
fn populate(vault: &Vault, n_docs: usize) -> Contents {
    let mut documents = Vec::new();
    for i in 0..n_docs {
        let size = [0, 1, 5000, CHUNK_SIZE as usize + 1, 2 * CHUNK_SIZE as usize][i % 5];
        let data = pattern(60 + i as u64, size);
        documents.push((store_document(vault, &format!("doc-{i}"), &data).id, data));
    }
    let users: Vec<_> = ["anna", "ben", "chloe"]
        .iter()
        .map(|n| (n.to_string(), add_user(vault, n).id))
        .collect();
    let devices = vec![
        add_device(vault, users[0].1, "anna's phone", thumbprint(1)),
        add_device(vault, users[1].1, "ben's tablet", thumbprint(2)),
    ];
    Contents {
        documents,
        users,
        devices,
    }
}

/// Every document reads back byte-identical, every user and device is found by name or
/// thumbprint.
fn assert_all_readable(vault: &Vault, contents: &Contents) {
    for (id, data) in &contents.documents {
        assert!(read_all(vault, *id).unwrap() == *data, "document {id} differs");
    }
    assert_eq!(
        vault.list(ListFilter::default()).unwrap().documents.len(),
        contents.documents.len()
    );
    for (name, id) in &contents.users {
        let found = vault
            .user_by_name(name)
            .unwrap()
            .unwrap_or_else(|| panic!("user {name} not found"));
        assert_eq!(found.id, *id);
    }
    for device in &contents.devices {
        let found = vault
            .device_by_thumbprint(&device.body.thumbprint)
            .unwrap()
            .expect("device found");
        assert_eq!(found.id, device.id);
        assert_eq!(found.body, device.body);
    }
}

/// Every object is wrapped under `version`, the only one the key file holds, and the
/// keyed-hash indexes hold exactly one entry per user and device.
fn assert_only_version(vault: &Vault, contents: &Contents, version: u32) {
    let status = vault.key_status().unwrap();
    assert_eq!(status.current, version);
    // Plus the audit log's key, once an admin command has been recorded.
    let objects = (contents.documents.len() + contents.users.len() + contents.devices.len()) as u64
        + u64::from(vault.has_audit_key().unwrap());
    assert_eq!(status.versions, BTreeMap::from([(version, objects)]));
    assert!(status.missing.is_empty());
    assert_eq!(vault.keyring().versions().collect::<Vec<_>>(), vec![version]);
    for (id, _) in &contents.documents {
        assert_eq!(vault.document(*id).unwrap().key_version, version);
    }
}

fn assert_indexes_have_no_stale_entries(dirs: &TestDirs, contents: &Contents) {
    assert_eq!(raw_index_len(&dirs.paths, USER_NAMES), contents.users.len() as u64);
    assert_eq!(
        raw_index_len(&dirs.paths, DEVICE_THUMBPRINTS),
        contents.devices.len() as u64
    );
}

#[test]
fn library_rotation_keeps_everything_readable_and_retires_the_old_version() {
    let (dirs, mut vault) = temp_vault();
    let contents = populate(&vault, 7);
    let report = vault.rotate(|_| {}).unwrap();
    assert_eq!(report.current, 2);
    assert!(!report.resumed);
    assert_eq!(report.rewrapped, 7 + 3 + 2);
    assert_eq!(report.retired, vec![1]);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
    drop(vault);
    assert_indexes_have_no_stale_entries(&dirs, &contents);
    let vault = open_vault(&dirs.paths);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
}

#[test]
fn binary_rotation_keeps_everything_readable_and_retires_the_old_version() {
    let (dirs, vault) = temp_vault();
    let contents = populate(&vault, 10);
    drop(vault);
    let db_chunks_before: Vec<_> = contents
        .documents
        .iter()
        .map(|(id, _)| raw_chunk(&dirs.paths, *id, 0))
        .collect();

    let stdout = run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    assert!(
        stdout.contains("master key version 2 is current; 15 keys rewrapped"),
        "{stdout}"
    );
    assert!(stdout.contains("retired version 1"), "{stdout}");
    assert!(!stdout.contains("resumed"), "{stdout}");

    let status = run_coffer_ok(&dirs.paths, &["key", "status"]);
    // One more object than the test made: the audit log's key, made when the first admin
    // command was recorded.
    assert_eq!(status_versions(&status), vec![(2, 16, true)], "{status}");
    assert!(
        !status.contains("unfinished") && !status.contains("MISSING"),
        "{status}"
    );

    // Content is never re-encrypted by a rotation.
    let db_chunks_after: Vec<_> = contents
        .documents
        .iter()
        .map(|(id, _)| raw_chunk(&dirs.paths, *id, 0))
        .collect();
    assert_eq!(db_chunks_before, db_chunks_after);
    assert_indexes_have_no_stale_entries(&dirs, &contents);
    assert_keys_dir_clean(&dirs);

    let vault = open_vault(&dirs.paths);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
}

#[test]
fn two_binary_rotations_leave_only_the_newest_version() {
    let (dirs, vault) = temp_vault();
    let contents = populate(&vault, 3);
    drop(vault);
    run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    let stdout = run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    assert!(stdout.contains("retired version 2"), "{stdout}");
    let status = run_coffer_ok(&dirs.paths, &["key", "status"]);
    // One more object than the test made: the audit log's key, made when the first admin
    // command was recorded.
    assert_eq!(status_versions(&status), vec![(3, 9, true)], "{status}");
    let vault = open_vault(&dirs.paths);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 3);
}

#[test]
fn interrupted_rotation_is_completed_by_the_binary() {
    let (dirs, vault) = temp_vault();
    let contents = populate(&vault, 10);
    {
        let mut rotation = vault.begin_rotation().unwrap();
        assert_eq!(rotation.target(), 2);
        assert!(rotation.step(3).unwrap());
        assert_eq!(rotation.rewrapped(), 3);
        // Dropped here: the rotation is interrupted after one durable step.
    }
    drop(vault);

    // Mid-rotation: both versions in the key file, everything still readable.
    let vault = open_vault(&dirs.paths);
    let status = vault.key_status().unwrap();
    assert_eq!(status.current, 2);
    assert_eq!(status.versions, BTreeMap::from([(1, 12), (2, 3)]));
    assert_all_readable(&vault, &contents);
    drop(vault);
    let status = run_coffer_ok(&dirs.paths, &["key", "status"]);
    assert!(status.contains("a rotation is unfinished"), "{status}");
    assert_eq!(status_versions(&status), vec![(1, 12, false), (2, 3, true)], "{status}");

    let stdout = run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    assert!(stdout.contains("resumed an interrupted rotation"), "{stdout}");
    assert!(
        stdout.contains("master key version 2 is current; 12 keys rewrapped"),
        "{stdout}"
    );
    assert!(stdout.contains("retired version 1"), "{stdout}");

    let status = run_coffer_ok(&dirs.paths, &["key", "status"]);
    // One more object than the test made: the audit log's key, made when the first admin
    // command was recorded.
    assert_eq!(status_versions(&status), vec![(2, 16, true)], "{status}");
    assert_indexes_have_no_stale_entries(&dirs, &contents);
    assert_keys_dir_clean(&dirs);
    let vault = open_vault(&dirs.paths);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
}

#[test]
fn rotation_interrupted_among_users_is_completed_by_the_binary() {
    let (dirs, vault) = temp_vault();
    let contents = populate(&vault, 4);
    {
        let mut rotation = vault.begin_rotation().unwrap();
        // Documents (one step covers them all), then one user.
        assert!(rotation.step(100).unwrap());
        assert!(rotation.step(1).unwrap());
        assert_eq!(rotation.rewrapped(), 5);
    }
    drop(vault);
    let vault = open_vault(&dirs.paths);
    assert_eq!(vault.key_status().unwrap().versions, BTreeMap::from([(1, 4), (2, 5)]));
    // Users are found by name under either version while the rotation is unfinished.
    assert_all_readable(&vault, &contents);
    drop(vault);

    let stdout = run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    assert!(stdout.contains("resumed"), "{stdout}");
    assert_indexes_have_no_stale_entries(&dirs, &contents);
    let vault = open_vault(&dirs.paths);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
}

#[test]
fn rotation_interrupted_before_any_step_is_completed_by_the_binary() {
    let (dirs, vault) = temp_vault();
    let contents = populate(&vault, 2);
    // The new version reaches the key file; then the rotation stops before any step.
    let rotation = vault.begin_rotation().unwrap();
    assert_eq!(rotation.target(), 2);
    drop(rotation);
    drop(vault);
    let stdout = run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    assert!(stdout.contains("resumed"), "{stdout}");
    let vault = open_vault(&dirs.paths);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
}

#[test]
fn objects_added_mid_rotation_are_wrapped_under_the_new_version() {
    let (dirs, vault) = temp_vault();
    let mut contents = populate(&vault, 5);
    {
        let mut rotation = vault.begin_rotation().unwrap();
        rotation.step(2).unwrap();
    }
    let data = pattern(99, 1234);
    let info = store_document(&vault, "late.bin", &data);
    assert_eq!(info.key_version, 2);
    contents.documents.push((info.id, data));
    let late = add_user(&vault, "late user");
    contents.users.push(("late user".into(), late.id));
    drop(vault);
    run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    let vault = open_vault(&dirs.paths);
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
}

#[test]
fn rotation_of_an_empty_coffer_retires_the_unused_version() {
    let dirs = init_dirs();
    let stdout = run_coffer_ok(&dirs.paths, &["key", "rotate"]);
    assert!(
        stdout.contains("master key version 2 is current; 0 keys rewrapped"),
        "{stdout}"
    );
    let status = run_coffer_ok(&dirs.paths, &["key", "status"]);
    // One more object than the test made: the audit log's key, made when the first admin
    // command was recorded.
    assert_eq!(status_versions(&status), vec![(2, 1, true)], "{status}");
}

#[test]
fn passphrase_change_after_rotation_keeps_everything_readable() {
    let (dirs, mut vault) = temp_vault();
    let contents = populate(&vault, 3);
    vault.rotate(|_| {}).unwrap();
    let new = coffer::secret::Passphrase::new("rotated and re-sealed".into());
    vault.change_passphrase(&new, None).unwrap();
    drop(vault);
    let (vault, _) = Vault::open(&dirs.paths, &new, coffer::store::StoreOptions::default()).unwrap();
    assert_all_readable(&vault, &contents);
    assert_only_version(&vault, &contents, 2);
}
