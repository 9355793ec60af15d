//! `coffer user add|list|disable`.

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
                let user = vault
                    .user_by_name(&name)?
                    .ok_or_else(|| anyhow::anyhow!("no user named {name:?} (see `coffer user list`)"))?;
                vault.update_user(user.id, |b| b.disabled = true)?;
                println!("disabled {name}: their devices are refused from their next request to a server started now");
            }
        }
        Ok(())
    }
}
