//! The tamper-evident audit log.
//!
//! Every entry records when, what (action), and how it ended (status, outcome) in clear,
//! and who (device, user), from where (IP), on what (target id) and under which request
//! id sealed under the audit key. Entry `n` carries
//! `mac_n = HMAC-SHA256(mac key, "coffer/v1/audit-chain" ‖ n ‖ mac_(n-1) ‖ its fields)`, so
//! editing, removing or reordering an entry breaks the chain at that entry, and without
//! the audit key nobody can mend it. The audit key is a random service secret sealed in
//! the database like the CA key (rewrapped by master key rotations, never re-made).
//!
//! Pruning (retention) removes the oldest entries and records an anchor: the last removed
//! entry's number and hash, tagged with the audit key, where verification starts.
//!
//! The HTTP server appends through [`AuditLog`], a writer thread that commits in batches
//! (one durable commit per batch) so requests never wait for the disk; admin commands
//! append directly.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use redb::Durability;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::pki::{PkiFileError, SLOT_AUDIT_KEY};
use super::{Vault, VaultError};
use crate::crypto::envelope;
use crate::model::{DeviceId, Timestamp, UserId};
use crate::pki::KeyDer;
use crate::secret::SecretKey;
use crate::store::{AuditAnchor, AuditHead, StoreError, StoredAudit};

const LABEL_ENC: &[u8] = b"coffer/v1/hkdf/audit-enc";
const LABEL_MAC: &[u8] = b"coffer/v1/hkdf/audit-mac";
const CHAIN: &[u8] = b"coffer/v1/audit-chain";
const ANCHOR: &[u8] = b"coffer/v1/audit-anchor";
const AAD: &[u8] = b"coffer/v1/audit";

/// Longest action, outcome and request id kept, bytes.
const MAX_ACTION: usize = 96;
/// Longest target kept, bytes (a path segment can be kilobytes long).
const MAX_TARGET: usize = 256;
/// Longest detail kept, bytes.
const MAX_DETAIL: usize = 1024;

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut.
fn cap(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

/// Default retention, days.
pub const DEFAULT_RETENTION_DAYS: u32 = 400;

/// The keys derived from the audit secret.
pub(crate) struct AuditKeys {
    enc: SecretKey,
    mac: SecretKey,
}

impl AuditKeys {
    fn derive(root: &[u8]) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(None, root);
        let derive = |info: &[u8]| {
            SecretKey::from_fn(|out| hk.expand(info, out)).unwrap_or_else(|_| unreachable!("32-byte HKDF output"))
        };
        Self {
            enc: derive(LABEL_ENC),
            mac: derive(LABEL_MAC),
        }
    }

    fn hmac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(self.mac.expose()).unwrap_or_else(|_| unreachable!("any key length"))
    }

    fn chain(&self, seq: u64, prev: &[u8; 32], e: &StoredAudit) -> Hmac<Sha256> {
        let mut m = self.hmac();
        m.update(CHAIN);
        m.update(&seq.to_be_bytes());
        m.update(prev);
        m.update(&e.time.to_be_bytes());
        for field in [e.action.as_bytes(), e.outcome.as_bytes(), &e.sealed] {
            m.update(&(field.len() as u64).to_be_bytes());
            m.update(field);
        }
        m.update(&e.status.to_be_bytes());
        m
    }

    fn anchor_tag(&self, seq: u64, mac: &[u8; 32], pruned_before: i64) -> Hmac<Sha256> {
        let mut m = self.hmac();
        m.update(ANCHOR);
        m.update(&seq.to_be_bytes());
        m.update(mac);
        m.update(&pruned_before.to_be_bytes());
        m
    }
}

fn aad(seq: u64) -> Vec<u8> {
    let mut a = AAD.to_vec();
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

/// Something to record.
#[derive(Clone, Debug, Default)]
pub struct AuditEvent {
    /// When.
    pub time: Timestamp,
    /// What: `METHOD /route/{pattern}` for HTTP, `admin ...` for admin commands.
    pub action: String,
    /// HTTP status (0 for admin commands).
    pub status: u16,
    /// `ok`, or the reason it was refused.
    pub outcome: String,
    /// The device, when known.
    pub device: Option<DeviceId>,
    /// The user, when known.
    pub user: Option<UserId>,
    /// The peer address.
    pub ip: Option<IpAddr>,
    /// The object acted on (document id, user name, collection/key, ...).
    pub target: Option<String>,
    /// The request id (`X-Request-Id`).
    pub request_id: Option<String>,
    /// More about the outcome (an admin command's error).
    pub detail: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum Sealed {
    V1 {
        device: Option<u128>,
        user: Option<u128>,
        ip: Option<IpAddr>,
        target: Option<String>,
        request_id: Option<String>,
        detail: Option<String>,
    },
}

/// An entry as exported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// What.
    pub action: String,
    /// HTTP status (0: admin command).
    pub status: u16,
    /// `ok` or the reason.
    pub outcome: String,
    /// Device id.
    pub device: Option<String>,
    /// User id.
    pub user: Option<String>,
    /// User name (as it is now).
    pub user_name: Option<String>,
    /// Peer address.
    pub ip: Option<String>,
    /// Object acted on.
    pub target: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// More about the outcome.
    pub detail: Option<String>,
}

/// Which entries to export.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries of this user.
    pub user: Option<UserId>,
    /// Start at this sequence number (paging).
    pub from_seq: u64,
    /// At most this many entries (paging; 0: no limit).
    pub limit: usize,
    /// A page after the first of one export (recorded once, with the first).
    #[serde(default)]
    pub continuation: bool,
}

/// The outcome of `audit verify`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditCheck {
    /// Entries checked.
    pub entries: u64,
    /// The first entry's number (after the anchor).
    pub first: u64,
    /// The last entry's number.
    pub last: u64,
    /// The pruning anchor, if any: (last pruned entry, pruned before, ms).
    pub anchor: Option<(u64, i64)>,
    /// The chain hash of the last entry, hex (record it elsewhere to detect a cut tail).
    pub head: String,
    /// The first broken entry and why.
    pub broken: Option<(u64, String)>,
}

impl Vault {
    fn audit_keys(&self) -> Result<&AuditKeys, VaultError> {
        if let Some(k) = self.audit.get() {
            return Ok(k);
        }
        let root = match self.key(SLOT_AUDIT_KEY, "audit key") {
            Ok(root) => root,
            Err(PkiFileError::NoKey(_)) => {
                // Made with the first entry: a log (or anchor) without its key means the
                // key was removed, and a new one would quietly start a second chain.
                if self.store.audit_anchor()?.is_some() || self.store.audit_has_entries()? {
                    // Another thread may have made the key (and written with it) since.
                    if let Ok(root) = self.key(SLOT_AUDIT_KEY, "audit key") {
                        let _ = self.audit.set(AuditKeys::derive(root.expose()));
                        return self
                            .audit
                            .get()
                            .ok_or_else(|| VaultError::Invalid("the audit key is not available".into()));
                    }
                    return Err(VaultError::Integrity {
                        what: "audit log",
                        id: "key".into(),
                    });
                }
                let fresh = KeyDer::new(crate::crypto::random_bytes::<32>().map_err(VaultError::from)?.to_vec());
                match self.put_keys(&[(SLOT_AUDIT_KEY, &fresh)], false) {
                    Ok(()) => fresh,
                    // Made meanwhile by another thread: use that one.
                    Err(VaultError::Store(StoreError::Conflict(_))) => {
                        self.key(SLOT_AUDIT_KEY, "audit key").map_err(pki)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(pki(e)),
        };
        let keys = AuditKeys::derive(root.expose());
        let _ = self.audit.set(keys);
        self.audit
            .get()
            .ok_or_else(|| VaultError::Invalid("the audit key is not available".into()))
    }

    /// Whether the audit key exists yet (it is made with the first entry). It is one more
    /// object wrapped under a master key version, so `key status` counts it.
    pub fn has_audit_key(&self) -> Result<bool, VaultError> {
        Ok(self.store.snapshot()?.secret(SLOT_AUDIT_KEY)?.is_some())
    }

    /// Appends `events` in one commit.
    pub fn audit_append(&self, events: Vec<AuditEvent>, durability: Durability) -> Result<(), VaultError> {
        if events.is_empty() {
            return Ok(());
        }
        let keys = self.audit_keys()?;
        self.store.audit_append(durability, |head: AuditHead| {
            let mut prev = head.mac;
            let mut seq = head.seq;
            let mut out = Vec::with_capacity(events.len());
            for mut e in events {
                seq += 1;
                cap(&mut e.action, MAX_ACTION);
                cap(&mut e.outcome, MAX_ACTION);
                if let Some(t) = &mut e.target {
                    cap(t, MAX_TARGET);
                }
                if let Some(d) = &mut e.detail {
                    cap(d, MAX_DETAIL);
                }
                if let Some(r) = &mut e.request_id {
                    cap(r, MAX_ACTION);
                }
                let sealed = Sealed::V1 {
                    device: e.device.map(|d| d.0),
                    user: e.user.map(|u| u.0),
                    ip: e.ip,
                    target: e.target,
                    request_id: e.request_id,
                    detail: e.detail,
                };
                let plain = zeroize::Zeroizing::new(
                    postcard::to_stdvec(&sealed)
                        .map_err(|_| VaultError::Invalid("audit entry does not encode".into()))?,
                );
                let mut entry = StoredAudit {
                    time: e.time.0,
                    action: e.action,
                    status: e.status,
                    outcome: e.outcome,
                    sealed: envelope::seal(&keys.enc, &aad(seq), &plain)?,
                    mac: [0; 32],
                };
                entry.mac = keys.chain(seq, &prev, &entry).finalize().into_bytes().into();
                prev = entry.mac;
                out.push(entry);
            }
            Ok::<_, VaultError>(out)
        })?;
        Ok(())
    }

    /// Appends one admin action durably. Failing to record it fails the command's
    /// report, never the command (which has already happened).
    pub fn audit_admin(
        &self,
        action: &str,
        target: Option<String>,
        result: Result<(), String>,
    ) -> Result<(), VaultError> {
        let (outcome, detail) = match result {
            Ok(()) => ("ok".to_owned(), None),
            Err(m) => ("error".to_owned(), Some(m)),
        };
        self.audit_append(
            vec![AuditEvent {
                time: Timestamp::now(),
                action: format!("admin {action}"),
                status: 0,
                outcome,
                target,
                detail,
                ..AuditEvent::default()
            }],
            Durability::Immediate,
        )
    }

    /// Walks the chain from the anchor (or the start) to the end.
    pub fn audit_verify(&self, progress: &mut dyn FnMut(u64)) -> Result<AuditCheck, VaultError> {
        let keys = self.audit_keys()?;
        let anchor = self.store.audit_anchor()?;
        let mut check = AuditCheck {
            entries: 0,
            first: 0,
            last: 0,
            anchor: anchor.as_ref().map(|a| (a.seq, a.pruned_before)),
            head: String::new(),
            broken: None,
        };
        let (mut expect, mut prev) = match &anchor {
            Some(a) => {
                if keys
                    .anchor_tag(a.seq, &a.mac, a.pruned_before)
                    .verify_slice(&a.tag)
                    .is_err()
                {
                    check.broken = Some((
                        a.seq + 1,
                        "the pruning anchor before it was altered (its tag does not verify)".into(),
                    ));
                    return Ok(check);
                }
                (a.seq + 1, a.mac)
            }
            None => (1, [0u8; 32]),
        };
        check.first = expect;
        self.store.audit_scan(0, |seq, bytes| {
            if seq != expect {
                check.broken = Some(if seq < expect {
                    (
                        seq,
                        "it lies before the pruning anchor (re-inserted or the anchor was moved)".into(),
                    )
                } else {
                    (expect, format!("it is missing (the next entry is {seq})"))
                });
                return false;
            }
            let Ok(entry) = StoredAudit::decode(bytes) else {
                check.broken = Some((seq, "it no longer decodes (altered bytes)".into()));
                return false;
            };
            if keys.chain(seq, &prev, &entry).verify_slice(&entry.mac).is_err() {
                check.broken = Some((seq, "its hash does not match its content (edited)".into()));
                return false;
            }
            if envelope::open(&keys.enc, &aad(seq), &entry.sealed).is_err() {
                check.broken = Some((seq, "its sealed fields do not open".into()));
                return false;
            }
            prev = entry.mac;
            check.entries += 1;
            check.last = seq;
            expect = seq + 1;
            if check.entries.is_multiple_of(4096) {
                progress(check.entries);
            }
            true
        })?;
        check.head = crate::sigv4::hex(&prev);
        Ok(check)
    }

    /// Exports entries matching `filter`, oldest first, to `f`. Entries whose sealed fields
    /// do not open are exported with `detail` saying so (`audit verify` names them).
    pub fn audit_export(&self, filter: &AuditFilter, f: &mut dyn FnMut(AuditRecord)) -> Result<u64, VaultError> {
        let keys = self.audit_keys()?;
        let mut names: std::collections::HashMap<u128, Option<String>> = std::collections::HashMap::new();
        let mut sent = 0usize;
        let mut next = filter.from_seq;
        self.store.audit_scan(filter.from_seq, |seq, bytes| {
            next = seq + 1;
            if filter.limit != 0 && sent >= filter.limit {
                next = seq;
                return false;
            }
            let Ok(e) = StoredAudit::decode(bytes) else {
                return true;
            };
            if filter.since.is_some_and(|s| e.time < s.0) {
                return true;
            }
            let fields = envelope::open(&keys.enc, &aad(seq), &e.sealed)
                .ok()
                .and_then(|p| postcard::from_bytes::<Sealed>(&p).ok());
            let (device, user, ip, target, request_id, detail) = match fields {
                Some(Sealed::V1 {
                    device,
                    user,
                    ip,
                    target,
                    request_id,
                    detail,
                }) => (device, user, ip, target, request_id, detail),
                None => (
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some("sealed fields do not open (damaged)".into()),
                ),
            };
            if filter.user.is_some_and(|u| user != Some(u.0)) {
                return true;
            }
            let user_name = match user {
                Some(u) => names
                    .entry(u)
                    .or_insert_with(|| self.user(UserId(u)).ok().map(|i| i.body.name))
                    .clone(),
                None => None,
            };
            f(AuditRecord {
                seq,
                time: crate::http::rfc3339(Timestamp(e.time)),
                action: e.action,
                status: e.status,
                outcome: e.outcome,
                device: device.map(|d| DeviceId(d).to_string()),
                user: user.map(|u| UserId(u).to_string()),
                user_name,
                ip: ip.map(|i| i.to_string()),
                target,
                request_id,
                detail,
            });
            sent += 1;
            true
        })?;
        Ok(next)
    }

    /// Removes entries older than `before`, keeping the chain verifiable from an anchor.
    /// Only entries whose chain hash verifies are pruned (their time is trusted only
    /// then): the walk stops at the first entry to keep, or at damage, which it reports
    /// so `audit verify` can still name it.
    pub fn audit_prune(&self, before: Timestamp) -> Result<PruneReport, VaultError> {
        let keys = self.audit_keys()?;
        let anchor = self.store.audit_anchor()?;
        let mut report = PruneReport::default();
        let (mut expect, mut prev) = match &anchor {
            Some(a) => {
                if keys
                    .anchor_tag(a.seq, &a.mac, a.pruned_before)
                    .verify_slice(&a.tag)
                    .is_err()
                {
                    report.damage = Some((a.seq + 1, "the pruning anchor was altered".into()));
                    return Ok(report);
                }
                (a.seq + 1, a.mac)
            }
            None => (1, [0u8; 32]),
        };
        let mut last: Option<(u64, [u8; 32])> = None;
        self.store.audit_scan(expect, |seq, bytes| {
            let entry = match StoredAudit::decode(bytes) {
                Ok(e) if seq == expect => e,
                Ok(_) => {
                    report.damage = Some((expect, "it is missing".into()));
                    return false;
                }
                Err(_) => {
                    report.damage = Some((seq, "it no longer decodes".into()));
                    return false;
                }
            };
            if keys.chain(seq, &prev, &entry).verify_slice(&entry.mac).is_err() {
                report.damage = Some((seq, "its hash does not match its content".into()));
                return false;
            }
            if entry.time >= before.0 {
                return false;
            }
            last = Some((seq, entry.mac));
            prev = entry.mac;
            expect = seq + 1;
            true
        })?;
        let Some((seq, mac)) = last else {
            return Ok(report);
        };
        let tag = keys.anchor_tag(seq, &mac, before.0).finalize().into_bytes().into();
        report.removed = self.store.audit_prune(&AuditAnchor {
            seq,
            mac,
            pruned_before: before.0,
            tag,
        })?;
        Ok(report)
    }
}

/// What a prune did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries removed.
    pub removed: u64,
    /// Damage that stopped it early: the entry and why (run `coffer audit verify`).
    pub damage: Option<(u64, String)>,
}

fn pki(e: PkiFileError) -> VaultError {
    match e {
        PkiFileError::Vault(v) => v,
        other => VaultError::Invalid(other.to_string()),
    }
}

/// Entries waiting for the writer before new ones are counted as dropped.
const QUEUE: usize = 65_536;
/// Entries per commit at most.
const BATCH: usize = 4096;
/// How long the writer gathers a batch after its first entry.
const GATHER: Duration = Duration::from_millis(50);

/// The server's audit writer: requests hand entries over without waiting; a thread
/// commits them in batches. If the disk cannot keep up and the queue fills, entries are
/// counted as dropped and an `audit dropped` entry records how many, so the gap itself is
/// in the chain.
pub struct AuditLog {
    tx: Option<SyncSender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// Starts the writer thread.
    pub fn start(vault: Arc<Vault>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-audit".into())
            .spawn(move || write_loop(&vault, &rx, &counter))?;
        Ok(Self {
            tx: Some(tx),
            dropped,
            thread: Some(thread),
        })
    }

    /// Queues an entry.
    pub fn record(&self, event: AuditEvent) {
        if let Some(tx) = &self.tx {
            match tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes what is queued and stops the thread.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.finish();
    }
}

fn write_loop(vault: &Vault, rx: &Receiver<AuditEvent>, dropped: &AtomicU64) {
    let mut failures_logged = Instant::now() - Duration::from_secs(3600);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + GATHER;
        while batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) => batch.push(e),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(AuditEvent {
                time: Timestamp::now(),
                action: "audit dropped".into(),
                outcome: "error".into(),
                detail: Some(format!("{lost} entries were dropped: the audit queue was full")),
                ..AuditEvent::default()
            });
        }
        // If the commit fails, every entry of the batch is lost, and so is the count the
        // marker entry carried.
        let n = batch.len() as u64 - u64::from(lost > 0) + lost;
        if let Err(e) = vault.audit_append(batch, Durability::Immediate) {
            dropped.fetch_add(n, Ordering::Relaxed);
            if failures_logged.elapsed() > Duration::from_secs(10) {
                failures_logged = Instant::now();
                tracing::info!("audit: cannot write entries ({e}); they are counted as dropped");
            }
        }
    }
    // Stopping: what was lost is still recorded.
    let lost = dropped.swap(0, Ordering::Relaxed);
    if lost > 0 {
        let marker = AuditEvent {
            time: Timestamp::now(),
            action: "audit dropped".into(),
            outcome: "error".into(),
            detail: Some(format!(
                "{lost} entries were dropped: the audit queue was full or the disk failed"
            )),
            ..AuditEvent::default()
        };
        if let Err(e) = vault.audit_append(vec![marker], Durability::Immediate) {
            tracing::info!("audit: {lost} entries were lost and could not be recorded ({e})");
        }
    }
}
