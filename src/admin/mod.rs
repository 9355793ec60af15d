//! Admin commands, run the same way in-process (no server running: the CLI opens the
//! database) or by the running server on behalf of the CLI, through the admin socket
//! ([`socket`]). The CLI builds a [`Request`], [`call`] sends it wherever the database
//! is, and prints the [`Response`]; the admin never has to know which way it went.
//!
//! Settings that shape the result (certificate lifetimes, argon2 cost, region, the URL in
//! an enrolment code) are the executing side's: the server's configuration while it
//! runs, the CLI's otherwise.

pub mod socket;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::app::Vault;
use crate::app::principals::{DeviceInfo, UserBody, UserInfo};
use crate::crypto::kdf::KdfParams;
use crate::model::{DeviceId, Role, Timestamp};
use crate::pki::{San, to_pem};
use crate::secret::{Passphrase, SecretString};

/// Version of the request/response encoding; a mismatch is refused with a clear error.
pub const PROTOCOL: u32 = 1;

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

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    protocol: u32,
    body: T,
}

fn parse_device(id: &str) -> anyhow::Result<DeviceId> {
    id.parse()
        .map_err(|_| anyhow::anyhow!("{id:?} is not a device id (see `coffer device list`)"))
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
    vault
        .user_by_name(name)?
        .ok_or_else(|| anyhow::anyhow!("no user named {name:?} (see `coffer user list`)"))
}

fn find_device(vault: &Vault, id: DeviceId) -> anyhow::Result<DeviceInfo> {
    vault
        .device(id)
        .map_err(|_| anyhow::anyhow!("no device {id} (see `coffer device list`)"))
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
        .ok_or_else(|| anyhow::anyhow!("the device has no signing secret"))?;
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

/// Runs `request` against `vault`.
pub fn execute(vault: &Vault, settings: &Settings, request: Request) -> anyhow::Result<Response> {
    Ok(match request {
        Request::UserAdd { name, role, password } => {
            let hash = settings
                .argon2
                .hash_password(&Passphrase::new(password.expose().to_owned()))?;
            let user = vault.add_user(UserBody {
                name,
                role,
                password_hash: hash,
                disabled: false,
                totp: None,
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
    })
}

/// Sends `request` to the server running on `data_dir`, if one is; `Ok(None)` when none
/// is (the caller then opens the database and uses [`execute`]).
pub fn call(data_dir: &Path, request: &Request) -> anyhow::Result<Option<Response>> {
    let Some(mut conn) = socket::connect(data_dir)? else {
        return Ok(None);
    };
    let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&Envelope {
        protocol: PROTOCOL,
        body: request,
    })?);
    let answer = zeroize::Zeroizing::new(conn.call(&bytes)?);
    let envelope: Envelope<Result<Response, String>> = serde_json::from_slice(&answer).map_err(|_| {
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
    envelope.body.map(Some).map_err(|m| anyhow::anyhow!(m))
}

/// The server side of [`call`]: decodes a request frame, executes it, encodes the answer
/// (an error becomes its message). `after` runs after a request succeeded (the server
/// reloads its certificate after a server-certificate change).
pub fn serve_frame(vault: &Vault, settings: &Settings, frame: Vec<u8>, after: &dyn Fn(&Response)) -> Vec<u8> {
    let frame = zeroize::Zeroizing::new(frame);
    let result = match serde_json::from_slice::<Envelope<Request>>(&frame) {
        Ok(e) if e.protocol == PROTOCOL => execute(vault, settings, e.body).map_err(|e| format!("{e:#}")),
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
        body: result,
    })
    .unwrap_or_default()
}
