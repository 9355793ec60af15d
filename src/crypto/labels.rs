//! Domain-separation labels and format versions. Changing any of these breaks every
//! existing key file and database: add new labels instead.

/// Magic at the start of `keys/master.key`.
pub const KEYFILE_MAGIC: [u8; 8] = *b"COFFERMK";
/// Current key-file format version.
pub const KEYFILE_VERSION: u16 = 1;

/// HKDF info for the key that wraps data keys, derived from one master key version.
pub const HKDF_WRAP: &[u8] = b"coffer/v1/hkdf/dek-wrap";
/// HKDF info for the key of keyed hashes over lookup names (user names, thumbprints).
pub const HKDF_INDEX: &[u8] = b"coffer/v1/hkdf/index";

/// HKDF info of a master key version's check value (stored in the database).
pub const HKDF_KEY_CHECK: &[u8] = b"coffer/v1/hkdf/key-check";

/// Magic at the start of a backup file.
pub const BACKUP_MAGIC: [u8; 8] = *b"COFFERBK";
/// Current backup format version.
pub const BACKUP_VERSION: u16 = 1;
/// HKDF info of a backup's frame encryption key (salted with the backup's random salt).
pub const HKDF_BACKUP_ENC: &[u8] = b"coffer/v1/hkdf/backup-enc";
/// HKDF info of a backup's header tag key (salted with the backup's random salt).
pub const HKDF_BACKUP_TAG: &[u8] = b"coffer/v1/hkdf/backup-tag";
/// AAD prefix of a backup frame.
pub const AAD_BACKUP_FRAME: &[u8] = b"coffer/v1/backup-frame";

/// AAD prefix of a wrapped data key.
pub const AAD_WRAP: &[u8] = b"coffer/v1/wrap";
/// AAD prefix of a content chunk.
pub const AAD_CHUNK: &[u8] = b"coffer/v1/chunk";
/// AAD prefix of sealed metadata (document metadata, user and device bodies).
pub const AAD_META: &[u8] = b"coffer/v1/meta";

/// Version of the chunked content stream (nonce layout, AAD layout).
pub const STREAM_VERSION: u16 = 1;

/// What a data key protects; bound into the AAD of its wrapping so a wrapped key cannot
/// be moved to another kind of object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A document's content and metadata.
    Document,
    /// A user record's sensitive fields.
    User,
    /// A device record's sensitive fields.
    Device,
    /// A cached ERP record.
    ErpRecord,
    /// A service secret (CA or server private key).
    Secret,
}

impl Purpose {
    /// What to call such an object in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Document => "document",
            Self::User => "user",
            Self::Device => "device",
            Self::ErpRecord => "ERP record",
            Self::Secret => "service secret",
        }
    }

    /// Stable byte label.
    pub fn label(self) -> &'static [u8] {
        match self {
            Self::Document => b"document",
            Self::User => b"user",
            Self::Device => b"device",
            Self::ErpRecord => b"erp-record",
            Self::Secret => b"secret",
        }
    }
}
