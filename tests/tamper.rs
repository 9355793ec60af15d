//! An attacker with write access to the database file alters it while coffer is stopped.
//! Every alteration must be an integrity error, never wrong bytes, and a read that fails
//! mid-stream must release no byte of the failing chunk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::documents::ListFilter;
use coffer::app::{Paths, Vault};
use coffer::crypto::stream::CHUNK_SIZE;
use coffer::model::{DocumentId, Timestamp};
use common::*;

const CS: usize = CHUNK_SIZE as usize;
/// Four chunks, the last one short.
const SIZE: usize = 3 * CS + 1000;

/// A closed coffer holding one four-chunk document; returns its id and content.
fn stored_document() -> (TestDirs, DocumentId, Vec<u8>) {
    let (dirs, vault) = temp_vault();
    let data = pattern(21, SIZE);
    let id = store_document(&vault, "victim.bin", &data).id;
    drop(vault);
    (dirs, id, data)
}

/// Reads the whole document after tampering: asserts an integrity error and that only the
/// chunks before `failing_chunk` were released, byte-identical.
fn assert_fails_at_chunk(paths: &Paths, id: DocumentId, data: &[u8], failing_chunk: usize) {
    let vault = open_vault(paths);
    let got = drain(vault.read(id, None).unwrap());
    let error = got.error.expect("the tampered read must end in an error");
    assert!(is_integrity(&error), "expected an integrity error, got {error:?}");
    assert_eq!(got.ok_pieces, failing_chunk, "pieces released before the failing chunk");
    assert_eq!(
        got.bytes.len(),
        failing_chunk * CS,
        "bytes released before the failing chunk"
    );
    assert!(
        got.bytes == data[..failing_chunk * CS],
        "released bytes differ from the original"
    );
    assert_integrity(read_all(&vault, id));
}

/// Opening the document (its key and metadata) must fail everywhere it is used.
fn assert_document_unopenable(vault: &Vault, id: DocumentId) {
    assert_integrity(vault.read(id, None).map(|_| ()));
    assert_integrity(vault.read(id, Some(0..1)).map(|_| ()));
    assert_integrity(vault.document(id));
    let listing = vault.list(ListFilter::default()).unwrap();
    assert_eq!(listing.damaged, vec![id], "a damaged document is reported by list");
    assert!(listing.documents.iter().all(|d| d.id != id));
}

#[test]
fn flipped_bit_in_wrapped_dek_is_an_integrity_error() {
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| flip_bit(&mut doc.wrapped_dek, 30, 3));
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn truncated_wrapped_dek_is_an_integrity_error() {
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| {
        doc.wrapped_dek.pop();
    });
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn flipped_bit_in_chunk_ciphertext_is_an_integrity_error() {
    let (dirs, id, data) = stored_document();
    tamper_chunk(&dirs.paths, id, 2, |c| flip_bit(c, 1234, 0));
    assert_fails_at_chunk(&dirs.paths, id, &data, 2);
}

#[test]
fn flipped_bit_in_chunk_tag_is_an_integrity_error() {
    let (dirs, id, data) = stored_document();
    tamper_chunk(&dirs.paths, id, 1, |c| {
        let last = c.len() - 1;
        flip_bit(c, last, 7);
    });
    assert_fails_at_chunk(&dirs.paths, id, &data, 1);
}

#[test]
fn flipped_bit_in_first_chunk_releases_nothing() {
    let (dirs, id, data) = stored_document();
    tamper_chunk(&dirs.paths, id, 0, |c| flip_bit(c, 0, 5));
    assert_fails_at_chunk(&dirs.paths, id, &data, 0);
}

#[test]
fn two_swapped_chunks_are_an_integrity_error() {
    let (dirs, id, data) = stored_document();
    let (c1, c2) = (
        raw_chunk(&dirs.paths, id, 1).unwrap(),
        raw_chunk(&dirs.paths, id, 2).unwrap(),
    );
    put_raw_chunk(&dirs.paths, id, 1, &c2);
    put_raw_chunk(&dirs.paths, id, 2, &c1);
    assert_fails_at_chunk(&dirs.paths, id, &data, 1);
}

#[test]
fn dropped_last_chunk_is_an_integrity_error() {
    let (dirs, id, data) = stored_document();
    remove_raw_chunk(&dirs.paths, id, 3);
    assert_fails_at_chunk(&dirs.paths, id, &data, 3);
}

#[test]
fn dropped_middle_chunk_is_an_integrity_error() {
    let (dirs, id, data) = stored_document();
    remove_raw_chunk(&dirs.paths, id, 1);
    assert_fails_at_chunk(&dirs.paths, id, &data, 1);
}

#[test]
fn truncation_to_a_full_last_chunk_is_an_integrity_error() {
    // Drop the short last chunk and claim the document ends at the chunk boundary: the
    // size is bound into the metadata, and chunk 2 was not sealed as a last chunk.
    let (dirs, id, _) = stored_document();
    remove_raw_chunk(&dirs.paths, id, 3);
    tamper_document_record(&dirs.paths, id, |doc| doc.size = 3 * CS as u64);
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn chunk_copied_from_another_document_is_an_integrity_error() {
    let (dirs, vault) = temp_vault();
    let data = pattern(22, SIZE);
    let victim = store_document(&vault, "victim.bin", &data).id;
    let other = store_document(&vault, "other.bin", &pattern(23, SIZE)).id;
    drop(vault);
    let foreign = raw_chunk(&dirs.paths, other, 1).unwrap();
    assert_eq!(foreign.len(), raw_chunk(&dirs.paths, victim, 1).unwrap().len());
    put_raw_chunk(&dirs.paths, victim, 1, &foreign);
    assert_fails_at_chunk(&dirs.paths, victim, &data, 1);
    // The other document is untouched.
    let vault = open_vault(&dirs.paths);
    assert!(read_all(&vault, other).unwrap() == pattern(23, SIZE));
}

#[test]
fn whole_content_copied_from_another_document_is_an_integrity_error() {
    let (dirs, vault) = temp_vault();
    let victim = store_document(&vault, "victim.bin", &pattern(24, SIZE)).id;
    let other = store_document(&vault, "other.bin", &pattern(25, SIZE)).id;
    drop(vault);
    for i in 0..4 {
        let c = raw_chunk(&dirs.paths, other, i).unwrap();
        put_raw_chunk(&dirs.paths, victim, i, &c);
    }
    assert_fails_at_chunk(&dirs.paths, victim, &pattern(24, SIZE), 0);
}

#[test]
fn record_moved_to_another_id_is_an_integrity_error() {
    // Another document's whole record (wrapped key, metadata) stored under the victim's id.
    let (dirs, vault) = temp_vault();
    let victim = store_document(&vault, "victim.bin", &pattern(26, SIZE)).id;
    let other = store_document(&vault, "other.bin", &pattern(27, SIZE)).id;
    drop(vault);
    let other_record = raw_document_record(&dirs.paths, other).unwrap();
    tamper_document_record(&dirs.paths, victim, |doc| *doc = other_record);
    assert_document_unopenable(&open_vault(&dirs.paths), victim);
}

#[test]
fn flipped_bit_in_sealed_metadata_is_an_integrity_error() {
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| {
        let i = doc.sealed_meta.len() / 2;
        flip_bit(&mut doc.sealed_meta, i, 2);
    });
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn altered_clear_size_is_an_integrity_error() {
    for new_size in [SIZE as u64 - 1, SIZE as u64 + 1, 3 * CS as u64, 0] {
        let (dirs, id, _) = stored_document();
        tamper_document_record(&dirs.paths, id, |doc| doc.size = new_size);
        assert_document_unopenable(&open_vault(&dirs.paths), id);
    }
}

#[test]
fn altered_clear_timestamps_are_an_integrity_error() {
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| doc.created.0 = 0);
    assert_document_unopenable(&open_vault(&dirs.paths), id);
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| doc.updated.0 += 86_400_000);
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn altered_clear_chunk_size_is_an_integrity_error() {
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| doc.chunk_size /= 2);
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn altered_clear_owner_is_an_integrity_error() {
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| doc.owner = some_owner());
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn altered_nonce_prefix_is_an_integrity_error() {
    let (dirs, id, _) = stored_document();
    tamper_document_record(&dirs.paths, id, |doc| doc.nonce_prefix[0] ^= 1);
    assert_document_unopenable(&open_vault(&dirs.paths), id);
}

#[test]
fn a_range_read_touches_only_the_chunks_it_covers() {
    // Damage in chunk 0 does not affect a range inside chunk 2, and is caught by a range
    // that covers it.
    let (dirs, id, data) = stored_document();
    tamper_chunk(&dirs.paths, id, 0, |c| flip_bit(c, 10, 1));
    let vault = open_vault(&dirs.paths);
    let r = (2 * CS + 5) as u64..(3 * CS - 5) as u64;
    assert!(read_range(&vault, id, r.clone()).unwrap() == data[r.start as usize..r.end as usize]);
    assert_integrity(read_range(&vault, id, CS as u64 - 1..CS as u64 + 1));
}

#[test]
fn range_read_failing_mid_stream_releases_only_the_chunks_before() {
    let (dirs, id, data) = stored_document();
    tamper_chunk(&dirs.paths, id, 2, |c| flip_bit(c, 99, 4));
    let vault = open_vault(&dirs.paths);
    let start = CS + 100;
    let got = drain(vault.read(id, Some(start as u64..SIZE as u64)).unwrap());
    assert!(got.error.as_ref().is_some_and(is_integrity), "{:?}", got.error);
    assert_eq!(got.ok_pieces, 1);
    assert!(
        got.bytes == data[start..2 * CS],
        "released bytes differ from chunk 1's tail"
    );
}

#[test]
fn empty_document_without_its_chunk_is_an_integrity_error() {
    // An empty document is one empty sealed chunk: removing it is detected too.
    let (dirs, vault) = temp_vault();
    let id = store_document(&vault, "empty.bin", &[]).id;
    drop(vault);
    assert_eq!(raw_chunk_indices(&dirs.paths, id), vec![0]);
    remove_raw_chunk(&dirs.paths, id, 0);
    let vault = open_vault(&dirs.paths);
    assert_integrity(read_all(&vault, id));
}

#[test]
fn empty_document_with_a_foreign_chunk_is_an_integrity_error() {
    let (dirs, vault) = temp_vault();
    let id = store_document(&vault, "empty.bin", &[]).id;
    let other = store_document(&vault, "other.bin", &[]).id;
    drop(vault);
    let foreign = raw_chunk(&dirs.paths, other, 0).unwrap();
    put_raw_chunk(&dirs.paths, id, 0, &foreign);
    let vault = open_vault(&dirs.paths);
    assert_integrity(read_all(&vault, id));
}

#[test]
fn flipped_bit_in_sealed_user_record_is_an_integrity_error() {
    let (dirs, vault) = temp_vault();
    let user = add_user(&vault, "alice");
    drop(vault);
    tamper_user_record(&dirs.paths, user.id.0, |u| {
        let i = u.sealed.len() - 1;
        flip_bit(&mut u.sealed, i, 0);
    });
    let vault = open_vault(&dirs.paths);
    assert_integrity(vault.user(user.id));
    assert_integrity(vault.user_by_name("alice"));
}

#[test]
fn flipped_bit_in_wrapped_user_key_is_an_integrity_error() {
    let (dirs, vault) = temp_vault();
    let user = add_user(&vault, "alice");
    drop(vault);
    tamper_user_record(&dirs.paths, user.id.0, |u| flip_bit(&mut u.wrapped_dek, 40, 6));
    let vault = open_vault(&dirs.paths);
    assert_integrity(vault.user(user.id));
}

#[test]
fn user_name_index_pointing_at_another_user_finds_nobody() {
    // Swapped index entries must never return the wrong user for a name.
    let (dirs, vault) = temp_vault();
    add_user(&vault, "alice");
    add_user(&vault, "mallory");
    drop(vault);
    swap_index_targets(&dirs.paths, USER_NAMES);
    let vault = open_vault(&dirs.paths);
    for name in ["alice", "mallory"] {
        let found = vault.user_by_name(name).unwrap();
        assert!(found.is_none(), "{name} resolved to {:?}", found.map(|u| u.body.name));
    }
}

#[test]
fn device_thumbprint_index_pointing_at_another_device_finds_nothing() {
    let (dirs, vault) = temp_vault();
    let owner = add_user(&vault, "owner");
    add_device(&vault, owner.id, "a", thumbprint(5));
    add_device(&vault, owner.id, "b", thumbprint(6));
    drop(vault);
    swap_index_targets(&dirs.paths, DEVICE_THUMBPRINTS);
    let vault = open_vault(&dirs.paths);
    for t in [thumbprint(5), thumbprint(6)] {
        assert!(vault.device_by_thumbprint(&t).unwrap().is_none());
    }
}

#[test]
fn tampered_device_owner_is_an_integrity_error() {
    // README: the sealed fields' AAD "binds the record's clear fields". A device's owner is
    // clear; moving a device to another user (say, an admin) must not go unnoticed.
    let (dirs, vault) = temp_vault();
    let alice = add_user(&vault, "alice");
    let mallory = add_user(&vault, "mallory");
    let device = add_device(&vault, mallory.id, "mallory's phone", thumbprint(1));
    drop(vault);
    tamper_device_record(&dirs.paths, device.id.0, |d| d.owner = alice.id);
    let vault = open_vault(&dirs.paths);
    assert_integrity(vault.device(device.id));
    assert_integrity(vault.device_by_thumbprint(&thumbprint(1)));
}

#[test]
fn tampered_device_expiry_is_an_integrity_error() {
    let (dirs, vault) = temp_vault();
    let owner = add_user(&vault, "owner");
    let device = add_device(&vault, owner.id, "phone", thumbprint(2));
    drop(vault);
    tamper_device_record(&dirs.paths, device.id.0, |d| d.expires = Timestamp(i64::MAX));
    let vault = open_vault(&dirs.paths);
    assert_integrity(vault.device(device.id));
}

#[test]
fn device_record_moved_to_another_id_is_an_integrity_error() {
    let (dirs, vault) = temp_vault();
    let owner = add_user(&vault, "owner");
    let a = add_device(&vault, owner.id, "a", thumbprint(3));
    let b = add_device(&vault, owner.id, "b", thumbprint(4));
    drop(vault);
    let b_record = raw_device_record(&dirs.paths, b.id.0).unwrap();
    tamper_device_record(&dirs.paths, a.id.0, |d| *d = b_record);
    let vault = open_vault(&dirs.paths);
    assert_integrity(vault.device(a.id));
}
