//! Chunked content encryption (a STREAM construction over XChaCha20-Poly1305).
//!
//! Content is cut into fixed plaintext chunks of [`CHUNK_SIZE`] bytes (the last may be
//! shorter, and an empty document is one empty chunk). Chunk `i` is sealed with
//! nonce = per-object random 19-byte prefix ‖ `i` (u32 BE) ‖ last-chunk flag, and
//! AAD = label ‖ stream version ‖ object id ‖ `i`. Reordered, dropped, truncated or
//! transplanted chunks therefore fail authentication instead of yielding wrong bytes.
//!
//! The types here do no I/O: async code feeds bytes in as they arrive and ships the
//! sealed chunks wherever it stores them.

use std::ops::Range;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use super::envelope::{TAG_LEN, cipher};
use super::labels::{AAD_CHUNK, STREAM_VERSION};
use super::{IntegrityError, SealError};
use crate::secret::SecretKey;

/// Plaintext bytes per chunk. A sealed chunk (this + 16-byte tag) with its 20-byte key and
/// redb's 8-byte leaf overhead fills one 64 KiB page without spilling into a 128 KiB one.
pub const CHUNK_SIZE: u32 = 65_472;
/// Length of the random per-object nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 19;

/// Size and chunking of one stored content stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext length in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
}

impl Layout {
    /// Number of chunks (at least one: an empty stream is one empty last chunk).
    pub fn chunk_count(self) -> u64 {
        if self.chunk_size == 0 {
            return 1;
        }
        self.size.div_ceil(u64::from(self.chunk_size)).max(1)
    }

    /// Index of the last chunk.
    pub fn last_index(self) -> u64 {
        self.chunk_count() - 1
    }

    /// Plaintext length of chunk `index`.
    pub fn chunk_len(self, index: u32) -> u64 {
        let cs = u64::from(self.chunk_size);
        let start = u64::from(index) * cs;
        self.size.saturating_sub(start).min(cs)
    }

    /// The chunks covering the byte range `range` (which must be non-empty and within
    /// `size`), with the offset of `range.start` inside the first of them.
    pub fn chunks_for(self, range: &Range<u64>) -> (Range<u32>, usize) {
        let cs = u64::from(self.chunk_size.max(1));
        let first = range.start / cs;
        let end = range.end.div_ceil(cs).max(first + 1);
        let clamp = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        // `range.start % cs` < chunk_size ≤ u32::MAX, so it fits usize.
        (clamp(first)..clamp(end), (range.start % cs) as usize)
    }
}

/// The per-object content key with its nonce prefix and id.
pub struct ChunkCipher {
    aead: XChaCha20Poly1305,
    object_id: u128,
    prefix: [u8; NONCE_PREFIX_LEN],
}

impl ChunkCipher {
    /// Keys a chunk cipher with an object's data key.
    pub fn new(dek: &SecretKey, object_id: u128, prefix: [u8; NONCE_PREFIX_LEN]) -> Self {
        Self {
            aead: cipher(dek),
            object_id,
            prefix,
        }
    }

    fn nonce(&self, index: u32, last: bool) -> XNonce {
        let mut n = [0u8; 24];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.prefix);
        n[NONCE_PREFIX_LEN..23].copy_from_slice(&index.to_be_bytes());
        n[23] = u8::from(last);
        XNonce::from(n)
    }

    fn aad(&self, index: u32) -> [u8; AAD_CHUNK.len() + 2 + 16 + 4] {
        let mut a = [0u8; AAD_CHUNK.len() + 2 + 16 + 4];
        let (label, rest) = a.split_at_mut(AAD_CHUNK.len());
        label.copy_from_slice(AAD_CHUNK);
        rest[..2].copy_from_slice(&STREAM_VERSION.to_be_bytes());
        rest[2..18].copy_from_slice(&self.object_id.to_be_bytes());
        rest[18..].copy_from_slice(&index.to_be_bytes());
        a
    }

    /// Encrypts the plaintext in `buf` in place and appends the tag.
    pub fn seal_chunk(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let tag = self
            .aead
            .encrypt_inout_detached(&self.nonce(index, last), &self.aad(index), buf.as_mut_slice().into())
            .map_err(|_| SealError::TooLong)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts sealed chunk `index` of a stream with `layout` in place, leaving only the
    /// plaintext in `buf`. Fails unless the chunk is exactly the one expected there.
    pub fn open_chunk(&self, layout: Layout, index: u32, buf: &mut Vec<u8>) -> Result<(), IntegrityError> {
        if u64::from(index) > layout.last_index() {
            return Err(IntegrityError);
        }
        let last = u64::from(index) == layout.last_index();
        let body_len = buf.len().checked_sub(TAG_LEN).ok_or(IntegrityError)?;
        if body_len as u64 != layout.chunk_len(index) {
            return Err(IntegrityError);
        }
        let (body, tag) = buf.split_at_mut(body_len);
        let tag = Tag::try_from(&*tag).map_err(|_| IntegrityError)?;
        self.aead
            .decrypt_inout_detached(&self.nonce(index, last), &self.aad(index), body.into(), &tag)
            .map_err(|_| IntegrityError)?;
        buf.truncate(body_len);
        Ok(())
    }
}

/// One sealed chunk ready to be stored.
#[derive(Debug)]
pub struct SealedChunk {
    /// Position in the stream.
    pub index: u32,
    /// Ciphertext ‖ tag.
    pub bytes: Vec<u8>,
}

/// Cuts a byte stream into chunks and seals them as they fill. A full chunk is sealed only
/// when the next byte arrives, because only then is it known not to be the last.
pub struct StreamEncryptor {
    cipher: ChunkCipher,
    chunk_size: usize,
    buf: Vec<u8>,
    next_index: u32,
    total: u64,
}

impl StreamEncryptor {
    /// Starts a stream with `chunk_size`-byte plaintext chunks.
    pub fn new(cipher: ChunkCipher, chunk_size: u32) -> Self {
        let chunk_size = chunk_size.max(1) as usize;
        Self {
            cipher,
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG_LEN),
            next_index: 0,
            total: 0,
        }
    }

    /// Bytes accepted so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Accepts more plaintext; returns the chunks it completed.
    pub fn update(&mut self, mut data: &[u8]) -> Result<Vec<SealedChunk>, SealError> {
        let mut out = Vec::new();
        self.total += data.len() as u64;
        while !data.is_empty() {
            if self.buf.len() == self.chunk_size {
                out.push(self.seal_buffered(false)?);
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(out)
    }

    /// Seals what remains as the last chunk; returns it and the total plaintext length.
    pub fn finish(mut self) -> Result<(SealedChunk, u64), SealError> {
        let last = self.seal_buffered(true)?;
        Ok((last, self.total))
    }

    fn seal_buffered(&mut self, last: bool) -> Result<SealedChunk, SealError> {
        let mut bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size + TAG_LEN));
        let index = self.next_index;
        self.cipher.seal_chunk(index, last, &mut bytes)?;
        self.next_index = index.checked_add(1).ok_or(SealError::TooLong)?;
        Ok(SealedChunk { index, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher_for(id: u128) -> ChunkCipher {
        let dek = SecretKey::from_fn(|k| {
            k.fill(7);
            Ok::<_, ()>(())
        })
        .unwrap();
        ChunkCipher::new(&dek, id, [5; NONCE_PREFIX_LEN])
    }

    fn encrypt(data: &[u8], cs: u32, pieces: usize) -> Vec<SealedChunk> {
        let mut enc = StreamEncryptor::new(cipher_for(1), cs);
        let mut chunks = Vec::new();
        for piece in data.chunks(pieces.max(1)) {
            chunks.extend(enc.update(piece).unwrap());
        }
        let (last, total) = enc.finish().unwrap();
        assert_eq!(total, data.len() as u64);
        chunks.push(last);
        chunks
    }

    #[test]
    fn layout_counts_chunks() {
        let l = |size| Layout { size, chunk_size: 10 };
        assert_eq!(l(0).chunk_count(), 1);
        assert_eq!(l(1).chunk_count(), 1);
        assert_eq!(l(10).chunk_count(), 1);
        assert_eq!(l(11).chunk_count(), 2);
        assert_eq!(l(25).chunk_len(2), 5);
        assert_eq!(l(25).chunks_for(&(9..11)), (0..2, 9));
        assert_eq!(l(25).chunks_for(&(10..20)), (1..2, 0));
        assert_eq!(l(25).chunks_for(&(24..25)), (2..3, 4));
    }

    #[test]
    fn round_trip_across_piece_sizes() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for size in [0usize, 1, 99, 100, 101, 1000] {
            for piece in [1, 7, 100, 1000] {
                let chunks = encrypt(&data[..size], 100, piece);
                let layout = Layout {
                    size: size as u64,
                    chunk_size: 100,
                };
                assert_eq!(chunks.len() as u64, layout.chunk_count());
                let mut back = Vec::new();
                let c = cipher_for(1);
                for ch in chunks {
                    let mut b = ch.bytes;
                    c.open_chunk(layout, ch.index, &mut b).unwrap();
                    back.extend_from_slice(&b);
                }
                assert_eq!(back, &data[..size]);
            }
        }
    }

    #[test]
    fn misplaced_chunks_fail() {
        let data = vec![1u8; 250];
        let chunks = encrypt(&data, 100, 250);
        let layout = Layout {
            size: 250,
            chunk_size: 100,
        };
        let c = cipher_for(1);
        // Chunk 0 read as chunk 1.
        let mut b = chunks[0].bytes.clone();
        assert!(c.open_chunk(layout, 1, &mut b).is_err());
        // Truncated stream: chunk 1 presented as the last chunk of a 200-byte stream.
        let mut b = chunks[1].bytes.clone();
        assert!(
            c.open_chunk(
                Layout {
                    size: 200,
                    chunk_size: 100
                },
                1,
                &mut b
            )
            .is_err()
        );
        // Another object's cipher.
        let mut b = chunks[0].bytes.clone();
        assert!(cipher_for(2).open_chunk(layout, 0, &mut b).is_err());
        // Index past the end.
        let mut b = chunks[2].bytes.clone();
        assert!(c.open_chunk(layout, 3, &mut b).is_err());
    }
}
