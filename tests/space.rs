//! Space accounting: stored content costs little more than its own size in the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::Vault;
use common::*;

const MIB: usize = 1024 * 1024;

/// Allocated bytes over content bytes; at most 1.1.
fn assert_overhead_at_most_ten_percent(vault: &Vault, content: u64, when: &str) {
    let space = vault.store().space().unwrap();
    let ratio = space.allocated_bytes as f64 / content as f64;
    eprintln!("{when}: allocated ×{ratio:.3} of {content} content bytes; {space:?}");
    assert!(
        ratio <= 1.1,
        "{when}: allocated {} bytes for {content} bytes of content (×{ratio:.3}); {space:?}",
        space.allocated_bytes
    );
}

#[test]
fn sixty_four_mib_of_documents_allocate_at_most_ten_percent_over_their_size() {
    let (dirs, vault) = temp_vault();
    let (count, size) = (64, MIB);
    for i in 0..count {
        store_document(&vault, &format!("fill-{i}"), &pattern(70 + i as u64, size));
    }
    let content = (count * size) as u64;
    assert_overhead_at_most_ten_percent(&vault, content, "after storing");
    drop(vault);
    let vault = open_vault(&dirs.paths);
    assert_overhead_at_most_ten_percent(&vault, content, "after reopening");
}

#[test]
fn space_of_deleted_documents_is_reused() {
    let (_dirs, vault) = temp_vault();
    let (count, size) = (8, MIB);
    for round in 0..2 {
        let ids: Vec<_> = (0..count)
            .map(|i| store_document(&vault, &format!("r{round}-{i}"), &pattern(80 + i as u64, size)).id)
            .collect();
        if round == 0 {
            for id in ids {
                vault.delete(id).unwrap();
            }
        }
    }
    assert_overhead_at_most_ten_percent(&vault, (count * size) as u64, "after delete and refill");
}

#[test]
fn space_of_dropped_uploads_is_reused() {
    let (_dirs, vault) = temp_vault();
    let (count, size) = (8, MIB);
    for i in 0..count {
        let mut w = vault.upload(new_document(some_owner(), "dropped")).unwrap();
        w.write(&pattern(90 + i as u64, size)).unwrap();
        drop(w);
    }
    for i in 0..count {
        store_document(&vault, &format!("kept-{i}"), &pattern(100 + i as u64, size));
    }
    assert_overhead_at_most_ten_percent(&vault, (count * size) as u64, "after dropped uploads and refill");
}
