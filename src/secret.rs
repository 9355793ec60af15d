//! Secret newtypes. Every secret zeroizes on drop, prints as `[redacted]` and is read
//! through one explicit accessor (`expose`), so every use is greppable.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length in bytes of every symmetric key coffer handles.
pub const KEY_LEN: usize = 32;

macro_rules! redacted_debug {
    ($ty:ident) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($ty), "([redacted])"))
            }
        }
    };
}

/// The operator's passphrase that unlocks `keys/master.key`.
pub struct Passphrase(Zeroizing<String>);
redacted_debug!(Passphrase);

impl Passphrase {
    /// Takes ownership of `s`; the string is zeroized when the passphrase drops.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The passphrase bytes, for the KDF only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// True when the passphrase has no characters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of characters (not bytes).
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }
}

/// A 32-byte symmetric key (master key, key-encryption key, data key, derived subkey).
/// Built in place from random bytes or a KDF so no unzeroized copy is left behind.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);
redacted_debug!(SecretKey);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut key = Self([0u8; KEY_LEN]);
        getrandom::fill(&mut key.0)?;
        Ok(key)
    }

    /// A key filled in place by `fill` (a KDF output, a decryption).
    pub fn from_fn<E>(fill: impl FnOnce(&mut [u8; KEY_LEN]) -> Result<(), E>) -> Result<Self, E> {
        let mut key = Self([0u8; KEY_LEN]);
        fill(&mut key.0)?;
        Ok(key)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// A secret string handed to a client once (a device's signing secret, a session token).
/// Stored sealed; compared in constant time.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);
redacted_debug!(SecretString);

impl SecretString {
    /// Takes ownership of `s`.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// `bytes` random bytes from the operating system's CSPRNG, base64url without padding
    /// (so it survives shells, URLs, TOML and `user:password` fields unquoted).
    pub fn random(bytes: usize) -> Result<Self, getrandom::Error> {
        use base64::Engine;
        let mut raw = Zeroizing::new(vec![0u8; bytes]);
        getrandom::fill(&mut raw)?;
        let mut s = Zeroizing::new(String::with_capacity(bytes.div_ceil(3) * 4));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&*raw, &mut s);
        Ok(Self(s))
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}
impl Eq for SecretString {}

impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// Secret bytes of any length (a TOTP seed).
#[derive(Clone)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);
redacted_debug!(SecretBytes);

impl SecretBytes {
    /// `len` random bytes.
    pub fn random(len: usize) -> Result<Self, getrandom::Error> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut v)?;
        Ok(Self(v))
    }

    /// Takes ownership of `v`.
    pub fn new(v: Vec<u8>) -> Self {
        Self(Zeroizing::new(v))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SecretBytes {}

impl serde::Serialize for SecretBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SecretBytes, E> {
                Ok(SecretBytes::new(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<SecretBytes, E> {
                Ok(SecretBytes::new(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = SecretKey::from_fn(|k| {
            k.fill(0xAB);
            Ok::<_, ()>(())
        })
        .unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "SecretKey([redacted])");
        let pass = Passphrase::new("hunter2-correct-horse".into());
        assert!(!format!("{pass:?}").contains("hunter2"));
    }
}
