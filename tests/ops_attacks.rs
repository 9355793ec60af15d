//! Regression tests for the hostile review of issue 7 (backup/restore, verify, audit log,
//! admin socket, online rotation). The review's proofs of concept asserted the flawed
//! behaviour; the mends on main (424fdd3) fixed them, and each test here asserts the fixed
//! behaviour, so it fails if the flaw comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use coffer::app::audit::{AuditEvent, AuditFilter, AuditRecord, PruneReport};
use coffer::app::backup::BackupError;
use coffer::model::Timestamp;
use coffer::store::{StoreOptions, StoredAudit};
use common::server::{start_server, upload};
use common::{PASSPHRASE, file_bytes, files_under, open_vault, passphrase, raw_write, store_document, temp_vault};
use redb::{ReadableTable, TableDefinition};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const ERP_RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("erp_records");

/// How long the tests wait for the audit writer thread on a loaded machine (a bound on a
/// wait, never a timing assertion).
const WRITER_WAIT: Duration = Duration::from_secs(60);

fn event(action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        time: Timestamp::now(),
        action: action.to_owned(),
        status: 200,
        outcome: "ok".to_owned(),
        target: Some(target.to_owned()),
        ..AuditEvent::default()
    }
}

fn all_entries(vault: &coffer::app::Vault) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    vault
        .audit_export(&AuditFilter::default(), &mut |r| out.push(r))
        .unwrap();
    out
}

/// Polls the audit log until `done` holds for its entries (or `WRITER_WAIT` passed);
/// returns the last entries read.
fn entries_when(vault: &coffer::app::Vault, done: impl Fn(&[AuditRecord]) -> bool) -> Vec<AuditRecord> {
    let deadline = Instant::now() + WRITER_WAIT;
    loop {
        let entries = all_entries(vault);
        if done(&entries) || Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn settings() -> coffer::admin::Settings {
    coffer::admin::Settings {
        argon2: coffer::crypto::kdf::KdfParams::for_tests(),
        device_days: 30,
        server_days: 30,
        region: "local".into(),
        endpoint: "https://localhost:8443".into(),
        erp: coffer::erp::Erp::default(),
    }
}

/// Runs one admin request as the server would over the socket; returns the answer frame.
fn admin_frame(vault: &coffer::app::Vault, json: &str) -> Vec<u8> {
    coffer::admin::serve_frame(vault, &settings(), json.as_bytes().to_vec(), &mut |_| Ok(()), &|_| {})
}

/// The successful answer of an admin frame (`{"protocol":..,"body":{"Done":{"Ok":..}}}`).
fn admin_ok(frame: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(frame).expect("the answer frame is JSON");
    let ok = &v["body"]["Done"]["Ok"];
    assert!(!ok.is_null(), "the admin command failed: {v}");
    ok.clone()
}

fn export_request(from_seq: u64, continuation: bool) -> String {
    format!(
        r#"{{"protocol":2,"body":{{"AuditExport":{{"since":null,"user":null,"from_seq":{from_seq},"limit":0,"continuation":{continuation}}}}}}}"#
    )
}

/// Sets the clear `time` of audit entries `seqs` to 1970, as an attacker with write access
/// to the database file (and no passphrase) can; their chain hashes no longer verify.
fn back_date(paths: &coffer::app::Paths, seqs: std::ops::RangeInclusive<u64>) {
    raw_write(paths, |txn| {
        let mut t = txn.open_table(AUDIT).unwrap();
        for seq in seqs {
            let bytes = t.get(seq).unwrap().unwrap().value().to_vec();
            let mut e = StoredAudit::decode(&bytes).unwrap();
            e.time = 0;
            t.insert(seq, e.encode().unwrap().as_slice()).unwrap();
        }
    });
}

/// What `serve` prunes at start and hourly (retention 400 days).
fn retention_cutoff() -> Timestamp {
    Timestamp(Timestamp::now().0 - 400 * 86_400_000)
}

// ---------------------------------------------------------------------------------------
// Was HIGH: pruning trusted the clear `time` field, so back-dated recent entries were
// pruned under a freshly tagged anchor and `audit verify` then passed. Now prune trusts
// an entry's time only once its chain hash verifies: it stops at the damage, reports it,
// and `audit verify` still names the broken entry.
// ---------------------------------------------------------------------------------------
#[test]
fn prune_keeps_a_back_dated_prefix_reports_the_damage_and_verify_still_names_it() {
    let (dirs, vault) = temp_vault();
    let events: Vec<AuditEvent> = (0..10)
        .map(|i| event("DELETE /v1/documents/{id}", &format!("doc {i}")))
        .collect();
    vault.audit_append(events, redb::Durability::Immediate).unwrap();
    let before = vault.audit_verify(&mut |_| {}).unwrap();
    assert!(before.broken.is_none(), "{before:?}");
    assert_eq!(before.entries, 10);
    drop(vault);

    // The attacker back-dates entries 1..=8, all of them made seconds ago, to 1970.
    back_date(&dirs.paths, 1..=8);
    let vault = open_vault(&dirs.paths);
    let tampered = vault.audit_verify(&mut |_| {}).unwrap();
    assert_eq!(tampered.broken.as_ref().map(|b| b.0), Some(1), "{tampered:?}");

    // The prune at `serve` start, then the hourly one: neither removes anything, both name
    // the first tampered entry.
    for run in 0..2 {
        let report = vault.audit_prune(retention_cutoff()).unwrap();
        assert_eq!(report.removed, 0, "prune {run} removed back-dated entries: {report:?}");
        let (seq, why) = report
            .damage
            .as_ref()
            .unwrap_or_else(|| panic!("prune {run} did not report the damage: {report:?}"));
        assert_eq!(*seq, 1, "prune {run}: {why}");
        assert!(!why.is_empty());
    }

    let after = vault.audit_verify(&mut |_| {}).unwrap();
    assert_eq!(
        after.broken.as_ref().map(|b| b.0),
        Some(1),
        "audit verify must still name the tampered entry after pruning: {after:?}"
    );
    assert_eq!(after.anchor, None, "no anchor was written over the damage: {after:?}");
    assert_eq!(all_entries(&vault).len(), 10, "nothing was pruned");
}

/// The same with an authentic old prefix before the back-dated entries: the authentic old
/// entries are pruned, the walk stops at the first back-dated one, and `audit verify`
/// names that one after the anchor.
#[test]
fn prune_removes_authentic_old_entries_and_stops_at_the_first_back_dated_one() {
    let (dirs, vault) = temp_vault();
    let old = Timestamp(Timestamp::now().0 - 500 * 86_400_000);
    let older: Vec<AuditEvent> = (0..3)
        .map(|i| AuditEvent {
            time: Timestamp(old.0 + i),
            ..event("GET /v1/documents", "old")
        })
        .collect();
    vault.audit_append(older, redb::Durability::Immediate).unwrap();
    let recent: Vec<AuditEvent> = (0..7)
        .map(|i| event("DELETE /v1/documents/{id}", &format!("doc {i}")))
        .collect();
    vault.audit_append(recent, redb::Durability::Immediate).unwrap();
    drop(vault);

    back_date(&dirs.paths, 4..=8);
    let vault = open_vault(&dirs.paths);
    let report = vault.audit_prune(retention_cutoff()).unwrap();
    assert_eq!(report.removed, 3, "only the authentic old entries go: {report:?}");
    assert_eq!(report.damage.as_ref().map(|d| d.0), Some(4), "{report:?}");

    let after = vault.audit_verify(&mut |_| {}).unwrap();
    assert_eq!(after.anchor.map(|a| a.0), Some(3), "{after:?}");
    assert_eq!(after.broken.as_ref().map(|b| b.0), Some(4), "{after:?}");
    assert_eq!(
        all_entries(&vault).len(),
        7,
        "only the authentic old entries were pruned"
    );

    // Pruning again changes nothing and reports the same damage.
    let again = vault.audit_prune(retention_cutoff()).unwrap();
    assert_eq!(again.removed, 0, "{again:?}");
    assert_eq!(again.damage.as_ref().map(|d| d.0), Some(4), "{again:?}");
}

/// Control: authentic old entries are pruned, twice in a row (the second prune starts at
/// the first anchor), and the log stays verifiable.
#[test]
fn pruning_authentic_old_entries_keeps_the_chain_verifiable() {
    let (_dirs, vault) = temp_vault();
    let old = Timestamp(Timestamp::now().0 - 500 * 86_400_000);
    let older: Vec<AuditEvent> = (0..5)
        .map(|i| AuditEvent {
            time: Timestamp(old.0 + i),
            ..event("GET /v1/documents", "x")
        })
        .collect();
    vault.audit_append(older, redb::Durability::Immediate).unwrap();
    let cutoff = Timestamp(old.0 + 3);
    assert_eq!(
        vault.audit_prune(cutoff).unwrap(),
        PruneReport {
            removed: 3,
            damage: None
        }
    );
    vault
        .audit_append(vec![event("GET /v1/documents", "y")], redb::Durability::Immediate)
        .unwrap();
    assert_eq!(
        vault.audit_prune(retention_cutoff()).unwrap(),
        PruneReport {
            removed: 2,
            damage: None
        }
    );
    let check = vault.audit_verify(&mut |_| {}).unwrap();
    assert!(check.broken.is_none(), "{check:?}");
    assert_eq!((check.entries, check.anchor.map(|a| a.0)), (1, Some(5)));
}

// ---------------------------------------------------------------------------------------
// Was HIGH: a backup taken during an unfinished rotation holds objects wrapped under the
// older master key version; once a later rotation retired that version, restoring the
// backup with the current key file "succeeded" and left unreadable objects. Now restore
// (and backup verification) refuse it with `NeedsKeyVersion`, and the live data stays as
// it was; with the key file of the backup's time it restores.
// ---------------------------------------------------------------------------------------
#[test]
fn restore_refuses_a_backup_needing_a_retired_key_version_and_leaves_the_live_data() {
    let (dirs, vault) = temp_vault();
    let content = common::pattern(7, 200_000);
    let doc = store_document(&vault, "contract.pdf", &content);
    common::add_user(&vault, "alice");

    // A rotation starts (v2 becomes current in the key file) and is interrupted before it
    // rewraps anything.
    let rotation = vault.begin_rotation().unwrap();
    assert_eq!(rotation.target(), 2);
    drop(rotation);

    // The nightly backup: header version 2, every object still wrapped under v1.
    let backup = dirs.root.path().join("nightly.cbk");
    let summary = vault.backup(&backup, false, &mut |_, _| {}).unwrap();
    assert_eq!(summary.key_version, 2);
    drop(vault);
    let key_file_of_the_backup = file_bytes(&dirs.key_file());

    // The rotation is finished with the server stopped: v1 is retired.
    let mut vault = open_vault(&dirs.paths);
    let report = vault.rotate(|_| {}).unwrap();
    assert_eq!(report.retired, vec![1], "{report:?}");
    drop(vault);

    let database_before = file_bytes(&dirs.database());
    let data_files_before = files_under(&dirs.paths.data_dir);

    let verified = coffer::app::backup::verify_backup(&dirs.paths, &passphrase(), &backup, &mut |_, _| {});
    assert!(
        matches!(verified, Err(BackupError::NeedsKeyVersion(1))),
        "backup verification must name the missing version: {verified:?}"
    );
    let restored = coffer::app::backup::restore(
        &dirs.paths,
        &passphrase(),
        &backup,
        true,
        StoreOptions::default(),
        &mut |_, _, _| {},
    );
    assert!(
        matches!(restored, Err(BackupError::NeedsKeyVersion(1))),
        "restore must refuse the backup: {:?}",
        restored.map(|r| r.summary.describe())
    );

    // The live data is as it was: same database bytes, no leftovers, every object opens.
    common::assert_file_unchanged(&dirs.database(), &database_before, "the live database");
    assert_eq!(files_under(&dirs.paths.data_dir), data_files_before);
    let vault = open_vault(&dirs.paths);
    assert_eq!(common::read_all(&vault, doc.id).unwrap(), content);
    let check = vault.verify(false, &mut |_, _| {}).unwrap();
    assert_eq!(check.damaged_count(), 0, "{:?}", check.damaged);
    drop(vault);

    // With the key file that was current when the backup was made, it restores.
    std::fs::write(dirs.key_file(), &key_file_of_the_backup).unwrap();
    coffer::app::backup::restore(
        &dirs.paths,
        &passphrase(),
        &backup,
        false,
        StoreOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let vault = open_vault(&dirs.paths);
    assert_eq!(common::read_all(&vault, doc.id).unwrap(), content);
    let check = vault.verify(false, &mut |_, _| {}).unwrap();
    assert_eq!(check.damaged_count(), 0, "{:?}", check.damaged);
}

// ---------------------------------------------------------------------------------------
// Was MEDIUM: a known (even revoked) device was not throttled by the audit gate, and the
// sealed `target` took the raw path segment uncapped, so one revoked certificate flooded
// the log and an export page outgrew the admin frame. Now refusals are recorded at most
// once per (device, action, outcome) every `REFUSALS_EVERY`; those left out are counted in
// a summary entry when the window closes; targets are capped at 256 bytes, and the export
// answers through the socket.
// ---------------------------------------------------------------------------------------
#[test]
fn a_revoked_device_flooding_refused_requests_leaves_a_few_capped_entries_and_export_works() {
    const ACTION: &str = "GET /v1/documents/{id}";
    let server = start_server();
    let alice = server.add_member("alice");
    let device = server.issue_device(alice.id);
    server.vault().revoke_device(device.device_id()).unwrap();
    let big_id = "A".repeat(60_000);
    let path = format!("/v1/documents/{big_id}");
    let refuse_one = || {
        // The server closes the connection after refusing a revoked device.
        let res = server.connect(&device).request("GET", &path, &[], b"").unwrap();
        // 401 (revoked), then 429 once the failure budget is spent: refused either way.
        assert!(
            res.status == 401 || res.status == 429,
            "{} {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
    };
    let n = 300;
    let started = Instant::now();
    for _ in 0..n {
        refuse_one();
    }
    let flood_took = started.elapsed();
    // Once the throttle's period has passed, one more refusal is recorded one by one; the
    // windows before it were closed by summary entries counting those left out.
    std::thread::sleep(coffer::http::audit::REFUSALS_EVERY + Duration::from_millis(200));
    refuse_one();
    let total = n + 1;

    let device_id = device.device_id().to_string();
    let left_out = |e: &AuditRecord| -> usize {
        e.detail.as_deref().map_or(0, |d| {
            d.split_whitespace()
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("a refusal detail without a leading count: {d:?}"))
        })
    };
    let mine = |entries: &[AuditRecord]| -> Vec<AuditRecord> {
        entries.iter().filter(|e| e.action == ACTION).cloned().collect()
    };
    let entries = entries_when(server.vault(), |all| {
        let m = mine(all);
        m.iter().filter(|e| left_out(e) == 0).count() + m.iter().map(left_out).sum::<usize>() >= total
    });
    let mine = mine(&entries);
    // Entries recorded one by one, plus what the summary entries count.
    let accounted = mine.iter().filter(|e| left_out(e) == 0).count() + mine.iter().map(left_out).sum::<usize>();
    eprintln!(
        "{total} refused requests (the flood took {flood_took:?}): {} audit entries; details: {:?}",
        mine.len(),
        mine.iter().map(|e| e.detail.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        accounted, total,
        "every refusal is either recorded or counted in a summary entry"
    );
    for e in &mine {
        assert_eq!(e.device.as_deref(), Some(device_id.as_str()), "{e:?}");
        assert!(e.status == 401 || e.status == 429, "{e:?}");
    }
    // Per outcome (401 device-revoked, then 429 once the failure budget is spent), at most
    // one refusal recorded one by one per period while flooding, plus the one after the
    // pause; and at most one summary per such window.
    let periods = flood_took.as_secs() / coffer::http::audit::REFUSALS_EVERY.as_secs();
    let bound = 2 * (usize::try_from(periods).unwrap() + 2);
    let (summaries, single): (Vec<_>, Vec<_>) = mine.iter().partition(|e| left_out(e) > 0);
    assert!(
        single.len() <= bound && summaries.len() <= bound,
        "{} single and {} summary entries for {total} refusals of one device in {flood_took:?} (at most {bound} each)",
        single.len(),
        summaries.len()
    );
    assert!(single.len() >= 2, "the first refusal and the one after the pause");
    assert!(!summaries.is_empty(), "those left out are counted in a summary entry");
    // Targets are capped: 256 bytes at most, and still the start of the real target
    // (summaries count many requests and name no single target).
    for e in &single {
        let target = e.target.as_deref().unwrap_or_default();
        assert!(target.len() <= 256, "{} byte target", target.len());
        assert!(target.starts_with("AAAA"), "{target:?}");
    }

    // `coffer audit export` through the running server: the first page's answer frame.
    let answer = admin_frame(server.vault(), &export_request(0, false));
    assert!(
        answer.len() <= coffer::admin::socket::MAX_FRAME,
        "the export page ({} bytes) exceeds MAX_FRAME",
        answer.len()
    );
    let page = admin_ok(&answer);
    let records = page["AuditPage"][0].as_array().expect("an audit page");
    assert!(
        records.iter().filter(|r| r["action"] == ACTION).count() >= mine.len(),
        "the exported page holds the refusals"
    );
}

// ---------------------------------------------------------------------------------------
// Was MEDIUM: the audit entry was written after the inner service completed; a client
// breaking the TLS stream mid-request made actix drop the request future while the work
// (in `web::block`) still completed, leaving a state change without an entry. Now every
// completed delete has an entry: `ok`, or `499 client-closed` when the client went away.
// ---------------------------------------------------------------------------------------
#[test]
fn every_completed_delete_is_audited_even_when_the_client_breaks_the_connection() {
    use common::client::{raw_tls, signed_head, unique_nonce};
    let server = start_server();
    let alice = server.add_member("alice");
    let device = server.issue_device(alice.id);
    let signer = device.signer().unwrap();
    let tries: u32 = 24;
    let mut ids = Vec::new();
    for i in 0..tries {
        let doc = upload(
            &mut server.connect(&device),
            &format!("doc{i}.pdf"),
            &[],
            &common::pattern(u64::from(i), 1000),
        );
        let id = common::server::id_of(&doc);
        let target = format!("/v1/documents/{id}");
        let nonce = unique_nonce();
        let head = signed_head(
            Some(&signer),
            "DELETE",
            &target,
            "localhost",
            &[("x-coffer-nonce", &nonce)],
            &coffer::sigv4::sha256_hex(b""),
        );
        let mut raw = raw_tls(server.client_config(Some(&device)), server.addr());
        raw.write_all(head.as_bytes()).unwrap();
        raw.flush().unwrap();
        // Break the TLS stream with a bogus record after a pause from 0.2 ms up to about
        // 40 ms: before, during or after the handler's work, whatever the machine's load.
        std::thread::sleep(Duration::from_micros(200) * (1 << (i / 3)));
        let _ = raw.sock.write_all(
            &[0x17, 0x03, 0x03, 0x00, 0x20]
                .iter()
                .copied()
                .chain([0u8; 32])
                .collect::<Vec<u8>>(),
        );
        drop(raw);
        let parsed: coffer::model::DocumentId = id.parse().unwrap();
        // Give the delete a moment to land (not an assertion: a late one is checked below).
        let deadline = Instant::now() + Duration::from_secs(1);
        while server.vault().document(parsed).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        ids.push((id, parsed));
    }

    // Every delete that happened has its entry.
    let deleted: Vec<&String> = ids
        .iter()
        .filter(|(_, parsed)| server.vault().document(*parsed).is_err())
        .map(|(id, _)| id)
        .collect();
    let is_delete_of =
        |e: &AuditRecord, id: &str| e.action == "DELETE /v1/documents/{id}" && e.target.as_deref() == Some(id);
    let entries = entries_when(server.vault(), |all| {
        deleted.iter().all(|id| all.iter().any(|e| is_delete_of(e, id)))
    });
    let (mut ok, mut closed) = (0, 0);
    for id in &deleted {
        let found: Vec<&AuditRecord> = entries.iter().filter(|e| is_delete_of(e, id)).collect();
        assert!(!found.is_empty(), "document {id} was deleted without an audit entry");
        for e in found {
            match (e.status, e.outcome.as_str()) {
                (200..=299, "ok") => ok += 1,
                (499, "client-closed") => closed += 1,
                _ => panic!("unexpected entry for the delete of {id}: {e:?}"),
            }
        }
    }
    eprintln!(
        "{}/{tries} deletes happened: {ok} audited ok, {closed} audited 499 client-closed",
        deleted.len()
    );
    assert!(
        !deleted.is_empty(),
        "no delete happened at all: the test exercised nothing"
    );
}

// ---------------------------------------------------------------------------------------
// Was LOW: `verify` listed every damaged object, so with enough damage its answer
// exceeded the admin frame. Now it lists at most `MAX_LISTED` and counts the rest.
// ---------------------------------------------------------------------------------------
#[test]
fn a_verify_report_with_many_damaged_objects_lists_at_most_max_listed_and_fits_a_frame() {
    use coffer::app::verify::MAX_LISTED;
    let damaged = 200_000u64;
    let (dirs, vault) = temp_vault();
    drop(vault);
    raw_write(&dirs.paths, |txn| {
        let mut t = txn.open_table(ERP_RECORDS).unwrap();
        for i in 0..u128::from(damaged) {
            t.insert(i + 1, &b"x"[..]).unwrap();
        }
    });
    let vault = open_vault(&dirs.paths);
    let answer = admin_frame(&vault, r#"{"protocol":2,"body":{"Verify":{"deep":false}}}"#);
    eprintln!("verify answer frame: {} bytes", answer.len());
    assert!(
        answer.len() <= coffer::admin::socket::MAX_FRAME,
        "the verify answer ({} bytes) exceeds MAX_FRAME",
        answer.len()
    );
    let report = &admin_ok(&answer)["Verify"];
    let listed = report["damaged"].as_array().expect("damaged list").len();
    assert_eq!(listed, MAX_LISTED);
    assert_eq!(
        report["more_damaged"].as_u64(),
        Some(damaged - MAX_LISTED as u64),
        "the rest is counted"
    );
}

// ---------------------------------------------------------------------------------------
// Was LOW: an export whose first page started at `from_seq` 1 passed for a follow-up page
// and was not recorded; then a client-set `continuation` flag did the same. Now every page
// is recorded, with where it starts.
// ---------------------------------------------------------------------------------------
#[test]
fn every_export_page_is_audited_with_where_it_starts() {
    let (_dirs, vault) = temp_vault();
    vault
        .audit_append(vec![event("GET /v1/documents", "x")], redb::Durability::Immediate)
        .unwrap();
    let exports = |vault: &coffer::app::Vault| {
        all_entries(vault)
            .into_iter()
            .filter(|e| e.action == "admin audit export")
            .collect::<Vec<_>>()
    };
    admin_ok(&admin_frame(&vault, &export_request(1, false)));
    admin_ok(&admin_frame(&vault, &export_request(2, true)));
    admin_ok(&admin_frame(&vault, &export_request(0, true)));
    let targets: Vec<_> = exports(&vault)
        .into_iter()
        .map(|e| e.target.unwrap_or_default())
        .collect();
    assert_eq!(targets, ["from entry 1", "from entry 2", "from entry 0"]);
}

// ---------------------------------------------------------------------------------------
// Was LOW (careless admin): `backup --out FILE --force` replaced any file, the key file
// too. Now a backup never lands in the keys or data directory, `--force` replaces only an
// earlier backup, and the refused destinations stay as they were.
// ---------------------------------------------------------------------------------------
#[test]
fn backup_with_force_refuses_the_key_file_and_coffer_directories_but_replaces_a_backup() {
    let (dirs, vault) = temp_vault();
    let key_file = dirs.key_file();
    let key_before = file_bytes(&key_file);
    let database = dirs.database();
    let database_before = file_bytes(&database);
    let keys_before = files_under(&dirs.paths.keys_dir);
    let data_before = files_under(&dirs.paths.data_dir);
    let refused = |out: &Path, force: bool, what: &str| {
        let result = vault.backup(out, force, &mut |_, _| {});
        assert!(
            matches!(result, Err(BackupError::Refused(_))),
            "backup onto {what} must be refused: {:?}",
            result.map(|s| s.describe())
        );
    };

    refused(&key_file, true, "the key file");
    refused(&database, true, "the database");
    refused(&dirs.paths.keys_dir.join("nightly.cbk"), true, "a new file in keys/");
    refused(&dirs.paths.keys_dir.join("nightly.cbk"), false, "a new file in keys/");
    refused(&dirs.paths.data_dir.join("nightly.cbk"), false, "a new file in data/");
    // Through a symlinked directory and a symlink to the key file.
    let keys_link = dirs.root.path().join("keys-link");
    std::os::unix::fs::symlink(&dirs.paths.keys_dir, &keys_link).unwrap();
    refused(&keys_link.join("master.cbk"), true, "keys/ through a symlink");
    let key_link = dirs.root.path().join("key-link.cbk");
    std::os::unix::fs::symlink(&key_file, &key_link).unwrap();
    refused(&key_link, true, "a symlink to the key file");
    // Another file that is no backup.
    let notes = dirs.root.path().join("notes.txt");
    std::fs::write(&notes, b"not a backup").unwrap();
    refused(&notes, true, "a file that is no backup");
    assert_eq!(std::fs::read(&notes).unwrap(), b"not a backup");

    common::assert_file_unchanged(&key_file, &key_before, "the key file");
    common::assert_file_unchanged(&database, &database_before, "the database");
    assert_eq!(files_under(&dirs.paths.keys_dir), keys_before);
    assert_eq!(files_under(&dirs.paths.data_dir), data_before);

    // --force over an earlier backup still works (and without it, the backup is kept).
    let earlier = dirs.root.path().join("earlier.cbk");
    let first = vault.backup(&earlier, false, &mut |_, _| {}).unwrap();
    let exists = vault.backup(&earlier, false, &mut |_, _| {});
    assert!(matches!(exists, Err(BackupError::Exists(_))), "{exists:?}");
    let second = vault.backup(&earlier, true, &mut |_, _| {}).unwrap();
    assert_ne!(first.id, second.id, "the earlier backup was replaced");
    drop(vault);
    let checked = coffer::app::backup::verify_backup(&dirs.paths, &passphrase(), &earlier, &mut |_, _| {}).unwrap();
    assert_eq!(checked.id, second.id);

    let opened = coffer::app::Vault::open(
        &dirs.paths,
        &coffer::secret::Passphrase::new(PASSPHRASE.to_owned()),
        StoreOptions::default(),
    );
    assert!(opened.is_ok(), "the coffer still opens: {:?}", opened.err());
}

// ---------------------------------------------------------------------------------------
// Was LOW (careless admin): `restore --data-dir DIR` chmodded an existing DIR to 0700.
// Now an existing directory keeps its mode; only a directory the restore creates is
// private.
// ---------------------------------------------------------------------------------------
#[test]
fn restore_leaves_the_mode_of_an_existing_data_dir_alone() {
    use std::os::unix::fs::PermissionsExt;
    let (dirs, vault) = temp_vault();
    let doc = store_document(&vault, "kept.pdf", &common::pattern(5, 1000));
    let backup = dirs.root.path().join("b.cbk");
    vault.backup(&backup, false, &mut |_, _| {}).unwrap();
    drop(vault);
    let restore_into = |data_dir: &Path| {
        let paths = coffer::app::Paths {
            data_dir: data_dir.to_path_buf(),
            keys_dir: dirs.paths.keys_dir.clone(),
        };
        coffer::app::backup::restore(
            &paths,
            &passphrase(),
            &backup,
            true,
            StoreOptions::default(),
            &mut |_, _, _| {},
        )
        .unwrap();
        let vault = open_vault(&paths);
        assert!(vault.document(doc.id).is_ok(), "the restore restored");
    };

    let shared = dirs.root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    restore_into(&shared);
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "the existing directory keeps its mode");

    let fresh = dirs.root.path().join("fresh");
    restore_into(&fresh);
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "a directory the restore creates is private");
}

// ---------------------------------------------------------------------------------------
// Was LOW/MEDIUM: restore read the file twice by path and reported pass 1's summary, so a
// file replaced between the passes got another backup restored than the one reported.
// Now both passes read one descriptor and pass 2's header tag must be pass 1's: the
// restore restores what it verified, or fails with `Changed` leaving the live database.
// ---------------------------------------------------------------------------------------
#[test]
fn restore_restores_the_backup_it_verified_or_fails_when_the_file_is_switched() {
    for in_place in [false, true] {
        let (dirs, vault) = temp_vault();
        store_document(&vault, "old.pdf", &common::pattern(1, 1000));
        let old = dirs.root.path().join("old.cbk");
        vault.backup(&old, false, &mut |_, _| {}).unwrap();
        store_document(&vault, "new.pdf", &common::pattern(2, 1000));
        store_document(&vault, "newer.pdf", &common::pattern(3, 1000));
        let latest = dirs.root.path().join("latest.cbk");
        let latest_summary = vault.backup(&latest, false, &mut |_, _| {}).unwrap();
        drop(vault);
        let database_before = file_bytes(&dirs.database());

        let mut swapped = false;
        let result = coffer::app::backup::restore(
            &dirs.paths,
            &passphrase(),
            &latest,
            true,
            StoreOptions::default(),
            &mut |phase, _, _| {
                if phase == 1 && !swapped {
                    if in_place {
                        // The same file (inode) rewritten with the older backup.
                        std::fs::write(&latest, std::fs::read(&old).unwrap()).unwrap();
                    } else {
                        // Another file put in its place by name.
                        std::fs::rename(&old, &latest).unwrap();
                    }
                    swapped = true;
                }
            },
        );
        assert!(swapped, "the file was switched during the restore");
        let how = if in_place { "rewritten in place" } else { "renamed over" };
        match result {
            Ok(report) => {
                assert_eq!(report.summary.id, latest_summary.id, "{how}: the reported backup");
                assert_eq!(report.summary.documents(), 3, "{how}");
                let vault = open_vault(&dirs.paths);
                let n = vault
                    .list(coffer::app::documents::ListFilter::default())
                    .unwrap()
                    .documents
                    .len();
                assert_eq!(n, 3, "{how}: the restored database is the backup reported");
            }
            Err(BackupError::Changed) => {
                common::assert_file_unchanged(&dirs.database(), &database_before, "the live database");
                let names: Vec<_> = files_under(&dirs.paths.data_dir)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                assert!(
                    !names
                        .iter()
                        .any(|n| n.ends_with(".restoring") || n.ends_with(".pre-restore")),
                    "{how}: leftovers {names:?}"
                );
            }
            Err(e) => panic!("{how}: the restore must succeed or report the change, not: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Was MEDIUM: every authentication refusal was logged to stderr with the raw request
// path, i.e. ERP record keys (kept in the database only as keyed hashes) in clear. Now
// the line names the route pattern and the request id.
// ---------------------------------------------------------------------------------------
#[test]
fn a_refused_erp_read_logs_the_route_pattern_and_request_id_not_the_record_key() {
    use common::served::{WAIT, connect, get, prepared_coffer, serve, stop};
    let prepared = prepared_coffer(&["alice"]);
    let (dirs, ca, alice) = (
        prepared.dirs,
        prepared.ca_pem,
        prepared.members.into_iter().next().unwrap(),
    );
    let (server, addr) = serve(&dirs);
    let mut conn = connect(addr, &ca, &alice.identity);
    // A wrong signing secret: refused through the same log as expired tokens, skewed
    // clocks and bad signatures.
    let mut signer = alice.identity.signer().unwrap();
    signer.secret.push('x');
    conn.set_signer(Some(signer));
    let secret_key = "ACME-CONFIDENTIAL-CUSTOMER-4711";
    let res = get(&mut conn, &format!("/v1/erp/customers/{secret_key}"));
    assert_eq!(res.status, 401, "{}", String::from_utf8_lossy(&res.body));
    let request_id = res.header("x-request-id").expect("X-Request-Id").to_owned();
    // The request's one log line, written when its answer has been sent.
    let stderr = server.wait_stderr(&request_id, WAIT, "the refusal's log line");
    stop(server);
    assert!(
        !stderr.contains(secret_key),
        "the ERP record key is in the server's stderr: {stderr}"
    );
    let line = stderr.lines().find(|l| l.contains(&request_id)).unwrap_or_default();
    assert!(
        line.contains("signature-mismatch"),
        "the line names the problem: {line}"
    );
    assert!(
        line.contains("/v1/erp/{collection}/{key}"),
        "the line names the route pattern: {line}"
    );
    assert!(
        line.contains(&request_id),
        "the line names the request id {request_id}: {line}"
    );
}

// ---------------------------------------------------------------------------------------
// Was MEDIUM: enrolment (no client certificate) went through the anonymous throttle, so
// any certificate-less request from the same address just before suppressed its entry.
// Now successes are always recorded; only refusals are throttled.
// ---------------------------------------------------------------------------------------
#[test]
fn an_enrolment_right_after_an_anonymous_refusal_is_audited() {
    let server = start_server();
    let anna = server.add_member("anna");
    let code = server
        .vault()
        .create_enrolment(anna.id, None, 600)
        .unwrap()
        .code
        .expose()
        .to_owned();
    let csr = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "rogue phone");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    };
    let devices_before = server.vault().devices().unwrap().len();

    // One request without a certificate...
    let junk = server
        .connect_anonymous()
        .request("GET", "/v1/documents", &[], b"")
        .unwrap();
    assert_eq!(junk.status, 401);
    // ...then the enrolment, from the same address, well within the throttle's period.
    let body = serde_json::to_vec(&serde_json::json!({ "code": code, "csr": csr, "device_name": "rogue" })).unwrap();
    let res = server
        .connect_anonymous()
        .request("POST", "/v1/enroll", &[("content-type", "application/json")], &body)
        .unwrap();
    assert!(
        res.status == 200 || res.status == 201,
        "{} {}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(
        server.vault().devices().unwrap().len(),
        devices_before + 1,
        "a device was enrolled"
    );

    let entries = entries_when(server.vault(), |all| {
        all.iter().any(|e| e.action.starts_with("POST /v1/enroll"))
    });
    let enrolments: Vec<&AuditRecord> = entries
        .iter()
        .filter(|e| e.action.starts_with("POST /v1/enroll"))
        .collect();
    let anonymous = entries.iter().filter(|e| e.action == "GET /v1/documents").count();
    assert_eq!(anonymous, 1, "the anonymous refusal is recorded");
    assert_eq!(enrolments.len(), 1, "the enrolment that created a device is recorded");
    assert_eq!(
        (enrolments[0].status, enrolments[0].outcome.as_str()),
        (res.status, "ok"),
        "{:?}",
        enrolments[0]
    );
}
