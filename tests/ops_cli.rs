//! `coffer key rotate`, `verify` and `backup` through a running `coffer serve` (its admin
//! socket, no passphrase given), `restore` refused while it runs, and the backup taken
//! that way restored and served again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use coffer::app::documents::ListFilter;
use common::binary::text;
use common::served::{
    CLI, backup_document_count, connect, expect_failure, fresh_dirs_with_key_file, get, log_in, prepared_coffer, run,
    serve, stop, via_socket,
};
use common::server::{content_path, id_of, post};
use common::{open_vault, pattern, read_all};

#[test]
fn rotate_verify_and_backup_through_the_running_server_and_the_backup_restores() {
    let prepared = prepared_coffer(&["alice"]);
    let (dirs, ca) = (prepared.dirs, prepared.ca_pem);
    let alice = prepared.members.into_iter().next().unwrap();
    let (server, addr) = serve(&dirs);

    let mut conn = connect(addr, &ca, &alice.identity);
    let docs: Vec<(String, Vec<u8>)> = (0..3u64)
        .map(|i| {
            let data = pattern(300 + i, 80_000 + 70_000 * i as usize);
            let res = post(&mut conn, &format!("before-{i}.pdf"), &[], &data);
            assert_eq!(res.status, 201, "{}", text(&res.body));
            (id_of(&res.json()), data)
        })
        .collect();

    let stdout = via_socket(&dirs, &["key", "rotate"]);
    assert!(stdout.contains("master key version 2 is current"), "{stdout}");
    // The server goes on serving the documents whose keys were rewrapped under it.
    for (id, data) in &docs {
        let res = get(&mut conn, &content_path(id));
        assert_eq!(res.status, 200, "{}", text(&res.body));
        assert!(res.body == *data, "{id} differs after the rotation");
    }

    for args in [&["verify"][..], &["verify", "--deep"][..]] {
        let stdout = via_socket(&dirs, args);
        assert!(stdout.contains("no damage found"), "coffer {args:?}: {stdout}");
    }

    let file = dirs.root.path().join("through-socket.coffer-backup");
    let file_arg = file.to_str().unwrap();
    let stdout = via_socket(&dirs, &["backup", "--out", file_arg]);
    assert_eq!(backup_document_count(&stdout, &file), docs.len() as u64, "{stdout}");

    // A restore while the server runs is refused, and says to stop it.
    let (_, stderr) = expect_failure(run(&dirs, &["restore", file_arg]), "restore while serving");
    assert!(stderr.contains("stop"), "{stderr}");
    assert!(
        !dirs.paths.data_dir.join("coffer.redb.pre-restore").exists(),
        "a refused restore left coffer.redb.pre-restore"
    );

    // Uploaded after the backup: not in it.
    let res = post(&mut conn, "after.pdf", &[], &pattern(399, 50_000));
    assert_eq!(res.status, 201, "{}", text(&res.body));
    let after = id_of(&res.json());
    drop(conn);
    stop(server);

    // On a new machine with the key file: the three documents, under master key version 2.
    let elsewhere = fresh_dirs_with_key_file(&dirs);
    let stdout = CLI.ok(&elsewhere, &["restore", file_arg]);
    assert!(stdout.starts_with("restored"), "{stdout}");
    let vault = open_vault(&elsewhere.paths);
    let listing = vault.list(ListFilter::default()).unwrap();
    assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
    let mut restored: Vec<String> = listing.documents.iter().map(|d| d.id.to_string()).collect();
    restored.sort();
    let mut want: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(restored, want);
    for d in &listing.documents {
        assert_eq!(d.key_version, 2, "{} is not wrapped under the rotated key", d.id);
    }
    for (id, data) in &docs {
        let got = read_all(&vault, id.parse().unwrap()).unwrap();
        assert!(got == *data, "{id} differs after the restore");
    }
    drop(vault);

    // In place, then served again: the documents come back over HTTP.
    let stdout = CLI.ok(&dirs, &["restore", file_arg]);
    assert!(stdout.starts_with("restored"), "{stdout}");
    assert!(stdout.contains("previous database kept as"), "{stdout}");
    let (server, addr) = serve(&dirs);
    let mut conn = connect(addr, &ca, &alice.identity);
    log_in(&mut conn, &alice);
    for (id, data) in &docs {
        let res = get(&mut conn, &content_path(id));
        assert_eq!(res.status, 200, "{id}: {}", text(&res.body));
        assert!(res.body == *data, "{id} differs when served from the restored database");
    }
    let res = get(&mut conn, &content_path(&after));
    assert_eq!(res.status, 404, "{}", text(&res.body));
    let stdout = via_socket(&dirs, &["verify", "--deep"]);
    assert!(stdout.contains("no damage found"), "{stdout}");

    // The audit log came back with the database: the uploads before the backup (not the
    // one after it), the restore on record, the chain intact.
    let stdout = via_socket(&dirs, &["audit", "verify"]);
    assert!(stdout.contains("audit log intact"), "{stdout}");
    let log: Vec<serde_json::Value> = via_socket(&dirs, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let uploaded: Vec<&str> = log
        .iter()
        .filter(|e| e["action"] == "POST /v1/documents" && e["outcome"] == "ok")
        .filter_map(|e| e["target"].as_str())
        .collect();
    for (id, _) in &docs {
        assert!(uploaded.contains(&id.as_str()), "no upload of {id} in the restored log");
    }
    assert!(
        !uploaded.contains(&after.as_str()),
        "the upload after the backup is in the restored log"
    );
    assert!(
        log.iter()
            .any(|e| e["action"].as_str().is_some_and(|a| a.starts_with("admin restore"))),
        "the restore is not on record"
    );
    drop(conn);
    stop(server);
}

#[test]
fn restore_works_after_the_server_was_killed() {
    let prepared = prepared_coffer(&["alice"]);
    let (dirs, ca) = (prepared.dirs, prepared.ca_pem);
    let alice = prepared.members.into_iter().next().unwrap();
    let (server, addr) = serve(&dirs);
    let mut conn = connect(addr, &ca, &alice.identity);
    let data = pattern(77, 90_000);
    let res = post(&mut conn, "kept.pdf", &[], &data);
    assert_eq!(res.status, 201, "{}", text(&res.body));
    let id = id_of(&res.json());
    let file = dirs.root.path().join("before-crash.coffer-backup");
    let file_arg = file.to_str().unwrap();
    via_socket(&dirs, &["backup", "--out", file_arg]);
    drop(conn);

    // SIGKILL leaves the admin socket file behind, with nobody listening.
    let mut server = server;
    server.kill();
    let stdout = CLI.ok(&dirs, &["restore", file_arg]);
    assert!(stdout.starts_with("restored"), "{stdout}");
    let vault = open_vault(&dirs.paths);
    assert!(
        read_all(&vault, id.parse().unwrap()).unwrap() == data,
        "{id} differs after the restore"
    );
}
