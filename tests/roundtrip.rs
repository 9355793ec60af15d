//! Documents written and read back: sizes around the chunk size, byte ranges at chunk
//! boundaries, listing and deletion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ops::Range;

use coffer::app::VaultError;
use coffer::app::documents::ListFilter;
use coffer::crypto::stream::CHUNK_SIZE;
use coffer::model::Visibility;
use common::*;
use sha2::{Digest, Sha256};

const CS: u64 = CHUNK_SIZE as u64;
const TEN_MIB: usize = 10 * 1024 * 1024;

fn round_trip(size: usize, seed: u64) {
    let (_dirs, vault) = temp_vault();
    let data = pattern(seed, size);
    let info = store_document(&vault, &format!("doc-{size}.bin"), &data);
    assert_eq!(info.size, size as u64);
    assert_eq!(info.meta.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
    let back = read_all(&vault, info.id).unwrap();
    assert!(
        back == data,
        "content of a {size}-byte document differs after a round trip"
    );
    assert_eq!(vault.document(info.id).unwrap(), info);
}

#[test]
fn empty_document_round_trips() {
    round_trip(0, 1);
}

#[test]
fn one_byte_document_round_trips() {
    round_trip(1, 2);
}

#[test]
fn document_one_byte_short_of_a_chunk_round_trips() {
    round_trip(CHUNK_SIZE as usize - 1, 3);
}

#[test]
fn document_of_exactly_one_chunk_round_trips() {
    round_trip(CHUNK_SIZE as usize, 4);
}

#[test]
fn document_one_byte_over_a_chunk_round_trips() {
    round_trip(CHUNK_SIZE as usize + 1, 5);
}

#[test]
fn ten_mib_document_round_trips() {
    round_trip(TEN_MIB, 6);
}

#[test]
fn document_written_in_one_call_reads_back_after_reopen() {
    let (dirs, vault) = temp_vault();
    let data = pattern(7, 3 * CHUNK_SIZE as usize + 17);
    let mut writer = vault.upload(new_document(some_owner(), "one-call.bin")).unwrap();
    writer.write(&data).unwrap();
    assert_eq!(writer.written(), data.len() as u64);
    let info = writer.finish().unwrap();
    drop(vault);
    let vault = open_vault(&dirs.paths);
    assert!(read_all(&vault, info.id).unwrap() == data);
}

/// Ranges whose ends sit exactly at, just before and just after each chunk boundary,
/// ranges spanning several chunks, empty ranges and the full range.
fn boundary_ranges(size: u64) -> Vec<Range<u64>> {
    let mut points = vec![0, 1, size.saturating_sub(1), size];
    let mut k = 1;
    while k * CS <= size {
        points.extend([k * CS - 1, k * CS, k * CS + 1]);
        k += 1;
    }
    points.retain(|p| *p <= size);
    points.sort_unstable();
    points.dedup();
    let mut ranges = Vec::new();
    for (i, &a) in points.iter().enumerate() {
        for &b in &points[i..] {
            ranges.push(a..b);
        }
    }
    ranges
}

fn check_ranges(size: usize, seed: u64) {
    let (_dirs, vault) = temp_vault();
    let data = pattern(seed, size);
    let info = store_document(&vault, "ranges.bin", &data);
    let ranges = boundary_ranges(size as u64);
    assert!(ranges.iter().any(|r| r.is_empty()) && ranges.contains(&(0..size as u64)));
    for r in ranges {
        let expected = &data[r.start as usize..r.end as usize];
        let reader = vault.read(info.id, Some(r.clone())).unwrap();
        assert_eq!(reader.remaining(), r.end - r.start, "remaining for {r:?}");
        let got = drain(reader);
        assert!(got.error.is_none(), "range {r:?}: {:?}", got.error);
        assert!(got.bytes == expected, "range {r:?} of a {size}-byte document differs");
        // A range touches only the chunks covering it: one piece per chunk.
        if !r.is_empty() {
            let chunks = (r.end.div_ceil(CS) - r.start / CS) as usize;
            assert_eq!(got.ok_pieces, chunks, "pieces for {r:?}");
        }
    }
}

#[test]
fn range_reads_at_chunk_boundaries_match_the_original() {
    check_ranges(3 * CHUNK_SIZE as usize + 1234, 8);
}

#[test]
fn range_reads_of_a_document_ending_on_a_chunk_boundary_match_the_original() {
    check_ranges(2 * CHUNK_SIZE as usize, 9);
}

#[test]
fn range_reads_across_a_ten_mib_document_match_the_original() {
    let (_dirs, vault) = temp_vault();
    let data = pattern(10, TEN_MIB);
    let info = store_document(&vault, "big.bin", &data);
    let size = data.len() as u64;
    let last = size / CS * CS;
    // The full read is the round-trip test's; here, ranges deep inside and at the end.
    for r in [
        0..1,
        CS - 1..CS + 1,
        37 * CS..38 * CS,
        37 * CS - 1..41 * CS + 1,
        100 * CS + 5..100 * CS + 5,
        last - CS - 1..size,
        last - 1..size,
        last..size,
        size - 1..size,
        size..size,
    ] {
        let got = read_range(&vault, info.id, r.clone()).unwrap();
        assert!(got == data[r.start as usize..r.end as usize], "range {r:?} differs");
    }
}

#[test]
fn empty_range_of_an_empty_document_is_empty() {
    let (_dirs, vault) = temp_vault();
    let info = store_document(&vault, "empty.bin", &[]);
    assert_eq!(read_range(&vault, info.id, 0..0).unwrap(), Vec::<u8>::new());
    assert!(matches!(read_range(&vault, info.id, 0..1), Err(VaultError::Invalid(_))));
}

#[test]
fn out_of_bounds_ranges_are_invalid() {
    let (_dirs, vault) = temp_vault();
    let size = 2 * CS + 10;
    let info = store_document(&vault, "bounds.bin", &pattern(11, size as usize));
    let (five, three) = (5, 3);
    for r in [
        0..size + 1,
        size..size + 1,
        size + 1..size + 1,
        size - 1..u64::MAX,
        Range {
            start: five,
            end: three,
        },
        Range {
            start: size,
            end: size - 1,
        },
    ] {
        assert!(
            matches!(vault.read(info.id, Some(r.clone())), Err(VaultError::Invalid(_))),
            "range {r:?} was not refused"
        );
    }
}

#[test]
fn reading_an_unknown_document_is_not_found() {
    let (_dirs, vault) = temp_vault();
    let id = coffer::model::DocumentId::random().unwrap();
    assert!(matches!(vault.read(id, None), Err(VaultError::NotFound(_))));
    assert!(matches!(vault.document(id), Err(VaultError::NotFound(_))));
    assert!(matches!(vault.delete(id), Err(VaultError::NotFound(_))));
}

#[test]
fn metadata_round_trips() {
    let (_dirs, vault) = temp_vault();
    let owner = some_owner();
    let mut new = new_document(owner, "contract-ü.pdf");
    new.content_type = "application/pdf".into();
    new.title = "Signed contract — März".into();
    new.tags = vec!["signed".into(), "2026".into()];
    new.visibility = Visibility::Team;
    let info = upload_in_pieces(&vault, new, b"%PDF-1.7");
    let back = vault.document(info.id).unwrap();
    assert_eq!(back.owner, owner);
    assert_eq!(back.meta.name, "contract-ü.pdf");
    assert_eq!(back.meta.content_type, "application/pdf");
    assert_eq!(back.meta.title, "Signed contract — März");
    assert_eq!(back.meta.tags, vec!["signed".to_owned(), "2026".to_owned()]);
    assert_eq!(back.meta.visibility, Visibility::Team);
    assert_eq!(back.key_version, 1);
}

#[test]
fn invalid_metadata_is_refused_before_anything_is_staged() {
    let (dirs, vault) = temp_vault();
    let mut empty_name = new_document(some_owner(), "x");
    empty_name.name.clear();
    let mut long_title = new_document(some_owner(), "x");
    long_title.title = "t".repeat(1025);
    let mut empty_tag = new_document(some_owner(), "x");
    empty_tag.tags = vec![String::new()];
    for new in [empty_name, long_title, empty_tag] {
        assert!(matches!(vault.upload(new), Err(VaultError::Invalid(_))));
    }
    drop(vault);
    assert_eq!(raw_len(&dirs.paths, STAGING), 0);
}

#[test]
fn list_filters_by_owner_and_visibility() {
    let (_dirs, vault) = temp_vault();
    let (alice, bob) = (some_owner(), some_owner());
    let mut ids = Vec::new();
    for (owner, visibility, name) in [
        (alice, Visibility::Private, "a-private"),
        (alice, Visibility::Team, "a-team"),
        (bob, Visibility::Private, "b-private"),
        (bob, Visibility::Team, "b-team-1"),
        (bob, Visibility::Team, "b-team-2"),
    ] {
        let mut new = new_document(owner, name);
        new.visibility = visibility;
        ids.push(upload_in_pieces(&vault, new, name.as_bytes()).id);
    }
    let names = |filter: ListFilter| {
        let mut n: Vec<String> = vault
            .list(filter)
            .unwrap()
            .documents
            .into_iter()
            .map(|d| d.meta.name)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(ListFilter::default()).len(), 5);
    assert_eq!(
        names(ListFilter {
            owner: Some(alice),
            visibility: None
        }),
        ["a-private", "a-team"]
    );
    assert_eq!(
        names(ListFilter {
            owner: None,
            visibility: Some(Visibility::Team)
        }),
        ["a-team", "b-team-1", "b-team-2"]
    );
    assert_eq!(
        names(ListFilter {
            owner: Some(bob),
            visibility: Some(Visibility::Private)
        }),
        ["b-private"]
    );
    assert!(
        names(ListFilter {
            owner: Some(some_owner()),
            visibility: None
        })
        .is_empty()
    );
    // Newest first.
    let all = vault.list(ListFilter::default()).unwrap().documents;
    assert!(all.windows(2).all(|w| w[0].created >= w[1].created));
}

#[test]
fn delete_removes_the_record_and_every_chunk() {
    let (dirs, vault) = temp_vault();
    let keep = store_document(&vault, "keep.bin", &pattern(12, 2 * CHUNK_SIZE as usize));
    let gone = store_document(&vault, "gone.bin", &pattern(13, 3 * CHUNK_SIZE as usize + 1));
    vault.delete(gone.id).unwrap();
    assert!(matches!(vault.document(gone.id), Err(VaultError::NotFound(_))));
    assert!(matches!(vault.read(gone.id, None), Err(VaultError::NotFound(_))));
    assert!(matches!(vault.delete(gone.id), Err(VaultError::NotFound(_))));
    let listed: Vec<_> = vault
        .list(ListFilter::default())
        .unwrap()
        .documents
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, vec![keep.id]);
    drop(vault);
    assert!(raw_document_record(&dirs.paths, gone.id).is_none());
    assert!(raw_chunk_indices(&dirs.paths, gone.id).is_empty());
    assert_eq!(raw_chunk_indices(&dirs.paths, keep.id), vec![0, 1]);
    let vault = open_vault(&dirs.paths);
    assert!(read_all(&vault, keep.id).unwrap() == pattern(12, 2 * CHUNK_SIZE as usize));
}

#[test]
fn a_reader_keeps_its_snapshot_across_a_delete() {
    let (_dirs, vault) = temp_vault();
    let data = pattern(14, 3 * CHUNK_SIZE as usize);
    let info = store_document(&vault, "snap.bin", &data);
    let reader = vault.read(info.id, None).unwrap();
    vault.delete(info.id).unwrap();
    let got = drain(reader);
    assert!(got.error.is_none());
    assert!(got.bytes == data);
}
