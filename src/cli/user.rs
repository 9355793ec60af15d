//! `coffer user add|list|disable|totp|unlock`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Context;
use crate::admin::{Request, Response};
use crate::app::unlock;
use crate::model::Role;
use crate::secret::{Passphrase, SecretString};

/// Shortest password accepted for a user.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Users.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user; the password is asked twice without echo, or read from --password-file.
    Add(AddCmd),
    /// List users.
    List,
    /// Disable a user: their sessions end and all their devices are refused from their next
    /// request.
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
                anyhow::bail!(
                    "the two passwords do not match; nothing was changed: run the command again and type the same one twice"
                );
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
        let request = match self {
            Self::Add(cmd) => {
                let password = read_password(cmd.password_file.as_deref())?;
                let password = std::str::from_utf8(password.expose())
                    .map_err(|_| anyhow::anyhow!("the password must be UTF-8 text: save the password file as UTF-8"))?
                    .to_owned();
                Request::UserAdd {
                    name: cmd.name,
                    role: cmd.role,
                    password: SecretString::new(password),
                }
            }
            Self::List => Request::UserList,
            Self::Disable { name } => Request::UserDisable { name },
            Self::Totp { name, disable } => Request::UserTotp { name, disable },
            Self::Unlock { name } => Request::UserUnlock { name },
        };
        let name = match &request {
            Request::UserTotp { name, .. } => name.clone(),
            _ => String::new(),
        };
        match ctx.admin(request)? {
            Response::User(u) => println!("added {} ({}), id {}", u.name, u.role.as_str(), u.id),
            Response::Users(users) => {
                println!("{:<24} {:<12} {:<9} id", "name", "role", "status");
                for u in users {
                    let status = if u.disabled { "disabled" } else { "active" };
                    println!("{:<24} {:<12} {:<9} {}", u.name, u.role.as_str(), status, u.id);
                }
            }
            Response::Totp(None) => println!("removed the second factor of {name}: logins need only the password"),
            Response::Totp(Some(uri)) => {
                println!("second factor enrolled for {name}; scan this with an authenticator app:");
                println!("{}", qr_code(uri.expose())?);
                println!("{}", uri.expose());
                println!("(shown once; run this again to replace it, or with --disable to remove it)");
            }
            Response::Done(text) => println!("{text}"),
            _ => return Err(super::unexpected("the user command")),
        }
        Ok(())
    }
}
