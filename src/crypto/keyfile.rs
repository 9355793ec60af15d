//! The keyring (versioned master keys) and its sealed file format, `keys/master.key`.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "COFFERMK"
//! 8       2     format version (u16 BE, 1)
//! 10      4     argon2id memory, KiB (u32 BE)
//! 14      4     argon2id iterations (u32 BE)
//! 18      4     argon2id lanes (u32 BE)
//! 22      32    salt
//! 54      24    XChaCha20 nonce
//! 78      n+16  sealed keyring; AAD = bytes 0..78 (so no header field can be altered)
//! keyring plaintext: current version (u32 BE), count (u16 BE), count × (version u32 BE, key 32 B)
//! ```

use std::collections::BTreeMap;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::{NONCE_LEN, TAG_LEN, cipher};
use super::kdf::{KdfParams, KdfParamsError};
use super::labels::{HKDF_INDEX, HKDF_WRAP, KEYFILE_MAGIC, KEYFILE_VERSION};
use super::{SealError, random_bytes};
use crate::secret::{KEY_LEN, Passphrase, SecretKey};

const SALT_LEN: usize = 32;
const HEADER_LEN: usize = 8 + 2 + 12 + SALT_LEN + NONCE_LEN;
const ENTRY_LEN: usize = 4 + KEY_LEN;
/// More versions than this means a damaged file: rotation keeps at most two at a time.
const MAX_VERSIONS: usize = 1024;

/// Why a key file could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Not a coffer key file at all.
    #[error(
        "not a coffer key file (bad magic): check --keys-dir, or put back master.key from your copy of the \
         keys directory"
    )]
    NotAKeyFile,
    /// Written by a newer coffer.
    #[error("key file format version {0} is not supported by this coffer; upgrade coffer")]
    UnsupportedVersion(u16),
    /// Too short or inconsistent.
    #[error("the key file is truncated or malformed: put back master.key from your copy of the keys directory")]
    Malformed,
    /// The stored argon2id parameters are out of range.
    #[error(transparent)]
    Kdf(#[from] KdfParamsError),
    /// The passphrase does not open the file (or the file was altered).
    #[error("wrong passphrase")]
    WrongPassphrase,
}

/// One master key version and the subkeys derived from it.
#[derive(Clone)]
pub struct MasterKey {
    key: SecretKey,
    wrap: SecretKey,
    index: SecretKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    fn from_key(key: SecretKey) -> Self {
        let hk = Hkdf::<Sha256>::new(None, key.expose());
        // HKDF-SHA256 expand to 32 bytes cannot fail (limit is 255 × 32 bytes).
        let derive = |info: &[u8]| {
            SecretKey::from_fn(|out| hk.expand(info, out)).unwrap_or_else(|_| unreachable!("32-byte HKDF output"))
        };
        let wrap = derive(HKDF_WRAP);
        let index = derive(HKDF_INDEX);
        Self { key, wrap, index }
    }

    /// The subkey that wraps data keys.
    pub fn wrap_key(&self) -> &SecretKey {
        &self.wrap
    }

    /// A value that identifies this key without revealing it, stored in the database so a
    /// key file that does not belong to the database is refused.
    pub fn check_value(&self) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(None, self.key.expose());
        let mut out = [0u8; 32];
        // 32-byte output: within HKDF's limit, cannot fail.
        let _ = hk.expand(super::labels::HKDF_KEY_CHECK, &mut out);
        out
    }

    /// A key for one purpose (`info`) and one use (`salt`, random per use), e.g. a
    /// backup's keys: HKDF-SHA256 over this version's key.
    pub fn derive_salted(&self, salt: &[u8], info: &[u8]) -> SecretKey {
        let hk = Hkdf::<Sha256>::new(Some(salt), self.key.expose());
        // HKDF-SHA256 expand to 32 bytes cannot fail (limit is 255 × 32 bytes).
        SecretKey::from_fn(|out| hk.expand(info, out)).unwrap_or_else(|_| unreachable!("32-byte HKDF output"))
    }

    /// The subkey of keyed hashes over lookup names.
    pub fn index_key(&self) -> &SecretKey {
        &self.index
    }
}

/// The unlocked set of master key versions; exactly one is current. Cloning copies key
/// material into another zeroizing value (used to prepare a change before committing it).
#[derive(Clone, Debug)]
pub struct Keyring {
    versions: BTreeMap<u32, MasterKey>,
    current: u32,
}

impl Keyring {
    /// A keyring with one fresh random master key, version 1.
    pub fn generate() -> Result<Self, SealError> {
        let mut versions = BTreeMap::new();
        versions.insert(1, MasterKey::from_key(SecretKey::random()?));
        Ok(Self { versions, current: 1 })
    }

    /// The current version, used for every new wrapping.
    pub fn current(&self) -> (u32, &MasterKey) {
        let key = self.versions.get(&self.current);
        // Invariant: `current` is always a key of `versions` (checked on decode, kept by
        // `add_version` and `retain`).
        (
            self.current,
            key.unwrap_or_else(|| unreachable!("current version present")),
        )
    }

    /// A version, if the keyring still holds it.
    pub fn version(&self, v: u32) -> Option<&MasterKey> {
        self.versions.get(&v)
    }

    /// All versions held, ascending.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.versions.keys().copied()
    }

    /// Adds a fresh master key as the new current version and returns its number.
    /// The number is above every version held and above `floor` (the highest version the
    /// database has ever seen), so a number is never reused for a different key.
    pub fn add_version(&mut self, floor: u32) -> Result<u32, SealError> {
        // A keyring the file format could not read back is never sealed.
        if self.versions.len() >= MAX_VERSIONS {
            return Err(SealError::TooLong);
        }
        let next = self
            .versions
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(floor)
            .checked_add(1)
            .ok_or(SealError::TooLong)?;
        self.versions.insert(next, MasterKey::from_key(SecretKey::random()?));
        self.current = next;
        Ok(next)
    }

    /// Drops every version for which `keep` is false; the current version is always kept.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let current = self.current;
        self.versions.retain(|v, _| *v == current || keep(*v));
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(6 + self.versions.len() * ENTRY_LEN + TAG_LEN));
        out.extend_from_slice(&self.current.to_be_bytes());
        // MAX_VERSIONS < u16::MAX, enforced by decode and by rotation keeping few versions.
        out.extend_from_slice(&(self.versions.len() as u16).to_be_bytes());
        for (v, k) in &self.versions {
            out.extend_from_slice(&v.to_be_bytes());
            out.extend_from_slice(k.key.expose());
        }
        out
    }

    fn decode(plain: &[u8]) -> Result<Self, KeyFileError> {
        let (head, mut rest) = plain.split_at_checked(6).ok_or(KeyFileError::Malformed)?;
        let current = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let count = usize::from(u16::from_be_bytes([head[4], head[5]]));
        if count == 0 || count > MAX_VERSIONS || rest.len() != count * ENTRY_LEN {
            return Err(KeyFileError::Malformed);
        }
        let mut versions = BTreeMap::new();
        while let Some((entry, tail)) = rest.split_at_checked(ENTRY_LEN) {
            rest = tail;
            let v = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
            let key = SecretKey::from_fn(|k| {
                k.copy_from_slice(&entry[4..]);
                Ok::<_, KeyFileError>(())
            })?;
            if versions.insert(v, MasterKey::from_key(key)).is_some() {
                return Err(KeyFileError::Malformed);
            }
        }
        if !versions.contains_key(&current) {
            return Err(KeyFileError::Malformed);
        }
        Ok(Self { versions, current })
    }

    /// Seals the keyring under `kek`: the complete file contents.
    pub fn seal(&self, kek: &Kek) -> Result<Vec<u8>, SealError> {
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        let mut out = Vec::with_capacity(HEADER_LEN + 6 + self.versions.len() * ENTRY_LEN + TAG_LEN);
        out.extend_from_slice(&KEYFILE_MAGIC);
        out.extend_from_slice(&KEYFILE_VERSION.to_be_bytes());
        out.extend_from_slice(&kek.params.m_cost_kib.to_be_bytes());
        out.extend_from_slice(&kek.params.t_cost.to_be_bytes());
        out.extend_from_slice(&kek.params.p_cost.to_be_bytes());
        out.extend_from_slice(&kek.salt);
        out.extend_from_slice(&nonce);
        let mut body = self.encode();
        let tag = cipher(&kek.key)
            .encrypt_inout_detached(&XNonce::from(nonce), &out[..HEADER_LEN], body.as_mut_slice().into())
            .map_err(|_| SealError::TooLong)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a key file's contents with `passphrase`; also returns the key-encryption key,
    /// so the keyring can be re-sealed (rotation) without running argon2id again.
    pub fn open(file: &[u8], passphrase: &Passphrase) -> Result<(Self, Kek), KeyFileError> {
        let header = KeyFileHeader::parse(file)?;
        let kek = Kek {
            key: header.params.derive(passphrase, &header.salt)?,
            params: header.params,
            salt: header.salt,
        };
        let (aad, sealed) = file.split_at(HEADER_LEN);
        let body_len = sealed.len().checked_sub(TAG_LEN).ok_or(KeyFileError::Malformed)?;
        let (body, tag) = sealed.split_at(body_len);
        let tag = Tag::try_from(tag).map_err(|_| KeyFileError::Malformed)?;
        let mut plain = Zeroizing::new(body.to_vec());
        cipher(&kek.key)
            .decrypt_inout_detached(&XNonce::from(header.nonce), aad, plain.as_mut_slice().into(), &tag)
            .map_err(|_| KeyFileError::WrongPassphrase)?;
        Ok((Self::decode(&plain)?, kek))
    }
}

/// The key-encryption key derived from the passphrase, with the salt and parameters it
/// was derived with.
pub struct Kek {
    key: SecretKey,
    params: KdfParams,
    salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// Derives a new key-encryption key from `passphrase` with a fresh salt.
    pub fn derive(passphrase: &Passphrase, params: KdfParams) -> Result<Self, SealFileError> {
        let salt: [u8; SALT_LEN] = random_bytes()?;
        Ok(Self {
            key: params.derive(passphrase, &salt)?,
            params,
            salt,
        })
    }

    /// The argon2id parameters.
    pub fn params(&self) -> KdfParams {
        self.params
    }
}

/// Sealing the key file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealFileError {
    /// Encryption or randomness failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The argon2id parameters are out of range.
    #[error(transparent)]
    Kdf(#[from] KdfParamsError),
}

/// The clear header of a key file.
#[derive(Debug, Clone)]
pub struct KeyFileHeader {
    /// Format version.
    pub version: u16,
    /// argon2id parameters the keyring is sealed with.
    pub params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

impl KeyFileHeader {
    /// Parses and checks the header without the passphrase.
    pub fn parse(file: &[u8]) -> Result<Self, KeyFileError> {
        if file.len() < 8 || file[..8] != KEYFILE_MAGIC {
            return Err(KeyFileError::NotAKeyFile);
        }
        let h = file.get(..HEADER_LEN).ok_or(KeyFileError::Malformed)?;
        let version = u16::from_be_bytes([h[8], h[9]]);
        if version != KEYFILE_VERSION {
            return Err(KeyFileError::UnsupportedVersion(version));
        }
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let params = KdfParams {
            m_cost_kib: u32_at(10),
            t_cost: u32_at(14),
            p_cost: u32_at(18),
        }
        .validate()?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&h[22..22 + SALT_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&h[22 + SALT_LEN..HEADER_LEN]);
        if file.len() < HEADER_LEN + 6 + ENTRY_LEN + TAG_LEN {
            return Err(KeyFileError::Malformed);
        }
        Ok(Self {
            version,
            params,
            salt,
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_owned())
    }

    #[test]
    fn seal_open_round_trip() {
        let mut ring = Keyring::generate().unwrap();
        ring.add_version(0).unwrap();
        let kek = Kek::derive(&pass("a long passphrase"), KdfParams::for_tests()).unwrap();
        let file = ring.seal(&kek).unwrap();
        let (back, kek2) = Keyring::open(&file, &pass("a long passphrase")).unwrap();
        assert_eq!(kek2.params(), KdfParams::for_tests());
        // Re-sealing with the recovered KEK opens with the same passphrase.
        let again = back.seal(&kek2).unwrap();
        assert!(Keyring::open(&again, &pass("a long passphrase")).is_ok());
        assert_eq!(back.current().0, 2);
        assert_eq!(back.versions().collect::<Vec<_>>(), vec![1, 2]);
        for v in [1, 2] {
            assert_eq!(
                back.version(v).unwrap().key.expose(),
                ring.version(v).unwrap().key.expose()
            );
        }
    }

    #[test]
    fn wrong_passphrase_and_tampering_are_refused() {
        let ring = Keyring::generate().unwrap();
        let kek = Kek::derive(&pass("right passphrase"), KdfParams::for_tests()).unwrap();
        let file = ring.seal(&kek).unwrap();
        assert!(matches!(
            Keyring::open(&file, &pass("wrong passphrase")),
            Err(KeyFileError::WrongPassphrase)
        ));
        // Any altered byte after the magic/version is refused (params may fail validation first).
        for i in 10..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            assert!(Keyring::open(&bad, &pass("right passphrase")).is_err(), "byte {i}");
        }
        assert!(Keyring::open(&file[..file.len() - 1], &pass("right passphrase")).is_err());
        assert!(matches!(
            Keyring::open(b"hello", &pass("x")),
            Err(KeyFileError::NotAKeyFile)
        ));
        let mut newer = file.clone();
        newer[9] = 2;
        assert!(matches!(
            Keyring::open(&newer, &pass("right passphrase")),
            Err(KeyFileError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn retain_keeps_current() {
        let mut ring = Keyring::generate().unwrap();
        ring.add_version(0).unwrap();
        ring.retain(|_| false);
        assert_eq!(ring.versions().collect::<Vec<_>>(), vec![2]);
    }
}
