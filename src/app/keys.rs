//! Master key lifecycle: rotation (new version, rewrap every data key, retire unused
//! versions), passphrase change (re-seal the keyring only), and status.

use std::collections::BTreeMap;

use super::{Vault, VaultError, write_key_file};
use crate::crypto::kdf::KdfParams;
use crate::crypto::keyfile::Kek;
use crate::crypto::labels::Purpose;
use crate::secret::Passphrase;
use crate::store::{Family, Rewrapped, StoredDocument, StoredSecret};

/// Records rewrapped per durable commit.
pub const REWRAP_BATCH: usize = 256;

/// Master key versions and what uses them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    /// The version new objects are wrapped under.
    pub current: u32,
    /// Versions the key file holds, with how many objects each wraps.
    pub versions: BTreeMap<u32, u64>,
    /// Versions objects refer to that the key file does not hold (damage).
    pub missing: BTreeMap<u32, u64>,
    /// Records that no longer decode (damage); their version is unknown.
    pub undecodable: u64,
    /// A rotation was interrupted; `coffer key rotate` completes it.
    pub rotation_unfinished: bool,
    /// argon2id parameters of the key file.
    pub kdf: KdfParams,
}

/// Outcome of a completed rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotateReport {
    /// The version everything is now wrapped under.
    pub current: u32,
    /// True if this run resumed an interrupted rotation instead of starting a new one.
    pub resumed: bool,
    /// Records rewrapped by this run.
    pub rewrapped: u64,
    /// Versions removed from the key file.
    pub retired: Vec<u32>,
    /// Objects that could not be rewrapped (damaged, or wrapped under a version the key
    /// file lacks); the versions they use were kept.
    pub damaged: Vec<String>,
}

const FAMILIES: [Family; 5] = [
    Family::Documents,
    Family::Users,
    Family::Devices,
    Family::Secrets,
    Family::ErpRecords,
];

/// A rotation under way. Each [`step`](Self::step) commits durably, so stopping between
/// (or during) steps is safe: running `coffer key rotate` again resumes it.
pub struct Rotation<'v> {
    vault: &'v Vault,
    _kek: std::sync::MutexGuard<'v, Kek>,
    target: u32,
    resumed: bool,
    family: usize,
    cursor: Option<u128>,
    rewrapped: u64,
    damaged: Vec<String>,
}

/// A record whose key cannot be unwrapped (altered, or its version is gone) must not stop
/// the rotation of all the others: it is skipped and reported, and the version it needs
/// stays in the key file.
fn tolerate_damage<R>(
    damaged: &mut Vec<String>,
    purpose: Purpose,
    id: u128,
    result: Result<Rewrapped<R>, VaultError>,
) -> Result<Option<Rewrapped<R>>, VaultError> {
    match result {
        Ok(r) => Ok(Some(r)),
        Err(VaultError::Integrity { .. } | VaultError::MissingKeyVersion { .. }) => {
            damaged.push(format!("{} {id:032x}", purpose.noun()));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl Vault {
    /// Master key versions, their use and the KDF parameters.
    pub fn key_status(&self) -> Result<KeyStatus, VaultError> {
        let keys = self.keys();
        let usage = self.store.key_usage()?;
        let mut versions: BTreeMap<u32, u64> = keys.versions().map(|v| (v, 0)).collect();
        let mut missing = BTreeMap::new();
        for (v, n) in usage.versions {
            match versions.get_mut(&v) {
                Some(count) => *count = n,
                None => {
                    missing.insert(v, n);
                }
            }
        }
        Ok(KeyStatus {
            current: keys.current().0,
            versions,
            missing,
            undecodable: usage.undecodable,
            rotation_unfinished: self.store.rotation_target()? == Some(keys.current().0) && keys.versions().count() > 1,
            kdf: self.kek().params(),
        })
    }

    /// Starts a rotation, or resumes one that was interrupted (the key file still holds an
    /// older version besides the current one). A new version is written to the key file
    /// before anything is wrapped under it.
    pub fn begin_rotation(&self) -> Result<Rotation<'_>, VaultError> {
        // One rotation (or passphrase change) at a time: the key file lock is held until
        // the rotation ends.
        let kek = self.kek();
        // A rotation is unfinished when the database records one towards the key file's
        // current version (set before the key file changes, cleared when it completes).
        let keys = self.keys();
        let resumed = self.store.rotation_target()? == Some(keys.current().0) && keys.versions().count() > 1;
        if !resumed {
            let used = self
                .store
                .key_usage()?
                .versions
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0);
            let floor = used.max(self.store.highest_key_check()?);
            let mut next = (*keys).clone();
            let v = next.add_version(floor)?;
            let check = next.version(v).map(|m| m.check_value()).ok_or(VaultError::Invalid(
                "the new master key version is missing from the keyring".into(),
            ))?;
            // The database learns the new version's check value and the rotation target
            // first, then the key file gets the version, and only then is anything wrapped
            // under it. A crash in between leaves at most an unused check value.
            self.store.set_key_check(v, check)?;
            self.store.set_rotation_target(Some(v))?;
            write_key_file(&self.paths, &next, &kek)?;
            self.set_keys(next);
        }
        let target = self.keys().current().0;
        Ok(Rotation {
            vault: self,
            _kek: kek,
            target,
            resumed,
            family: 0,
            cursor: Some(0),
            rewrapped: 0,
            damaged: Vec::new(),
        })
    }

    /// Rotates the master key in one go (see [`Rotation`]), then retires the versions no
    /// object uses any more. Needs the only handle on the database (server stopped).
    pub fn rotate(&mut self, progress: impl FnMut(u64)) -> Result<RotateReport, VaultError> {
        let mut report = self.rotate_online(progress)?;
        report.retired = self.retire_unused()?;
        Ok(report)
    }

    /// Rotates while the database stays in use: a new current version, and every data key
    /// rewrapped under it. Older versions stay in the key file (so uploads that began
    /// before the rotation still publish) and the rotation stays marked unfinished; the
    /// next `coffer key rotate` with the server stopped retires them.
    pub fn rotate_online(&self, mut progress: impl FnMut(u64)) -> Result<RotateReport, VaultError> {
        let mut rotation = self.begin_rotation()?;
        while rotation.step(REWRAP_BATCH)? {
            progress(rotation.rewrapped);
        }
        Ok(RotateReport {
            current: rotation.target,
            resumed: rotation.resumed,
            rewrapped: rotation.rewrapped,
            retired: Vec::new(),
            damaged: rotation.damaged,
        })
    }

    /// Drops from the key file every version no object uses any more, after rewriting the
    /// database without the superseded records that still hold keys wrapped under them.
    /// Ends the rotation.
    fn retire_unused(&mut self) -> Result<Vec<u32>, VaultError> {
        let usage = self.store.key_usage()?;
        let keys = self.keys();
        let mut next = (*keys).clone();
        // A record that no longer decodes has an unknown version: it might need any of
        // them once restored, so nothing is retired while one exists.
        if usage.undecodable == 0 {
            next.retain(|v| usage.versions.get(&v).is_some_and(|n| *n > 0));
        }
        let retired: Vec<u32> = keys.versions().filter(|v| next.version(*v).is_none()).collect();
        if !retired.is_empty() {
            // Superseded records (with data keys wrapped under the versions about to be
            // retired) linger in the file's free pages: rewrite the file without them
            // before the key file forgets those versions.
            self.vacuum()?;
            write_key_file(&self.paths, &next, &self.kek())?;
            self.set_keys(next);
            // Only now: an old copy of the key file holding these versions is refused.
            self.store.mark_retired(&retired)?;
        }
        self.store.set_rotation_target(None)?;
        Ok(retired)
    }

    /// Re-seals the master keys under a new passphrase (new salt; `params` or the current
    /// ones). Data keys and content are untouched.
    pub fn change_passphrase(&self, new: &Passphrase, params: Option<KdfParams>) -> Result<(), VaultError> {
        let mut current = self.kek();
        let kek = Kek::derive(new, params.unwrap_or(current.params()))?;
        write_key_file(&self.paths, &self.keys(), &kek)?;
        *current = kek;
        Ok(())
    }
}

impl Rotation<'_> {
    /// The version being rotated to.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// Records rewrapped so far.
    pub fn rewrapped(&self) -> u64 {
        self.rewrapped
    }

    /// Rewraps up to `limit` more records in one durable commit. False when all are done.
    pub fn step(&mut self, limit: usize) -> Result<bool, VaultError> {
        let (Some(&family), Some(cursor)) = (FAMILIES.get(self.family), self.cursor) else {
            return Ok(false);
        };
        let vault: &Vault = self.vault;
        let target = self.target;
        let store = &vault.store;
        let damaged = &mut self.damaged;
        let batch = match family {
            Family::Documents => store.rewrap_batch(family, cursor.., target, limit, |id, d: StoredDocument| {
                let rewrapped = vault
                    .rewrap_key(Purpose::Document, id, d.key_version, &d.wrapped_dek, target)
                    .map(|wrapped_dek| Rewrapped {
                        record: StoredDocument {
                            key_version: target,
                            wrapped_dek,
                            ..d
                        },
                        reindex: None,
                    });
                tolerate_damage(damaged, Purpose::Document, id, rewrapped)
            })?,
            Family::Users => store.rewrap_batch(family, cursor.., target, limit, |id, u| {
                tolerate_damage(damaged, Purpose::User, id, vault.rewrap_user(id, u, target))
            })?,
            Family::Devices => store.rewrap_batch(family, cursor.., target, limit, |id, d| {
                tolerate_damage(damaged, Purpose::Device, id, vault.rewrap_device(id, d, target))
            })?,
            Family::Secrets => store.rewrap_batch(family, cursor.., target, limit, |id, s: StoredSecret| {
                let rewrapped = vault
                    .rewrap_key(Purpose::Secret, id, s.key_version, &s.wrapped_dek, target)
                    .map(|wrapped_dek| Rewrapped {
                        record: StoredSecret {
                            key_version: target,
                            wrapped_dek,
                            ..s
                        },
                        reindex: None,
                    });
                tolerate_damage(damaged, Purpose::Secret, id, rewrapped)
            })?,
            Family::ErpRecords => store.rewrap_batch(family, cursor.., target, limit, |id, r| {
                tolerate_damage(damaged, Purpose::ErpRecord, id, vault.rewrap_erp(id, r, target))
            })?,
        };
        self.rewrapped += batch.rewrapped as u64;
        let noun = match family {
            Family::Documents => Purpose::Document,
            Family::Users => Purpose::User,
            Family::Devices => Purpose::Device,
            Family::Secrets => Purpose::Secret,
            Family::ErpRecords => Purpose::ErpRecord,
        }
        .noun();
        self.damaged.extend(
            batch
                .undecodable
                .iter()
                .map(|id| format!("{noun} {id:032x} (record unreadable)")),
        );
        match batch.next {
            Some(next) => self.cursor = Some(next),
            None => {
                self.family += 1;
                self.cursor = Some(0);
            }
        }
        Ok(self.family < FAMILIES.len())
    }
}
