//! Known-answer vectors for the on-disk formats: a key file, a wrapped data key and a
//! sealed chunk written by format version 1 must open forever (or a migration must say
//! otherwise). `cargo test --test format_vectors -- --ignored regenerate` rewrites them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;

use coffer::crypto::envelope::{self, WRAPPED_KEY_LEN, WrappedKey};
use coffer::crypto::kdf::KdfParams;
use coffer::crypto::keyfile::{Kek, KeyFileHeader, Keyring};
use coffer::crypto::labels::Purpose;
use coffer::crypto::stream::{ChunkCipher, Layout, NONCE_PREFIX_LEN};
use coffer::secret::{Passphrase, SecretKey};

const PASSPHRASE: &str = "coffer format vector passphrase";
const OBJECT_ID: u128 = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff;
const PREFIX: [u8; NONCE_PREFIX_LEN] = [7; NONCE_PREFIX_LEN];
const PLAINTEXT: &[u8] = b"coffer chunk vector: the quick brown fox";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(" = ")))
        .unwrap_or_else(|| panic!("vector field {name} missing"))
        .trim()
}

#[test]
fn version_1_vectors_still_open() {
    let key_file = std::fs::read(dir().join("master-v1.key")).unwrap();
    let text = std::fs::read_to_string(dir().join("envelope-v1.txt")).unwrap();

    let header = KeyFileHeader::parse(&key_file).unwrap();
    assert_eq!(header.version, 1);
    assert_eq!(header.params, KdfParams::for_tests());
    let (ring, _) = Keyring::open(&key_file, &Passphrase::new(PASSPHRASE.into())).unwrap();
    assert_eq!(ring.current().0, 1);

    let wrapped: [u8; WRAPPED_KEY_LEN] = unhex(field(&text, "wrapped_dek")).try_into().unwrap();
    let dek = envelope::unwrap(
        ring.current().1.wrap_key(),
        1,
        Purpose::Document,
        OBJECT_ID,
        &WrappedKey(wrapped),
    )
    .unwrap();
    assert_eq!(hex(dek.expose()), field(&text, "dek"));

    let mut chunk = unhex(field(&text, "chunk0"));
    let layout = Layout {
        size: PLAINTEXT.len() as u64,
        chunk_size: 65_472,
    };
    ChunkCipher::new(&dek, OBJECT_ID, PREFIX)
        .open_chunk(layout, 0, &mut chunk)
        .unwrap();
    assert_eq!(chunk, PLAINTEXT);
}

/// The chunk layout as documented (nonce = prefix ‖ index BE ‖ last flag; AAD = label ‖
/// stream version ‖ object id ‖ index), checked with the AEAD crate directly.
#[test]
fn chunk_vector_matches_the_documented_construction() {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    let text = std::fs::read_to_string(dir().join("envelope-v1.txt")).unwrap();
    let dek: [u8; 32] = unhex(field(&text, "dek")).try_into().unwrap();
    let mut nonce = PREFIX.to_vec();
    nonce.extend_from_slice(&0u32.to_be_bytes());
    nonce.push(1);
    let mut aad = b"coffer/v1/chunk".to_vec();
    aad.extend_from_slice(&1u16.to_be_bytes());
    aad.extend_from_slice(&OBJECT_ID.to_be_bytes());
    aad.extend_from_slice(&0u32.to_be_bytes());
    let nonce = XNonce::try_from(nonce.as_slice()).unwrap();
    let plain = XChaCha20Poly1305::new(&dek.into())
        .decrypt(
            &nonce,
            Payload {
                msg: &unhex(field(&text, "chunk0")),
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(plain, PLAINTEXT);
}

#[test]
#[ignore = "rewrites the checked-in vectors"]
fn regenerate() {
    let ring = Keyring::generate().unwrap();
    let kek = Kek::derive(&Passphrase::new(PASSPHRASE.into()), KdfParams::for_tests()).unwrap();
    std::fs::write(dir().join("master-v1.key"), ring.seal(&kek).unwrap()).unwrap();
    let dek = SecretKey::random().unwrap();
    let wrapped = envelope::wrap(ring.current().1.wrap_key(), 1, Purpose::Document, OBJECT_ID, &dek).unwrap();
    let mut chunk = PLAINTEXT.to_vec();
    ChunkCipher::new(&dek, OBJECT_ID, PREFIX)
        .seal_chunk(0, true, &mut chunk)
        .unwrap();
    let text = format!(
        "# coffer format v1 vectors (see tests/format_vectors.rs)\n\
         passphrase = {PASSPHRASE}\nobject_id = {OBJECT_ID:032x}\nnonce_prefix = {}\nplaintext = {}\n\
         dek = {}\nwrapped_dek = {}\nchunk0 = {}\n",
        hex(&PREFIX),
        hex(PLAINTEXT),
        hex(dek.expose()),
        hex(&wrapped.0),
        hex(&chunk)
    );
    std::fs::write(dir().join("envelope-v1.txt"), text).unwrap();
}
