//! Cryptography: passphrase KDF, the sealed key file, envelope encryption of data keys,
//! and the chunked content stream. Nothing here touches the database.

pub mod backup;
pub mod envelope;
pub mod kdf;
pub mod keyfile;
pub mod labels;
pub mod stream;
pub mod totp;

/// Authenticated decryption failed: the bytes were altered, truncated, reordered, moved
/// between objects, or sealed under another key. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("integrity check failed: stored data was altered or does not belong here")]
pub struct IntegrityError;

/// Encryption could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(#[from] getrandom::Error),
    /// The message exceeds what one AEAD call may encrypt.
    #[error("message too long to encrypt")]
    TooLong,
}

/// Fills a fresh array from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SealError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)?;
    Ok(out)
}
