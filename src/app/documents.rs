//! Documents: streamed upload (staged, then published in one short durable commit),
//! streamed and ranged download, listing with decrypted metadata, deletion.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Vault, VaultError};
use crate::crypto::envelope::{self, WrappedKey};
use crate::crypto::labels::{AAD_META, Purpose};
use crate::crypto::random_bytes;
use crate::crypto::stream::{CHUNK_SIZE, ChunkCipher, Layout, NONCE_PREFIX_LEN, SealedChunk, StreamEncryptor};
use crate::model::{DocumentId, Timestamp, UserId, Visibility};
use crate::secret::SecretKey;
use crate::store::{Snapshot, StoredDocument};

/// Sealed chunks are staged in batches of this many (about 1 MiB) per store commit.
const STAGE_BATCH: usize = 16;
/// Plaintext buffered per batch: the batch plus one chunk still in the encryptor.
const STAGE_PLAIN_CAPACITY: usize = (STAGE_BATCH + 1) * CHUNK_SIZE as usize;
/// Longest accepted name, content type and tag, in bytes.
const MAX_SHORT_FIELD: usize = 255;
/// Longest accepted title, in bytes.
const MAX_TITLE: usize = 1024;
/// Most tags on one document.
const MAX_TAGS: usize = 32;

/// A document's sensitive metadata; stored only encrypted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentMeta {
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Title.
    pub title: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Who may see it besides the owner.
    pub visibility: Visibility,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for DocumentMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and titles can be sensitive; keep them out of logs.
        f.debug_struct("DocumentMeta")
            .field("visibility", &self.visibility)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
enum MetaRecord {
    V1(DocumentMeta),
}

/// What the uploader says about a new document.
#[derive(Clone)]
pub struct NewDocument {
    /// Owner.
    pub owner: UserId,
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Title (may be empty).
    pub title: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Visibility.
    pub visibility: Visibility,
}

impl NewDocument {
    fn validate(&self) -> Result<(), VaultError> {
        let bad = |m: &str| Err(VaultError::Invalid(m.to_owned()));
        if self.name.is_empty() || self.name.len() > MAX_SHORT_FIELD {
            return bad("the document name must be 1 to 255 bytes");
        }
        if self.content_type.len() > MAX_SHORT_FIELD {
            return bad("the content type must be at most 255 bytes");
        }
        if self.title.len() > MAX_TITLE {
            return bad("the title must be at most 1024 bytes");
        }
        if self.tags.len() > MAX_TAGS || self.tags.iter().any(|t| t.is_empty() || t.len() > MAX_SHORT_FIELD) {
            return bad("at most 32 tags, each 1 to 255 bytes");
        }
        // These end up in HTTP headers and terminals: no control characters (CR, LF, NUL, ESC...).
        let fields = [&self.name, &self.content_type, &self.title]
            .into_iter()
            .chain(&self.tags);
        if fields.into_iter().any(|f| f.chars().any(char::is_control)) {
            return bad("document name, content type, title and tags must not contain control characters");
        }
        Ok(())
    }
}

/// A document as the application sees it: clear fields plus decrypted metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentInfo {
    /// Id.
    pub id: DocumentId,
    /// Owner.
    pub owner: UserId,
    /// Content length in bytes.
    pub size: u64,
    /// Creation time.
    pub created: Timestamp,
    /// Last change.
    pub updated: Timestamp,
    /// Master key version wrapping its data key.
    pub key_version: u32,
    /// Decrypted metadata.
    pub meta: DocumentMeta,
}

/// The result of [`Vault::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Readable documents matching the filter, newest first.
    pub documents: Vec<DocumentInfo>,
    /// Documents whose key or metadata failed the integrity check.
    pub damaged: Vec<DocumentId>,
}

/// Which documents to list. Every set condition must hold.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListFilter {
    /// Only this owner's.
    pub owner: Option<UserId>,
    /// Only this visibility.
    pub visibility: Option<Visibility>,
}

fn meta_aad(id: DocumentId, doc: &StoredDocument) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_META.len() + 80);
    aad.extend_from_slice(AAD_META);
    aad.push(0);
    aad.extend_from_slice(Purpose::Document.label());
    aad.push(0);
    aad.extend_from_slice(&id.to_bytes());
    aad.extend_from_slice(&doc.owner.to_bytes());
    aad.extend_from_slice(&doc.size.to_be_bytes());
    aad.extend_from_slice(&doc.chunk_size.to_be_bytes());
    aad.extend_from_slice(&doc.nonce_prefix);
    // Upload time is evidence for a signed contract: bind it too.
    aad.extend_from_slice(&doc.created.0.to_be_bytes());
    aad.extend_from_slice(&doc.updated.0.to_be_bytes());
    aad
}

impl Vault {
    /// Starts an upload. Bytes go in through [`DocumentWriter::write`]; nothing is visible
    /// until [`DocumentWriter::finish`] returns, and then it is durable.
    pub fn upload(&self, new: NewDocument) -> Result<DocumentWriter<'_>, VaultError> {
        new.validate()?;
        let id = DocumentId::random().map_err(crate::crypto::SealError::from)?;
        let dek = SecretKey::random().map_err(crate::crypto::SealError::from)?;
        let (version, master) = self.keyring.current();
        let wrapped = envelope::wrap(master.wrap_key(), version, Purpose::Document, id.0, &dek)?;
        let prefix: [u8; NONCE_PREFIX_LEN] = random_bytes()?;
        let encryptor = StreamEncryptor::new(ChunkCipher::new(&dek, id.0, prefix), CHUNK_SIZE);
        self.store.begin_upload(id)?;
        Ok(DocumentWriter {
            vault: self,
            id,
            new,
            dek,
            key_version: version,
            wrapped,
            prefix,
            encryptor: Some(encryptor),
            plain: Vec::with_capacity(STAGE_PLAIN_CAPACITY),
            pending: Vec::with_capacity(STAGE_BATCH),
            stager: Some(Stager::spawn(self.store.downgrade(), id)?),
        })
    }

    fn open_document(&self, id: DocumentId, doc: &StoredDocument) -> Result<(SecretKey, DocumentMeta), VaultError> {
        let master = self.master("document", id, doc.key_version)?;
        let wrapped = WrappedKey(
            doc.wrapped_dek
                .as_slice()
                .try_into()
                .map_err(|_| VaultError::Integrity {
                    what: "document",
                    id: id.to_string(),
                })?,
        );
        let dek = envelope::unwrap(master.wrap_key(), doc.key_version, Purpose::Document, id.0, &wrapped)
            .map_err(VaultError::integrity("document", id))?;
        let plain = envelope::open(&dek, &meta_aad(id, doc), &doc.sealed_meta)
            .map_err(VaultError::integrity("document", id))?;
        let meta = match postcard::take_from_bytes::<MetaRecord>(&plain) {
            Ok((MetaRecord::V1(meta), [])) => meta,
            _ => {
                return Err(VaultError::Integrity {
                    what: "document",
                    id: id.to_string(),
                });
            }
        };
        Ok((dek, meta))
    }

    fn info(&self, id: DocumentId, doc: &StoredDocument) -> Result<(SecretKey, DocumentInfo), VaultError> {
        let (dek, meta) = self.open_document(id, doc)?;
        let info = DocumentInfo {
            id,
            owner: doc.owner,
            size: doc.size,
            created: doc.created,
            updated: doc.updated,
            key_version: doc.key_version,
            meta,
        };
        Ok((dek, info))
    }

    /// One document's clear fields and decrypted metadata.
    pub fn document(&self, id: DocumentId) -> Result<DocumentInfo, VaultError> {
        let doc = self
            .store
            .snapshot()?
            .document(id)?
            .ok_or(VaultError::NotFound("document"))?;
        Ok(self.info(id, &doc)?.1)
    }

    /// Opens a document for reading, all of it or the byte range `range`. The reader
    /// works on one snapshot, so a concurrent delete cannot cut it short.
    pub fn read(&self, id: DocumentId, range: Option<Range<u64>>) -> Result<DocumentReader, VaultError> {
        let snapshot = self.store.snapshot()?;
        let doc = snapshot.document(id)?.ok_or(VaultError::NotFound("document"))?;
        let (dek, info) = self.info(id, &doc)?;
        let layout = Layout {
            size: doc.size,
            chunk_size: doc.chunk_size,
        };
        if layout.chunk_size == 0 {
            return Err(VaultError::Integrity {
                what: "document",
                id: id.to_string(),
            });
        }
        let range = match range {
            None => 0..doc.size,
            Some(r) if r.start <= r.end && r.end <= doc.size => r,
            Some(_) => {
                return Err(VaultError::Invalid(format!(
                    "range outside the document's {} bytes",
                    doc.size
                )));
            }
        };
        let (chunks, skip) = if range.is_empty() {
            (0..0, 0)
        } else {
            layout.chunks_for(&range)
        };
        // An empty full read still authenticates the document's (empty) last chunk.
        let chunks = if range.is_empty() && doc.size == 0 {
            0..1
        } else {
            chunks
        };
        Ok(DocumentReader {
            snapshot,
            cipher: ChunkCipher::new(&dek, id.0, doc.nonce_prefix),
            layout,
            id,
            next: chunks.start,
            end: chunks.end,
            skip,
            remaining: range.end - range.start,
            info,
            buf: Vec::with_capacity(CHUNK_SIZE as usize + envelope::TAG_LEN),
        })
    }

    /// Documents matching `filter`, newest first, with decrypted metadata. A document whose
    /// key or metadata fails its integrity check does not hide the others: it is listed
    /// in [`Listing::damaged`] (when its clear owner matches the filter).
    pub fn list(&self, filter: ListFilter) -> Result<Listing, VaultError> {
        let mut listing = Listing::default();
        for (id, doc) in self.store.snapshot()?.documents()? {
            if filter.owner.is_some_and(|o| o != doc.owner) {
                continue;
            }
            let info = match self.info(id, &doc) {
                Ok((_, info)) => info,
                Err(VaultError::Integrity { .. } | VaultError::MissingKeyVersion { .. }) => {
                    listing.damaged.push(id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if filter.visibility.is_some_and(|v| v != info.meta.visibility) {
                continue;
            }
            listing.documents.push(info);
        }
        listing
            .documents
            .sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        Ok(listing)
    }

    /// Deletes a document, its wrapped key and its chunks in one durable commit.
    pub fn delete(&self, id: DocumentId) -> Result<(), VaultError> {
        if self.store.delete_document(id)? {
            Ok(())
        } else {
            Err(VaultError::NotFound("document"))
        }
    }
}

/// An upload in progress. Dropping it without [`finish`](Self::finish) discards it.
///
/// The caller's thread encrypts; a stager thread hashes the plaintext and writes the sealed
/// chunks to the store meanwhile, so the work splits evenly over two cores. At most two
/// batches (about 1 MiB of plaintext and its ciphertext each) wait between them, which
/// bounds memory whatever the document's size.
pub struct DocumentWriter<'v> {
    vault: &'v Vault,
    id: DocumentId,
    new: NewDocument,
    dek: SecretKey,
    key_version: u32,
    wrapped: WrappedKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    encryptor: Option<StreamEncryptor>,
    plain: Vec<u8>,
    pending: Vec<SealedChunk>,
    stager: Option<Stager>,
}

/// Plaintext (to hash) and the sealed chunks made from it, handed to the stager.
struct Batch {
    plain: Vec<u8>,
    sealed: Vec<SealedChunk>,
}

/// Batches that may wait for the stager thread.
const STAGE_QUEUE: usize = 2;

struct Stager {
    tx: std::sync::mpsc::SyncSender<Batch>,
    thread: std::thread::JoinHandle<Result<[u8; 32], crate::store::StoreError>>,
}

impl Stager {
    /// The thread holds the store only while it writes a batch, so a writer that is leaked
    /// (never finished nor dropped) cannot keep the database open.
    fn spawn(store: crate::store::WeakStore, id: DocumentId) -> Result<Self, VaultError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(STAGE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("coffer-stager".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for batch in rx {
                    hasher.update(&batch.plain);
                    let store = store
                        .upgrade()
                        .ok_or(crate::store::StoreError::NotFound("open database"))?;
                    store.stage_chunks(id, &batch.sealed)?;
                }
                Ok(hasher.finalize().into())
            })
            .map_err(|source| VaultError::Write {
                path: "stager thread".into(),
                source,
            })?;
        Ok(Self { tx, thread })
    }

    /// Waits for every queued batch to be written; returns the content's SHA-256.
    fn finish(self) -> Result<[u8; 32], VaultError> {
        drop(self.tx);
        match self.thread.join() {
            Ok(result) => Ok(result?),
            Err(_) => Err(VaultError::Invalid("the upload's stager thread failed".into())),
        }
    }
}

impl DocumentWriter<'_> {
    /// The id the document will have.
    pub fn id(&self) -> DocumentId {
        self.id
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.encryptor.as_ref().map_or(0, StreamEncryptor::total)
    }

    /// Accepts the next bytes of content.
    pub fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        // Take large writes a chunk at a time so buffers stay bounded by one batch.
        for piece in data.chunks(CHUNK_SIZE as usize) {
            let enc = self
                .encryptor
                .as_mut()
                .ok_or(VaultError::Invalid("upload already finished".into()))?;
            self.plain.extend_from_slice(piece);
            self.pending.extend(enc.update(piece)?);
            if self.pending.len() >= STAGE_BATCH {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), VaultError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            plain: std::mem::replace(&mut self.plain, Vec::with_capacity(STAGE_PLAIN_CAPACITY)),
            sealed: std::mem::replace(&mut self.pending, Vec::with_capacity(STAGE_BATCH)),
        };
        let sent = match &self.stager {
            Some(stager) => stager.tx.send(batch).is_ok(),
            None => false,
        };
        if !sent {
            // The stager stopped early: its error says why.
            return match self.stager.take() {
                Some(stager) => stager
                    .finish()
                    .and(Err(VaultError::Invalid("the upload's stager stopped".into()))),
                None => Err(VaultError::Invalid("upload already finished".into())),
            };
        }
        Ok(())
    }

    /// Seals the last chunk and the metadata and publishes the document durably.
    pub fn finish(mut self) -> Result<DocumentInfo, VaultError> {
        let enc = self
            .encryptor
            .take()
            .ok_or(VaultError::Invalid("upload already finished".into()))?;
        let (last, size) = enc.finish()?;
        self.pending.push(last);
        self.flush()?;
        let stager = self
            .stager
            .take()
            .ok_or(VaultError::Invalid("upload already finished".into()))?;
        let sha256 = stager.finish()?;
        let now = Timestamp::now();
        let meta = DocumentMeta {
            name: std::mem::take(&mut self.new.name),
            content_type: std::mem::take(&mut self.new.content_type),
            title: std::mem::take(&mut self.new.title),
            tags: std::mem::take(&mut self.new.tags),
            visibility: self.new.visibility,
            sha256,
        };
        let mut doc = StoredDocument {
            owner: self.new.owner,
            size,
            chunk_size: CHUNK_SIZE,
            created: now,
            updated: now,
            key_version: self.key_version,
            wrapped_dek: self.wrapped.0.to_vec(),
            nonce_prefix: self.prefix,
            sealed_meta: Vec::new(),
        };
        let plain = Zeroizing::new(
            postcard::to_stdvec(&MetaRecord::V1(meta.clone()))
                .map_err(|_| VaultError::Invalid("metadata does not encode".into()))?,
        );
        doc.sealed_meta = envelope::seal(&self.dek, &meta_aad(self.id, &doc), &plain)?;
        self.vault.store.publish_document(self.id, &doc)?;
        let info = DocumentInfo {
            id: self.id,
            owner: doc.owner,
            size,
            created: doc.created,
            updated: doc.updated,
            key_version: doc.key_version,
            meta,
        };
        // Published: nothing left to discard on drop.
        self.id = DocumentId(0);
        Ok(info)
    }

    /// Discards the upload and its staged chunks.
    pub fn abort(mut self) -> Result<(), VaultError> {
        self.discard()
    }

    fn discard(&mut self) -> Result<(), VaultError> {
        let id = std::mem::replace(&mut self.id, DocumentId(0));
        if let Some(stager) = self.stager.take() {
            // Its outcome no longer matters; wait so it cannot write after the discard.
            let _ = stager.finish();
        }
        if id != DocumentId(0) {
            self.vault.store.discard_upload(id)?;
        }
        Ok(())
    }
}

impl Drop for DocumentWriter<'_> {
    fn drop(&mut self) {
        // Best effort: whatever is left is collected when the database next opens.
        let _ = self.discard();
    }
}

/// Decrypts a document chunk by chunk. Each item is the next piece of plaintext; an
/// integrity error ends the stream and no bytes of the failing chunk are released.
pub struct DocumentReader {
    snapshot: Snapshot,
    cipher: ChunkCipher,
    layout: Layout,
    id: DocumentId,
    next: u32,
    end: u32,
    skip: usize,
    remaining: u64,
    info: DocumentInfo,
    buf: Vec<u8>,
}

impl DocumentReader {
    /// The document being read.
    pub fn info(&self) -> &DocumentInfo {
        &self.info
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn next_piece(&mut self) -> Result<Vec<u8>, VaultError> {
        let index = self.next;
        self.next += 1;
        let integrity = || VaultError::Integrity {
            what: "document",
            id: self.id.to_string(),
        };
        if !self.snapshot.chunk_into(self.id, index, &mut self.buf)? {
            return Err(integrity());
        }
        self.cipher
            .open_chunk(self.layout, index, &mut self.buf)
            .map_err(|_| integrity())?;
        let start = std::mem::take(&mut self.skip).min(self.buf.len());
        let avail = self.buf.len() - start;
        let take = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(avail);
        self.remaining -= take as u64;
        // Hand the buffer out instead of copying it; the next chunk gets a fresh one.
        let mut piece = std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_SIZE as usize + envelope::TAG_LEN),
        );
        piece.truncate(start + take);
        piece.drain(..start);
        Ok(piece)
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Vec<u8>, VaultError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let piece = self.next_piece();
        if piece.is_err() {
            self.next = self.end;
        }
        Some(piece)
    }
}

/// Reads a whole document into memory (for tests and small documents).
pub fn read_to_vec(reader: DocumentReader) -> Result<Vec<u8>, VaultError> {
    let mut out = Vec::new();
    for piece in reader {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}
