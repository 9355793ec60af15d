//! Random 128-bit identifiers. They carry no meaning, so they may stay in clear on disk.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that is not a 32-character lowercase hex id.
#[derive(Debug, thiserror::Error)]
#[error("not a valid id: expected 32 hexadecimal characters")]
pub struct IdParseError;

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u128);

        impl $name {
            /// A fresh id from the operating system's CSPRNG.
            pub fn random() -> Result<Self, getrandom::Error> {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes)?;
                Ok(Self(u128::from_be_bytes(bytes)))
            }

            /// Big-endian bytes, as bound into AADs.
            pub fn to_bytes(self) -> [u8; 16] {
                self.0.to_be_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:032x})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(IdParseError);
                }
                u128::from_str_radix(s, 16).map(Self).map_err(|_| IdParseError)
            }
        }
    };
}

random_id!(
    /// Identifies a stored document.
    DocumentId
);
random_id!(
    /// Identifies a user.
    UserId
);
random_id!(
    /// Identifies an enrolled device; also its SigV4 access key id.
    DeviceId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = DocumentId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let s = id.to_string();
        assert_eq!(s, "0123456789abcdef0011223344556677");
        assert_eq!(s.parse::<DocumentId>().unwrap(), id);
    }

    #[test]
    fn parse_rejects_bad_input() {
        for bad in [
            "",
            "0123",
            "+123456789abcdef0011223344556677",
            "0123456789ABCDEF0011223344556677",
            "g123456789abcdef0011223344556677",
        ] {
            assert!(bad.parse::<DocumentId>().is_err(), "{bad}");
        }
    }
}
