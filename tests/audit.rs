//! The audit log end to end: requests to the real `coffer serve` from real mTLS clients
//! (accepted and refused) appear in `coffer audit export` with the right action, outcome,
//! device and user; `--user` and `--since` filter; an entry edited or removed in the
//! database file is named by `coffer audit verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::binary::text;
use common::client::{ClientSetup, Connection, Signer};
use common::served::{
    CLI, Member, connect, entries_named, expect_failure, get, prepared_coffer, run, serve, stop, via_socket,
};
use common::server::{content_path, id_of, post};
use common::{TestDirs, pattern, raw_write};
use redb::TableDefinition;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The audit table as `src/store/tables.rs` defines it.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Every field an exported entry has.
const FIELDS: [&str; 10] = [
    "seq",
    "time",
    "action",
    "status",
    "outcome",
    "device",
    "user",
    "ip",
    "target",
    "request_id",
];

/// `coffer audit export ARGS` through the running server: one JSON object per line.
fn export(dirs: &TestDirs, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "export"];
    all.extend_from_slice(args);
    let stdout = via_socket(dirs, &all);
    let entries: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    let mut last = 0;
    for e in &entries {
        for f in FIELDS {
            assert!(e.get(f).is_some(), "entry without {f}: {e}");
        }
        let seq = e["seq"].as_u64().unwrap_or_else(|| panic!("seq: {e}"));
        assert!(seq > last, "entries out of order: {seq} after {last}");
        last = seq;
        time_of(e);
    }
    entries
}

fn time_of(entry: &Value) -> OffsetDateTime {
    let s = entry["time"].as_str().unwrap_or_else(|| panic!("time: {entry}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("time {s:?} is not RFC 3339: {e}"))
}

fn seq_of(entry: &Value) -> u64 {
    entry["seq"].as_u64().unwrap()
}

/// A described test on an exported entry.
type Wanted<'a> = (&'a str, &'a dyn Fn(&Value) -> bool);

/// Exports (with `args`) until an entry matching each of `wanted` is there (entries are
/// written in batches, shortly after the request); returns the export and, for each of
/// `wanted`, the first matching entry.
fn export_until(dirs: &TestDirs, args: &[&str], wanted: &[Wanted<'_>]) -> (Vec<Value>, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entries = export(dirs, args);
        let found: Vec<Option<&Value>> = wanted
            .iter()
            .map(|(_, want)| entries.iter().find(|e| want(e)))
            .collect();
        if found.iter().all(Option::is_some) {
            let found = found.into_iter().map(|e| e.unwrap().clone()).collect();
            return (entries, found);
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> = wanted
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|((what, _), _)| *what)
                .collect();
            let shown: Vec<String> = entries.iter().map(Value::to_string).collect();
            panic!(
                "audit export {args:?}: no entry for {missing:?} in:\n{}",
                shown.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether an entry's `user` names `member` (by user id or login name).
fn is_user(entry: &Value, member: &Member) -> bool {
    let id = member.identity.device.as_ref().unwrap().owner.to_string();
    entry["user"] == id.as_str() || entry["user"] == member.name.as_str()
}

/// The device id of a member, as the audit log names it.
fn device_of(member: &Member) -> String {
    member.identity.device_id().to_string()
}

/// A connection presenting `member`'s certificate, signing with a wrong secret.
fn badly_signed(addr: SocketAddr, ca_pem: &str, member: &Member) -> Connection {
    let mut conn = connect(addr, ca_pem, &member.identity);
    let signer = member.identity.signer().unwrap();
    conn.set_signer(Some(Signer {
        secret: format!("{}x", signer.secret),
        ..signer
    }));
    conn
}

/// Panics unless `audit verify` exits 1 naming exactly entry `seq`.
#[track_caller]
fn assert_names_entry(dirs: &TestDirs, seq: u64, what: &str) {
    let (stdout, stderr) = expect_failure(run(dirs, &["audit", "verify"]), what);
    let all = format!("{stdout}\n{stderr}");
    assert!(!all.contains("audit log intact"), "{what}: {all}");
    let named = entries_named(&all);
    assert!(named.contains(&seq), "{what}: entry {seq} is not named: {all}");
    assert!(
        named.iter().all(|n| *n == seq),
        "{what}: entries other than {seq} named: {all}"
    );
}

#[track_caller]
fn assert_intact(dirs: &TestDirs) {
    let stdout = CLI.ok(dirs, &["audit", "verify"]);
    assert!(stdout.contains("audit log intact"), "{stdout}");
}

/// The stored bytes of audit entry `seq`.
fn raw_entry(dirs: &TestDirs, seq: u64) -> Vec<u8> {
    let db = common::raw_db(&dirs.paths);
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(AUDIT).unwrap();
    let value = table
        .get(seq)
        .unwrap()
        .unwrap_or_else(|| panic!("no audit entry {seq}"));
    value.value().to_vec()
}

fn put_raw_entry(dirs: &TestDirs, seq: u64, bytes: &[u8]) {
    raw_write(&dirs.paths, |txn| {
        txn.open_table(AUDIT).unwrap().insert(seq, bytes).unwrap();
    });
}

#[test]
fn requests_and_rejections_are_exported_filtered_and_tampering_is_named() {
    let prepared = prepared_coffer(&["alice", "bob"]);
    let (dirs, ca, alice, bob) = {
        let mut members = prepared.members.into_iter();
        (
            prepared.dirs,
            prepared.ca_pem,
            members.next().unwrap(),
            members.next().unwrap(),
        )
    };
    let (server, addr) = serve(&dirs);

    // Alice uploads and downloads; a request with her certificate but a wrong signature,
    // and one without a client certificate, are refused; Bob lists.
    let mut conn = connect(addr, &ca, &alice.identity);
    let content = pattern(42, 100_000);
    let res = post(&mut conn, "audited.pdf", &[], &content);
    assert_eq!(res.status, 201, "{}", text(&res.body));
    let id = id_of(&res.json());
    let res = get(&mut conn, &content_path(&id));
    assert_eq!(res.status, 200, "{}", text(&res.body));
    assert!(res.body == content, "downloaded content differs");

    let bad = get(&mut badly_signed(addr, &ca, &alice), "/v1/documents");
    assert_eq!(bad.status, 401, "{}", text(&bad.body));
    assert_eq!(bad.problem(), "signature-mismatch");

    let anonymous = ClientSetup::new(&ca, None).build();
    let mut anonymous = Connection::open(anonymous, addr, "localhost").unwrap();
    let anon = get(&mut anonymous, "/v1/documents");
    assert_eq!(anon.status, 401, "{}", text(&anon.body));
    assert_eq!(anon.problem(), "client-certificate-required");

    let mut bob_conn = connect(addr, &ca, &bob.identity);
    let res = get(&mut bob_conn, "/v1/documents");
    assert_eq!(res.status, 200, "{}", text(&res.body));

    let alice_device = device_of(&alice);
    let bob_device = device_of(&bob);
    let download_action = "GET /v1/documents/{id}";
    let (before, found) = export_until(
        &dirs,
        &[],
        &[
            ("the upload", &|e| {
                e["action"] == "POST /v1/documents" && e["device"] == alice_device.as_str()
            }),
            ("the download", &|e| {
                e["action"] == download_action && e["device"] == alice_device.as_str()
            }),
            ("the bad signature", &|e| e["outcome"] == "signature-mismatch"),
            ("the missing certificate", &|e| {
                e["outcome"] == "client-certificate-required"
            }),
            ("Bob's listing", &|e| {
                e["action"] == "GET /v1/documents" && e["device"] == bob_device.as_str()
            }),
        ],
    );
    let [upload, download, bad_sig, no_cert, listing] = <[Value; 5]>::try_from(found).unwrap();

    for (entry, status, target) in [(&upload, 201, Some(&id)), (&download, 200, Some(&id))] {
        assert_eq!(entry["status"], status, "{entry}");
        assert_eq!(entry["outcome"], "ok", "{entry}");
        assert!(is_user(entry, &alice), "not alice's: {entry}");
        assert_eq!(entry["ip"], "127.0.0.1", "{entry}");
        assert_eq!(entry["target"].as_str(), target.map(String::as_str), "{entry}");
        assert!(entry["request_id"].as_str().is_some_and(|r| !r.is_empty()), "{entry}");
    }
    assert_eq!(bad_sig["action"], "GET /v1/documents", "{bad_sig}");
    assert_eq!(bad_sig["status"], 401, "{bad_sig}");
    assert_eq!(bad_sig["device"], alice_device.as_str(), "{bad_sig}");
    assert_eq!(bad_sig["ip"], "127.0.0.1", "{bad_sig}");
    assert_eq!(no_cert["action"], "GET /v1/documents", "{no_cert}");
    assert_eq!(no_cert["status"], 401, "{no_cert}");
    assert!(
        no_cert["device"].is_null() || no_cert["device"] == "",
        "a request without a certificate names a device: {no_cert}"
    );
    assert!(
        no_cert["user"].is_null() || no_cert["user"] == "",
        "a request without a certificate names a user: {no_cert}"
    );
    assert_eq!(listing["outcome"], "ok", "{listing}");
    assert!(is_user(&listing, &bob), "not bob's: {listing}");

    // --user
    let alices = export(&dirs, &["--user", "alice"]);
    assert!(alices.iter().all(|e| is_user(e, &alice)), "{alices:?}");
    for e in [&upload, &download] {
        assert!(alices.iter().any(|a| seq_of(a) == seq_of(e)), "--user alice lacks {e}");
    }
    let bobs = export(&dirs, &["--user", "bob"]);
    assert!(bobs.iter().all(|e| is_user(e, &bob)), "{bobs:?}");
    assert!(
        bobs.iter().any(|b| seq_of(b) == seq_of(&listing)),
        "--user bob lacks {listing}"
    );

    // --since: every entry exported so far is older than `since`; a download after it is
    // newer. The log keeps milliseconds, so `since` is a whole millisecond, and the
    // requests on either side stay clear of it.
    std::thread::sleep(Duration::from_millis(20));
    let now = OffsetDateTime::now_utc();
    let since = now.replace_millisecond(now.millisecond()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let res = get(&mut conn, &content_path(&id));
    assert_eq!(res.status, 200, "{}", text(&res.body));
    let since_arg = since.format(&Rfc3339).unwrap();
    let last_before = before.iter().map(seq_of).max().unwrap();
    let (recent, _) = export_until(
        &dirs,
        &["--since", &since_arg],
        &[("the second download", &|e| {
            e["action"] == download_action && seq_of(e) > last_before
        })],
    );
    for e in &recent {
        assert!(time_of(e) >= since, "--since {since_arg} exported an older entry: {e}");
        assert!(seq_of(e) > last_before, "--since {since_arg} exported {e}");
    }

    let stdout = via_socket(&dirs, &["audit", "verify"]);
    assert!(stdout.contains("audit log intact"), "{stdout}");
    let through_socket = export(&dirs, &[]);
    stop(server);
    assert_intact(&dirs);

    // With the server stopped the database is read directly: the same entries, the same
    // fields.
    let direct: Vec<Value> = CLI
        .ok(&dirs, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in &through_socket {
        assert!(
            direct.iter().any(|d| d == e),
            "exported through the socket but not (the same) directly: {e}"
        );
    }

    // One byte of the download's action text changed (`GET` → `HET`): still decodes,
    // no longer chains.
    let n = seq_of(&download);
    let original = raw_entry(&dirs, n);
    let at = original
        .windows(4)
        .position(|w| w == b"GET ")
        .expect("the action text in the stored entry");
    let mut edited = original.clone();
    edited[at] = b'H';
    put_raw_entry(&dirs, n, &edited);
    assert_names_entry(&dirs, n, "audit verify after editing an action");
    put_raw_entry(&dirs, n, &original);
    assert_intact(&dirs);

    // A byte flipped in the middle of the upload's stored entry.
    let n = seq_of(&upload);
    let original = raw_entry(&dirs, n);
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    put_raw_entry(&dirs, n, &flipped);
    assert_names_entry(&dirs, n, "audit verify after flipping a byte");
    put_raw_entry(&dirs, n, &original);
    assert_intact(&dirs);

    // The bad-signature entry removed from the middle of the log.
    let n = seq_of(&bad_sig);
    raw_write(&dirs.paths, |txn| {
        assert!(txn.open_table(AUDIT).unwrap().remove(n).unwrap().is_some());
    });
    assert_names_entry(&dirs, n, "audit verify after removing an entry");
}

#[test]
fn admin_actions_are_audited_as_admin() {
    let prepared = prepared_coffer(&["alice"]);
    let dirs = prepared.dirs;
    let (server, _) = serve(&dirs);
    let password = common::write_file(dirs.root.path(), "carol.password", "a long enough password\n");
    via_socket(
        &dirs,
        &[
            "user",
            "add",
            "carol",
            "--role",
            "member",
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    let (_, found) = export_until(&dirs, &[], &[("admin user add", &|e| e["action"] == "admin user add")]);
    assert_eq!(found[0]["outcome"], "ok", "{}", found[0]);
    stop(server);
    assert_intact(&dirs);
}
