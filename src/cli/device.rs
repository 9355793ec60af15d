//! `coffer device issue|list|revoke`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine;
use clap::{Args, Subcommand};

use super::Context;
use crate::admin::{EnrolmentOut, IssuedOut, Request, Response};
use crate::app::durable;
use crate::model::{DeviceId, Timestamp};
use crate::pki::{P12Flavour, pkcs12};

/// Devices.
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Make a single-use enrolment code for a new device of a user, shown as a QR code for
    /// the app: the app makes its key on the phone and sends a CSR to `POST /v1/enroll`.
    Enroll(EnrollCmd),
    /// Make a key and client certificate here for a user's device and register it (for
    /// devices that cannot make a CSR); writes the certificate, key, a password-protected
    /// PKCS#12 bundle (for MDM) and the CA to --out.
    Issue(IssueCmd),
    /// List devices with their status and certificate expiry.
    List,
    /// Revoke a device: refused from its next request, listed in keys/crl.pem.
    Revoke {
        /// The device id (see `coffer device list`).
        #[arg(value_parser = parse_device_id)]
        id: DeviceId,
    },
    /// Renew a device's certificate, keeping its id: by default a renewal code with which
    /// the app sends a CSR (for its current key or a new one); with --out, a new key and
    /// PKCS#12 bundle made here. The old certificate is listed in keys/crl.pem.
    Renew(RenewCmd),
}

/// `coffer device enroll`.
#[derive(Debug, Args)]
pub struct EnrollCmd {
    /// The owner's user name.
    #[arg(long, value_name = "NAME")]
    user: String,
    /// How long the code works: 90s, 30m, 24h, 7d (1 minute to 30 days).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
    ttl: u64,
    /// Print `{"code", "url", "pins", "expires"}` instead of the QR code, for scripts.
    #[arg(long)]
    json: bool,
}

/// `coffer device renew`.
#[derive(Debug, Args)]
pub struct RenewCmd {
    /// The device id (see `coffer device list`).
    #[arg(value_parser = parse_device_id)]
    id: DeviceId,
    /// How long the renewal code works: 90s, 30m, 24h, 7d.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
    ttl: u64,
    /// Print the renewal code as JSON instead of the QR code.
    #[arg(long)]
    json: bool,
    /// Make a new key here and write device.crt, device.key, device.p12, ca.crt and
    /// profile.toml to this directory (as `device issue` does) instead of a renewal code.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// With --out: read the PKCS#12 password from this file instead of generating one.
    #[arg(long, value_name = "FILE", requires = "out")]
    p12_password_file: Option<PathBuf>,
    /// With --out: 3DES/SHA-1 PKCS#12 for old importers.
    #[arg(long, requires = "out")]
    legacy_p12: bool,
}

/// A device id as `coffer device list` prints it.
fn parse_device_id(text: &str) -> Result<DeviceId, String> {
    text.parse()
        .map_err(|_| "not a device id (32 hexadecimal characters): copy it from `coffer device list`".to_owned())
}

/// An enrolment code's lifetime: a duration (`90s`, `30m`, `24h`, `7d`) within
/// [`crate::app::enrol::CODE_TTL_RANGE`].
fn parse_ttl(text: &str) -> Result<u64, String> {
    let secs = crate::config::parse_duration(text)?;
    if !crate::app::enrol::CODE_TTL_RANGE.contains(&secs) {
        return Err("a code lives 1 minute to 30 days: use e.g. 30m, 24h or 7d".into());
    }
    Ok(secs)
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
    endpoint_with(ctx, explicit, ctx.config.listen.map_or(8443, |l| l.port()))
}

/// [`endpoint`] for a server listening on `port`.
pub(super) fn endpoint_on_port(ctx: &Context, port: u16) -> anyhow::Result<String> {
    endpoint_with(ctx, None, port)
}

fn endpoint_with(ctx: &Context, explicit: Option<&str>, port: u16) -> anyhow::Result<String> {
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
    Ok(format!("https://{host}:{port}"))
}

fn write_new(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let path = dir.join(name);
    durable::write_new(&path, bytes, mode).with_context(|| format!("cannot write {}", path.display()))
}

/// The PKCS#12 password: from `file`, or generated (and then printed once).
fn p12_password(file: Option<&Path>) -> anyhow::Result<crate::secret::Passphrase> {
    let password = match file {
        Some(f) => crate::app::unlock::from_file(f)?,
        None => {
            let bytes: [u8; 15] = crate::crypto::random_bytes()?;
            crate::secret::Passphrase::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
        }
    };
    std::str::from_utf8(password.expose())
        .context("the PKCS#12 password must be UTF-8: save the password file as UTF-8")?;
    if password.char_count() < super::user::MIN_PASSWORD_CHARS {
        anyhow::bail!(
            "the PKCS#12 password is too short: use at least {} characters (it protects the device key)",
            super::user::MIN_PASSWORD_CHARS
        );
    }
    Ok(password)
}

/// Checks, before anything is issued, that `out` can take the device files: none of them
/// exists, and an existing directory is safe (see [`prepare_out`]).
fn check_out(out: &Path) -> anyhow::Result<()> {
    for f in OUT_FILES {
        let p = out.join(f);
        if p.symlink_metadata().is_ok() {
            anyhow::bail!("{} already exists: choose an empty --out directory", p.display());
        }
    }
    if out.symlink_metadata().is_ok() {
        prepare_out(out)?;
    }
    Ok(())
}

/// Makes sure `out` is a directory of ours that others cannot write (created owner-only
/// if missing).
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    // A directory made here is owner-only; an existing one keeps its permissions but must
    // be ours and not writable by others, or someone could swap the files before they are
    // handed out.
    match std::fs::symlink_metadata(out) {
        Ok(meta) => {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            if !meta.is_dir() {
                anyhow::bail!(
                    "{} exists and is not a directory: choose a directory for --out",
                    out.display()
                );
            }
            if meta.uid() != rustix::process::geteuid().as_raw() || meta.permissions().mode() & 0o022 != 0 {
                anyhow::bail!(
                    "{} is not owned by this user or is writable by others: use a directory of your own",
                    out.display()
                );
            }
            Ok(())
        }
        Err(_) => durable::create_private_dir(out).with_context(|| format!("cannot create {}", out.display())),
    }
}

/// Writes the files of a device made here; prints what a human needs.
fn write_issued(
    ctx: &Context,
    issued: &IssuedOut,
    out: &Path,
    password: &crate::secret::Passphrase,
    legacy: bool,
    endpoint: Option<&str>,
) -> anyhow::Result<()> {
    let password_text = std::str::from_utf8(password.expose()).context("the PKCS#12 password must be UTF-8")?;
    let key = crate::pki::KeyDer::new(crate::pki::from_pem(
        issued.key_pem.expose(),
        "PRIVATE KEY",
        "device key",
    )?);
    let cert = crate::pki::from_pem(&issued.cert_pem, "CERTIFICATE", "device certificate")?;
    let ca = crate::pki::from_pem(&issued.ca_pem, "CERTIFICATE", "CA certificate")?;
    let flavour = if legacy { P12Flavour::Legacy } else { P12Flavour::Modern };
    let p12 = zeroize::Zeroizing::new(pkcs12(&key, &cert, &ca, &issued.device.name, password_text, flavour)?);
    let endpoint = match endpoint {
        Some(e) => self::endpoint(ctx, Some(e))?,
        None => issued.endpoint.clone(),
    };
    let profile = crate::client::Profile {
        endpoint,
        region: issued.region.clone(),
        service: crate::http::auth::SERVICE.to_owned(),
        access_key_id: issued.device.id.clone(),
        secret_access_key: issued.secret.clone(),
        ca: "ca.crt".into(),
        cert: "device.crt".into(),
        key: "device.key".into(),
        username: issued.device.user.clone(),
        password_file: None,
    };
    write_new(out, "device.key", issued.key_pem.expose().as_bytes(), 0o600)?;
    write_new(out, "device.crt", issued.cert_pem.as_bytes(), 0o644)?;
    write_new(out, "device.p12", &p12, 0o600)?;
    write_new(out, "ca.crt", issued.ca_pem.as_bytes(), 0o644)?;
    write_new(out, "profile.toml", profile.to_toml().as_bytes(), 0o600)?;
    Ok(())
}

/// What `write_issued` wrote and the secrets shown once.
fn print_issued(issued: &IssuedOut, out: &Path, password: Option<&crate::secret::Passphrase>) {
    println!(
        "wrote {}/{{device.crt,device.key,device.p12,ca.crt,profile.toml}}",
        out.display()
    );
    println!("access key id (the device id): {}", issued.device.id);
    println!(
        "signing secret (shown once; also in profile.toml): {}",
        issued.secret.expose()
    );
    if let Some(p) = password {
        println!("PKCS#12 password (shown once): {}", String::from_utf8_lossy(p.expose()));
    }
}

impl IssueCmd {
    fn run(self, ctx: &Context) -> anyhow::Result<()> {
        check_out(&self.out)?;
        let password = p12_password(self.p12_password_file.as_deref())?;
        if let Some(e) = &self.endpoint {
            endpoint(ctx, Some(e))?;
        }
        let Response::Issued(issued) = ctx.admin(Request::DeviceIssue {
            user: self.user,
            name: self.name,
        })?
        else {
            return Err(super::unexpected("`device issue`"));
        };
        let written = prepare_out(&self.out).and_then(|()| {
            write_issued(
                ctx,
                &issued,
                &self.out,
                &password,
                self.legacy_p12,
                self.endpoint.as_deref(),
            )
        });
        if let Err(e) = written {
            // The files are incomplete: the device must not stay usable.
            let _ = ctx.admin(Request::DeviceRevoke {
                id: issued.device.id.clone(),
            });
            return Err(e.context(
                "the device files could not be written, so the device was revoked again (issue a new one once \
                 the cause that follows is fixed)",
            ));
        }
        println!(
            "issued device {} for {} ({})",
            issued.device.id, issued.device.user, issued.device.name
        );
        print_issued(
            &issued,
            &self.out,
            self.p12_password_file.is_none().then_some(&password),
        );
        Ok(())
    }
}

fn date(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(|d| d.date().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Prints an enrolment (or renewal) code: a QR code of the JSON document the app reads,
/// and the code in text; or, with `json`, `{"code", "url", "pins", "expires"}`.
fn print_enrolment(e: &EnrolmentOut, json: bool) -> anyhow::Result<()> {
    let expires = crate::http::rfc3339(Timestamp(e.expires));
    if json {
        let mut doc = serde_json::json!({
            "code": e.code.expose(),
            "url": e.url,
            "pins": e.pins,
            "expires": expires,
        });
        if let Some(d) = &e.device {
            doc["device_id"] = serde_json::Value::from(d.as_str());
        }
        println!("{doc}");
        return Ok(());
    }
    let qr = serde_json::json!({
        "url": e.url,
        "code": e.code.expose(),
        "pins": e.pins,
        "region": e.region,
        "service": crate::http::auth::SERVICE,
    })
    .to_string();
    match &e.device {
        Some(d) => println!("renewal code for device {d} of {}; scan it with the app:", e.user),
        None => println!("enrolment code for a new device of {}; scan it with the app:", e.user),
    }
    println!("{}", super::user::qr_code(&qr)?);
    println!("code:    {}", e.code.expose());
    println!("server:  {}", e.url);
    println!("pins:    {} (current), {} (next)", e.pins[0], e.pins[1]);
    println!("expires: {expires} (single use; shown once)");
    Ok(())
}

impl DeviceCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::Issue(cmd) => cmd.run(ctx)?,
            Self::Enroll(cmd) => {
                let Response::Enrolment(e) = ctx.admin(Request::DeviceEnroll {
                    user: cmd.user,
                    ttl_secs: cmd.ttl,
                })?
                else {
                    return Err(super::unexpected("`device enroll`"));
                };
                print_enrolment(&e, cmd.json)?;
            }
            Self::Renew(cmd) => match &cmd.out {
                Some(out) => {
                    check_out(out)?;
                    let password = p12_password(cmd.p12_password_file.as_deref())?;
                    let Response::Issued(issued) = ctx.admin(Request::DeviceRenew {
                        id: cmd.id.to_string(),
                        ttl_secs: cmd.ttl,
                        new_key: true,
                    })?
                    else {
                        return Err(super::unexpected("`device renew`"));
                    };
                    prepare_out(out)
                        .and_then(|()| write_issued(ctx, &issued, out, &password, cmd.legacy_p12, None))
                        .context(
                            "the device was renewed but its files could not be written (run `coffer device renew` \
                             again once the cause that follows is fixed)",
                        )?;
                    println!(
                        "renewed device {} of {} with a new key; its old certificate is revoked (keys/crl.pem)",
                        issued.device.id, issued.device.user
                    );
                    print_issued(&issued, out, cmd.p12_password_file.is_none().then_some(&password));
                }
                None => {
                    let Response::Enrolment(e) = ctx.admin(Request::DeviceRenew {
                        id: cmd.id.to_string(),
                        ttl_secs: cmd.ttl,
                        new_key: false,
                    })?
                    else {
                        return Err(super::unexpected("`device renew`"));
                    };
                    print_enrolment(&e, cmd.json)?;
                }
            },
            Self::List => {
                let Response::Devices(devices) = ctx.admin(Request::DeviceList)? else {
                    return Err(super::unexpected("`device list`"));
                };
                println!("{:<32} {:<16} {:<8} {:<10} name", "id", "user", "status", "expires");
                for d in devices {
                    println!(
                        "{} {:<16} {:<8} {:<10} {}",
                        d.id,
                        d.user,
                        d.status,
                        date(d.expires),
                        d.name
                    );
                }
            }
            Self::Revoke { id } => {
                let Response::Revoked(d, listed) = ctx.admin(Request::DeviceRevoke { id: id.to_string() })? else {
                    return Err(super::unexpected("`device revoke`"));
                };
                println!(
                    "revoked device {} ({}): refused from its next request; keys/crl.pem lists {listed} certificate(s)",
                    d.id, d.name
                );
            }
        }
        Ok(())
    }
}
