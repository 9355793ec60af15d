//! Hostile review of issue 7 (backup/restore, verify, audit log, admin socket, online
//! rotation): proofs of concept. Each test asserts the *current* (flawed) behaviour, so a
//! passing test documents a finding; the fix should make it fail (then invert it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use coffer::app::audit::{AuditEvent, AuditFilter};
use coffer::model::Timestamp;
use coffer::store::{StoreOptions, StoredAudit};
use common::server::{start_server, upload};
use common::{PASSPHRASE, open_vault, passphrase, raw_write, store_document, temp_vault};
use redb::{ReadableTable, TableDefinition};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const ERP_RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("erp_records");

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

fn all_entries(vault: &coffer::app::Vault) -> Vec<coffer::app::audit::AuditRecord> {
    let mut out = Vec::new();
    vault
        .audit_export(&AuditFilter::default(), &mut |r| out.push(r))
        .unwrap();
    out
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

// ---------------------------------------------------------------------------------------
// HIGH: pruning trusts the clear `time` field and never checks the chain, so an attacker
// with write access to the database file (no passphrase) can set old times on any prefix
// of the log, including recent entries; the next prune (at `serve` start, or hourly)
// deletes them and writes a freshly tagged anchor, and `audit verify` reports the log
// intact.
// ---------------------------------------------------------------------------------------
#[test]
fn prune_launders_a_tampered_prefix_and_audit_verify_passes() {
    let (dirs, vault) = temp_vault();
    let events: Vec<AuditEvent> = (0..10)
        .map(|i| event("DELETE /v1/documents/{id}", &format!("doc {i}")))
        .collect();
    vault.audit_append(events, redb::Durability::Immediate).unwrap();
    let before = vault.audit_verify(&mut |_| {}).unwrap();
    assert!(before.broken.is_none());
    assert_eq!(before.entries, 10);
    drop(vault);

    // The attacker (file write access only) back-dates entries 1..=8 — all of them made
    // seconds ago — to 1970. The MACs of these entries no longer verify.
    raw_write(&dirs.paths, |txn| {
        let mut t = txn.open_table(AUDIT).unwrap();
        for seq in 1..=8u64 {
            let bytes = t.get(seq).unwrap().unwrap().value().to_vec();
            let mut e = StoredAudit::decode(&bytes).unwrap();
            e.time = 0;
            t.insert(seq, e.encode().unwrap().as_slice()).unwrap();
        }
    });
    let vault = open_vault(&dirs.paths);
    let tampered = vault.audit_verify(&mut |_| {}).unwrap();
    assert_eq!(
        tampered.broken.as_ref().map(|b| b.0),
        Some(1),
        "tampering is visible before the prune"
    );

    // What `serve` runs at start (retention 400 days).
    let cutoff = Timestamp(Timestamp::now().0 - 400 * 86_400_000);
    let removed = vault.audit_prune(cutoff).unwrap();
    assert_eq!(removed, 8, "the back-dated (recent) entries were pruned");

    let after = vault.audit_verify(&mut |_| {}).unwrap();
    assert!(
        after.broken.is_none(),
        "FINDING: after the prune the tampered log verifies as intact: {after:?}"
    );
    assert_eq!(after.entries, 2);
    // The anchor claims entries older than 400 days were pruned, yet it sits at seq 8
    // whose real time was seconds ago: nothing flags the inconsistency.
    assert_eq!(after.anchor.map(|a| a.0), Some(8));
}

// ---------------------------------------------------------------------------------------
// HIGH: restore only checks that the key file holds the header's master key version (and
// the check values of the versions the key file holds). A backup taken while a rotation
// was unfinished (interrupted `key rotate`, or stragglers of an online rotation) holds
// objects wrapped under an older version; once a later rotation with the server stopped
// retires that version, restoring the backup with the current key file "succeeds" and
// yields a database whose objects cannot be opened.
// ---------------------------------------------------------------------------------------
#[test]
fn restore_succeeds_although_the_key_file_lacks_versions_the_backup_needs() {
    let (dirs, vault) = temp_vault();
    let content = common::pattern(7, 200_000);
    let doc = store_document(&vault, "contract.pdf", &content);
    common::add_user(&vault, "alice");

    // A rotation starts (v2 becomes current in the key file) and is interrupted before it
    // rewraps anything (crash, Ctrl-C, power loss).
    let rotation = vault.begin_rotation().unwrap();
    assert_eq!(rotation.target(), 2);
    drop(rotation);

    // The nightly backup runs: header version 2, every object still wrapped under v1.
    let backup = dirs.root.path().join("nightly.cbk");
    let summary = vault.backup(&backup, false, &mut |_, _| {}).unwrap();
    assert_eq!(summary.key_version, 2);
    drop(vault);

    // The admin finishes the rotation with the server stopped: v1 is retired.
    let mut vault = open_vault(&dirs.paths);
    let report = vault.rotate(|_| {}).unwrap();
    assert_eq!(report.retired, vec![1], "{report:?}");
    drop(vault);

    // Later: disaster, restore last night's backup with the current key file.
    let restored = coffer::app::backup::restore(
        &dirs.paths,
        &passphrase(),
        &backup,
        false,
        StoreOptions::default(),
        &mut |_, _, _| {},
    );
    assert!(
        restored.is_ok(),
        "restore refused (the finding would be fixed): {:?}",
        restored.err().map(|e| e.to_string())
    );

    // FINDING: the "verified" restore produced a database whose objects are unreadable.
    let vault = open_vault(&dirs.paths);
    let read = common::read_all(&vault, doc.id);
    assert!(read.is_err(), "the document should be unreadable after this restore");
    let report = vault.verify(false, &mut |_, _| {}).unwrap();
    assert!(
        report.damaged.len() >= 2,
        "verify after the restore lists the objects wrapped under the retired version: {:?}",
        report.damaged
    );
    eprintln!(
        "restore reported success; verify then finds {} damaged objects",
        report.damaged.len()
    );
}

// ---------------------------------------------------------------------------------------
// MEDIUM: a device the database knows — even a revoked one — is not throttled by the
// audit gate (only requests without an identified device are), and the sealed `target`
// takes the raw `{id}` path segment with no length cap. One holder of a (revoked) device
// certificate writes ~60 KB per request into the log (disk exhaustion; up to 65,536 such
// events queued in memory ≈ 4 GB), and an `audit export` page through the admin socket
// then exceeds MAX_FRAME, so the admin cannot export the log through a running server.
// ---------------------------------------------------------------------------------------
#[test]
fn a_revoked_device_floods_the_audit_log_and_breaks_export_through_the_socket() {
    let server = start_server();
    let alice = server.add_member("alice");
    let device = server.issue_device(alice.id);
    server.vault().revoke_device(device.device_id()).unwrap();
    let big_id = "A".repeat(60_000);
    let path = format!("/v1/documents/{big_id}");
    let n = 300;
    let mut refused = 0;
    let started = Instant::now();
    while refused < n {
        let mut conn = server.connect(&device);
        // The server closes the connection after refusing a revoked device.
        match conn.request("GET", &path, &[], b"") {
            Ok(res) => {
                // 401 (revoked), then 429 once the failure budget is spent: refused
                // either way, and recorded either way.
                assert!(
                    res.status == 401 || res.status == 429,
                    "{}",
                    String::from_utf8_lossy(&res.body)
                );
                refused += 1;
            }
            Err(e) => panic!("request failed: {e}"),
        }
    }
    eprintln!("{n} refused requests in {:?}", started.elapsed());
    // Wait for the writer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (count, bytes) = loop {
        let entries = all_entries(server.vault());
        let mine: Vec<_> = entries
            .iter()
            .filter(|e| e.device.as_deref() == Some(&device.device_id().to_string()))
            .collect();
        let bytes: usize = mine.iter().map(|e| e.target.as_ref().map_or(0, String::len)).sum();
        if mine.len() >= n || Instant::now() > deadline {
            break (mine.len(), bytes);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        count, n,
        "every refused request of the revoked device was recorded (no throttle)"
    );
    assert!(bytes >= n * 60_000, "targets are stored uncapped: {bytes} bytes");
    eprintln!("{count} audit entries, {bytes} bytes of targets from one revoked device");

    // `coffer audit export` through the running server: the first page's answer frame.
    let answer = admin_frame(
        server.vault(),
        r#"{"protocol":2,"body":{"AuditExport":{"since":null,"user":null,"from_seq":0,"limit":0}}}"#,
    );
    eprintln!(
        "audit export page frame: {} bytes (MAX_FRAME {})",
        answer.len(),
        coffer::admin::socket::MAX_FRAME
    );
    assert!(
        answer.len() > coffer::admin::socket::MAX_FRAME,
        "FINDING: the page exceeds MAX_FRAME, so the socket drops the connection instead of answering"
    );
}

// ---------------------------------------------------------------------------------------
// MEDIUM: the audit entry is written after the inner service completes; if the client
// breaks the TLS stream while the handler awaits its blocking work, actix drops the
// request future. The work itself (in `web::block`) still completes, so a state change
// happens without any audit entry.
// ---------------------------------------------------------------------------------------
#[test]
fn a_delete_whose_connection_is_broken_mid_request_leaves_no_audit_entry() {
    use common::client::{raw_tls, signed_head, unique_nonce};
    let server = start_server();
    let alice = server.add_member("alice");
    let device = server.issue_device(alice.id);
    let signer = device.signer().unwrap();
    let mut unaudited = 0;
    let mut deleted = 0;
    let tries = 20;
    for i in 0..tries {
        let doc = upload(
            &mut server.connect(&device),
            &format!("doc{i}.pdf"),
            &[],
            &common::pattern(i, 1000),
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
        // Let the handler start, then break the TLS stream with a bogus record.
        std::thread::sleep(Duration::from_micros(500 + 300 * i));
        let _ = raw.sock.write_all(
            &[0x17, 0x03, 0x03, 0x00, 0x20]
                .iter()
                .copied()
                .chain([0u8; 32])
                .collect::<Vec<u8>>(),
        );
        drop(raw);
        // Did the delete happen?
        let deadline = Instant::now() + Duration::from_secs(5);
        let gone = loop {
            let parsed: coffer::model::DocumentId = id.parse().unwrap();
            if server.vault().document(parsed).is_err() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !gone {
            eprintln!("try {i}: not deleted (the request was dropped before the handler ran)");
            continue;
        }
        deleted += 1;
        std::thread::sleep(Duration::from_millis(300));
        let audited = all_entries(server.vault())
            .iter()
            .any(|e| e.action.starts_with("DELETE") && e.target.as_deref() == Some(id.as_str()));
        if !audited {
            unaudited += 1;
        }
    }
    eprintln!("{deleted}/{tries} deletes happened; {unaudited} of them have no audit entry");
    assert!(unaudited > 0, "every delete was audited (no finding at these timings)");
}

// ---------------------------------------------------------------------------------------
// LOW: `verify` collects every damaged object into one report; through the socket the
// report is one frame, so with enough damage the answer exceeds MAX_FRAME and the admin
// gets "closed the admin connection" instead of the list.
// ---------------------------------------------------------------------------------------
#[test]
fn a_verify_report_with_many_damaged_objects_exceeds_the_admin_frame() {
    let (dirs, vault) = temp_vault();
    drop(vault);
    raw_write(&dirs.paths, |txn| {
        let mut t = txn.open_table(ERP_RECORDS).unwrap();
        for i in 0..200_000u128 {
            t.insert(i + 1, &b"x"[..]).unwrap();
        }
    });
    let vault = open_vault(&dirs.paths);
    let answer = admin_frame(&vault, r#"{"protocol":2,"body":{"Verify":{"deep":false}}}"#);
    eprintln!("verify answer frame: {} bytes", answer.len());
    assert!(answer.len() > coffer::admin::socket::MAX_FRAME);
}

// ---------------------------------------------------------------------------------------
// LOW: an export request whose first page starts at `from_seq` 1 is treated as a
// follow-up page and not recorded: `audit export` can read the whole log unaudited.
// ---------------------------------------------------------------------------------------
#[test]
fn an_export_starting_at_seq_one_is_not_audited() {
    let (_dirs, vault) = temp_vault();
    vault
        .audit_append(vec![event("GET /v1/documents", "x")], redb::Durability::Immediate)
        .unwrap();
    let before = all_entries(&vault).len();
    let _ = admin_frame(
        &vault,
        r#"{"protocol":2,"body":{"AuditExport":{"since":null,"user":null,"from_seq":1,"limit":0}}}"#,
    );
    assert_eq!(
        all_entries(&vault).len(),
        before,
        "no `admin audit export` entry was written"
    );
    let _ = admin_frame(
        &vault,
        r#"{"protocol":2,"body":{"AuditExport":{"since":null,"user":null,"from_seq":0,"limit":0}}}"#,
    );
    assert_eq!(all_entries(&vault).len(), before + 1);
}

// ---------------------------------------------------------------------------------------
// LOW (careless admin): `backup --out FILE --force` replaces any file, including the key
// file or the live database; there is no check that FILE is not one of coffer's own.
// ---------------------------------------------------------------------------------------
#[test]
fn backup_with_force_replaces_the_key_file() {
    let (dirs, vault) = temp_vault();
    let key_file = dirs.key_file();
    vault.backup(&key_file, true, &mut |_, _| {}).unwrap();
    drop(vault);
    let head = std::fs::read(&key_file).unwrap();
    assert_eq!(&head[..8], b"COFFERBK", "the key file is now a backup");
    let opened = coffer::app::Vault::open(
        &dirs.paths,
        &coffer::secret::Passphrase::new(PASSPHRASE.to_owned()),
        StoreOptions::default(),
    );
    assert!(
        opened.is_err(),
        "the coffer no longer opens: every object is lost without a key file copy"
    );
}

// ---------------------------------------------------------------------------------------
// LOW (careless admin): `restore --data-dir DIR` chmods an existing DIR to 0700 (it is
// not created, just narrowed), e.g. a shared parent directory given by mistake.
// ---------------------------------------------------------------------------------------
#[test]
fn restore_narrows_an_existing_directory_given_as_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let (dirs, vault) = temp_vault();
    let backup = dirs.root.path().join("b.cbk");
    vault.backup(&backup, false, &mut |_, _| {}).unwrap();
    drop(vault);
    let shared = dirs.root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let paths = coffer::app::Paths {
        data_dir: shared.clone(),
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
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the existing directory was narrowed");
}

// ---------------------------------------------------------------------------------------
// LOW/MEDIUM: restore reads the file twice by path (phase 1 verifies, phase 2 builds) and
// reports phase 1's summary. Whoever can replace the file between the phases (a shared
// backup mount, an S3 sync) with another authentic backup — e.g. an older one — gets it
// restored while the admin is told the verified (newer) one was.
// ---------------------------------------------------------------------------------------
#[test]
fn restore_can_be_switched_to_another_backup_between_its_two_passes() {
    let (dirs, vault) = temp_vault();
    store_document(&vault, "old.pdf", &common::pattern(1, 1000));
    let old = dirs.root.path().join("old.cbk");
    vault.backup(&old, false, &mut |_, _| {}).unwrap();
    store_document(&vault, "new.pdf", &common::pattern(2, 1000));
    store_document(&vault, "newer.pdf", &common::pattern(3, 1000));
    let latest = dirs.root.path().join("latest.cbk");
    vault.backup(&latest, false, &mut |_, _| {}).unwrap();
    drop(vault);

    let mut swapped = false;
    let report = coffer::app::backup::restore(
        &dirs.paths,
        &passphrase(),
        &latest,
        false,
        StoreOptions::default(),
        &mut |phase, _, _| {
            // Phase 1 holds its own descriptor; the path is re-opened for phase 2.
            if phase == 1 && !swapped {
                std::fs::rename(&old, &latest).unwrap();
                swapped = true;
            }
        },
    )
    .unwrap();
    assert!(swapped);
    assert_eq!(report.summary.documents(), 3, "the report describes the newest backup");
    let vault = open_vault(&dirs.paths);
    let n = vault
        .list(coffer::app::documents::ListFilter::default())
        .unwrap()
        .documents
        .len();
    assert_eq!(n, 1, "FINDING: the older backup was restored");
}

// ---------------------------------------------------------------------------------------
// MEDIUM (pre-existing, outside the diff, but contradicts "What is stored in clear" and
// the audit log's sealing of targets): every authentication refusal of a known device is
// logged to stderr with the raw request path, i.e. ERP record keys (kept in the database
// only as keyed hashes) and document ids in clear, at full length (a 60 KB path gives a
// 60 KB log line per request).
// ---------------------------------------------------------------------------------------
#[test]
fn a_refused_erp_read_logs_the_record_key_in_clear_on_stderr() {
    use common::served::{connect, get, prepared_coffer, serve, stop};
    let prepared = prepared_coffer(&["alice"]);
    let (dirs, ca, alice) = (
        prepared.dirs,
        prepared.ca_pem,
        prepared.members.into_iter().next().unwrap(),
    );
    let (server, addr) = serve(&dirs);
    let mut conn = connect(addr, &ca, &alice.identity);
    // An expired or wrong session token, a clock-skewed phone, a bad signature: all go
    // through the same refusal log. Here: a wrong signing secret.
    let mut signer = alice.identity.signer().unwrap();
    signer.secret.push('x');
    conn.set_signer(Some(signer));
    let secret_key = "ACME-CONFIDENTIAL-CUSTOMER-4711";
    let res = get(&mut conn, &format!("/v1/erp/customers/{secret_key}"));
    assert_eq!(res.status, 401);
    std::thread::sleep(Duration::from_millis(300));
    let stderr = server.stderr_now();
    stop(server);
    assert!(
        stderr.contains(secret_key),
        "FINDING expected: the ERP key is in the server's stderr; stderr was: {stderr}"
    );
    let line = stderr.lines().find(|l| l.contains(secret_key)).unwrap();
    eprintln!("server log line: {line}");
}

/// Control for the prune finding (passes before and after the fix): authentic old entries
/// are pruned, twice in a row (the second prune starts at the first anchor), and the log
/// stays verifiable.
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
    assert_eq!(vault.audit_prune(cutoff).unwrap(), 3);
    vault
        .audit_append(vec![event("GET /v1/documents", "y")], redb::Durability::Immediate)
        .unwrap();
    assert_eq!(
        vault
            .audit_prune(Timestamp(Timestamp::now().0 - 400 * 86_400_000))
            .unwrap(),
        2
    );
    let check = vault.audit_verify(&mut |_| {}).unwrap();
    assert!(check.broken.is_none(), "{check:?}");
    assert_eq!((check.entries, check.anchor.map(|a| a.0)), (1, Some(5)));
}

// ---------------------------------------------------------------------------------------
// MEDIUM: enrolment (`POST /v1/enroll`, which creates a device) has no client certificate,
// so its entry goes through the anonymous throttle (one entry per address per 10 s).
// Any request without a certificate from the same address just before — the attacker's
// own, or another phone behind the carrier's NAT — suppresses the enrolment's entry: a
// device enrolled with a stolen code leaves no trace in the audit log.
// ---------------------------------------------------------------------------------------
#[test]
fn an_enrolment_right_after_an_anonymous_request_is_not_audited() {
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

    // One harmless request without a certificate...
    let junk = server
        .connect_anonymous()
        .request("GET", "/v1/documents", &[], b"")
        .unwrap();
    assert_eq!(junk.status, 401);
    // ...then the enrolment, from the same address, within 10 s.
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

    std::thread::sleep(Duration::from_millis(500));
    let entries = all_entries(server.vault());
    let enrolments = entries
        .iter()
        .filter(|e| e.action.starts_with("POST /v1/enroll"))
        .count();
    let anonymous = entries.iter().filter(|e| e.action == "GET /v1/documents").count();
    eprintln!("audit: {anonymous} entry for the junk request, {enrolments} for the enrolment");
    assert_eq!(anonymous, 1);
    assert_eq!(
        enrolments, 0,
        "FINDING: the enrolment that created a device is not in the audit log"
    );
}
