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
