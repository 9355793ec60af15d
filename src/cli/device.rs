//! `coffer device issue|list|revoke`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine;
use clap::{Args, Subcommand};

use super::Context;
use crate::app::durable;
use crate::model::{DeviceId, Timestamp};
use crate::pki::{P12Flavour, pkcs12, to_pem};

/// Devices.
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Make a key and client certificate for a user's device and register it; writes the
    /// certificate, key, a password-protected PKCS#12 bundle (for MDM) and the CA to --out.
    Issue(IssueCmd),
    /// List devices.
    List,
    /// Revoke a device (with the server stopped, until the admin socket exists): refused
    /// from its first request once the server runs again.
    Revoke {
        /// The device id (see `coffer device list`).
        id: DeviceId,
    },
}

/// `coffer device issue`.
#[derive(Debug, Args)]
pub struct IssueCmd {
    /// The owner's user name.
    #[arg(long, value_name = "NAME")]
    user: String,
    /// Directory for device.crt, device.key, device.p12 and ca.crt (created if missing;
    /// existing files are never overwritten).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A name for the device ("Anna's iPhone").
    #[arg(long, value_name = "TEXT")]
    name: Option<String>,
    /// Read the PKCS#12 password from this file instead of generating one.
    #[arg(long, value_name = "FILE")]
    p12_password_file: Option<PathBuf>,
    /// Encrypt the PKCS#12 bundle with 3DES/SHA-1 for old importers (default: AES-256/SHA-256).
    #[arg(long)]
    legacy_p12: bool,
    /// The server URL written into the client profile [config: public_url; default:
    /// https://<first name of the server certificate>:<listen port>].
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
}

const OUT_FILES: [&str; 5] = ["device.crt", "device.key", "device.p12", "ca.crt", "profile.toml"];

/// The URL devices reach the server at: `explicit`, else `public_url`, else the server
/// certificate's first name with the listen port.
pub(super) fn endpoint(ctx: &Context, explicit: Option<&str>) -> anyhow::Result<String> {
    if let Some(url) = explicit.map(str::to_owned).or_else(|| ctx.config.public_url.clone()) {
        if !url.starts_with("https://") {
            anyhow::bail!("the endpoint must be an https:// URL, e.g. https://coffer.example.com:8443");
        }
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let paths = ctx.paths();
    let cert = crate::app::pki::read_cert(&crate::app::pki::server_cert_path(&paths), "server.crt")?;
    let info = crate::pki::cert_info(&cert, "server.crt")?;
    let host = match info.sans.first() {
        Some(crate::pki::San::Ip(std::net::IpAddr::V6(v6))) => format!("[{v6}]"),
        Some(san) => san.to_string(),
        None => "localhost".to_owned(),
    };
    let port = ctx.config.listen.map_or(8443, |l| l.port());
    Ok(format!("https://{host}:{port}"))
}

fn write_new(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let path = dir.join(name);
    durable::write_new(&path, bytes, mode).with_context(|| format!("cannot write {}", path.display()))
}

impl IssueCmd {
    fn run(self, ctx: &Context) -> anyhow::Result<()> {
        for f in OUT_FILES {
            let p = self.out.join(f);
            if p.symlink_metadata().is_ok() {
                anyhow::bail!("{} already exists: choose an empty --out directory", p.display());
            }
        }
        let password = match &self.p12_password_file {
            Some(f) => crate::app::unlock::from_file(f)?,
            None => {
                let bytes: [u8; 15] = crate::crypto::random_bytes()?;
                crate::secret::Passphrase::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
            }
        };
        let password_text = std::str::from_utf8(password.expose()).context("the PKCS#12 password must be UTF-8")?;
        if password.char_count() < super::user::MIN_PASSWORD_CHARS {
            anyhow::bail!(
                "the PKCS#12 password is too short: use at least {} characters (it protects the device key)",
                super::user::MIN_PASSWORD_CHARS
            );
        }
        let endpoint = endpoint(ctx, self.endpoint.as_deref())?;
        let vault = ctx.open_vault()?;
        let user = vault
            .user_by_name(&self.user)?
            .ok_or_else(|| anyhow::anyhow!("no user named {:?} (add it with `coffer user add`)", self.user))?;
        let name = self.name.unwrap_or_else(|| format!("device of {}", user.body.name));
        // A directory made here is owner-only; an existing one keeps its permissions but
        // must be ours and not writable by others, or someone could swap the files before
        // they are handed out.
        match std::fs::symlink_metadata(&self.out) {
            Ok(meta) => {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                if !meta.is_dir() {
                    anyhow::bail!("{} exists and is not a directory", self.out.display());
                }
                if meta.uid() != rustix::process::geteuid().as_raw() || meta.permissions().mode() & 0o022 != 0 {
                    anyhow::bail!(
                        "{} is not owned by this user or is writable by others: use a directory of your own",
                        self.out.display()
                    );
                }
            }
            Err(_) => durable::create_private_dir(&self.out)
                .with_context(|| format!("cannot create {}", self.out.display()))?,
        }
        let issued = vault.issue_device(user.id, &name, ctx.config.pki.device_days)?;
        let flavour = if self.legacy_p12 {
            P12Flavour::Legacy
        } else {
            P12Flavour::Modern
        };
        let p12 = pkcs12(
            &issued.key,
            &issued.cert_der,
            &issued.ca_der,
            &name,
            password_text,
            flavour,
        )?;
        let secret = issued
            .device
            .body
            .signing_secret
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the new device has no signing secret"))?;
        let profile = crate::client::Profile {
            endpoint,
            region: ctx.config.auth.region.clone(),
            service: crate::http::auth::SERVICE.to_owned(),
            access_key_id: issued.device.id.to_string(),
            secret_access_key: secret.clone(),
            ca: "ca.crt".into(),
            cert: "device.crt".into(),
            key: "device.key".into(),
            username: user.body.name.clone(),
            password_file: None,
        };
        let result = (|| {
            write_new(&self.out, "device.key", issued.key.to_pem()?.as_bytes(), 0o600)?;
            write_new(&self.out, "device.crt", to_pem(&issued.cert_der).as_bytes(), 0o644)?;
            write_new(&self.out, "device.p12", &p12, 0o600)?;
            write_new(&self.out, "ca.crt", to_pem(&issued.ca_der).as_bytes(), 0o644)?;
            write_new(&self.out, "profile.toml", profile.to_toml().as_bytes(), 0o600)
        })();
        if let Err(e) = result {
            // The files are incomplete: the device must not stay usable.
            let _ = vault.revoke_device(issued.device.id);
            return Err(e.context("the device was revoked again; fix the problem and issue a new one"));
        }
        println!("issued device {} for {} ({name})", issued.device.id, user.body.name);
        println!(
            "wrote {}/{{device.crt,device.key,device.p12,ca.crt,profile.toml}}",
            self.out.display()
        );
        println!("access key id (the device id): {}", issued.device.id);
        println!("signing secret (shown once; also in profile.toml): {}", secret.expose());
        if self.p12_password_file.is_none() {
            println!("PKCS#12 password (shown once): {password_text}");
        }
        Ok(())
    }
}

fn date(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.0 / 1000)
        .map(|d| d.date().to_string())
        .unwrap_or_else(|_| "?".into())
}

impl DeviceCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::Issue(cmd) => cmd.run(ctx)?,
            Self::List => {
                let vault = ctx.open_vault()?;
                let users = vault.users()?;
                let now = Timestamp::now();
                println!("{:<32} {:<16} {:<8} {:<10} name", "id", "user", "status", "expires");
                let mut devices = vault.devices()?;
                devices.sort_by_key(|d| d.created);
                for d in devices {
                    let owner = users
                        .iter()
                        .find(|u| u.id == d.owner)
                        .map_or("?", |u| u.body.name.as_str());
                    let status = if d.body.revoked {
                        "revoked"
                    } else if d.expires <= now {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{} {:<16} {:<8} {:<10} {}",
                        d.id,
                        owner,
                        status,
                        date(d.expires),
                        d.body.name
                    );
                }
            }
            Self::Revoke { id } => {
                let vault = ctx.open_vault()?;
                let d = vault.revoke_device(id).map_err(|e| match e {
                    crate::app::VaultError::NotFound(_)
                    | crate::app::VaultError::Store(crate::store::StoreError::NotFound(_)) => {
                        anyhow::anyhow!("no device {id} (see `coffer device list`)")
                    }
                    e => e.into(),
                })?;
                println!(
                    "revoked device {} ({}): refused from its next request to a server started now",
                    d.id, d.body.name
                );
            }
        }
        Ok(())
    }
}
