//! ERP records in the vault: sealed per record, found by keyed hash, carried through key
//! rotation and compaction, swept when past their stale window, and refused (never
//! misread) when the file is edited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::Vault;
use coffer::app::erp::{ErpOp, NewErpRecord, Written};
use coffer::model::Timestamp;
use coffer::store::{StoredErpRecord, WrappedRecord};
use common::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const ERP_RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("erp_records");
const ERP_KEYS: TableDefinition<[u8; 32], u128> = TableDefinition::new("erp_keys");

const HOUR: i64 = 3_600_000;

fn record(key: &str, value: &str, now: Timestamp) -> NewErpRecord {
    NewErpRecord {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        fresh_until: Timestamp(now.0 + HOUR),
        stale_until: Timestamp(now.0 + 2 * HOUR),
    }
}

fn put(vault: &Vault, collection: &str, key: &str, value: &str) {
    let now = Timestamp::now();
    vault
        .erp_write(collection, &[ErpOp::Put(record(key, value, now))], now)
        .expect("put");
}

fn value_of(vault: &Vault, collection: &str, key: &str) -> Option<String> {
    vault
        .erp_get(collection, key)
        .expect("read")
        .map(|r| String::from_utf8(r.value).expect("utf-8"))
}

/// Every stored record, raw.
fn raw_records(dirs: &TestDirs) -> Vec<(u128, StoredErpRecord)> {
    let db = raw_db(&dirs.paths);
    let txn = db.begin_read().expect("read");
    let t = txn.open_table(ERP_RECORDS).expect("table");
    t.iter()
        .expect("iter")
        .map(|e| {
            let (k, v) = e.expect("entry");
            (k.value(), StoredErpRecord::decode(v.value()).expect("decode"))
        })
        .collect()
}

fn tamper_only_record(dirs: &TestDirs, change: impl FnOnce(&mut StoredErpRecord)) {
    raw_write(&dirs.paths, |txn| {
        let mut t = txn.open_table(ERP_RECORDS).expect("table");
        let (id, bytes) = {
            let mut it = t.iter().expect("iter");
            let (k, v) = it.next().expect("one record").expect("entry");
            (k.value(), v.value().to_vec())
        };
        let mut r = StoredErpRecord::decode(&bytes).expect("decode");
        change(&mut r);
        t.insert(id, r.encode().expect("encode").as_slice()).expect("insert");
    });
}

#[test]
fn put_replace_delete_and_batch_outcomes() {
    let (_dirs, vault) = temp_vault();
    let now = Timestamp::now();
    let w = vault
        .erp_write("customers", &[ErpOp::Put(record("C-1", r#"{"v":1}"#, now))], now)
        .unwrap();
    let first_tag = match w.as_slice() {
        [Written::Put { replaced: false, etag }] => *etag,
        other => panic!("{other:?}"),
    };
    // Same content: same entity tag; other content: another.
    let w = vault
        .erp_write("customers", &[ErpOp::Put(record("C-1", r#"{"v":1}"#, now))], now)
        .unwrap();
    assert_eq!(
        w,
        vec![Written::Put {
            replaced: true,
            etag: first_tag
        }]
    );
    let w = vault
        .erp_write("customers", &[ErpOp::Put(record("C-1", r#"{"v":2}"#, now))], now)
        .unwrap();
    assert!(matches!(w.as_slice(), [Written::Put { replaced: true, etag }] if *etag != first_tag));
    // The same key in another collection is another record.
    put(&vault, "orders", "C-1", r#"{"order":true}"#);
    assert_eq!(value_of(&vault, "customers", "C-1").as_deref(), Some(r#"{"v":2}"#));
    assert_eq!(value_of(&vault, "orders", "C-1").as_deref(), Some(r#"{"order":true}"#));
    let w = vault
        .erp_write(
            "customers",
            &[
                ErpOp::Delete("C-1".into()),
                ErpOp::Delete("never".into()),
                ErpOp::Put(record("C-2", "[]", now)),
            ],
            now,
        )
        .unwrap();
    assert!(matches!(
        w.as_slice(),
        [
            Written::Deleted { removed: true },
            Written::Deleted { removed: false },
            Written::Put { replaced: false, .. }
        ]
    ));
    assert_eq!(value_of(&vault, "customers", "C-1"), None);
    assert_eq!(value_of(&vault, "customers", "C-2").as_deref(), Some("[]"));
    let usage = vault.erp_usage().unwrap();
    assert_eq!(usage["customers"].records, 1);
    assert_eq!(usage["orders"].records, 1);
    assert_eq!(usage["orders"].bytes, r#"{"order":true}"#.len() as u64);
}

#[test]
fn a_fetch_never_overwrites_a_record_pushed_while_it_ran() {
    let (_dirs, vault) = temp_vault();
    let started = Timestamp::now();
    std::thread::sleep(std::time::Duration::from_millis(5));
    put(&vault, "customers", "C-1", r#"{"pushed":true}"#);
    let now = Timestamp::now();
    let kept = vault
        .erp_store_fetched("customers", record("C-1", r#"{"fetched":true}"#, now), now, started)
        .unwrap();
    assert_eq!(kept.value, br#"{"pushed":true}"#);
    assert_eq!(
        value_of(&vault, "customers", "C-1").as_deref(),
        Some(r#"{"pushed":true}"#)
    );
    // A fetch that started after the push replaces it.
    let later = Timestamp::now();
    let stored = vault
        .erp_store_fetched("customers", record("C-1", r#"{"fetched":2}"#, later), later, later)
        .unwrap();
    assert_eq!(stored.value, br#"{"fetched":2}"#);
}

#[test]
fn rotation_rewraps_and_reindexes_records_and_compaction_keeps_them() {
    let (dirs, mut vault) = temp_vault();
    for i in 0..300 {
        put(&vault, "customers", &format!("C-{i}"), &format!(r#"{{"n":{i}}}"#));
    }
    let before = index_entries(&vault);
    let report = vault.rotate(|_| {}).unwrap();
    assert_eq!(report.retired, vec![1], "{report:?}");
    assert!(report.damaged.is_empty(), "{report:?}");
    for i in 0..300 {
        assert_eq!(
            value_of(&vault, "customers", &format!("C-{i}")),
            Some(format!(r#"{{"n":{i}}}"#))
        );
    }
    let after = index_entries(&vault);
    assert_eq!(after.len(), 300);
    assert!(
        after.iter().all(|i| !before.contains(i)),
        "index entries moved to the new version"
    );
    let status = vault.key_status().unwrap();
    assert_eq!(status.versions.get(&2), Some(&300), "{status:?}");
    vault.vacuum().unwrap();
    drop(vault);
    let vault = open_vault(&dirs.paths);
    assert_eq!(value_of(&vault, "customers", "C-299").as_deref(), Some(r#"{"n":299}"#));
    assert_eq!(vault.erp_usage().unwrap()["customers"].records, 300);
}

/// The index entries the records name (the file cannot be opened raw while the vault is).
fn index_entries(vault: &Vault) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    vault.store().erp_scan(|_, r| out.push(r.index)).expect("scan");
    out
}

#[test]
fn the_sweep_removes_only_records_past_their_stale_window() {
    let (_dirs, vault) = temp_vault();
    let now = Timestamp::now();
    let old = NewErpRecord {
        key: "old".into(),
        value: b"1".to_vec(),
        fresh_until: Timestamp(now.0 - 3 * HOUR),
        stale_until: Timestamp(now.0 - HOUR),
    };
    let stale_but_servable = NewErpRecord {
        key: "stale".into(),
        value: b"2".to_vec(),
        fresh_until: Timestamp(now.0 - HOUR),
        stale_until: Timestamp(now.0 + HOUR),
    };
    vault
        .erp_write(
            "customers",
            &[
                ErpOp::Put(old),
                ErpOp::Put(stale_but_servable),
                ErpOp::Put(record("fresh", "3", now)),
            ],
            now,
        )
        .unwrap();
    put(&vault, "removed", "leftover", "4");
    let config = coffer::config::Config::from_toml(
        "[erp.collections.customers]\nread_roles = [\"member\"]\nstale_if_error = \"2h\"\n",
        "x",
    )
    .unwrap();
    let erp = coffer::erp::Erp::parse(&config.erp).unwrap();
    assert_eq!(erp.sweep(&vault, now).unwrap(), 1);
    assert_eq!(value_of(&vault, "customers", "old"), None);
    assert!(value_of(&vault, "customers", "stale").is_some());
    assert!(value_of(&vault, "customers", "fresh").is_some());
    // An unconfigured collection's record goes when its recorded stale window ends.
    assert!(value_of(&vault, "removed", "leftover").is_some());
    // Three hours on, every window has closed: the configured 2 h after each freshness,
    // and the 2 h recorded with the leftover.
    assert_eq!(erp.sweep(&vault, Timestamp(now.0 + 3 * HOUR)).unwrap(), 3);
    assert_eq!(value_of(&vault, "removed", "leftover"), None);
    assert_eq!(value_of(&vault, "customers", "stale"), None);
    assert_eq!(value_of(&vault, "customers", "fresh"), None);
    // Purge by collection and by key.
    put(&vault, "customers", "a", "1");
    put(&vault, "customers", "b", "1");
    put(&vault, "orders", "a", "1");
    assert_eq!(vault.erp_purge("customers", Some("a")).unwrap(), 1);
    assert_eq!(vault.erp_purge("customers", Some("a")).unwrap(), 0);
    assert_eq!(vault.erp_purge("customers", None).unwrap(), 1);
    assert_eq!(value_of(&vault, "orders", "a").as_deref(), Some("1"));
}

#[test]
fn neither_keys_nor_values_are_in_the_file() {
    let (dirs, mut vault) = temp_vault();
    let key = format!("customer-{}", unique_marker());
    let value = format!(r#"{{"secret":"{}"}}"#, unique_marker());
    put(&vault, "customers", &key, &value);
    vault.vacuum().unwrap();
    drop(vault);
    let file = std::fs::read(dirs.database()).unwrap();
    for needle in [key.as_bytes(), value.as_bytes()] {
        assert!(
            !file.windows(needle.len()).any(|w| w == needle),
            "{} found in clear",
            String::from_utf8_lossy(needle)
        );
    }
    assert_eq!(raw_records(&dirs).len(), 1);
}

fn assert_unreadable(dirs: &TestDirs, collection: &str, key: &str) {
    let vault = open_vault(&dirs.paths);
    assert_integrity(vault.erp_get(collection, key));
}

#[test]
fn edited_records_are_integrity_errors_never_other_data() {
    let setup = || {
        let (dirs, vault) = temp_vault();
        put(&vault, "customers", "C-1", r#"{"v":1}"#);
        drop(vault);
        dirs
    };
    // A flipped bit in the sealed body or the wrapped key.
    let dirs = setup();
    tamper_only_record(&dirs, |r| {
        let i = r.sealed.len() / 2;
        r.sealed[i] ^= 4;
    });
    assert_unreadable(&dirs, "customers", "C-1");
    let dirs = setup();
    tamper_only_record(&dirs, |r| r.wrapped_dek[30] ^= 1);
    assert_unreadable(&dirs, "customers", "C-1");
    // Kept fresh (or servable) longer, or moved to another collection.
    let dirs = setup();
    tamper_only_record(&dirs, |r| r.fresh_until.0 += 365 * 24 * HOUR);
    assert_unreadable(&dirs, "customers", "C-1");
    let dirs = setup();
    tamper_only_record(&dirs, |r| r.stale_until.0 += HOUR);
    assert_unreadable(&dirs, "customers", "C-1");
    let dirs = setup();
    tamper_only_record(&dirs, |r| r.stored.0 -= HOUR);
    assert_unreadable(&dirs, "customers", "C-1");
    let dirs = setup();
    tamper_only_record(&dirs, |r| r.collection = "orders".into());
    assert_unreadable(&dirs, "customers", "C-1");
}

#[test]
fn swapped_index_entries_never_serve_another_key() {
    let (dirs, vault) = temp_vault();
    put(&vault, "customers", "alice-corp", r#"{"owner":"alice"}"#);
    put(&vault, "customers", "mallory-corp", r#"{"owner":"mallory"}"#);
    drop(vault);
    swap_index_targets(&dirs.paths, ERP_KEYS);
    let vault = open_vault(&dirs.paths);
    for key in ["alice-corp", "mallory-corp"] {
        assert_integrity(vault.erp_get("customers", key));
    }
}
