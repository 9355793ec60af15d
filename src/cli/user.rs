//! `coffer user add|list|disable|totp|unlock`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Context;
use crate::app::principals::UserBody;
use crate::app::unlock;
use crate::model::Role;
use crate::secret::Passphrase;

/// Shortest password accepted for a user.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Users.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user; the password is asked twice without echo, or read from --password-file.
    Add(AddCmd),
    /// List users.
    List,
    /// Disable a user (with the server stopped, until the admin socket exists): all their
    /// devices are refused from their first request once the server runs again.
    Disable {
        /// The user name.
        name: String,
    },
    /// Enrol a TOTP second factor (RFC 6238): prints an otpauth:// URI and its QR code for
    /// an authenticator app; from then on logins need the current code.
    Totp {
        /// The user name.
        name: String,
        /// Remove the second factor instead.
        #[arg(long)]
        disable: bool,
    },
    /// Clear a user's failed-login count and lock.
    Unlock {
        /// The user name.
        name: String,
    },
}

fn find(vault: &crate::app::Vault, name: &str) -> anyhow::Result<crate::app::principals::UserInfo> {
    vault
        .user_by_name(name)?
        .ok_or_else(|| anyhow::anyhow!("no user named {name:?} (see `coffer user list`)"))
}

/// A QR code of `text` for a terminal (dark modules as dark characters).
pub fn qr_code(text: &str) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes())?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// `coffer user add`.
#[derive(Debug, Args)]
pub struct AddCmd {
    /// Login name.
    name: String,
    /// Role: member (staff with the app), admin (sees every document), integration (ERP service).
    #[arg(long, value_name = "ROLE")]
    role: Role,
    /// Read the password from this file (all of it, without one trailing newline) instead
    /// of the terminal.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<Passphrase> {
    let p = match file {
        Some(f) => unlock::from_file(f)?,
        None if std::io::stdin().is_terminal() => {
            let a = Passphrase::new(rpassword::prompt_password("password: ")?);
            let b = Passphrase::new(rpassword::prompt_password("repeat it: ")?);
            if a.expose() != b.expose() {
                anyhow::bail!("the two passwords do not match; nothing was changed");
            }
            a
        }
        None => anyhow::bail!("no terminal to ask for the password on: pass --password-file FILE"),
    };
    if p.char_count() < MIN_PASSWORD_CHARS {
        anyhow::bail!("the password is too short: use at least {MIN_PASSWORD_CHARS} characters");
    }
    Ok(p)
}

impl UserCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::Add(cmd) => {
                let password = read_password(cmd.password_file.as_deref())?;
                let params = ctx.config.argon2.params();
                super::warn_if_weak(params);
                let vault = ctx.open_vault()?;
                let hash = params.hash_password(&password)?;
                let user = vault.add_user(UserBody {
                    name: cmd.name,
                    role: cmd.role,
                    password_hash: hash,
                    disabled: false,
                    totp: None,
                })?;
                println!("added {} ({}), id {}", user.body.name, user.body.role.as_str(), user.id);
            }
            Self::List => {
                let vault = ctx.open_vault()?;
                let mut users = vault.users()?;
                users.sort_by(|a, b| a.body.name.cmp(&b.body.name));
                println!("{:<24} {:<12} {:<9} id", "name", "role", "status");
                for u in users {
                    let status = if u.body.disabled { "disabled" } else { "active" };
                    println!(
                        "{:<24} {:<12} {:<9} {}",
                        u.body.name,
                        u.body.role.as_str(),
                        status,
                        u.id
                    );
                }
            }
            Self::Disable { name } => {
                let vault = ctx.open_vault()?;
                let user = find(&vault, &name)?;
                vault.update_user(user.id, |b| b.disabled = true)?;
                println!(
                    "disabled {name}: their sessions are ended and their devices refused from their next request \
                     to a server started now"
                );
            }
            Self::Totp { name, disable } => {
                let vault = ctx.open_vault()?;
                let user = find(&vault, &name)?;
                match vault.set_totp(user.id, !disable)? {
                    None => println!("removed the second factor of {name}: logins need only the password"),
                    Some(seed) => {
                        let uri = crate::crypto::totp::otpauth_uri("coffer", &name, seed.expose());
                        println!("second factor enrolled for {name}; scan this with an authenticator app:");
                        println!("{}", qr_code(&uri)?);
                        println!("{uri}");
                        println!("(shown once; run this again to replace it, or with --disable to remove it)");
                    }
                }
            }
            Self::Unlock { name } => {
                let vault = ctx.open_vault()?;
                let user = find(&vault, &name)?;
                vault.unlock_user(user.id)?;
                println!("cleared the failed logins of {name}");
            }
        }
        Ok(())
    }
}
