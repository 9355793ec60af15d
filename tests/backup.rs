//! `coffer backup` and `coffer restore` as the real binary: a backup taken while clients
//! keep uploading restores every acknowledged document whole (and nothing half there); a
//! damaged, truncated or foreign backup is refused before anything is touched; the
//! previous database is kept beside the restored one unless `--no-keep`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coffer::app::documents::ListFilter;
use coffer::app::{Paths, Vault};
use coffer::model::DocumentId;
use common::binary::text;
use common::served::{
    CLI, WAIT, backup_document_count, connect, expect_failure, expect_via_socket, fresh_dirs_with_key_file, hash_files,
    init_dirs_with_pki, prepared_coffer, run, serve, stop,
};
use common::server::{id_of, post};
use common::{TestDirs, open_vault, pattern, read_all, store_document};

/// Clients uploading at once.
const CLIENTS: usize = 8;
/// Uploads one client makes at most (it stops earlier once the backup is done).
const MAX_UPLOADS: usize = 40;
/// Document sizes, cycled: empty-ish, around chunk boundaries (65,472 B), a few hundred KiB.
const SIZES: [usize; 8] = [1, 1000, 65_471, 65_472, 65_473, 130_944, 200_000, 300_001];

/// What client `client` uploads as its `index`th document: name, seed, length.
fn upload_spec(client: usize, index: usize) -> (String, u64, usize) {
    (
        format!("c{client}-{index}.bin"),
        (client * 1000 + index) as u64,
        SIZES[(client + index) % SIZES.len()],
    )
}

/// Parses a name made by [`upload_spec`] back into its seed and length.
fn spec_of_name(name: &str) -> Option<(u64, usize)> {
    let rest = name.strip_prefix('c')?.strip_suffix(".bin")?;
    let (client, index) = rest.split_once('-')?;
    let (_, seed, len) = upload_spec(client.parse().ok()?, index.parse().ok()?);
    Some((seed, len))
}

/// An upload the server acknowledged with 201.
#[derive(Clone, Debug)]
struct Acked {
    id: String,
    name: String,
    seed: u64,
    len: usize,
}

/// Every document in `vault` (none may be damaged): id → (name, content).
fn all_documents(vault: &Vault) -> BTreeMap<String, (String, Vec<u8>)> {
    let listing = vault.list(ListFilter::default()).expect("list");
    assert!(listing.damaged.is_empty(), "damaged documents: {:?}", listing.damaged);
    listing
        .documents
        .iter()
        .map(|d| {
            let content = read_all(vault, d.id).unwrap_or_else(|e| panic!("read {}: {e:?}", d.id));
            (d.id.to_string(), (d.meta.name.clone(), content))
        })
        .collect()
}

#[test]
fn a_backup_taken_while_eight_clients_upload_restores_every_acknowledged_document_whole() {
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let prepared = prepared_coffer(&names);
    let dirs = prepared.dirs;
    let (server, addr) = serve(&dirs);

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<JoinHandle<()>> = prepared
        .members
        .into_iter()
        .enumerate()
        .map(|(client, member)| {
            let ca = prepared.ca_pem.clone();
            let acked = Arc::clone(&acked);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut conn = connect(addr, &ca, &member.identity);
                for index in 0..MAX_UPLOADS {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    let (name, seed, len) = upload_spec(client, index);
                    let res = post(&mut conn, &name, &[], &pattern(seed, len));
                    assert_eq!(res.status, 201, "upload of {name}: {}", text(&res.body));
                    let id = id_of(&res.json());
                    acked.lock().unwrap().push(Acked { id, name, seed, len });
                }
            })
        })
        .collect();

    // Every client has two uploads acknowledged (and goes on uploading): the documents
    // acknowledged so far must be in the backup that starts now.
    let deadline = Instant::now() + WAIT;
    loop {
        let per_client = {
            let acked = acked.lock().unwrap();
            (0..CLIENTS)
                .map(|c| acked.iter().filter(|a| a.name.starts_with(&format!("c{c}-"))).count())
                .min()
                .unwrap()
        };
        if per_client >= 2 {
            break;
        }
        if Instant::now() > deadline || clients.iter().any(JoinHandle::is_finished) {
            done.store(true, Ordering::SeqCst);
            for c in clients {
                c.join().expect("a client failed");
            }
            panic!("the clients did not get two uploads each acknowledged");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let before: Vec<Acked> = acked.lock().unwrap().clone();

    let file = dirs.root.path().join("online.coffer-backup");
    let file_arg = file.to_str().unwrap();
    let backup_args = ["backup", "--out", file_arg];
    let out = CLI.without_passphrase(&dirs).args(backup_args).output().unwrap();
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("a client failed");
    }
    let stdout = expect_via_socket(out, &backup_args);
    let all: Vec<Acked> = acked.lock().unwrap().clone();
    let in_backup = backup_document_count(&stdout, &file);
    assert!(
        in_backup >= before.len() as u64 && in_backup <= all.len() as u64,
        "the backup holds {in_backup} documents; {} were acknowledged before it started, {} in all",
        before.len(),
        all.len()
    );
    stop(server);

    // A new machine: the key file and the backup, nothing else.
    let restored = fresh_dirs_with_key_file(&dirs);
    let stdout = CLI.ok(&restored, &["restore", file_arg]);
    assert!(stdout.starts_with("restored"), "{stdout}");
    assert!(!stdout.contains("previous database kept"), "{stdout}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&restored.paths.data_dir)
            .expect("the restored data dir")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o022,
            0,
            "the data dir restore created is writable by group or others ({mode:o}): serve would refuse it"
        );
    }

    let vault = open_vault(&restored.paths);
    let documents = all_documents(&vault);
    drop(vault);
    assert_eq!(
        documents.len() as u64,
        in_backup,
        "documents in the restore vs. the count the backup printed"
    );
    for a in &before {
        let (name, content) = documents.get(&a.id).unwrap_or_else(|| {
            panic!(
                "{} ({}) was acknowledged before the backup but is not restored",
                a.id, a.name
            )
        });
        assert_eq!(name, &a.name, "name of {}", a.id);
        assert!(
            *content == pattern(a.seed, a.len),
            "{} ({}) differs after the restore: {} bytes, {} uploaded",
            a.id,
            a.name,
            content.len(),
            a.len
        );
    }
    // Whatever else the backup caught is complete and is what its client uploaded.
    let acked_ids: BTreeMap<&str, &Acked> = all.iter().map(|a| (a.id.as_str(), a)).collect();
    for (id, (name, content)) in &documents {
        let (seed, len) = spec_of_name(name).unwrap_or_else(|| panic!("{id}: unexpected name {name:?}"));
        assert!(
            *content == pattern(seed, len),
            "{id} ({name}) is restored but not as uploaded: {} bytes of {len}",
            content.len()
        );
        if let Some(a) = acked_ids.get(id.as_str()) {
            assert_eq!(&a.name, name, "{id}");
        }
    }
}

// ---- refusals, and what a restore keeps ----

/// A closed coffer (as `coffer init` makes it, cheap argon2id) holding three documents.
fn coffer_with_documents() -> (TestDirs, Vec<(DocumentId, Vec<u8>)>) {
    let dirs = init_dirs_with_pki();
    let vault = open_vault(&dirs.paths);
    let docs = (0..3u64)
        .map(|i| {
            let data = pattern(500 + i, 70_000 + 90_000 * i as usize);
            (store_document(&vault, &format!("doc{i}.pdf"), &data).id, data)
        })
        .collect();
    drop(vault);
    (dirs, docs)
}

/// `coffer backup --out DIR/NAME` with the database opened directly; returns the path.
fn backup_to(dirs: &TestDirs, name: &str) -> PathBuf {
    let file = dirs.root.path().join(name);
    let stdout = CLI.ok(dirs, &["backup", "--out", file.to_str().unwrap()]);
    let n = backup_document_count(&stdout, &file);
    assert!(n > 0, "{stdout}");
    file
}

/// A copy of `file` at `DIR/name` with its bytes changed by `change`.
fn altered_copy(file: &Path, name: &str, change: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(file).unwrap();
    change(&mut bytes);
    let out = file.with_file_name(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// The ids of the documents in the coffer at `paths`, sorted.
fn document_ids(paths: &Paths) -> Vec<DocumentId> {
    let vault = open_vault(paths);
    let listing = vault.list(ListFilter::default()).unwrap();
    assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
    let mut ids: Vec<DocumentId> = listing.documents.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    ids
}

/// SHA-256 of every file in the keys directory but the lock file (which names whoever
/// last held it).
fn hash_keys(dirs: &TestDirs) -> BTreeMap<PathBuf, String> {
    let mut hashes = hash_files(&dirs.paths.keys_dir);
    hashes.remove(&dirs.paths.keys_dir.join(coffer::app::LOCK_FILE));
    hashes
}

/// Panics unless `restore ARGS` is refused with a message containing `needle` and leaves
/// the data directory and the keys directory (but its lock file) byte-identical.
#[track_caller]
fn assert_refused_untouched(dirs: &TestDirs, args: &[&str], needle: &str) {
    let data_before = hash_files(&dirs.paths.data_dir);
    let keys_before = hash_keys(dirs);
    let (_, stderr) = expect_failure(run(dirs, args), &format!("coffer {args:?}"));
    assert!(
        stderr.contains(needle),
        "coffer {args:?}: stderr does not mention {needle:?}: {stderr}"
    );
    assert_eq!(
        hash_files(&dirs.paths.data_dir),
        data_before,
        "coffer {args:?} changed the data directory"
    );
    assert_eq!(
        hash_keys(dirs),
        keys_before,
        "coffer {args:?} changed the keys directory"
    );
}

#[test]
fn a_damaged_truncated_or_foreign_backup_is_refused_and_the_live_data_is_untouched() {
    let (dirs, docs) = coffer_with_documents();
    let good = backup_to(&dirs, "good.coffer-backup");
    // The live coffer moves on after the backup.
    let vault = open_vault(&dirs.paths);
    store_document(&vault, "later.pdf", &pattern(900, 150_000));
    drop(vault);
    let live_ids = document_ids(&dirs.paths);
    assert_eq!(live_ids.len(), docs.len() + 1);

    let len = std::fs::metadata(&good).unwrap().len() as usize;
    let flipped_middle = altered_copy(&good, "flipped-middle.bak", |b| b[len / 2] ^= 0x01);
    let flipped_end = altered_copy(&good, "flipped-end.bak", |b| b[len - 5] ^= 0x80);
    let half = altered_copy(&good, "half.bak", |b| b.truncate(len / 2));
    let short_by_one = altered_copy(&good, "short-by-one.bak", |b| b.truncate(len - 1));

    // Another coffer (another `coffer init`, the same passphrase): another master key.
    let (other, _) = coffer_with_documents();
    let foreign = backup_to(&other, "foreign.coffer-backup");

    for (file, needle) in [
        (&flipped_middle, "damaged"),
        (&flipped_end, "damaged"),
        (&half, "truncated"),
        (&short_by_one, "truncated"),
        (&foreign, "does not belong to this key file"),
    ] {
        let file = file.to_str().unwrap();
        assert_refused_untouched(&dirs, &["restore", "--check", file], needle);
        assert_refused_untouched(&dirs, &["restore", file], needle);
    }
    assert!(
        !dirs.paths.data_dir.join("coffer.redb.pre-restore").exists(),
        "a refused restore left coffer.redb.pre-restore"
    );
    assert_eq!(document_ids(&dirs.paths), live_ids, "the live documents changed");

    // `--check` on a good backup says so and changes nothing either.
    let data_before = hash_files(&dirs.paths.data_dir);
    let stdout = CLI.ok(&dirs, &["restore", "--check", good.to_str().unwrap()]);
    assert!(!stdout.contains("previous database kept"), "{stdout}");
    assert_eq!(
        hash_files(&dirs.paths.data_dir),
        data_before,
        "restore --check changed data/"
    );
}

#[test]
fn restore_keeps_the_previous_database_openable_unless_no_keep() {
    let (dirs, docs) = coffer_with_documents();
    let good = backup_to(&dirs, "good.coffer-backup");
    let good_arg = good.to_str().unwrap();
    let vault = open_vault(&dirs.paths);
    let later_data = pattern(901, 123_456);
    let later = store_document(&vault, "later.pdf", &later_data).id;
    drop(vault);

    let pre_restore = dirs.paths.data_dir.join("coffer.redb.pre-restore");
    let stdout = CLI.ok(&dirs, &["restore", good_arg]);
    assert!(stdout.starts_with("restored"), "{stdout}");
    assert!(
        stdout.contains(&format!("previous database kept as {}", pre_restore.display())),
        "{stdout}"
    );
    // The live database is the backup's: the three documents, byte-identical, and not the
    // one stored after it.
    let vault = open_vault(&dirs.paths);
    for (id, data) in &docs {
        assert!(
            read_all(&vault, *id).unwrap() == *data,
            "{id} differs after the restore"
        );
    }
    drop(vault);
    let mut want: Vec<DocumentId> = docs.iter().map(|(id, _)| *id).collect();
    want.sort_unstable();
    assert_eq!(document_ids(&dirs.paths), want);

    // The kept database opens as a coffer (with the same key file) and holds the later one.
    let kept = fresh_dirs_with_key_file(&dirs);
    std::fs::create_dir_all(&kept.paths.data_dir).unwrap();
    std::fs::copy(&pre_restore, kept.database()).unwrap();
    let vault = open_vault(&kept.paths);
    assert!(
        read_all(&vault, later).unwrap() == later_data,
        "the kept database lost the document stored after the backup"
    );
    drop(vault);

    // A second restore does not overwrite the kept database.
    assert_refused_untouched(&dirs, &["restore", good_arg], "coffer.redb.pre-restore");

    // `--no-keep`: replaced, nothing kept.
    std::fs::remove_file(&pre_restore).unwrap();
    let stdout = CLI.ok(&dirs, &["restore", "--no-keep", good_arg]);
    assert!(stdout.starts_with("restored"), "{stdout}");
    assert!(!stdout.contains("previous database kept"), "{stdout}");
    assert!(!pre_restore.exists(), "--no-keep kept {}", pre_restore.display());
    assert_eq!(document_ids(&dirs.paths), want);
}

#[test]
fn backup_refuses_to_replace_a_file_without_force() {
    let (dirs, _) = coffer_with_documents();
    let file = dirs.root.path().join("taken.bak");
    std::fs::write(&file, b"something else").unwrap();
    let file_arg = file.to_str().unwrap();
    let (_, stderr) = expect_failure(run(&dirs, &["backup", "--out", file_arg]), "backup over a file");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"something else",
        "the file was replaced"
    );

    // --force replaces only an earlier backup, never another file.
    let (_, stderr) = expect_failure(
        run(&dirs, &["backup", "--out", file_arg, "--force"]),
        "backup --force over a file that is not a backup",
    );
    assert!(stderr.contains("not a coffer backup"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"something else");

    std::fs::remove_file(&file).unwrap();
    CLI.ok(&dirs, &["backup", "--out", file_arg]);
    let first = std::fs::read(&file).unwrap();
    let stdout = CLI.ok(&dirs, &["backup", "--out", file_arg, "--force"]);
    assert_eq!(backup_document_count(&stdout, &file), 3, "{stdout}");
    assert_ne!(
        std::fs::read(&file).unwrap(),
        first,
        "--force did not replace the earlier backup"
    );
    CLI.ok(&dirs, &["restore", "--check", file_arg]);
}

#[test]
fn restore_into_an_empty_data_directory() {
    let (dirs, docs) = coffer_with_documents();
    let good = backup_to(&dirs, "good.coffer-backup");
    let restored = fresh_dirs_with_key_file(&dirs);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&restored.paths.data_dir)
            .unwrap();
    }
    let stdout = CLI.ok(&restored, &["restore", good.to_str().unwrap()]);
    assert!(stdout.starts_with("restored"), "{stdout}");
    assert!(!stdout.contains("previous database kept"), "{stdout}");
    let vault = open_vault(&restored.paths);
    for (id, data) in &docs {
        assert!(
            read_all(&vault, *id).unwrap() == *data,
            "{id} differs after the restore"
        );
    }
}
