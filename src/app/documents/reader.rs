//! Streamed, ranged download: one snapshot, one chunk at a time, nothing released
//! before its chunk authenticates.

use super::DocumentInfo;
use crate::app::VaultError;
use crate::crypto::envelope;
use crate::crypto::stream::{CHUNK_SIZE, ChunkCipher, Layout};
use crate::model::DocumentId;
use crate::store::Snapshot;

/// Decrypts a document chunk by chunk. Each item is the next piece of plaintext; an
/// integrity error ends the stream and no bytes of the failing chunk are released.
pub struct DocumentReader {
    pub(super) snapshot: Snapshot,
    pub(super) cipher: ChunkCipher,
    pub(super) layout: Layout,
    pub(super) id: DocumentId,
    pub(super) next: u32,
    pub(super) end: u32,
    pub(super) skip: usize,
    pub(super) remaining: u64,
    pub(super) info: DocumentInfo,
    pub(super) buf: Vec<u8>,
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
