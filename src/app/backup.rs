//! Online backup and verified restore.
//!
//! A backup is one file: the [`crate::crypto::backup`] header and frames around a stream
//! of database entries (`table u8 ‖ key length u32 ‖ key ‖ value length u32 ‖ value`),
//! ending with a trailer frame that counts them. It comes from one read transaction, so
//! it is a consistent snapshot while uploads go on (redb readers never block writers, and
//! nothing committed later appears in it). Entries are stored as the database holds them:
//! still sealed under their own data keys, so restoring needs the key file as well.
//!
//! A restore reads the whole file once to verify it (every frame authenticates, every
//! entry has its table's shape, the counts match the trailer, the key file belongs to
//! it) before it touches anything; only then does it build the database beside the live
//! one and rename it into place.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Paths, UnlockError, Vault, VaultError, lock_keys, unlock_keyring};
use crate::crypto::backup::{
    BackupKeys, HEADER_LEN, HEADER_TAG_LEN, Header, HeaderError, LAST_FRAME_BIT, MAX_SEALED_FRAME,
};
use crate::crypto::keyfile::Keyring;
use crate::model::Timestamp;
use crate::secret::Passphrase;
use crate::store::{BackupTable, Builder, StoreError, StoreOptions};

/// Plaintext collected into one frame before it is sealed and written.
const FRAME_TARGET: usize = 1024 * 1024;
/// Frames queued between the stages of reading a backup.
const PIPELINE_FRAMES: usize = 2;
/// Threads authenticating and decrypting a backup's frames while it is read.
const OPENERS: usize = 2;
/// Largest single entry a backup carries (far above any record coffer stores).
const MAX_ENTRY: usize = 32 * 1024 * 1024;

/// Backup or restore failed. Nothing is left half-done: a failed backup leaves no file at
/// the destination, a failed restore leaves the live database as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The destination exists.
    #[error("{0} already exists: choose another name, or pass --force to replace it")]
    Exists(String),
    /// The file is not a backup this coffer reads.
    #[error("{path}: {why}")]
    NotABackup {
        /// The file.
        path: String,
        /// What is wrong.
        why: HeaderError,
    },
    /// The key file lacks the master key version the backup was made under.
    #[error(
        "this backup was made under master key version {0}, which the key file does not hold: \
         restore with the key file (and passphrase) that were current when the backup was made"
    )]
    MissingKeyVersion(u32),
    /// The header does not authenticate under the key file's master key.
    #[error(
        "this backup does not belong to this key file: its header does not authenticate under master key \
         version {0} (it was made by another coffer, or its first bytes are damaged); nothing was restored"
    )]
    ForeignKey(u32),
    /// A frame fails authentication.
    #[error(
        "the backup is damaged: frame {frame} at byte {offset} fails authentication (altered, reordered or \
         corrupted bytes); nothing was restored, use another backup"
    )]
    Damaged {
        /// Frame number.
        frame: u64,
        /// Its offset in the file.
        offset: u64,
    },
    /// The file ends before its last frame.
    #[error(
        "the backup is truncated: it ends at byte {0} before its last frame (an interrupted copy?); \
         nothing was restored, use a complete copy"
    )]
    Truncated(u64),
    /// Bytes follow the last frame.
    #[error(
        "the backup has unexpected bytes after its last frame at byte {0}; nothing was restored, use a \
         complete, unaltered copy"
    )]
    Trailing(u64),
    /// The backup's objects are wrapped under a version the key file no longer holds.
    #[error(
        "this backup's objects need master key version {0}, which the key file does not hold (a rotation \
         retired it since): restore with the key file that was current when the backup was made; nothing \
         was restored"
    )]
    NeedsKeyVersion(u32),
    /// The file changed between verification and rebuilding.
    #[error(
        "the backup file changed while it was being restored (another backup was put in its place); nothing was \
         restored: leave the file alone and restore again"
    )]
    Changed,
    /// Refused destination.
    #[error("{0}")]
    Refused(String),
    /// The content authenticates but is not a coffer database this version can restore.
    #[error("the backup's content is inconsistent ({0}); nothing was restored: retry, or restore another backup")]
    Inconsistent(String),
    /// `*.pre-restore` exists already.
    #[error("{0} exists (kept by an earlier restore): move it away or delete it, then restore again")]
    PreRestoreExists(String),
    /// Unlocking failed (wrong passphrase, a running server holds the lock, ...).
    #[error(transparent)]
    Unlock(#[from] UnlockError),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Counts per table, as the trailer records them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Entries per table (by its backup number).
    pub entries: BTreeMap<u8, u64>,
    /// Bytes of keys and values.
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, table: BackupTable, key: &[u8], value: &[u8]) {
        *self.entries.entry(table as u8).or_default() += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }

    /// Entries of `table`.
    pub fn of(&self, table: BackupTable) -> u64 {
        self.entries.get(&(table as u8)).copied().unwrap_or(0)
    }
}

#[derive(Serialize, Deserialize)]
enum Trailer {
    V1(Counts),
}

/// What a backup holds, and how long it took to write or read.
#[derive(Clone, Debug)]
pub struct BackupSummary {
    /// The backup file.
    pub path: PathBuf,
    /// The backup's id: the start of its header tag, unique per backup (log it with the
    /// file name to tell backups apart).
    pub id: String,
    /// When the backup's snapshot was taken.
    pub created: Timestamp,
    /// The master key version its keys derive from.
    pub key_version: u32,
    /// Entries per table and bytes.
    pub counts: Counts,
    /// Size of the file.
    pub file_bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

impl BackupSummary {
    /// Published documents.
    pub fn documents(&self) -> u64 {
        self.counts.of(BackupTable::Documents)
    }

    /// Cached ERP records.
    pub fn erp_records(&self) -> u64 {
        self.counts.of(BackupTable::ErpRecords)
    }

    /// One line for people: what it holds and how fast it went.
    pub fn describe(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        format!(
            "backup {}: {} documents, {} ERP records, {} users, {} devices, {} audit entries; {} bytes of data, \
             {} byte file, {:.1} s ({:.0} MB/s)",
            self.id,
            self.documents(),
            self.erp_records(),
            self.counts.of(BackupTable::Users),
            self.counts.of(BackupTable::Devices),
            self.counts.of(BackupTable::Audit),
            self.counts.bytes,
            self.file_bytes,
            secs,
            self.file_bytes as f64 / secs / 1e6
        )
    }
}

/// Progress of a long operation: (bytes or entries done, total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

impl Vault {
    /// Writes a backup of the database as it is now to `out`, through a temporary file in
    /// the same directory renamed into place once complete and durable. Serving goes on.
    pub fn backup(&self, out: &Path, replace: bool, progress: Progress<'_>) -> Result<BackupSummary, BackupError> {
        let started = Instant::now();
        self.check_backup_destination(out, replace)?;
        let keyring = self.keys();
        let (key_version, master) = keyring.current();
        let header = Header {
            key_version,
            salt: crate::crypto::random_bytes().map_err(VaultError::from)?,
            created_ms: Timestamp::now().0,
        };
        let keys = BackupKeys::derive(master, &header);
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".coffer-backup-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io_at(dir))?;
        let dump = self.store.dump()?;
        let total = dump.entry_estimate()?;
        let tag = keys.header_tag();
        let mut head = header.to_bytes().to_vec();
        head.extend_from_slice(&tag);
        let file = tmp.as_file();
        let mut counts = Counts::default();
        let mut done = 0u64;
        // Three stages, each on its own thread, a few frames queued between them: this
        // thread reads the snapshot into plaintext frames, one seals them in order, one
        // writes them. Memory stays bounded by the queues (frames are recycled).
        let file_bytes = std::thread::scope(|s| -> Result<u64, BackupError> {
            let (to_seal, sealing) = sync_channel::<(Vec<u8>, bool)>(PIPELINE_FRAMES);
            let (to_write, writing) = sync_channel::<(Vec<u8>, bool)>(PIPELINE_FRAMES);
            let (to_reuse, reusable) = channel::<Vec<u8>>();
            let keys = &keys;
            let sealer = s.spawn(move || -> std::io::Result<()> {
                for (index, (mut buf, last)) in (0u64..).zip(sealing) {
                    keys.seal_frame(index, last, &mut buf).map_err(std::io::Error::other)?;
                    if to_write.send((buf, last)).is_err() {
                        break; // the writer failed: its error is the one reported
                    }
                }
                Ok(())
            });
            let writer = s.spawn(move || -> std::io::Result<u64> {
                let mut out = file;
                out.write_all(&head)?;
                let mut written = head.len() as u64;
                for (buf, last) in writing {
                    let len = buf.len() as u32 | if last { LAST_FRAME_BIT } else { 0 };
                    out.write_all(&len.to_be_bytes())?;
                    out.write_all(&buf)?;
                    written += 4 + buf.len() as u64;
                    let _ = to_reuse.send(buf);
                }
                Ok(written)
            });
            let fresh = || {
                reusable
                    .try_recv()
                    .map(|mut b| {
                        b.clear();
                        b
                    })
                    .unwrap_or_else(|_| Vec::with_capacity(FRAME_TARGET + MAX_ENTRY.min(1 << 20)))
            };
            let closed = || BackupError::Inconsistent("the backup's writer stopped".into());
            let mut buf = fresh();
            let read = dump
                .for_each(|table, key, value| {
                    if key.len() > MAX_ENTRY || value.len() > MAX_ENTRY {
                        return Err(BackupError::Inconsistent(format!(
                            "an entry of {} is larger than {MAX_ENTRY} bytes",
                            table.name()
                        )));
                    }
                    counts.add(table, key, value);
                    buf.push(table as u8);
                    buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
                    buf.extend_from_slice(key);
                    buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    buf.extend_from_slice(value);
                    if buf.len() >= FRAME_TARGET {
                        to_seal
                            .send((std::mem::replace(&mut buf, fresh()), false))
                            .map_err(|_| closed())?;
                    }
                    done += 1;
                    if done.is_multiple_of(256) {
                        progress(done, total.max(done));
                    }
                    Ok(())
                })
                .and_then(|()| {
                    if !buf.is_empty() {
                        to_seal.send((std::mem::take(&mut buf), false)).map_err(|_| closed())?;
                    }
                    let trailer = postcard::to_stdvec(&Trailer::V1(counts.clone()))
                        .map_err(|_| BackupError::Inconsistent("the trailer does not encode".into()))?;
                    to_seal.send((trailer, true)).map_err(|_| closed())
                });
            drop(to_seal);
            let sealed = sealer.join();
            let written = writer.join();
            let (Ok(sealed), Ok(written)) = (sealed, written) else {
                return Err(BackupError::Inconsistent("a backup thread panicked".into()));
            };
            // The writer's error first: the others follow from it.
            let written = written.map_err(io_at(out))?;
            sealed.map_err(io_at(out))?;
            read?;
            Ok(written)
        })?;
        drop(dump);
        tmp.as_file().sync_all().map_err(io_at(out))?;
        if replace {
            tmp.persist(out).map_err(|e| io_at(out)(e.error))?;
        } else {
            tmp.persist_noclobber(out).map_err(|e| match e.error.kind() {
                std::io::ErrorKind::AlreadyExists => BackupError::Exists(out.display().to_string()),
                _ => io_at(out)(e.error),
            })?;
        }
        super::durable::sync_dir(dir).map_err(io_at(dir))?;
        progress(done, done);
        Ok(BackupSummary {
            path: out.to_path_buf(),
            id: crate::sigv4::hex(&tag[..8]),
            created: Timestamp(header.created_ms),
            key_version,
            counts,
            file_bytes,
            elapsed: started.elapsed(),
        })
    }
}

impl Vault {
    /// A backup never lands in the data or keys directory, and `--force` replaces only
    /// an earlier backup, never another file (a key file, the database).
    fn check_backup_destination(&self, out: &Path, replace: bool) -> Result<(), BackupError> {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let real_dir = std::fs::canonicalize(dir).map_err(io_at(dir))?;
        for (what, protected) in [("data", &self.paths.data_dir), ("keys", &self.paths.keys_dir)] {
            if std::fs::canonicalize(protected).is_ok_and(|p| p == real_dir) {
                return Err(BackupError::Refused(format!(
                    "{} is in the {what} directory: write backups elsewhere (and copy them off the machine)",
                    out.display()
                )));
            }
        }
        match std::fs::symlink_metadata(out) {
            Err(_) => Ok(()),
            Ok(_) if !replace => Err(BackupError::Exists(out.display().to_string())),
            Ok(meta) => {
                let mut magic = [0u8; 8];
                let is_backup = meta.is_file()
                    && std::fs::File::open(out)
                        .and_then(|mut f| f.read_exact(&mut magic))
                        .is_ok()
                    && magic == crate::crypto::labels::BACKUP_MAGIC;
                if is_backup {
                    Ok(())
                } else {
                    Err(BackupError::Refused(format!(
                        "{} exists and is not a coffer backup: --force replaces only an earlier backup; \
                         choose another name",
                        out.display()
                    )))
                }
            }
        }
    }
}

/// Reads a backup file frame by frame (authenticating them is [`read_backup`]'s).
struct FrameReader<'a, R: Read> {
    r: R,
    index: u64,
    offset: u64,
    size: u64,
    path: &'a Path,
}

/// Where a sealed frame was read.
#[derive(Clone, Copy)]
struct Sealed {
    index: u64,
    /// Its offset in the file, and that of the next.
    at: u64,
    end: u64,
    last: bool,
    /// Bytes follow the last frame (an error once the frame itself authenticates).
    trailing: bool,
}

impl<'a> FrameReader<'a, BufReader<&'a std::fs::File>> {
    /// Reads `file` (opened from `path`) from its start: parses the header and checks its
    /// tag with the key file's version. Returns the header, its tag and the keys.
    fn open(
        file: &'a std::fs::File,
        path: &'a Path,
        keyring: &Keyring,
    ) -> Result<(Self, Header, [u8; HEADER_TAG_LEN], BackupKeys), BackupError> {
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::Start(0)).map_err(io_at(path))?;
        let size = file.metadata().map_err(io_at(path))?.len();
        let mut r = BufReader::with_capacity(4 * 1024 * 1024, file);
        let mut head = [0u8; HEADER_LEN + HEADER_TAG_LEN];
        let got = read_full(&mut r, &mut head).map_err(io_at(path))?;
        let header = Header::parse(&head[..got]).map_err(|why| BackupError::NotABackup {
            path: path.display().to_string(),
            why,
        })?;
        if got < head.len() {
            return Err(BackupError::Truncated(got as u64));
        }
        let master = keyring
            .version(header.key_version)
            .ok_or(BackupError::MissingKeyVersion(header.key_version))?;
        let keys = BackupKeys::derive(master, &header);
        keys.check_header(&head[HEADER_LEN..])
            .map_err(|_| BackupError::ForeignKey(header.key_version))?;
        let mut tag = [0u8; HEADER_TAG_LEN];
        tag.copy_from_slice(&head[HEADER_LEN..]);
        Ok((
            Self {
                r,
                index: 0,
                offset: head.len() as u64,
                size,
                path,
            },
            header,
            tag,
            keys,
        ))
    }
}

impl<R: Read> FrameReader<'_, R> {
    /// The next sealed frame into `buf`.
    fn next_sealed(&mut self, buf: &mut Vec<u8>) -> Result<Sealed, BackupError> {
        let at = self.offset;
        let mut len = [0u8; 4];
        let got = read_full(&mut self.r, &mut len).map_err(io_at(self.path))?;
        if got < 4 {
            return Err(BackupError::Truncated(at + got as u64));
        }
        let word = u32::from_be_bytes(len);
        let last = word & LAST_FRAME_BIT != 0;
        let n = (word & !LAST_FRAME_BIT) as usize;
        // A length beyond the limit or the file is damage (or truncation): refused before
        // anything is allocated for it.
        if n > MAX_SEALED_FRAME {
            return Err(BackupError::Damaged {
                frame: self.index,
                offset: at,
            });
        }
        if at + 4 + n as u64 > self.size {
            return Err(BackupError::Truncated(self.size));
        }
        buf.clear();
        buf.resize(n, 0);
        let got = read_full(&mut self.r, buf).map_err(io_at(self.path))?;
        if got < n {
            return Err(BackupError::Truncated(at + 4 + got as u64));
        }
        let index = self.index;
        self.index += 1;
        self.offset = at + 4 + n as u64;
        let mut trailing = false;
        if last {
            let mut extra = [0u8; 1];
            trailing = read_full(&mut self.r, &mut extra).map_err(io_at(self.path))? != 0;
        }
        Ok(Sealed {
            index,
            at,
            end: self.offset,
            last,
            trailing,
        })
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Splits a frame's plaintext into entries.
fn entries(
    frame: &[u8],
    mut f: impl FnMut(BackupTable, &[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let bad = |what: &str| BackupError::Inconsistent(what.to_owned());
    let mut rest = frame;
    while let Some((&tag, after)) = rest.split_first() {
        let table = BackupTable::from_byte(tag).ok_or_else(|| bad("an entry names an unknown table"))?;
        let (key, after) = take_len_prefixed(after).ok_or_else(|| bad("an entry is cut short"))?;
        let (value, after) = take_len_prefixed(after).ok_or_else(|| bad("an entry is cut short"))?;
        f(table, key, value)?;
        rest = after;
    }
    Ok(())
}

fn take_len_prefixed(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let n = u32::from_be_bytes(*len) as usize;
    (rest.len() >= n).then(|| rest.split_at(n))
}

/// Reads the whole backup at `path`, authenticating every frame and checking every entry
/// against its table and the counts against the trailer; with `sink`, each entry is also
/// handed over (the restore's second pass). Returns the summary.
fn read_backup(
    file: &std::fs::File,
    path: &Path,
    keyring: &Keyring,
    progress: Progress<'_>,
    mut sink: Option<&mut Builder>,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let (mut reader, header, tag, keys) = FrameReader::open(file, path, keyring)?;
    let size = reader.size;
    let mut counts = Counts::default();
    let mut meta: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // One thread reads sealed frames, OPENERS threads authenticate and decrypt them (frame
    // i on opener i % OPENERS), this one takes them back in order: checks, counts, hands
    // entries to `sink`. A few frames are queued between stages, and buffers recycled, so
    // memory stays bounded. Any failure closes the queues and every thread stops.
    type Frame = Result<(Vec<u8>, Sealed), BackupError>;
    std::thread::scope(|s| -> Result<(), BackupError> {
        let keys = &keys;
        let (to_reuse, reusable) = channel::<Vec<u8>>();
        let mut to_open = Vec::with_capacity(OPENERS);
        let mut opened = Vec::with_capacity(OPENERS);
        for _ in 0..OPENERS {
            let (tx, rx) = sync_channel::<Frame>(PIPELINE_FRAMES);
            let (done_tx, done_rx) = sync_channel::<Frame>(PIPELINE_FRAMES);
            s.spawn(move || {
                for frame in rx {
                    let frame = frame.and_then(|(mut buf, f)| {
                        keys.open_frame(f.index, f.last, &mut buf)
                            .map_err(|_| BackupError::Damaged {
                                frame: f.index,
                                offset: f.at,
                            })?;
                        if f.trailing {
                            return Err(BackupError::Trailing(f.end));
                        }
                        Ok((buf, f))
                    });
                    if done_tx.send(frame).is_err() {
                        break;
                    }
                }
            });
            to_open.push(tx);
            opened.push(done_rx);
        }
        s.spawn(move || {
            loop {
                let mut buf = reusable.try_recv().unwrap_or_default();
                let opener = (reader.index % OPENERS as u64) as usize;
                let frame = reader.next_sealed(&mut buf).map(|f| (buf, f));
                let more = matches!(frame, Ok((_, Sealed { last: false, .. })));
                if to_open[opener].send(frame).is_err() || !more {
                    break;
                }
            }
        });
        for i in 0.. {
            let (buf, f) = opened[i % OPENERS]
                .recv()
                .map_err(|_| BackupError::Inconsistent("a backup reader stopped".into()))??;
            if f.last {
                let trailer = match postcard::take_from_bytes::<Trailer>(&buf) {
                    Ok((Trailer::V1(c), [])) => c,
                    _ => return Err(BackupError::Inconsistent("the trailer does not decode".into())),
                };
                if trailer != counts {
                    return Err(BackupError::Inconsistent(
                        "the entries do not match the counts recorded at the end".into(),
                    ));
                }
                break;
            }
            entries(&buf, |table, key, value| {
                table.check(key, value)?;
                counts.add(table, key, value);
                // Every version the backup's objects are wrapped under must be in the key
                // file, or the restored database could not open them.
                if let Some(v) = wrapped_version(table, value)
                    && keyring.version(v).is_none()
                {
                    return Err(BackupError::NeedsKeyVersion(v));
                }
                if table == BackupTable::Meta {
                    meta.insert(key.to_vec(), value.to_vec());
                }
                if let Some(b) = sink.as_deref_mut() {
                    b.insert(table, key, value)?;
                }
                Ok(())
            })?;
            progress(f.end, size);
            let _ = to_reuse.send(buf);
        }
        Ok(())
    })?;
    let unknown = check_keys_match(&meta, keyring)?;
    if let Some(b) = sink {
        // Versions added to the key file after the backup was taken: the restored
        // database learns them, as it would have by the rotation that made them.
        for v in unknown {
            if let Some(master) = keyring.version(v) {
                b.insert(
                    BackupTable::Meta,
                    format!("key_check:{v:010}").as_bytes(),
                    &master.check_value(),
                )?;
            }
        }
    }
    Ok(BackupSummary {
        path: path.to_path_buf(),
        id: crate::sigv4::hex(&tag[..8]),
        created: Timestamp(header.created_ms),
        key_version: header.key_version,
        counts,
        file_bytes: size,
        elapsed: started.elapsed(),
    })
}

/// The master key version a wrapped record of `table` uses; `None` for other tables, and
/// for a record that no longer decoded when the backup was taken (restored as it was;
/// `coffer verify` names it).
fn wrapped_version(table: BackupTable, value: &[u8]) -> Option<u32> {
    use crate::store::{StoredDevice, StoredDocument, StoredErpRecord, StoredSecret, StoredUser, WrappedRecord};
    match table {
        BackupTable::Documents => StoredDocument::decode(value).ok().map(|r| r.key_version()),
        BackupTable::Users => StoredUser::decode(value).ok().map(|r| r.key_version()),
        BackupTable::Devices => StoredDevice::decode(value).ok().map(|r| r.key_version()),
        BackupTable::Secrets => StoredSecret::decode(value).ok().map(|r| r.key_version()),
        BackupTable::ErpRecords => StoredErpRecord::decode(value).ok().map(|r| r.key_version()),
        _ => None,
    }
}

/// The restored database must open with this key file. Every version the key file holds
/// must either have the same check value in the backup, or be unknown to it (a version
/// added by a rotation after the backup was taken: the restore records its check value);
/// none may be one the backup's database retired. Returns the versions to record.
fn check_keys_match(meta: &BTreeMap<Vec<u8>, Vec<u8>>, keyring: &Keyring) -> Result<Vec<u32>, BackupError> {
    let mut unknown = Vec::new();
    for v in keyring.versions() {
        let Some(master) = keyring.version(v) else { continue };
        match meta.get(format!("key_check:{v:010}").as_bytes()) {
            None => unknown.push(v),
            Some(c) if bool::from(subtle::ConstantTimeEq::ct_eq(&c[..], &master.check_value()[..])) => {}
            Some(_) => {
                return Err(BackupError::Inconsistent(format!(
                    "the key file's master key version {v} is not the one this backup's database knows: \
                     restore with the key file that was current when the backup was made"
                )));
            }
        }
        if meta.contains_key(format!("key_retired:{v:010}").as_bytes()) {
            return Err(BackupError::Inconsistent(format!(
                "the backup's database retired master key version {v}, which the key file still holds: \
                 use the key file that was current when the backup was made"
            )));
        }
    }
    Ok(unknown)
}

/// Checks a backup end to end without restoring it.
pub fn verify_backup(
    paths: &Paths,
    passphrase: &Passphrase,
    file: &Path,
    progress: Progress<'_>,
) -> Result<BackupSummary, BackupError> {
    let (keyring, _) = unlock_keyring(paths, passphrase)?;
    let f = std::fs::File::open(file).map_err(io_at(file))?;
    read_backup(&f, file, &keyring, progress, None)
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// What the backup held.
    pub summary: BackupSummary,
    /// Where the database now is.
    pub database: PathBuf,
    /// Where the database it replaced was kept, if there was one and it was kept.
    pub kept: Option<PathBuf>,
}

/// Suffix of the database a restore replaced.
pub const PRE_RESTORE_SUFFIX: &str = ".pre-restore";
/// Suffix of the database a restore is building.
const RESTORING_SUFFIX: &str = ".restoring";

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Restores `file` into the data directory. The server must be stopped (the keys lock
/// proves it). Phase 1 verifies the whole backup; phase 2 builds the database beside the
/// live one; then it is renamed into place, the previous one kept as `*.pre-restore`
/// unless `keep` is false. `progress` gets the phase (1 or 2) with bytes done and total.
pub fn restore(
    paths: &Paths,
    passphrase: &Passphrase,
    file: &Path,
    keep: bool,
    options: StoreOptions,
    progress: &mut dyn FnMut(u8, u64, u64),
) -> Result<RestoreReport, BackupError> {
    let _lock = lock_keys(paths)?;
    let (keyring, _) = unlock_keyring(paths, passphrase)?;
    // Work beside the real file: the live name may be a symlink into another volume.
    let live = match std::fs::canonicalize(paths.database()) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => paths.database(),
        Err(e) => return Err(io_at(&paths.database())(e)),
    };
    let live_exists = live.symlink_metadata().is_ok();
    let kept = with_suffix(&live, PRE_RESTORE_SUFFIX);
    // One descriptor for both passes: replacing the file by name in between changes
    // nothing, and the header tag of pass 2 must be the one pass 1 verified.
    let f = std::fs::File::open(file).map_err(io_at(file))?;
    let verified = read_backup(&f, file, &keyring, &mut |done, total| progress(1, done, total), None)?;
    // Only now, with the whole backup verified, is anything created.
    if !paths.data_dir.exists() {
        super::durable::create_private_dir(&paths.data_dir).map_err(io_at(&paths.data_dir))?;
    }
    if keep && live_exists && kept.symlink_metadata().is_ok() {
        return Err(BackupError::PreRestoreExists(kept.display().to_string()));
    }

    let building = with_suffix(&live, RESTORING_SUFFIX);
    match std::fs::remove_file(&building) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_at(&building)(e)),
        _ => {}
    }
    let built = (|| {
        let mut builder = Builder::create(&building, options)?;
        let summary = read_backup(
            &f,
            file,
            &keyring,
            &mut |done, total| progress(2, done, total),
            Some(&mut builder),
        )?;
        if summary.id != verified.id || summary.counts != verified.counts {
            return Err(BackupError::Changed);
        }
        builder.finish()?;
        Ok::<_, BackupError>(summary)
    })();
    let summary = match built {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&building);
            return Err(e);
        }
    };
    let dir = live
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let kept = if keep && live_exists {
        // A second name for the live file first: the live name then moves to the new
        // database in one rename, so at every instant it names a complete database.
        if let Err(e) = std::fs::hard_link(&live, &kept) {
            let _ = std::fs::remove_file(&building);
            return Err(io_at(&kept)(e));
        }
        Some(kept)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&building, &live) {
        if let Some(k) = &kept {
            let _ = std::fs::remove_file(k);
        }
        let _ = std::fs::remove_file(&building);
        return Err(io_at(&live)(e));
    }
    super::durable::sync_dir(dir).map_err(io_at(dir))?;
    Ok(RestoreReport {
        summary,
        database: live,
        kept,
    })
}
