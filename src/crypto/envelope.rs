//! Envelope encryption: small sealed blobs, and data keys (DEKs) wrapped under a master
//! key version with the object's id and purpose bound into the AAD.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::labels::{AAD_WRAP, Purpose};
use super::{IntegrityError, SealError, random_bytes};
use crate::secret::{KEY_LEN, SecretKey};

/// XChaCha20 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Length of a wrapped data key: nonce ‖ encrypted key ‖ tag.
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// An AEAD instance keyed with `key`. The instance zeroizes its key copy on drop.
pub(crate) fn cipher(key: &SecretKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.expose().into())
}

/// Encrypts `plaintext` under `key` with a random nonce: returns nonce ‖ ciphertext ‖ tag.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce: [u8; NONCE_LEN] = random_bytes()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher(key)
        .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[NONCE_LEN..]).into())
        .map_err(|_| SealError::TooLong)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a blob made by [`seal`]. The plaintext is released only after the tag checks.
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, IntegrityError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(IntegrityError);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| IntegrityError)?;
    let tag = Tag::try_from(tag).map_err(|_| IntegrityError)?;
    let mut out = Zeroizing::new(body.to_vec());
    cipher(key)
        .decrypt_inout_detached(&nonce, aad, out.as_mut_slice().into(), &tag)
        .map_err(|_| IntegrityError)?;
    Ok(out)
}

/// A data key sealed under a master key version.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(pub [u8; WRAPPED_KEY_LEN]);

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrappedKey(..)")
    }
}

fn wrap_aad(purpose: Purpose, object_id: u128, key_version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_WRAP.len() + 32 + 20);
    aad.extend_from_slice(AAD_WRAP);
    aad.push(0);
    aad.extend_from_slice(purpose.label());
    aad.push(0);
    aad.extend_from_slice(&object_id.to_be_bytes());
    aad.extend_from_slice(&key_version.to_be_bytes());
    aad
}

/// Wraps `dek` under `wrap_key` (the wrapping subkey of master key `key_version`).
pub fn wrap(
    wrap_key: &SecretKey,
    key_version: u32,
    purpose: Purpose,
    object_id: u128,
    dek: &SecretKey,
) -> Result<WrappedKey, SealError> {
    let sealed = seal(wrap_key, &wrap_aad(purpose, object_id, key_version), dek.expose())?;
    let mut out = [0u8; WRAPPED_KEY_LEN];
    out.copy_from_slice(&sealed);
    Ok(WrappedKey(out))
}

/// Unwraps a data key; fails if the wrapped key, the id, the purpose or the version differ
/// from what it was wrapped with.
pub fn unwrap(
    wrap_key: &SecretKey,
    key_version: u32,
    purpose: Purpose,
    object_id: u128,
    wrapped: &WrappedKey,
) -> Result<SecretKey, IntegrityError> {
    let plain = open(wrap_key, &wrap_aad(purpose, object_id, key_version), &wrapped.0)?;
    SecretKey::from_fn(|out| {
        if plain.len() != KEY_LEN {
            return Err(IntegrityError);
        }
        out.copy_from_slice(&plain);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_fn(|k| {
            k.fill(b);
            Ok::<_, ()>(())
        })
        .unwrap()
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let kek = key(1);
        let dek = key(9);
        let w = wrap(&kek, 1, Purpose::Document, 42, &dek).unwrap();
        assert_eq!(
            unwrap(&kek, 1, Purpose::Document, 42, &w).unwrap().expose(),
            dek.expose()
        );
        assert_eq!(unwrap(&kek, 1, Purpose::Document, 43, &w).unwrap_err(), IntegrityError);
        assert_eq!(unwrap(&kek, 2, Purpose::Document, 42, &w).unwrap_err(), IntegrityError);
        assert_eq!(unwrap(&kek, 1, Purpose::User, 42, &w).unwrap_err(), IntegrityError);
        assert_eq!(
            unwrap(&key(2), 1, Purpose::Document, 42, &w).unwrap_err(),
            IntegrityError
        );
    }

    #[test]
    fn every_flipped_bit_of_a_sealed_blob_is_detected() {
        let k = key(3);
        let sealed = seal(&k, b"aad", b"hello").unwrap();
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&k, b"aad", &bad).is_err(), "bit {bit}");
        }
        assert!(open(&k, b"aad", &sealed[..sealed.len() - 1]).is_err());
        assert!(open(&k, b"aad", &[]).is_err());
        assert_eq!(open(&k, b"aad", &sealed).unwrap().as_slice(), b"hello");
    }
}
