//! Streamed upload: encrypt on the caller's thread, hash and stage on a stager thread,
//! publish in one short durable commit.

use sha2::{Digest, Sha256};

use super::{DocumentInfo, DocumentMeta, MetaRecord, NewDocument, meta_aad};
use crate::app::sealing::seal_record;
use crate::app::{Vault, VaultError};
use crate::crypto::stream::{CHUNK_SIZE, NONCE_PREFIX_LEN, SealedChunk, StreamEncryptor};
use crate::model::{DocumentId, Timestamp};
use crate::secret::SecretKey;
use crate::store::StoredDocument;

/// Sealed chunks are staged in batches of this many (about 1 MiB) per store commit.
pub(super) const STAGE_BATCH: usize = 16;
/// Plaintext buffered per batch: the batch plus one chunk still in the encryptor.
pub(super) const STAGE_PLAIN_CAPACITY: usize = (STAGE_BATCH + 1) * CHUNK_SIZE as usize;

/// An upload in progress. Dropping it without [`finish`](Self::finish) discards it.
///
/// The caller's thread encrypts; a stager thread hashes the plaintext and writes the sealed
/// chunks to the store meanwhile, so the work splits evenly over two cores. At most two
/// batches (about 1 MiB of plaintext and its ciphertext each) wait between them, which
/// bounds memory whatever the document's size.
pub struct DocumentWriter<'v> {
    pub(super) vault: &'v Vault,
    pub(super) id: DocumentId,
    pub(super) new: NewDocument,
    pub(super) dek: SecretKey,
    pub(super) key_version: u32,
    pub(super) wrapped: Vec<u8>,
    pub(super) prefix: [u8; NONCE_PREFIX_LEN],
    pub(super) encryptor: Option<StreamEncryptor>,
    pub(super) plain: Vec<u8>,
    pub(super) pending: Vec<SealedChunk>,
    pub(super) stager: Option<Stager>,
}

/// Plaintext (to hash) and the sealed chunks made from it, handed to the stager.
struct Batch {
    plain: Vec<u8>,
    sealed: Vec<SealedChunk>,
}

/// Batches that may wait for the stager thread.
const STAGE_QUEUE: usize = 2;

pub(super) struct Stager {
    tx: std::sync::mpsc::SyncSender<Batch>,
    thread: std::thread::JoinHandle<Result<[u8; 32], crate::store::StoreError>>,
}

impl Stager {
    /// The thread holds the store only while it writes a batch, so a writer that is leaked
    /// (never finished nor dropped) cannot keep the database open.
    pub(super) fn spawn(store: crate::store::WeakStore, id: DocumentId) -> Result<Self, VaultError> {
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

impl<'v> DocumentWriter<'v> {
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
    pub fn finish(self) -> Result<DocumentInfo, VaultError> {
        self.complete()?.publish()
    }

    /// Seals and stages the last chunk; the content's SHA-256 is then known. Nothing is
    /// visible until [`CompletedUpload::publish`]; dropping it discards the upload.
    pub fn complete(mut self) -> Result<CompletedUpload<'v>, VaultError> {
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
        Ok(CompletedUpload {
            writer: self,
            sha256,
            size,
        })
    }
}

/// An upload whose content is all staged, not yet published.
pub struct CompletedUpload<'v> {
    writer: DocumentWriter<'v>,
    sha256: [u8; 32],
    size: u64,
}

impl CompletedUpload<'_> {
    /// The content's SHA-256.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// Seals the metadata and publishes the document in one durable commit.
    pub fn publish(self) -> Result<DocumentInfo, VaultError> {
        let CompletedUpload {
            writer: mut this,
            sha256,
            size,
        } = self;
        this.publish(sha256, size)
    }
}

impl DocumentWriter<'_> {
    fn publish(&mut self, sha256: [u8; 32], size: u64) -> Result<DocumentInfo, VaultError> {
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
            wrapped_dek: std::mem::take(&mut self.wrapped),
            nonce_prefix: self.prefix,
            sealed_meta: Vec::new(),
        };
        doc.sealed_meta = seal_record(&self.dek, &meta_aad(self.id, &doc), &MetaRecord::V1(meta.clone()))?;
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
