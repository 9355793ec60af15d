//! Documents, their chunks, and the staging area for uploads in progress.

use redb::{Durability, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::{CHUNKS, DOCUMENTS, STAGING};
use super::{Snapshot, Store, StoreError, WrappedRecord, remove_chunks};
use crate::crypto::stream::SealedChunk;
use crate::model::{DocumentId, Timestamp, UserId};

/// A document as stored. Everything sensitive is inside `sealed_meta`; the clear fields
/// are the ones the README lists as clear on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDocument {
    /// Owner's user id.
    pub owner: UserId,
    /// Plaintext content length.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Creation time.
    pub created: Timestamp,
    /// Last change.
    pub updated: Timestamp,
    /// Master key version wrapping `wrapped_dek`.
    pub key_version: u32,
    /// The document's data key, wrapped (nonce ‖ ciphertext ‖ tag).
    pub wrapped_dek: Vec<u8>,
    /// Random per-document nonce prefix of the chunk stream.
    pub nonce_prefix: [u8; 19],
    /// Encrypted metadata (name, content type, title, tags, visibility, SHA-256).
    pub sealed_meta: Vec<u8>,
}

/// Versioned encoding of [`StoredDocument`].
#[derive(Serialize, Deserialize)]
pub enum DocumentRecord {
    /// Format 1.
    V1(StoredDocument),
}

impl WrappedRecord for StoredDocument {
    const WHAT: &'static str = "a document record";
    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        match decode::<DocumentRecord>(bytes, Self::WHAT)? {
            DocumentRecord::V1(d) => Ok(d),
        }
    }
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&DocumentRecord::V1(self.clone()))
    }
    fn key_version(&self) -> u32 {
        self.key_version
    }
}

/// An upload in progress.
#[derive(Serialize, Deserialize)]
enum StagedUpload {
    V1 { started: Timestamp },
}

impl Store {
    /// Registers an upload in progress; its chunks are garbage unless it is published.
    pub fn begin_upload(&self, id: DocumentId) -> Result<(), StoreError> {
        let txn = self.write(Durability::None)?;
        {
            if txn.open_table(DOCUMENTS)?.get(id.0)?.is_some() {
                return Err(StoreError::Conflict("a document with this id"));
            }
            let mut staging = txn.open_table(STAGING)?;
            if staging.get(id.0)?.is_some() {
                return Err(StoreError::Conflict("an upload with this id"));
            }
            staging.insert(
                id.0,
                encode(&StagedUpload::V1 {
                    started: Timestamp::now(),
                })?
                .as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Stores sealed chunks of an upload in progress. Not durable on its own: the commit
    /// that publishes the document makes them durable.
    pub fn stage_chunks(&self, id: DocumentId, chunks: &[SealedChunk]) -> Result<(), StoreError> {
        let txn = self.write(Durability::None)?;
        {
            if txn.open_table(STAGING)?.get(id.0)?.is_none() {
                return Err(StoreError::NotFound("upload"));
            }
            let mut table = txn.open_table(CHUNKS)?;
            for c in chunks {
                table.insert((id.0, c.index), c.bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Makes a staged upload a visible document, durably, in one short commit.
    pub fn publish_document(&self, id: DocumentId, doc: &StoredDocument) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut staging = txn.open_table(STAGING)?;
            if staging.remove(id.0)?.is_none() {
                return Err(StoreError::NotFound("upload"));
            }
            let mut docs = txn.open_table(DOCUMENTS)?;
            if docs.get(id.0)?.is_some() {
                return Err(StoreError::Conflict("a document with this id"));
            }
            docs.insert(id.0, doc.encode()?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Drops an upload in progress and its chunks.
    pub fn discard_upload(&self, id: DocumentId) -> Result<(), StoreError> {
        let txn = self.write(Durability::None)?;
        {
            let mut staging = txn.open_table(STAGING)?;
            if staging.remove(id.0)?.is_some() {
                remove_chunks(&mut txn.open_table(CHUNKS)?, id.0)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Read-modify-write of a document's record in one durable write transaction (metadata
    /// change), so concurrent changes cannot overwrite each other. Its chunks are untouched.
    pub fn update_document<E: From<StoreError>>(
        &self,
        id: DocumentId,
        change: impl FnOnce(StoredDocument) -> Result<StoredDocument, E>,
    ) -> Result<(), E> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut docs = txn.open_table(DOCUMENTS).map_err(StoreError::from)?;
            let old = match docs.get(id.0).map_err(StoreError::from)? {
                Some(g) => StoredDocument::decode(g.value())?,
                None => return Err(StoreError::NotFound("document").into()),
            };
            let new = change(old)?;
            docs.insert(id.0, new.encode()?.as_slice()).map_err(StoreError::from)?;
        }
        txn.commit().map_err(StoreError::from)?;
        Ok(())
    }

    /// Deletes a document: its record (with the wrapped key) and all its chunks in one
    /// durable commit. Returns false if there was no such document.
    pub fn delete_document(&self, id: DocumentId) -> Result<bool, StoreError> {
        let txn = self.write(Durability::Immediate)?;
        let existed = {
            let mut docs = txn.open_table(DOCUMENTS)?;
            let existed = docs.remove(id.0)?.is_some();
            if existed {
                remove_chunks(&mut txn.open_table(CHUNKS)?, id.0)?;
            }
            existed
        };
        txn.commit()?;
        Ok(existed)
    }
}

impl Snapshot {
    /// One document's record.
    pub fn document(&self, id: DocumentId) -> Result<Option<StoredDocument>, StoreError> {
        let t = self.txn.open_table(DOCUMENTS)?;
        let guard = t.get(id.0)?;
        guard.map(|g| StoredDocument::decode(g.value())).transpose()
    }

    /// Every document record, in id order.
    /// A record that no longer decodes comes back as `None`, so one damaged record does
    /// not hide the others.
    pub fn documents(&self) -> Result<Vec<(DocumentId, Option<StoredDocument>)>, StoreError> {
        let t = self.txn.open_table(DOCUMENTS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((DocumentId(k.value()), StoredDocument::decode(v.value()).ok()));
        }
        Ok(out)
    }

    /// Calls `f` with every document record in id order (`None`: it does not decode),
    /// holding one record at a time.
    pub fn visit_documents<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(DocumentId, Option<StoredDocument>) -> Result<(), E>,
    ) -> Result<(), E> {
        let t = self.txn.open_table(DOCUMENTS).map_err(StoreError::from)?;
        for entry in t.iter().map_err(StoreError::from)? {
            let (k, v) = entry.map_err(StoreError::from)?;
            f(DocumentId(k.value()), StoredDocument::decode(v.value()).ok())?;
        }
        Ok(())
    }

    /// One sealed chunk, copied into `buf` (cleared first). False if it is missing.
    pub fn chunk_into(&self, id: DocumentId, index: u32, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let t = self.txn.open_table(CHUNKS)?;
        buf.clear();
        match t.get((id.0, index))? {
            Some(g) => {
                buf.extend_from_slice(g.value());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Number of chunks stored under `id` (published or staged).
    pub fn chunk_count(&self, id: DocumentId) -> Result<u64, StoreError> {
        let t = self.txn.open_table(CHUNKS)?;
        let mut n = 0;
        for e in t.range((id.0, 0)..=(id.0, u32::MAX))? {
            e?;
            n += 1;
        }
        Ok(n)
    }

    /// Number of uploads in progress.
    pub fn staged_uploads(&self) -> Result<u64, StoreError> {
        Ok(self.txn.open_table(STAGING)?.len()?)
    }
}
