//! Strict postcard encoding of stored records.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// Encodes a versioned record.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|_| StoreError::Corrupt("record does not encode"))
}

/// Decodes a versioned record, refusing trailing bytes.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        _ => Err(StoreError::Corrupt(what)),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Rec {
        V1 { a: u32 },
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Rec::V1 { a: 7 }).unwrap();
        assert_eq!(decode::<Rec>(&bytes, "rec").unwrap(), Rec::V1 { a: 7 });
        bytes.push(0);
        assert!(decode::<Rec>(&bytes, "rec").is_err());
        assert!(decode::<Rec>(&[9], "rec").is_err());
    }
}
