//! Documents: streamed upload (staged, then published in one short durable commit),
//! streamed and ranged download, listing with decrypted metadata, deletion.

mod reader;
mod writer;

use std::ops::Range;

use serde::{Deserialize, Serialize};

pub use reader::{DocumentReader, read_to_vec};
pub use writer::{CompletedUpload, DocumentWriter};
use writer::{STAGE_BATCH, STAGE_PLAIN_CAPACITY, Stager};

use super::sealing::{open_record, seal_record};
use super::{Vault, VaultError};
use crate::crypto::envelope;
use crate::crypto::labels::{AAD_META, Purpose};
use crate::crypto::random_bytes;
use crate::crypto::stream::{CHUNK_SIZE, ChunkCipher, Layout, NONCE_PREFIX_LEN, StreamEncryptor};
use crate::model::{DocumentId, Timestamp, UserId, Visibility};
use crate::secret::SecretKey;
use crate::store::StoredDocument;

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
    /// Checks the fields (lengths, no control characters) as [`Vault::upload`] will.
    pub fn validate(&self) -> Result<(), VaultError> {
        validate_fields(&self.name, &self.content_type, &self.title, &self.tags)
    }
}

fn validate_fields(name: &str, content_type: &str, title: &str, tags: &[String]) -> Result<(), VaultError> {
    let bad = |m: &str| Err(VaultError::Invalid(m.to_owned()));
    if name.is_empty() || name.len() > MAX_SHORT_FIELD {
        return bad("the document name must be 1 to 255 bytes");
    }
    if content_type.len() > MAX_SHORT_FIELD {
        return bad("the content type must be at most 255 bytes");
    }
    if title.len() > MAX_TITLE {
        return bad("the title must be at most 1024 bytes");
    }
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.len() > MAX_SHORT_FIELD) {
        return bad("at most 32 tags, each 1 to 255 bytes");
    }
    // These end up in HTTP headers and terminals: no control characters (CR, LF, NUL, ESC...).
    let fields = [name, content_type, title]
        .into_iter()
        .chain(tags.iter().map(String::as_str));
    if fields.into_iter().any(|f| f.chars().any(char::is_control)) {
        return bad("document name, content type, title and tags must not contain control characters");
    }
    Ok(())
}

/// A change to a document's metadata; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct MetaChange {
    /// New title.
    pub title: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New visibility.
    pub visibility: Option<Visibility>,
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

/// The result of [`Vault::list_page`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The page, newest first.
    pub documents: Vec<DocumentInfo>,
    /// More documents follow the last one.
    pub more: bool,
    /// Documents whose key or metadata failed the integrity check (left out).
    pub damaged: Vec<DocumentId>,
}

/// Orders documents by `(created, id)` for [`Vault::list_page`]'s heap.
struct Newest(DocumentInfo);

impl Newest {
    fn key(&self) -> (Timestamp, DocumentId) {
        (self.0.created, self.0.id)
    }
}

impl PartialEq for Newest {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Newest {}

impl PartialOrd for Newest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Newest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
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
        let (dek, version, wrapped) = self.new_dek(Purpose::Document, id.0)?;
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
        let dek = self.unwrap_dek(Purpose::Document, id.0, doc.key_version, &doc.wrapped_dek)?;
        let MetaRecord::V1(meta) = open_record(&dek, &meta_aad(id, doc), &doc.sealed_meta, Purpose::Document, id.0)?;
        Ok((dek, meta))
    }

    pub(crate) fn info(&self, id: DocumentId, doc: &StoredDocument) -> Result<(SecretKey, DocumentInfo), VaultError> {
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
            let Some(doc) = doc else {
                listing.damaged.push(id);
                continue;
            };
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

    /// Changes a document's title, tags or visibility (the content and its key stay), in
    /// one durable commit that re-seals the metadata. `allow` sees the current state first
    /// and may refuse (authorisation), in the same transaction.
    pub fn update_meta(
        &self,
        id: DocumentId,
        change: MetaChange,
        allow: impl FnOnce(&DocumentInfo) -> Result<(), VaultError>,
    ) -> Result<DocumentInfo, VaultError> {
        let mut out = None;
        self.store.update_document(id, |old: StoredDocument| {
            let (dek, mut info) = self.info(id, &old)?;
            allow(&info)?;
            if let Some(t) = change.title {
                info.meta.title = t;
            }
            if let Some(t) = change.tags {
                info.meta.tags = t;
            }
            if let Some(v) = change.visibility {
                info.meta.visibility = v;
            }
            let m = &info.meta;
            validate_fields(&m.name, &m.content_type, &m.title, &m.tags)?;
            let mut doc = StoredDocument {
                updated: Timestamp::now().max(old.updated),
                ..old
            };
            doc.sealed_meta = seal_record(&dek, &meta_aad(id, &doc), &MetaRecord::V1(info.meta.clone()))?;
            info.updated = doc.updated;
            out = Some(info);
            Ok::<_, VaultError>(doc)
        })?;
        out.ok_or(VaultError::NotFound("document"))
    }

    /// The clear owner of a document, without opening anything (to decide visibility of a
    /// document whose metadata does not open).
    pub fn document_owner(&self, id: DocumentId) -> Result<Option<UserId>, VaultError> {
        Ok(self.store.snapshot()?.document(id)?.map(|d| d.owner))
    }

    /// One page of documents accepted by `keep`, newest first, strictly older than
    /// `before` (a `(created, id)` position), at most `limit`. Documents newer than
    /// `before` are skipped without being decrypted, and memory stays proportional to
    /// `limit` whatever the number of documents.
    pub fn list_page(
        &self,
        before: Option<(Timestamp, DocumentId)>,
        limit: usize,
        keep: impl Fn(&DocumentInfo) -> bool,
    ) -> Result<Page, VaultError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let limit = limit.max(1);
        // The newest `limit + 1` accepted documents (the extra one says whether more exist).
        let mut heap: BinaryHeap<Reverse<Newest>> = BinaryHeap::with_capacity(limit + 2);
        let mut damaged = Vec::new();
        self.store.snapshot()?.visit_documents(|id, doc| {
            let Some(doc) = doc else {
                damaged.push(id);
                return Ok(());
            };
            if before.is_some_and(|b| (doc.created, id) >= b) {
                return Ok(());
            }
            if heap.len() > limit && heap.peek().is_some_and(|Reverse(n)| (doc.created, id) < n.key()) {
                return Ok(()); // older than everything kept
            }
            let info = match self.info(id, &doc) {
                Ok((_, info)) => info,
                Err(VaultError::Integrity { .. } | VaultError::MissingKeyVersion { .. }) => {
                    damaged.push(id);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if !keep(&info) {
                return Ok(());
            }
            heap.push(Reverse(Newest(info)));
            if heap.len() > limit + 1 {
                heap.pop();
            }
            Ok::<(), VaultError>(())
        })?;
        let mut documents: Vec<DocumentInfo> = heap.into_iter().map(|Reverse(Newest(i))| i).collect();
        documents.sort_by_key(|d| std::cmp::Reverse((d.created, d.id)));
        let more = documents.len() > limit;
        documents.truncate(limit);
        Ok(Page {
            documents,
            more,
            damaged,
        })
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
