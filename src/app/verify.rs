//! `coffer verify`: the database's structure and every object's keys, and with `deep`
//! every chunk and content hash. Damage is listed per object, never fatal to the check of
//! the others; the whole run reads one snapshot, so it works while the server serves.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Vault, VaultError};
use crate::crypto::stream::{ChunkCipher, Layout};
use crate::model::{DeviceId, DocumentId, UserId};
use crate::store::{Family, StoreError, StoredDevice, StoredErpRecord, StoredUser, WrappedRecord};

/// One damaged object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// Kind: `document`, `user`, `device`, `service secret`, `ERP record`, `index`.
    pub kind: String,
    /// Its id (32 hex digits).
    pub id: String,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of a verification.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Objects checked.
    pub objects: u64,
    /// Documents checked.
    pub documents: u64,
    /// Chunks decrypted (deep only).
    pub chunks: u64,
    /// Content bytes decrypted and hashed (deep only).
    pub bytes: u64,
    /// Whether chunks and content hashes were checked.
    pub deep: bool,
    /// What was found damaged (the first [`MAX_LISTED`]).
    pub damaged: Vec<Damage>,
    /// Damaged objects beyond those listed.
    pub more_damaged: u64,
}

/// Damaged objects listed by id at most; more are counted (a report must fit one admin
/// socket frame, and nobody reads a longer list).
pub const MAX_LISTED: usize = 10_000;

impl VerifyReport {
    /// Damaged objects found, listed or not.
    pub fn damaged_count(&self) -> u64 {
        self.damaged.len() as u64 + self.more_damaged
    }

    fn damage(&mut self, kind: &str, id: u128, reason: impl Into<String>) {
        if self.damaged.len() >= MAX_LISTED {
            self.more_damaged += 1;
            return;
        }
        self.damaged.push(Damage {
            kind: kind.to_owned(),
            id: format!("{id:032x}"),
            reason: reason.into(),
        });
    }
}

fn why(e: &VaultError) -> String {
    match e {
        VaultError::Integrity { .. } => "its data key or sealed fields fail authentication".to_owned(),
        VaultError::MissingKeyVersion { version, .. } => {
            format!("its data key is wrapped under master key version {version}, which the key file does not hold")
        }
        VaultError::Store(StoreError::Corrupt(_)) => "its record does not decode".to_owned(),
        other => other.to_string(),
    }
}

impl Vault {
    /// Checks every object. `progress` gets (done, total): objects, or with `deep`
    /// content bytes.
    pub fn verify(&self, deep: bool, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, VaultError> {
        let snap = self.store.snapshot()?;
        let mut report = VerifyReport {
            deep,
            ..VerifyReport::default()
        };
        let mut total = 0u64;
        snap.visit_documents(|_, d| {
            total += d.map_or(0, |d| if deep { d.size } else { 1 });
            Ok::<_, VaultError>(())
        })?;
        let mut done = 0u64;
        let mut buf = Vec::new();
        snap.visit_documents(|id, doc| {
            report.objects += 1;
            report.documents += 1;
            let Some(doc) = doc else {
                report.damage("document", id.0, "its record does not decode");
                return Ok(());
            };
            let (dek, info) = match self.info(id, &doc) {
                Ok(x) => x,
                Err(e) => {
                    report.damage("document", id.0, why(&e));
                    done += if deep { doc.size } else { 1 };
                    return Ok(());
                }
            };
            let layout = Layout {
                size: doc.size,
                chunk_size: doc.chunk_size,
            };
            let stored = snap.chunk_count(id)?;
            if layout.chunk_size == 0 || stored != layout.chunk_count() {
                report.damage(
                    "document",
                    id.0,
                    format!("{stored} chunks stored, {} expected", layout.chunk_count()),
                );
                done += if deep { doc.size } else { 1 };
                return Ok(());
            }
            if !deep {
                done += 1;
                if done.is_multiple_of(64) {
                    progress(done, total);
                }
                return Ok(());
            }
            if let Err(reason) = check_content(
                &snap,
                id,
                &ChunkCipher::new(&dek, id.0, doc.nonce_prefix),
                layout,
                &info.meta.sha256,
                &mut buf,
                &mut |n| {
                    done += n;
                    report.bytes += n;
                    report.chunks += 1;
                    progress(done, total);
                },
            ) {
                report.damage("document", id.0, reason);
            }
            Ok::<_, VaultError>(())
        })?;
        progress(total, total);

        snap.visit_raw(Family::Users, |id, bytes| {
            report.objects += 1;
            match StoredUser::decode(bytes) {
                Err(_) => report.damage("user", id, "its record does not decode"),
                Ok(u) => {
                    if let Err(e) = self.user_info(UserId(id), &u) {
                        report.damage("user", id, why(&e));
                    }
                }
            }
            Ok::<_, VaultError>(())
        })?;
        snap.visit_raw(Family::Devices, |id, bytes| {
            report.objects += 1;
            match StoredDevice::decode(bytes) {
                Err(_) => report.damage("device", id, "its record does not decode"),
                Ok(d) => {
                    if let Err(e) = self.device_info(DeviceId(id), &d) {
                        report.damage("device", id, why(&e));
                    }
                }
            }
            Ok::<_, VaultError>(())
        })?;
        let mut slots = Vec::new();
        snap.visit_raw(Family::Secrets, |id, _| {
            slots.push(id);
            Ok::<_, VaultError>(())
        })?;
        for slot in slots {
            report.objects += 1;
            if let Err(e) = self.key(slot, "service secret") {
                let reason = match e {
                    super::pki::PkiFileError::Vault(v) => why(&v),
                    other => other.to_string(),
                };
                report.damage("service secret", slot, reason);
            }
        }
        snap.visit_raw(Family::ErpRecords, |id, bytes| {
            report.objects += 1;
            match StoredErpRecord::decode(bytes) {
                Err(_) => report.damage("ERP record", id, "its record does not decode"),
                Ok(r) => {
                    if let Err(e) = self.open_erp(id, &r) {
                        report.damage("ERP record", id, why(&e));
                    }
                }
            }
            Ok::<_, VaultError>(())
        })?;
        for (index, id) in snap.dangling_index_entries()? {
            report.damage(
                "index",
                id,
                format!("an entry of {index} names this record, which does not exist"),
            );
        }
        Ok(report)
    }
}

/// Decrypts every chunk of one document and compares the content hash. `each` gets each
/// chunk's plaintext length.
fn check_content(
    snap: &crate::store::Snapshot,
    id: DocumentId,
    cipher: &ChunkCipher,
    layout: Layout,
    expected: &[u8; 32],
    buf: &mut Vec<u8>,
    each: &mut dyn FnMut(u64),
) -> Result<(), String> {
    let mut hash = Sha256::new();
    let count = u32::try_from(layout.chunk_count()).map_err(|_| "too many chunks".to_owned())?;
    for index in 0..count {
        match snap.chunk_into(id, index, buf) {
            Ok(true) => {}
            Ok(false) => return Err(format!("chunk {index} is missing")),
            Err(e) => return Err(format!("chunk {index} cannot be read: {e}")),
        }
        if cipher.open_chunk(layout, index, buf).is_err() {
            return Err(format!("chunk {index} fails authentication (altered on disk)"));
        }
        hash.update(&buf[..]);
        each(buf.len() as u64);
    }
    if hash.finalize().as_slice() != expected {
        return Err("the content's SHA-256 differs from the one recorded at upload".into());
    }
    Ok(())
}
