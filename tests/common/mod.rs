//! Helpers shared by the integration tests: throwaway coffers in temp dirs, deterministic
//! content, the `coffer` binary, and raw access to the redb file (to tamper like an
//! attacker with write access to the disk).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod binary;
pub mod client;
pub mod erp;
pub mod server;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use coffer::app::documents::{DocumentInfo, DocumentReader, NewDocument, read_to_vec};
use coffer::app::init::init;
use coffer::app::principals::{DeviceBody, DeviceInfo, UserBody, UserInfo};
use coffer::app::{Paths, Vault, VaultError};
use coffer::crypto::kdf::KdfParams;
use coffer::model::{DocumentId, Role, Timestamp, UserId, Visibility};
use coffer::secret::Passphrase;
use coffer::store::{OpenReport, StoreOptions, StoredDevice, StoredDocument, StoredUser, WrappedRecord};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tempfile::TempDir;

/// The passphrase every test coffer is created with (at least 12 characters).
pub const PASSPHRASE: &str = "integration test passphrase";
/// A different passphrase that must not open the test coffers.
pub const WRONG_PASSPHRASE: &str = "not the passphrase at all";

/// The same table definitions as `src/store/tables.rs`, for raw access to the file.
pub const DOCUMENTS: TableDefinition<u128, &[u8]> = TableDefinition::new("documents");
pub const CHUNKS: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("chunks");
pub const STAGING: TableDefinition<u128, &[u8]> = TableDefinition::new("staging");
pub const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
pub const USER_NAMES: TableDefinition<[u8; 32], u128> = TableDefinition::new("user_names");
pub const DEVICES: TableDefinition<u128, &[u8]> = TableDefinition::new("devices");
pub const DEVICE_THUMBPRINTS: TableDefinition<[u8; 32], u128> = TableDefinition::new("device_thumbprints");

/// A coffer's directories inside a temp dir that is removed when this is dropped.
pub struct TestDirs {
    /// Keeps the temp dir alive.
    pub root: TempDir,
    /// `root/data` and `root/keys`.
    pub paths: Paths,
}

impl TestDirs {
    /// The database file.
    pub fn database(&self) -> PathBuf {
        self.paths.database()
    }

    /// The key file.
    pub fn key_file(&self) -> PathBuf {
        self.paths.key_file()
    }
}

/// Fresh, empty (not yet initialised) data and keys directories in a temp dir.
pub fn empty_dirs() -> TestDirs {
    let root = tempfile::tempdir().expect("temp dir");
    let paths = Paths {
        data_dir: root.path().join("data"),
        keys_dir: root.path().join("keys"),
    };
    TestDirs { root, paths }
}

/// Data and keys directories with a coffer initialised by the library (cheap argon2id).
pub fn init_dirs() -> TestDirs {
    let dirs = empty_dirs();
    init(
        &dirs.paths,
        &passphrase(),
        KdfParams::for_tests(),
        StoreOptions::default(),
    )
    .expect("init");
    dirs
}

/// An initialised coffer, unlocked: the directories and the open vault.
pub fn temp_vault() -> (TestDirs, Vault) {
    let dirs = init_dirs();
    let vault = open_vault(&dirs.paths);
    (dirs, vault)
}

/// The test passphrase.
pub fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE.to_owned())
}

/// Unlocks the coffer at `paths` with the test passphrase.
pub fn open_vault(paths: &Paths) -> Vault {
    open_vault_with_report(paths).0
}

/// Unlocks the coffer at `paths`, also returning what opening cleaned up.
pub fn open_vault_with_report(paths: &Paths) -> (Vault, OpenReport) {
    Vault::open(paths, &passphrase(), StoreOptions::default()).expect("open vault")
}

/// Deterministic, non-trivial content: a splitmix64 stream from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A fresh random hex string, unique enough to search for on disk.
pub fn unique_marker() -> String {
    let bytes: [u8; 16] = coffer::crypto::random_bytes().expect("random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random owner id (documents do not require the owner to be a stored user).
pub fn some_owner() -> UserId {
    UserId::random().expect("random id")
}

/// Upload metadata with a private visibility.
pub fn new_document(owner: UserId, name: &str) -> NewDocument {
    NewDocument {
        owner,
        name: name.to_owned(),
        content_type: "application/octet-stream".to_owned(),
        title: format!("title of {name}"),
        tags: vec!["test".to_owned()],
        visibility: Visibility::Private,
    }
}

/// Uneven write sizes, cycled, so chunk boundaries fall inside and between writes.
pub const UNEVEN_PIECES: [usize; 8] = [1, 7, 4093, 65_471, 13, 65_473, 100_000, 3];

/// Uploads `data` written in [`UNEVEN_PIECES`]-sized writes and publishes it.
pub fn upload_in_pieces(vault: &Vault, new: NewDocument, data: &[u8]) -> DocumentInfo {
    let mut writer = vault.upload(new).expect("begin upload");
    let mut rest = data;
    let mut sizes = UNEVEN_PIECES.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("cycle")).min(rest.len());
        writer.write(&rest[..n]).expect("write");
        rest = &rest[n..];
    }
    writer.finish().expect("finish upload")
}

/// Uploads `data` in one write under a fresh owner and a given name.
pub fn store_document(vault: &Vault, name: &str, data: &[u8]) -> DocumentInfo {
    upload_in_pieces(vault, new_document(some_owner(), name), data)
}

/// Reads a whole document, or the first error.
pub fn read_all(vault: &Vault, id: DocumentId) -> Result<Vec<u8>, VaultError> {
    read_to_vec(vault.read(id, None)?)
}

/// Reads a byte range, or the first error.
pub fn read_range(vault: &Vault, id: DocumentId, range: Range<u64>) -> Result<Vec<u8>, VaultError> {
    read_to_vec(vault.read(id, Some(range))?)
}

/// What a reader released before it stopped: the bytes of every `Ok` piece, and the
/// error that ended the stream, if any. Asserts nothing follows an error.
pub struct Drained {
    /// Concatenated `Ok` pieces.
    pub bytes: Vec<u8>,
    /// Number of `Ok` pieces.
    pub ok_pieces: usize,
    /// The error that ended the stream.
    pub error: Option<VaultError>,
}

/// Drains a reader piece by piece.
pub fn drain(reader: DocumentReader) -> Drained {
    let mut out = Drained {
        bytes: Vec::new(),
        ok_pieces: 0,
        error: None,
    };
    for piece in reader {
        assert!(out.error.is_none(), "the reader yielded more after an error");
        match piece {
            Ok(bytes) => {
                out.bytes.extend_from_slice(&bytes);
                out.ok_pieces += 1;
            }
            Err(e) => out.error = Some(e),
        }
    }
    out
}

/// True for `VaultError::Integrity`.
pub fn is_integrity(e: &VaultError) -> bool {
    matches!(e, VaultError::Integrity { .. })
}

/// Panics unless `result` is an integrity error.
#[track_caller]
pub fn assert_integrity<T: std::fmt::Debug>(result: Result<T, VaultError>) {
    match result {
        Err(e) if is_integrity(&e) => {}
        Err(e) => panic!("expected an integrity error, got another error: {e:?}"),
        Ok(v) => panic!("expected an integrity error, got Ok({v:?})"),
    }
}

/// Adds a member user with a placeholder password hash.
pub fn add_user(vault: &Vault, name: &str) -> UserInfo {
    vault
        .add_user(UserBody {
            name: name.to_owned(),
            role: Role::Member,
            password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_owned(),
            disabled: false,
            totp: None,
        })
        .expect("add user")
}

/// A deterministic certificate thumbprint.
pub fn thumbprint(seed: u8) -> [u8; 32] {
    pattern(u64::from(seed) + 1000, 32).try_into().expect("32 bytes")
}

/// Registers a device for `owner`, expiring in about a year.
pub fn add_device(vault: &Vault, owner: UserId, name: &str, thumbprint: [u8; 32]) -> DeviceInfo {
    let expires = Timestamp(Timestamp::now().0 + 365 * 24 * 3600 * 1000);
    vault
        .add_device(
            owner,
            DeviceBody {
                name: name.to_owned(),
                thumbprint,
                revoked: false,
                signing_secret: None,
                serial: None,
                revoked_at: None,
                retired: Vec::new(),
            },
            expires,
        )
        .expect("add device")
}

// ---- raw access to the database file (the vault must be closed) ----

/// Opens the database file directly, as an attacker with write access would.
pub fn raw_db(paths: &Paths) -> redb::Database {
    redb::Database::open(paths.database()).expect("open the database file directly")
}

/// Runs `f` in one raw write transaction and commits it.
pub fn raw_write<R>(paths: &Paths, f: impl FnOnce(&redb::WriteTransaction) -> R) -> R {
    let db = raw_db(paths);
    let txn = db.begin_write().expect("begin write");
    let out = f(&txn);
    txn.commit().expect("commit");
    out
}

/// Rewrites a stored document record through `change`.
pub fn tamper_document_record(paths: &Paths, id: DocumentId, change: impl FnOnce(&mut StoredDocument)) {
    raw_write(paths, |txn| {
        let mut t = txn.open_table(DOCUMENTS).expect("documents table");
        let bytes = t.get(id.0).expect("get").expect("record present").value().to_vec();
        let mut doc = StoredDocument::decode(&bytes).expect("decode record");
        change(&mut doc);
        t.insert(id.0, doc.encode().expect("encode").as_slice())
            .expect("insert");
    });
}

/// The stored document record.
pub fn raw_document_record(paths: &Paths, id: DocumentId) -> Option<StoredDocument> {
    let db = raw_db(paths);
    let txn = db.begin_read().expect("begin read");
    let t = txn.open_table(DOCUMENTS).expect("documents table");
    let guard = t.get(id.0).expect("get");
    guard.map(|g| StoredDocument::decode(g.value()).expect("decode"))
}

/// Rewrites a stored device record through `change`.
pub fn tamper_device_record(paths: &Paths, id: u128, change: impl FnOnce(&mut StoredDevice)) {
    raw_write(paths, |txn| {
        let mut t = txn.open_table(DEVICES).expect("devices table");
        let bytes = t.get(id).expect("get").expect("record present").value().to_vec();
        let mut dev = StoredDevice::decode(&bytes).expect("decode record");
        change(&mut dev);
        t.insert(id, dev.encode().expect("encode").as_slice()).expect("insert");
    });
}

/// The stored device record.
pub fn raw_device_record(paths: &Paths, id: u128) -> Option<StoredDevice> {
    let db = raw_db(paths);
    let txn = db.begin_read().expect("begin read");
    let t = txn.open_table(DEVICES).expect("devices table");
    let guard = t.get(id).expect("get");
    guard.map(|g| StoredDevice::decode(g.value()).expect("decode"))
}

/// Rewrites a stored user record through `change`.
pub fn tamper_user_record(paths: &Paths, id: u128, change: impl FnOnce(&mut StoredUser)) {
    raw_write(paths, |txn| {
        let mut t = txn.open_table(USERS).expect("users table");
        let bytes = t.get(id).expect("get").expect("record present").value().to_vec();
        let mut user = StoredUser::decode(&bytes).expect("decode record");
        change(&mut user);
        t.insert(id, user.encode().expect("encode").as_slice()).expect("insert");
    });
}

/// Swaps the ids two entries of a keyed-hash index point at (there must be exactly two).
pub fn swap_index_targets(paths: &Paths, table: TableDefinition<[u8; 32], u128>) {
    raw_write(paths, |txn| {
        let mut t = txn.open_table(table).expect("index table");
        let entries: Vec<([u8; 32], u128)> = t
            .iter()
            .expect("iter")
            .map(|e| {
                let (k, v) = e.expect("entry");
                (k.value(), v.value())
            })
            .collect();
        assert_eq!(entries.len(), 2, "expected two index entries");
        t.insert(entries[0].0, entries[1].1).expect("insert");
        t.insert(entries[1].0, entries[0].1).expect("insert");
    });
}

/// One sealed chunk as stored.
pub fn raw_chunk(paths: &Paths, id: DocumentId, index: u32) -> Option<Vec<u8>> {
    let db = raw_db(paths);
    let txn = db.begin_read().expect("begin read");
    let t = txn.open_table(CHUNKS).expect("chunks table");
    let guard = t.get((id.0, index)).expect("get");
    guard.map(|g| g.value().to_vec())
}

/// Replaces (or inserts) one sealed chunk.
pub fn put_raw_chunk(paths: &Paths, id: DocumentId, index: u32, bytes: &[u8]) {
    raw_write(paths, |txn| {
        let mut t = txn.open_table(CHUNKS).expect("chunks table");
        t.insert((id.0, index), bytes).expect("insert");
    });
}

/// Removes one sealed chunk.
pub fn remove_raw_chunk(paths: &Paths, id: DocumentId, index: u32) {
    raw_write(paths, |txn| {
        let mut t = txn.open_table(CHUNKS).expect("chunks table");
        assert!(
            t.remove((id.0, index)).expect("remove").is_some(),
            "chunk {index} was not there"
        );
    });
}

/// Rewrites one sealed chunk through `change`.
pub fn tamper_chunk(paths: &Paths, id: DocumentId, index: u32, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = raw_chunk(paths, id, index).expect("chunk present");
    change(&mut bytes);
    put_raw_chunk(paths, id, index, &bytes);
}

/// Indices of the chunks stored under `id` (published or staged).
pub fn raw_chunk_indices(paths: &Paths, id: DocumentId) -> Vec<u32> {
    let db = raw_db(paths);
    let txn = db.begin_read().expect("begin read");
    let t = txn.open_table(CHUNKS).expect("chunks table");
    t.range((id.0, 0)..=(id.0, u32::MAX))
        .expect("range")
        .map(|e| e.expect("entry").0.value().1)
        .collect()
}

/// Number of entries in a `u128`-keyed table.
pub fn raw_len(paths: &Paths, table: TableDefinition<u128, &[u8]>) -> u64 {
    use redb::ReadableTableMetadata;
    let db = raw_db(paths);
    let txn = db.begin_read().expect("begin read");
    txn.open_table(table).expect("table").len().expect("len")
}

/// Number of entries in a keyed-hash index table.
pub fn raw_index_len(paths: &Paths, table: TableDefinition<[u8; 32], u128>) -> u64 {
    use redb::ReadableTableMetadata;
    let db = raw_db(paths);
    let txn = db.begin_read().expect("begin read");
    txn.open_table(table).expect("table").len().expect("len")
}

/// Raw document records and sealed chunks, in key order.
#[derive(Debug, PartialEq, Eq)]
pub struct RawContents {
    /// Document id → encoded record.
    pub documents: Vec<(u128, Vec<u8>)>,
    /// (document id, chunk index) → sealed chunk.
    pub chunks: Vec<((u128, u32), Vec<u8>)>,
}

/// Every stored document record and sealed chunk, raw, in key order.
pub fn raw_documents_and_chunks(paths: &Paths) -> RawContents {
    let db = raw_db(paths);
    let txn = db.begin_read().expect("begin read");
    let documents = txn.open_table(DOCUMENTS).expect("documents table");
    let documents = documents
        .iter()
        .expect("iter")
        .map(|e| {
            let (k, v) = e.expect("entry");
            (k.value(), v.value().to_vec())
        })
        .collect();
    let chunks = txn.open_table(CHUNKS).expect("chunks table");
    let chunks = chunks
        .iter()
        .expect("iter")
        .map(|e| {
            let (k, v) = e.expect("entry");
            (k.value(), v.value().to_vec())
        })
        .collect();
    RawContents { documents, chunks }
}

/// Flips one bit of `bytes` at `byte`.
pub fn flip_bit(bytes: &mut [u8], byte: usize, bit: u8) {
    bytes[byte] ^= 1 << bit;
}

// ---- files ----

/// Every regular file under `dir`, recursively.
/// What a keys directory holds: the key file and the (empty) lock file, nothing else.
pub fn keys_dir_files(dirs: &TestDirs) -> Vec<PathBuf> {
    let mut files = vec![dirs.key_file(), dirs.paths.keys_dir.join(coffer::app::LOCK_FILE)];
    // `coffer init` also writes the public PKI files (the library's bare init does not).
    if dirs.paths.keys_dir.join(coffer::app::pki::CA_CERT_FILE).exists() {
        for f in [
            coffer::app::pki::CA_CERT_FILE,
            coffer::app::pki::SERVER_CERT_FILE,
            coffer::app::pki::SERVER_NEXT_PUB_FILE,
        ] {
            files.push(dirs.paths.keys_dir.join(f));
        }
    }
    files.sort();
    files
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("dir entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// True if `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A file's bytes.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Panics unless the file at `path` still holds exactly `before` (without dumping bytes).
#[track_caller]
pub fn assert_file_unchanged(path: &Path, before: &[u8], context: &str) {
    let now = file_bytes(path);
    assert!(
        now == before,
        "{} changed ({context}): {} bytes before, {} now",
        path.display(),
        before.len(),
        now.len()
    );
}

/// The keys directory holds only the key file, with mode 0600 (no temporary file left
/// behind by an atomic replace).
#[track_caller]
pub fn assert_keys_dir_clean(dirs: &TestDirs) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(files_under(&dirs.paths.keys_dir), keys_dir_files(dirs));
    let mode = std::fs::metadata(dirs.key_file())
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
}

// ---- the binary ----

/// Cheap argon2id flags for `coffer init`.
pub const CHEAP_KDF: [&str; 6] = [
    "--kdf-memory-kib",
    "64",
    "--kdf-iterations",
    "1",
    "--kdf-parallelism",
    "1",
];

/// A `coffer` command for the coffer at `paths`, with a clean environment (no passphrase
/// source, no directory or KDF variables from the caller) and no terminal.
pub fn coffer_command(paths: &Paths) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer"));
    for var in [
        "COFFER_PASSPHRASE",
        "COFFER_PASSPHRASE_FILE",
        "CREDENTIALS_DIRECTORY",
        "COFFER_DATA_DIR",
        "COFFER_KEYS_DIR",
        "COFFER_CACHE_MIB",
        "COFFER_KDF_MEMORY_KIB",
        "COFFER_KDF_ITERATIONS",
        "COFFER_KDF_PARALLELISM",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--data-dir")
        .arg(&paths.data_dir)
        .arg("--keys-dir")
        .arg(&paths.keys_dir)
        .stdin(Stdio::null());
    cmd
}

/// Runs `coffer ARGS` with `COFFER_PASSPHRASE` set to `passphrase`.
pub fn run_coffer(paths: &Paths, passphrase: &str, args: &[&str]) -> Output {
    coffer_command(paths)
        .env("COFFER_PASSPHRASE", passphrase)
        .args(args)
        .output()
        .expect("run the coffer binary")
}

/// Runs `coffer ARGS` and panics with its output unless it succeeds; returns stdout.
#[track_caller]
pub fn run_coffer_ok(paths: &Paths, args: &[&str]) -> String {
    let out = run_coffer(paths, PASSPHRASE, args);
    assert!(
        out.status.success(),
        "coffer {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `coffer init` with cheap argon2id parameters and the test passphrase.
pub fn init_with_binary(paths: &Paths) -> Output {
    let mut args = vec!["init"];
    args.extend(CHEAP_KDF);
    run_coffer(paths, PASSPHRASE, &args)
}

/// A file holding `contents`, inside `dir`.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write file");
    path
}

/// Master key versions listed by `coffer key status` (the rows of its table).
pub fn status_versions(stdout: &str) -> Vec<(u32, u64, bool)> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("version"))
        .skip(1)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let v = words.next()?.parse().ok()?;
            let n = words.next()?.parse().ok()?;
            Some((v, n, l.contains("(current)")))
        })
        .collect()
}

/// Cheap argon2id for new password hashes and key files made from the environment.
pub const CHEAP_KDF_ENV: [(&str, &str); 3] = [
    ("COFFER_KDF_MEMORY_KIB", "64"),
    ("COFFER_KDF_ITERATIONS", "1"),
    ("COFFER_KDF_PARALLELISM", "1"),
];

/// Removes every variable the configuration or the passphrase could come from, so the
/// environment of whoever runs the tests cannot leak in, and runs in `cwd` (so no stray
/// `./coffer.toml` is picked up).
pub fn isolate(cmd: &mut Command, cwd: &Path) {
    for (name, _) in coffer::config::ENV_KEYS {
        cmd.env_remove(name);
    }
    for name in [
        coffer::config::CONFIG_ENV,
        "COFFER_PASSPHRASE",
        "COFFER_PASSPHRASE_FILE",
        "CREDENTIALS_DIRECTORY",
    ] {
        cmd.env_remove(name);
    }
    // Servers of parallel tests would all want 127.0.0.1:9464.
    cmd.env("COFFER_HEALTH_LISTEN", "127.0.0.1:0");
    cmd.current_dir(cwd).stdin(Stdio::null());
}

// ---- a coffer served by the real binary, for the operations tests ----

/// A coffer served by the real `coffer serve` (with its admin socket), with members whose
/// devices hold certificates from the coffer's own CA: what the backup, audit and
/// admin-command tests drive.
pub mod served {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::Output;
    use std::time::{Duration, Instant};

    use super::binary::{Cli, Running, expect_ok_with_stderr, text};
    use super::client::{ClientSetup, Connection, Response};
    use super::server::{Identity, sha256_hex, start_server};
    use super::{PASSPHRASE, TestDirs, empty_dirs, files_under, write_file};

    /// How the operations tests run the binary: loopback allowed, writes accepted from
    /// the server's first second.
    pub const CLI: Cli = Cli {
        env: &[
            ("COFFER_ALLOW_CIDRS", "127.0.0.0/8"),
            ("COFFER_MAX_FUTURE_WRITE_SECS", "0"),
        ],
    };

    /// How long a command or a stop may take on a loaded machine.
    pub const WAIT: Duration = Duration::from_secs(120);

    /// A member and the device it calls from.
    pub struct Member {
        /// The user name (its password is `password of NAME`).
        pub name: String,
        /// The device: certificate, key, signing secret, session token.
        pub identity: Identity,
    }

    /// A closed coffer made by coffer's own init (with PKI) and its members.
    pub struct Prepared {
        /// The directories (server stopped).
        pub dirs: TestDirs,
        /// The CA certificate, PEM.
        pub ca_pem: String,
        /// One member per name given, each with one device.
        pub members: Vec<Member>,
    }

    /// A coffer with one member (and device) per name, made through a short-lived
    /// in-process server that is stopped again, so the binary can serve it.
    pub fn prepared_coffer(names: &[&str]) -> Prepared {
        let server = start_server();
        let members = names
            .iter()
            .map(|name| {
                let user = server.add_member(name);
                Member {
                    name: (*name).to_owned(),
                    identity: server.issue_device(user.id),
                }
            })
            .collect();
        let ca_pem = server.ca_pem.clone();
        let dirs = server.stop();
        Prepared { dirs, ca_pem, members }
    }

    /// A closed coffer as `coffer init` makes it (key file with cheap argon2id, CA, server
    /// certificate and next key): admin commands run on the database opened directly
    /// read the server certificate too.
    pub fn init_dirs_with_pki() -> TestDirs {
        let dirs = empty_dirs();
        coffer::app::init::init_with_pki(
            &dirs.paths,
            &super::passphrase(),
            coffer::crypto::kdf::KdfParams::for_tests(),
            coffer::store::StoreOptions::default(),
            &coffer::app::init::PkiPlan {
                sans: vec!["localhost".parse().expect("san")],
                ca_days: 30,
                server_days: 30,
            },
        )
        .expect("init with PKI");
        dirs
    }

    /// `data/admin.sock`.
    pub fn socket_path(dirs: &TestDirs) -> PathBuf {
        dirs.paths.data_dir.join(coffer::admin::socket::SOCKET_FILE)
    }

    /// Starts `coffer serve` with a passphrase file on 127.0.0.1:0; returns once it
    /// accepts requests and its admin socket exists.
    pub fn serve(dirs: &TestDirs) -> (Running, SocketAddr) {
        let passphrase = write_file(dirs.root.path(), "passphrase", &format!("{PASSPHRASE}\n"));
        let mut cmd = CLI.without_passphrase(dirs);
        cmd.arg("--passphrase-file")
            .arg(&passphrase)
            .args(["serve", "--listen", "127.0.0.1:0"]);
        let mut server = Running::spawn(cmd);
        let addr = server.listening_on("coffer serve");
        let deadline = Instant::now() + WAIT;
        while std::fs::symlink_metadata(socket_path(dirs)).is_err() {
            assert!(
                Instant::now() < deadline,
                "no admin socket; stderr: {}",
                server.stderr_now()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (server, addr)
    }

    /// Stops the server as systemd would (SIGTERM) and waits for a clean exit.
    pub fn stop(mut server: Running) {
        server.signal(rustix::process::Signal::TERM);
        let (status, stderr) = server.wait_exit(WAIT, "coffer serve after SIGTERM");
        assert!(status.success(), "coffer serve exit {status:?}; stderr: {stderr}");
    }

    /// A signed connection as `identity` (with its session token) to the server at `addr`.
    pub fn connect(addr: SocketAddr, ca_pem: &str, identity: &Identity) -> Connection {
        let config = ClientSetup::new(ca_pem, Some((&identity.cert_pem, &identity.key_pem))).build();
        let mut conn = Connection::open(config, addr, "localhost").expect("TLS connection");
        conn.set_signer(identity.signer());
        conn
    }

    /// Logs `member` in on `conn` over HTTP (`POST /v1/session`) and signs with the new
    /// token from then on (sessions of a database replaced by a restore may be gone).
    pub fn log_in(conn: &mut Connection, member: &Member) {
        conn.signer_mut().expect("a signed connection").token = None;
        let body = serde_json::json!({
            "username": member.name,
            "password": format!("password of {}", member.name),
        })
        .to_string();
        let res = conn
            .request(
                "POST",
                "/v1/session",
                &[("content-type", "application/json")],
                body.as_bytes(),
            )
            .expect("login request");
        assert!(
            res.status == 200 || res.status == 201,
            "login of {}: {} {}",
            member.name,
            res.status,
            text(&res.body)
        );
        let token = res.json()["token"].as_str().expect("token").to_owned();
        conn.signer_mut().expect("a signed connection").token = Some(token);
    }

    /// `GET path`.
    pub fn get(conn: &mut Connection, path: &str) -> Response {
        conn.request("GET", path, &[], b"").expect("GET")
    }

    /// Runs `coffer ARGS` with the test passphrase (the database is opened here, or the
    /// command goes through a running server's socket).
    pub fn run(dirs: &TestDirs, args: &[&str]) -> Output {
        CLI.coffer(dirs).args(args).output().expect("run coffer")
    }

    /// Runs `coffer ARGS` without any passphrase source next to a running server: it must
    /// succeed, so it went through the admin socket. Returns stdout.
    #[track_caller]
    pub fn via_socket(dirs: &TestDirs, args: &[&str]) -> String {
        expect_via_socket(
            CLI.without_passphrase(dirs).args(args).output().expect("run coffer"),
            args,
        )
    }

    /// [`via_socket`]'s check on an output already collected.
    #[track_caller]
    pub fn expect_via_socket(out: Output, args: &[&str]) -> String {
        let (stdout, stderr) = expect_ok_with_stderr(out, &format!("coffer {args:?} (no passphrase, server running)"));
        assert!(
            !stderr.to_lowercase().contains("passphrase"),
            "coffer {args:?} spoke of a passphrase: {stderr}"
        );
        stdout
    }

    /// Panics unless `out` exited with 1 and `error: ...` on stderr; returns stdout and
    /// stderr.
    #[track_caller]
    pub fn expect_failure(out: Output, what: &str) -> (String, String) {
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: expected exit 1\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(stderr.contains("error: "), "{what}: no `error: ` on stderr: {stderr}");
        (stdout, stderr)
    }

    /// The `N` of the `backup written to FILE: ... N documents` line; checks the line.
    #[track_caller]
    pub fn backup_document_count(stdout: &str, file: &Path) -> u64 {
        let prefix = format!("backup written to {}:", file.display());
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}: {stdout}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.trim_end_matches([',', '.', ';', ')']) == "documents")
            .unwrap_or_else(|| panic!("no `N documents` in {line:?}"));
        assert!(at > 0, "no count before `documents` in {line:?}");
        words[at - 1]
            .trim_start_matches('(')
            .parse()
            .unwrap_or_else(|e| panic!("document count in {line:?}: {e}"))
    }

    /// SHA-256 of every regular file under `dir`, by path.
    pub fn hash_files(dir: &Path) -> BTreeMap<PathBuf, String> {
        files_under(dir)
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                (p, sha256_hex(&bytes))
            })
            .collect()
    }

    /// Fresh directories in a new temp dir that hold only a copy of `from`'s key file
    /// (the data directory does not exist): where a backup is restored on a new machine.
    pub fn fresh_dirs_with_key_file(from: &TestDirs) -> TestDirs {
        let dirs = empty_dirs();
        std::fs::create_dir_all(&dirs.paths.keys_dir).expect("keys dir");
        std::fs::copy(from.key_file(), dirs.key_file()).expect("copy the key file");
        dirs
    }

    /// The numbers `entry N` names in `text`, in order.
    pub fn entries_named(text: &str) -> Vec<u64> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("entry ") {
            rest = &rest[at + "entry ".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                out.push(n);
            }
        }
        out
    }
}
