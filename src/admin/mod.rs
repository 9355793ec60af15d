//! Admin commands, run the same way in-process (no server running: the CLI opens the
//! database) or by the running server on behalf of the CLI, through the admin socket
//! ([`socket`]). The CLI builds a [`Request`], [`call`] sends it wherever the database
//! is, and prints the [`Response`]; the admin never has to know which way it went.
//!
//! Settings that shape the result (certificate lifetimes, argon2 cost, region, the URL in
//! an enrolment code) are the executing side's: the server's configuration while it
//! runs, the CLI's otherwise.

mod report;
pub mod socket;

pub use report::describe;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::app::Vault;
use crate::app::principals::{DeviceInfo, UserBody, UserInfo};
use crate::crypto::kdf::KdfParams;
use crate::model::{DeviceId, Role, Timestamp};
use crate::pki::{San, to_pem};
use crate::secret::{Passphrase, SecretString};

/// Version of the request/response encoding; a mismatch is refused with a clear error.
pub const PROTOCOL: u32 = 2;

/// What the executing side needs from its configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// argon2id cost for new password hashes.
    pub argon2: KdfParams,
    /// Device certificate validity, days.
    pub device_days: u32,
    /// Server certificate validity, days.
    pub server_days: u32,
    /// SigV4 region.
    pub region: String,
    /// The URL devices reach the server at (written into enrolment codes and profiles).
    pub endpoint: String,
    /// The ERP collections (the server's live cache, with its counters, when it runs).
    pub erp: crate::erp::Erp,
}

/// An admin command.
#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// `user add`.
    UserAdd {
        /// Login name.
        name: String,
        /// Role.
        role: Role,
        /// The password (hashed by the executing side).
        password: SecretString,
    },
    /// `user list`.
    UserList,
    /// `user disable`.
    UserDisable {
        /// Login name.
        name: String,
    },
    /// `user totp`.
    UserTotp {
        /// Login name.
        name: String,
        /// Remove the second factor instead.
        disable: bool,
    },
    /// `user unlock`.
    UserUnlock {
        /// Login name.
        name: String,
    },
    /// `device issue`: a key made here, for a PKCS#12 bundle.
    DeviceIssue {
        /// Owner's login name.
        user: String,
        /// Device name (default: "device of USER").
        name: Option<String>,
    },
    /// `device list`.
    DeviceList,
    /// `device revoke`.
    DeviceRevoke {
        /// Device id.
        id: String,
    },
    /// `device enroll`: a single-use code for a new device of `user`.
    DeviceEnroll {
        /// Owner's login name.
        user: String,
        /// Lifetime of the code, seconds.
        ttl_secs: u64,
    },
    /// `device renew`: a renewal code (the app sends a CSR, for its current key or a new
    /// one), or with `new_key` a key and certificate made here.
    DeviceRenew {
        /// Device id.
        id: String,
        /// Lifetime of a renewal code, seconds.
        ttl_secs: u64,
        /// Make the key here (PKCS#12 path).
        new_key: bool,
    },
    /// `cert renew-server`.
    CertRenewServer {
        /// Names for the certificate (empty: those of the current one).
        sans: Vec<String>,
    },
    /// `cert rotate-server-key`.
    CertRotateServerKey {
        /// Refuse unless the next key has this pin.
        expect_next: Option<String>,
    },
    /// `erp stats`.
    ErpStats,
    /// `backup --out FILE`: written by the executing side (an absolute path).
    Backup {
        /// Destination.
        out: std::path::PathBuf,
        /// Replace an existing file.
        force: bool,
    },
    /// `verify [--deep]`.
    Verify {
        /// Decrypt every chunk and check content hashes.
        deep: bool,
    },
    /// `key rotate`.
    KeyRotate,
    /// `key status`.
    KeyStatus,
    /// `key passphrase`.
    KeyPassphrase {
        /// The new passphrase.
        new: SecretString,
        /// New argon2id cost, or `None` to keep the key file's.
        kdf: Option<KdfParams>,
    },
    /// `audit verify`.
    AuditVerify,
    /// `audit export`: one page.
    AuditExport(crate::app::audit::AuditFilter),
    /// `erp purge`.
    ErpPurge {
        /// The collection (configured or not: leftovers of a removed one can be purged).
        collection: String,
        /// One record's key; `None`: every record of the collection.
        key: Option<String>,
    },
}

/// One collection in `erp stats`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErpCollectionRow {
    /// Name.
    pub name: String,
    /// In the configuration (records of a removed collection stay until swept or purged).
    pub configured: bool,
    /// The upstream's origin, if it has one.
    pub upstream: Option<String>,
    /// Records stored.
    pub records: u64,
    /// Bytes of their values.
    pub bytes: u64,
    /// Counters since the server started (`None` when no server runs).
    pub counters: Option<crate::erp::Counters>,
}

/// A user as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserRow {
    /// Id.
    pub id: String,
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Disabled users are refused.
    pub disabled: bool,
    /// A TOTP second factor is enrolled.
    pub totp: bool,
}

/// A device as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceRow {
    /// Id (the SigV4 access key id).
    pub id: String,
    /// Owner's login name.
    pub user: String,
    /// Device name.
    pub name: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// Certificate expiry, ms since the epoch.
    pub expires: i64,
}

/// A device key and certificate made here.
#[derive(Debug, Serialize, Deserialize)]
pub struct IssuedOut {
    /// The device.
    pub device: DeviceRow,
    /// Client certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: SecretString,
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// SigV4 signing secret.
    pub secret: SecretString,
    /// SigV4 region.
    pub region: String,
    /// Server URL.
    pub endpoint: String,
}

/// An enrolment (or renewal) code and what the app needs with it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrolmentOut {
    /// The code (shown once).
    pub code: SecretString,
    /// Server URL.
    pub url: String,
    /// SPKI pins: current and next server key.
    pub pins: [String; 2],
    /// Expiry, ms since the epoch.
    pub expires: i64,
    /// SigV4 region.
    pub region: String,
    /// The user the device will belong to.
    pub user: String,
    /// For a renewal: the device.
    pub device: Option<String>,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// A user (added).
    User(UserRow),
    /// Users, by name.
    Users(Vec<UserRow>),
    /// Done; the text says what happened.
    Done(String),
    /// A TOTP seed as an `otpauth://` URI (shown once), or `None` when removed.
    Totp(Option<SecretString>),
    /// A device made here.
    Issued(Box<IssuedOut>),
    /// Devices, oldest first.
    Devices(Vec<DeviceRow>),
    /// A device revoked, and how many certificates the CRL now lists.
    Revoked(DeviceRow, usize),
    /// An enrolment or renewal code.
    Enrolment(EnrolmentOut),
    /// `erp stats`: per collection.
    ErpStats(Vec<ErpCollectionRow>),
    /// A backup was written.
    Backup(BackupOut),
    /// `verify`.
    Verify(crate::app::verify::VerifyReport),
    /// `key rotate`.
    Rotated(RotatedOut),
    /// `key status`.
    KeyStatus(KeyStatusOut),
    /// `audit verify`.
    AuditCheck(crate::app::audit::AuditCheck),
    /// `audit export`: entries, and where the next page starts (`None`: no more).
    AuditPage(Vec<crate::app::audit::AuditRecord>, Option<u64>),
    /// The server certificate after a renewal or key rotation.
    ServerCert {
        /// Names.
        sans: Vec<String>,
        /// Expiry, seconds since the epoch.
        not_after: i64,
        /// After a key rotation: the pins retired, current and next.
        pins: Option<[String; 3]>,
        /// After a renewal that finished an interrupted rotation: the pins current and next.
        finished_rotation: Option<[String; 2]>,
    },
}

/// A backup as written.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupOut {
    /// The file.
    pub path: String,
    /// The summary line.
    pub summary: String,
}

/// A rotation's outcome.
#[derive(Debug, Serialize, Deserialize)]
pub struct RotatedOut {
    /// The current version.
    pub current: u32,
    /// It resumed an interrupted rotation.
    pub resumed: bool,
    /// Keys rewrapped.
    pub rewrapped: u64,
    /// Versions retired (only with the server stopped).
    pub retired: Vec<u32>,
    /// It ran in the server: older versions stay until a rotation with the server stopped.
    pub online: bool,
    /// Objects that could not be rewrapped.
    pub damaged: Vec<String>,
}

/// `key status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyStatusOut {
    /// The key file.
    pub key_file: String,
    /// The status.
    pub status: KeyStatusView,
}

/// [`crate::app::keys::KeyStatus`] for the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyStatusView {
    /// Current version.
    pub current: u32,
    /// Versions held, with objects each.
    pub versions: Vec<(u32, u64)>,
    /// Versions referenced but missing.
    pub missing: Vec<(u32, u64)>,
    /// Records that no longer decode.
    pub undecodable: u64,
    /// A rotation is unfinished.
    pub rotation_unfinished: bool,
    /// argon2id memory, KiB.
    pub m_cost_kib: u32,
    /// argon2id iterations.
    pub t_cost: u32,
    /// argon2id lanes.
    pub p_cost: u32,
}

/// What travels back over the socket: progress while a long command runs, then the answer.
#[derive(Serialize, Deserialize)]
enum Reply {
    Progress(u64, u64),
    Done(Result<Response, String>),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    protocol: u32,
    body: T,
}

fn parse_device(id: &str) -> anyhow::Result<DeviceId> {
    id.parse()
        .map_err(|_| anyhow::anyhow!("{id:?} is not a device id: copy it from `coffer device list`"))
}

fn device_row(vault: &Vault, d: &DeviceInfo) -> DeviceRow {
    let user = vault.user(d.owner).map(|u| u.body.name).unwrap_or_else(|_| "?".into());
    let status = if d.body.revoked {
        "revoked"
    } else if d.expires <= Timestamp::now() {
        "expired"
    } else {
        "active"
    };
    DeviceRow {
        id: d.id.to_string(),
        user,
        name: d.body.name.clone(),
        status: status.into(),
        expires: d.expires.0,
    }
}

fn user_row(u: &UserInfo) -> UserRow {
    UserRow {
        id: u.id.to_string(),
        name: u.body.name.clone(),
        role: u.body.role,
        disabled: u.body.disabled,
        totp: u.body.totp.is_some(),
    }
}

fn find_user(vault: &Vault, name: &str) -> anyhow::Result<UserInfo> {
    vault.user_by_name(name)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no user named {name:?}: check the name with `coffer user list`, or add the user with `coffer user add`"
        )
    })
}

fn find_device(vault: &Vault, id: DeviceId) -> anyhow::Result<DeviceInfo> {
    vault
        .device(id)
        .map_err(|_| anyhow::anyhow!("no device {id}: check the id with `coffer device list`"))
}

fn enrolment_out(
    vault: &Vault,
    settings: &Settings,
    code: crate::app::enrol::EnrolmentCode,
    user: String,
) -> anyhow::Result<EnrolmentOut> {
    let (current, next) = crate::app::pki::pins(vault.paths())?;
    Ok(EnrolmentOut {
        code: code.code,
        url: settings.endpoint.clone(),
        pins: [current, next],
        expires: code.expires.0,
        region: settings.region.clone(),
        user,
        device: code.device.map(|d| d.to_string()),
    })
}

fn issued_out(vault: &Vault, settings: &Settings, issued: crate::app::pki::IssuedDevice) -> anyhow::Result<IssuedOut> {
    let secret = issued
        .device
        .body
        .signing_secret
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the device has no signing secret: revoke it and issue a new one"))?;
    Ok(IssuedOut {
        device: device_row(vault, &issued.device),
        cert_pem: to_pem(&issued.cert_der),
        key_pem: SecretString::new(issued.key.to_pem()?.to_string()),
        ca_pem: to_pem(&issued.ca_der),
        secret,
        region: settings.region.clone(),
        endpoint: settings.endpoint.clone(),
    })
}

/// What an admin request is called in the audit log, and what it acts on.
fn audit_label(request: &Request) -> (&'static str, Option<String>) {
    match request {
        Request::UserAdd { name, .. } => ("user add", Some(name.clone())),
        Request::UserList => ("user list", None),
        Request::UserDisable { name } => ("user disable", Some(name.clone())),
        Request::UserTotp { name, disable } => (
            if *disable { "user totp --disable" } else { "user totp" },
            Some(name.clone()),
        ),
        Request::UserUnlock { name } => ("user unlock", Some(name.clone())),
        Request::DeviceIssue { user, .. } => ("device issue", Some(user.clone())),
        Request::DeviceList => ("device list", None),
        Request::DeviceRevoke { id } => ("device revoke", Some(id.clone())),
        Request::DeviceEnroll { user, .. } => ("device enroll", Some(user.clone())),
        Request::DeviceRenew { id, .. } => ("device renew", Some(id.clone())),
        Request::CertRenewServer { .. } => ("cert renew-server", None),
        Request::CertRotateServerKey { .. } => ("cert rotate-server-key", None),
        Request::ErpStats => ("erp stats", None),
        Request::ErpPurge { collection, .. } => ("erp purge", Some(collection.clone())),
        Request::Backup { out, .. } => ("backup", Some(out.display().to_string())),
        Request::Verify { deep } => (if *deep { "verify --deep" } else { "verify" }, None),
        Request::KeyRotate => ("key rotate", None),
        Request::KeyStatus => ("key status", None),
        Request::KeyPassphrase { .. } => ("key passphrase", None),
        Request::AuditVerify => ("audit verify", None),
        // Every page is recorded (with where it starts): a client cannot leave one out.
        Request::AuditExport(f) => ("audit export", Some(format!("from entry {}", f.from_seq))),
    }
}

/// Runs `request` against `vault` and records it in the audit log (`progress` hears
/// from long commands: done, total).
pub fn execute(
    vault: &Vault,
    settings: &Settings,
    request: Request,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Response> {
    let (action, target) = audit_label(&request);
    let result = run(vault, settings, request, progress);
    {
        let outcome = result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
        if let Err(e) = vault.audit_admin(action, target, outcome) {
            tracing::warn!("the audit log could not record `{action}`: {e}");
        }
    }
    result
}

fn run(
    vault: &Vault,
    settings: &Settings,
    request: Request,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Response> {
    Ok(match request {
        Request::UserAdd { name, role, password } => {
            let hash = settings
                .argon2
                .hash_password(&Passphrase::new(password.expose().to_owned()))?;
            let user = vault
                .add_user(UserBody {
                    name: name.clone(),
                    role,
                    password_hash: hash,
                    disabled: false,
                    totp: None,
                })
                .map_err(|e| match e {
                    crate::app::VaultError::Store(crate::store::StoreError::Conflict(_)) => anyhow::anyhow!(
                        "a user named {name:?} already exists: choose another name (see `coffer user list`)"
                    ),
                    e => e.into(),
                })?;
            Response::User(user_row(&user))
        }
        Request::UserList => {
            let mut users = vault.users()?;
            users.sort_by(|a, b| a.body.name.cmp(&b.body.name));
            Response::Users(users.iter().map(user_row).collect())
        }
        Request::UserDisable { name } => {
            let user = find_user(vault, &name)?;
            vault.update_user(user.id, |b| b.disabled = true)?;
            Response::Done(format!(
                "disabled {name}: their sessions are ended and their devices refused from their next request"
            ))
        }
        Request::UserTotp { name, disable } => {
            let user = find_user(vault, &name)?;
            let seed = vault.set_totp(user.id, !disable)?;
            Response::Totp(
                seed.map(|seed| SecretString::new(crate::crypto::totp::otpauth_uri("coffer", &name, seed.expose()))),
            )
        }
        Request::UserUnlock { name } => {
            let user = find_user(vault, &name)?;
            vault.unlock_user(user.id)?;
            Response::Done(format!("cleared the failed logins of {name}"))
        }
        Request::DeviceIssue { user, name } => {
            let owner = find_user(vault, &user)?;
            let name = name.unwrap_or_else(|| format!("device of {}", owner.body.name));
            let issued = vault.issue_device(owner.id, &name, settings.device_days)?;
            Response::Issued(Box::new(issued_out(vault, settings, issued)?))
        }
        Request::DeviceList => {
            let mut devices = vault.devices()?;
            devices.sort_by_key(|d| d.created);
            Response::Devices(devices.iter().map(|d| device_row(vault, d)).collect())
        }
        Request::DeviceRevoke { id } => {
            let id = parse_device(&id)?;
            find_device(vault, id)?;
            let device = vault.revoke_device(id)?;
            let listed = vault.write_crl().map_err(|e| {
                anyhow::anyhow!(
                    "device {id} is revoked, but the CRL could not be written ({e}); revoke it again to retry"
                )
            })?;
            Response::Revoked(device_row(vault, &device), listed)
        }
        Request::DeviceEnroll { user, ttl_secs } => {
            let owner = find_user(vault, &user)?;
            let code = vault.create_enrolment(owner.id, None, ttl_secs)?;
            Response::Enrolment(enrolment_out(vault, settings, code, owner.body.name)?)
        }
        Request::DeviceRenew { id, ttl_secs, new_key } => {
            let id = parse_device(&id)?;
            let device = find_device(vault, id)?;
            if device.body.revoked {
                anyhow::bail!("device {id} is revoked: enrol a new device with `coffer device enroll`");
            }
            if new_key {
                let issued = vault.renew_device_with_new_key(id, settings.device_days)?;
                Response::Issued(Box::new(issued_out(vault, settings, issued)?))
            } else {
                let owner = vault.user(device.owner)?;
                let code = vault.create_enrolment(owner.id, Some(id), ttl_secs)?;
                Response::Enrolment(enrolment_out(vault, settings, code, owner.body.name)?)
            }
        }
        Request::CertRenewServer { sans } => {
            let sans = sans.iter().map(|s| s.parse::<San>()).collect::<Result<Vec<_>, _>>()?;
            let renewal = vault.renew_server_cert(&sans, settings.server_days)?;
            Response::ServerCert {
                sans: renewal.cert.sans.iter().map(ToString::to_string).collect(),
                not_after: renewal.cert.not_after,
                pins: None,
                finished_rotation: renewal.finished_rotation.map(|(current, next)| [current, next]),
            }
        }
        Request::CertRotateServerKey { expect_next } => {
            let r = vault.rotate_server_key(settings.server_days, expect_next.as_deref())?;
            Response::ServerCert {
                sans: r.cert.sans.iter().map(ToString::to_string).collect(),
                not_after: r.cert.not_after,
                pins: Some([r.retired_pin, r.current_pin, r.next_pin]),
                finished_rotation: None,
            }
        }
        Request::ErpStats => {
            let usage = vault.erp_usage()?;
            let erp = &settings.erp;
            let mut names: Vec<String> = erp.names().map(str::to_owned).collect();
            names.extend(usage.keys().filter(|n| erp.collection(n).is_none()).cloned());
            Response::ErpStats(
                names
                    .into_iter()
                    .map(|name| {
                        let u = usage.get(&name).copied().unwrap_or_default();
                        let c = erp.collection(&name);
                        ErpCollectionRow {
                            configured: c.is_some(),
                            upstream: c.and_then(|c| c.upstream_origin().map(str::to_owned)),
                            records: u.records,
                            bytes: u.bytes,
                            counters: erp.is_live().then(|| erp.counters(&name)).flatten(),
                            name,
                        }
                    })
                    .collect(),
            )
        }
        Request::ErpPurge { collection, key } => {
            if let Some(k) = &key {
                crate::erp::check_key(k).map_err(|m| anyhow::anyhow!(m))?;
            }
            let removed = vault.erp_purge(&collection, key.as_deref())?;
            let what = match &key {
                Some(_) => format!("the record from {collection}"),
                None => format!("{removed} record(s) of {collection}"),
            };
            if removed == 0 {
                Response::Done(match key {
                    Some(_) => format!("{collection} holds no record under this key; nothing removed"),
                    None => format!("{collection} holds no records; nothing removed"),
                })
            } else {
                Response::Done(format!(
                    "removed {what}; the next read fetches again from the upstream (if it has one)"
                ))
            }
        }
        Request::Backup { out, force } => {
            let summary = vault.backup(&out, force, progress)?;
            Response::Backup(BackupOut {
                path: out.display().to_string(),
                summary: summary.describe(),
            })
        }
        Request::Verify { deep } => Response::Verify(vault.verify(deep, progress)?),
        Request::KeyRotate => {
            let r = vault.rotate_online(|n| progress(n, 0))?;
            Response::Rotated(RotatedOut {
                current: r.current,
                resumed: r.resumed,
                rewrapped: r.rewrapped,
                retired: r.retired,
                online: true,
                damaged: r.damaged,
            })
        }
        Request::KeyStatus => Response::KeyStatus(key_status_out(vault)?),
        Request::KeyPassphrase { new, kdf } => {
            if let Some(p) = kdf {
                p.validate()?;
            }
            vault.change_passphrase(&Passphrase::new(new.expose().to_owned()), kdf)?;
            Response::Done(format!(
                "passphrase changed; {} re-sealed",
                vault.paths().key_file().display()
            ))
        }
        Request::AuditVerify => Response::AuditCheck(vault.audit_verify(&mut |n| progress(n, 0))?),
        Request::AuditExport(filter) => {
            // Fields are capped when entries are written (action 96 bytes, target 256,
            // detail 1 KiB), so a page of 2,000 stays far inside one admin frame.
            let mut records = Vec::new();
            let page = crate::app::audit::AuditFilter {
                limit: if filter.limit == 0 {
                    2000
                } else {
                    filter.limit.min(2000)
                },
                ..filter
            };
            let next = vault.audit_export(&page, &mut |r| records.push(r))?;
            let more = records.len() >= page.limit;
            Response::AuditPage(records, more.then_some(next))
        }
    })
}

/// `key status` as sent over the socket.
pub fn key_status_out(vault: &Vault) -> anyhow::Result<KeyStatusOut> {
    let s = vault.key_status()?;
    Ok(KeyStatusOut {
        key_file: vault.paths().key_file().display().to_string(),
        status: KeyStatusView {
            current: s.current,
            versions: s.versions.into_iter().collect(),
            missing: s.missing.into_iter().collect(),
            undecodable: s.undecodable,
            rotation_unfinished: s.rotation_unfinished,
            m_cost_kib: s.kdf.m_cost_kib,
            t_cost: s.kdf.t_cost,
            p_cost: s.kdf.p_cost,
        },
    })
}

/// Sends `request` to the server running on `data_dir`, if one is; `Ok(None)` when none
/// is (the caller then opens the database and uses [`execute`]). `progress` hears from
/// long commands as they run.
pub fn call(
    data_dir: &Path,
    request: &Request,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Option<Response>> {
    let Some(mut conn) = socket::connect(data_dir)? else {
        return Ok(None);
    };
    let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&Envelope {
        protocol: PROTOCOL,
        body: request,
    })?);
    let mut answer = zeroize::Zeroizing::new(conn.call(&bytes)?);
    loop {
        let envelope: Envelope<Reply> = serde_json::from_slice(&answer).map_err(|_| {
            anyhow::anyhow!(
                "the running server answered in a format this coffer does not read: run the same coffer version"
            )
        })?;
        if envelope.protocol != PROTOCOL {
            anyhow::bail!(
                "the running server speaks admin protocol {}, this coffer {PROTOCOL}: run the same coffer version",
                envelope.protocol
            );
        }
        match envelope.body {
            Reply::Progress(done, total) => progress(done, total),
            Reply::Done(body) => return body.map(Some).map_err(|m| anyhow::anyhow!(m)),
        }
        answer = zeroize::Zeroizing::new(conn.next_frame()?);
    }
}

/// The server side of [`call`]: decodes a request frame, executes it (sending progress
/// frames through `send` while it runs), encodes the answer (an error becomes its
/// message). `after` runs after a request succeeded (the server reloads its certificate
/// after a server-certificate change).
pub fn serve_frame(
    vault: &Vault,
    settings: &Settings,
    frame: Vec<u8>,
    send: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    after: &dyn Fn(&Response),
) -> Vec<u8> {
    let frame = zeroize::Zeroizing::new(frame);
    let mut last = std::time::Instant::now();
    let mut progress = |done: u64, total: u64| {
        // A few updates a second are plenty for a progress bar.
        if last.elapsed() >= std::time::Duration::from_millis(200) {
            last = std::time::Instant::now();
            if let Ok(bytes) = serde_json::to_vec(&Envelope {
                protocol: PROTOCOL,
                body: Reply::Progress(done, total),
            }) {
                let _ = send(&bytes);
            }
        }
    };
    let result = match serde_json::from_slice::<Envelope<Request>>(&frame) {
        Ok(e) if e.protocol == PROTOCOL => execute(vault, settings, e.body, &mut progress).map_err(|e| describe(&e)),
        Ok(e) => Err(format!(
            "this server speaks admin protocol {PROTOCOL}, the command {}: run the same coffer version",
            e.protocol
        )),
        Err(_) => Err("the server could not read this admin command: run the same coffer version".to_owned()),
    };
    if let Ok(r) = &result {
        after(r);
    }
    serde_json::to_vec(&Envelope {
        protocol: PROTOCOL,
        body: Reply::Done(result),
    })
    .unwrap_or_default()
}
