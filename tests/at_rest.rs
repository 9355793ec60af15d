//! Nothing sensitive reaches the disk in clear: after storing documents, users and devices
//! carrying a unique marker, no file under the data or keys directory contains it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use coffer::crypto::stream::CHUNK_SIZE;
use common::*;

/// Byte strings that must not occur in any file under the coffer's directories.
fn assert_absent_from_disk(dirs: &TestDirs, needles: &[(&str, Vec<u8>)]) {
    let files: Vec<_> = [&dirs.paths.data_dir, &dirs.paths.keys_dir]
        .iter()
        .flat_map(|d| files_under(Path::new(d)))
        .collect();
    assert!(files.contains(&dirs.database()) && files.contains(&dirs.key_file()));
    for file in files {
        let bytes = file_bytes(&file);
        for (what, needle) in needles {
            assert!(
                !contains_bytes(&bytes, needle),
                "{what} found in clear in {}",
                file.display()
            );
        }
    }
}

#[test]
fn no_plaintext_marker_reaches_the_disk() {
    let (dirs, vault) = temp_vault();
    let marker = unique_marker();
    let user = add_user(&vault, &format!("user-{marker}"));
    add_device(&vault, user.id, &format!("device-{marker}"), thumbprint(9));

    // Content: the marker repeated through several chunks, and once straddling a chunk
    // boundary.
    let mut content = pattern(31, 3 * CHUNK_SIZE as usize);
    for at in [0, 1000, CHUNK_SIZE as usize - 10, 2 * CHUNK_SIZE as usize + 7] {
        content[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    }
    let mut new = new_document(user.id, &format!("name-{marker}.pdf"));
    new.title = format!("title {marker}");
    new.content_type = format!("application/x-{marker}");
    new.tags = vec![format!("tag-{marker}")];
    let doc = upload_in_pieces(&vault, new, &content);
    // A small document that is the marker and nothing else.
    store_document(&vault, "small.txt", marker.as_bytes());
    // An upload dropped half-way (its chunks were staged, then discarded).
    let mut dropped = vault
        .upload(new_document(user.id, &format!("dropped-{marker}")))
        .unwrap();
    dropped.write(&content).unwrap();
    drop(dropped);
    assert!(read_all(&vault, doc.id).unwrap() == content);
    drop(vault);

    let mut needles = vec![("the marker", marker.as_bytes().to_vec())];
    // Its upper-case form and a distinctive slice of the content, too.
    needles.push(("the upper-case marker", marker.to_uppercase().into_bytes()));
    needles.push(("a slice of the content", content[5000..5064].to_vec()));
    assert_absent_from_disk(&dirs, &needles);
}

#[test]
fn no_plaintext_reaches_the_disk_after_rotation_and_passphrase_change() {
    let (dirs, mut vault) = temp_vault();
    let marker = unique_marker();
    let user = add_user(&vault, &format!("u{marker}"));
    add_device(&vault, user.id, &format!("d{marker}"), thumbprint(10));
    store_document(&vault, &format!("n{marker}"), marker.repeat(100).as_bytes());
    vault.rotate(|_| {}).unwrap();
    vault
        .change_passphrase(
            &coffer::secret::Passphrase::new(format!("new passphrase {marker}")),
            None,
        )
        .unwrap();
    drop(vault);
    // Neither the marker nor the new passphrase is on disk.
    assert_absent_from_disk(
        &dirs,
        &[
            ("the marker", marker.as_bytes().to_vec()),
            ("the passphrase", PASSPHRASE.as_bytes().to_vec()),
        ],
    );
}

#[test]
fn key_file_and_database_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = init_dirs();
    for file in [dirs.key_file(), dirs.database()] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    for dir in [&dirs.paths.keys_dir, &dirs.paths.data_dir] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}
