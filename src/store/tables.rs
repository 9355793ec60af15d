//! Every table of the database, in one place, with the schema version.

use redb::TableDefinition;

/// Schema version stored in the `meta` table under `schema_version`. Bump with a migration.
pub const SCHEMA_VERSION: u32 = 1;
/// Key of the schema version in [`META`].
pub const SCHEMA_KEY: &str = "schema_version";

/// Database-wide settings: the schema version.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Published documents by id: postcard `DocumentRecord`.
pub const DOCUMENTS: TableDefinition<u128, &[u8]> = TableDefinition::new("documents");
/// Sealed content chunks by (document id, chunk index). Staged and published alike.
pub const CHUNKS: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("chunks");
/// Uploads in progress by id: postcard `StagedUpload`. Their chunks are in [`CHUNKS`].
pub const STAGING: TableDefinition<u128, &[u8]> = TableDefinition::new("staging");
/// Users by id: postcard `UserRecord`.
pub const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
/// Keyed hash of a user name → user id.
pub const USER_NAMES: TableDefinition<[u8; 32], u128> = TableDefinition::new("user_names");
/// Devices by id: postcard `DeviceRecord`.
pub const DEVICES: TableDefinition<u128, &[u8]> = TableDefinition::new("devices");
/// Keyed hash of a device certificate's SHA-256 thumbprint → device id.
pub const DEVICE_THUMBPRINTS: TableDefinition<[u8; 32], u128> = TableDefinition::new("device_thumbprints");
/// Sealed service secrets (CA and server private keys) by fixed slot id: postcard
/// `SecretRecord`.
pub const SECRETS: TableDefinition<u128, &[u8]> = TableDefinition::new("secrets");
/// Sessions by SHA-256 of their token: postcard `SessionRecord` (ids and times, in clear).
pub const SESSIONS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("sessions");
/// Login state by user id: postcard `LoginRecord` (failure count, lock time, last TOTP step).
pub const LOGINS: TableDefinition<u128, &[u8]> = TableDefinition::new("logins");
/// Enrolment codes by SHA-256 of the code: postcard `EnrolmentRecord` (ids and times).
pub const ENROLMENTS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("enrolments");
/// Cached ERP records by random id: postcard `ErpRecordFormat` (collection name, times,
/// size and index hash in clear; key and value sealed).
pub const ERP_RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("erp_records");
/// Keyed hash of (collection, record key) → record id.
pub const ERP_KEYS: TableDefinition<[u8; 32], u128> = TableDefinition::new("erp_keys");
/// The audit log by sequence number: postcard `AuditFormat` (time, action, outcome in
/// clear; who, from where and on what sealed; each entry chained to the one before by a
/// keyed hash).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
