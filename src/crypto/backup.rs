//! The backup file's cryptographic frame layer.
//!
//! ```text
//! header  = "COFFERBK" ‖ version u16 ‖ master key version u32 ‖ salt [32] ‖ created ms i64   (54 bytes, BE)
//! tag     = HMAC-SHA256(tag key, header)                                                     (32 bytes)
//! frame*  = len u32 (bit 31: last frame) ‖ XChaCha20-Poly1305(enc key, nonce, AAD, plaintext) ‖ tag
//! keys    = HKDF-SHA256(salt, master key vN, "coffer/v1/hkdf/backup-enc" | "...-tag")
//! nonce_i = 0 [15] ‖ i u64 ‖ last u8;  AAD = "coffer/v1/backup-frame" ‖ header
//! ```
//! Keys are unique per backup (random salt), so counter nonces never repeat under one key.
//! The frame number and the last-frame flag are in the nonce: a dropped, repeated,
//! reordered or truncated frame, or bytes after the last one, fail authentication. The
//! header tag tells "another key file" (or a damaged header) apart from damaged content
//! before any frame is read.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::envelope::{TAG_LEN, cipher};
use super::keyfile::MasterKey;
use super::labels::{AAD_BACKUP_FRAME, BACKUP_MAGIC, BACKUP_VERSION, HKDF_BACKUP_ENC, HKDF_BACKUP_TAG};
use super::{IntegrityError, SealError};
use crate::secret::SecretKey;

/// Length of the header.
pub const HEADER_LEN: usize = 8 + 2 + 4 + 32 + 8;
/// Length of the header's tag.
pub const HEADER_TAG_LEN: usize = 32;
/// Bit of a frame's length word that marks the last frame.
pub const LAST_FRAME_BIT: u32 = 1 << 31;
/// Largest sealed frame a reader accepts (a length beyond it is damage, refused before
/// anything is allocated).
pub const MAX_SEALED_FRAME: usize = 64 * 1024 * 1024;

/// The header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The master key version the backup's keys derive from.
    pub key_version: u32,
    /// Random per backup.
    pub salt: [u8; 32],
    /// When the backup started, ms since the epoch.
    pub created_ms: i64,
}

/// Why a header is refused before any key is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Too short to hold a header and its tag.
    #[error(
        "the file is too short to be a coffer backup: check the file name (backups are written by `coffer backup`)"
    )]
    Short,
    /// No backup magic.
    #[error(
        "the file is not a coffer backup (no COFFERBK magic): check the file name (backups are written by \
         `coffer backup`)"
    )]
    NotABackup,
    /// A format this coffer does not read.
    #[error(
        "backup format version {0} is not supported by this coffer (it reads version {BACKUP_VERSION}); use a matching coffer"
    )]
    Version(u16),
}

impl Header {
    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&BACKUP_MAGIC);
        out[8..10].copy_from_slice(&BACKUP_VERSION.to_be_bytes());
        out[10..14].copy_from_slice(&self.key_version.to_be_bytes());
        out[14..46].copy_from_slice(&self.salt);
        out[46..54].copy_from_slice(&self.created_ms.to_be_bytes());
        out
    }

    /// Parses a header (its tag is checked by [`BackupKeys::check_header`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < 8 || bytes[..8] != BACKUP_MAGIC {
            return Err(if bytes.len() < 8 {
                HeaderError::Short
            } else {
                HeaderError::NotABackup
            });
        }
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(HeaderError::Short)?;
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != BACKUP_VERSION {
            return Err(HeaderError::Version(version));
        }
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&b[14..46]);
        Ok(Self {
            key_version: u32::from_be_bytes([b[10], b[11], b[12], b[13]]),
            salt,
            created_ms: i64::from_be_bytes([b[46], b[47], b[48], b[49], b[50], b[51], b[52], b[53]]),
        })
    }
}

/// A backup's keys, derived from one master key version and the header's salt.
pub struct BackupKeys {
    aead: XChaCha20Poly1305,
    tag: SecretKey,
    header: [u8; HEADER_LEN],
}

impl BackupKeys {
    /// The keys of the backup described by `header`.
    pub fn derive(master: &MasterKey, header: &Header) -> Self {
        let enc = master.derive_salted(&header.salt, HKDF_BACKUP_ENC);
        Self {
            aead: cipher(&enc),
            tag: master.derive_salted(&header.salt, HKDF_BACKUP_TAG),
            header: header.to_bytes(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.tag.expose())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(&self.header);
        mac
    }

    /// The header's tag.
    pub fn header_tag(&self) -> [u8; HEADER_TAG_LEN] {
        self.mac().finalize().into_bytes().into()
    }

    /// Checks the header's tag in constant time.
    pub fn check_header(&self, tag: &[u8]) -> Result<(), IntegrityError> {
        self.mac().verify_slice(tag).map_err(|_| IntegrityError)
    }

    fn nonce(index: u64, last: bool) -> XNonce {
        let mut n = [0u8; 24];
        n[15..23].copy_from_slice(&index.to_be_bytes());
        n[23] = u8::from(last);
        XNonce::from(n)
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_BACKUP_FRAME.len() + HEADER_LEN);
        aad.extend_from_slice(AAD_BACKUP_FRAME);
        aad.extend_from_slice(&self.header);
        aad
    }

    /// Seals frame `index` in place (the tag is appended).
    pub fn seal_frame(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let tag = self
            .aead
            .encrypt_inout_detached(&Self::nonce(index, last), &self.aad(), buf.as_mut_slice().into())
            .map_err(|_| SealError::TooLong)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens frame `index` in place (the tag is removed); on failure the buffer holds no
    /// plaintext.
    pub fn open_frame(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), IntegrityError> {
        if buf.len() < TAG_LEN {
            return Err(IntegrityError);
        }
        let tag = Tag::try_from(&buf[buf.len() - TAG_LEN..]).map_err(|_| IntegrityError)?;
        buf.truncate(buf.len() - TAG_LEN);
        self.aead
            .decrypt_inout_detached(&Self::nonce(index, last), &self.aad(), buf.as_mut_slice().into(), &tag)
            .map_err(|_| {
                buf.clear();
                IntegrityError
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyfile::Keyring;

    fn keys() -> (Keyring, Header) {
        let ring = Keyring::generate().unwrap();
        let header = Header {
            key_version: 1,
            salt: [7; 32],
            created_ms: 1_700_000_000_000,
        };
        (ring, header)
    }

    #[test]
    fn header_round_trips_and_rejects_other_files() {
        let (_, h) = keys();
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        assert_eq!(Header::parse(b"COFF"), Err(HeaderError::Short));
        assert_eq!(Header::parse(b"SQLite format 3\0......"), Err(HeaderError::NotABackup));
        let mut b = h.to_bytes();
        b[9] = 9;
        assert_eq!(Header::parse(&b), Err(HeaderError::Version(9)));
    }

    #[test]
    fn frames_open_only_at_their_place() {
        let (ring, h) = keys();
        let k = BackupKeys::derive(ring.current().1, &h);
        let mut f = b"frame zero".to_vec();
        k.seal_frame(0, false, &mut f).unwrap();
        let mut ok = f.clone();
        k.open_frame(0, false, &mut ok).unwrap();
        assert_eq!(ok, b"frame zero");
        for (i, last) in [(1, false), (0, true)] {
            let mut moved = f.clone();
            assert!(k.open_frame(i, last, &mut moved).is_err());
            assert!(moved.is_empty());
        }
        let mut flipped = f.clone();
        flipped[3] ^= 1;
        assert!(k.open_frame(0, false, &mut flipped).is_err());
    }

    #[test]
    fn another_key_or_salt_fails_the_header_tag() {
        let (ring, h) = keys();
        let tag = BackupKeys::derive(ring.current().1, &h).header_tag();
        let other = Keyring::generate().unwrap();
        assert!(BackupKeys::derive(other.current().1, &h).check_header(&tag).is_err());
        let salted = Header { salt: [8; 32], ..h };
        assert!(
            BackupKeys::derive(ring.current().1, &salted)
                .check_header(&tag)
                .is_err()
        );
        assert!(BackupKeys::derive(ring.current().1, &h).check_header(&tag).is_ok());
    }
}
