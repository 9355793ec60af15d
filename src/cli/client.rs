//! `coffer client --profile FILE <put|get|list|meta|rm|login|logout>`: the reference client.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::client::{Client, PutOptions};
use crate::secret::Passphrase;

/// The reference client.
#[derive(Debug, Args)]
pub struct ClientCmd {
    /// The client profile (TOML) written by `coffer device issue` or `serve --dev`.
    #[arg(long, value_name = "FILE", env = "COFFER_PROFILE")]
    profile: PathBuf,
    /// What to do.
    #[command(subcommand)]
    action: ClientAction,
}

/// Client actions.
#[derive(Debug, Subcommand)]
pub enum ClientAction {
    /// Log in (password from the profile's password_file, --password-file, or the terminal)
    /// and keep the session in <profile>.session.toml.
    Login {
        /// Read the password from this file.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// The current one-time code, if the account has TOTP.
        #[arg(long, value_name = "CODE")]
        totp: Option<String>,
    },
    /// End the session.
    Logout,
    /// Upload a file.
    Put {
        /// The file.
        file: PathBuf,
        /// The document's name (default: the file's).
        #[arg(long)]
        name: Option<String>,
        /// A title.
        #[arg(long)]
        title: Option<String>,
        /// A tag (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Visible to every member (default: private).
        #[arg(long)]
        team: bool,
        /// Content type.
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Download a document.
    Get {
        /// The document id.
        id: String,
        /// Write to this file (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// List documents (one page, JSON).
    List {
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
        /// Only documents with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// The next_cursor of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A document's metadata (JSON).
    Meta {
        /// The document id.
        id: String,
    },
    /// Delete a document.
    Rm {
        /// The document id.
        id: String,
    },
    /// Read ERP records: one key prints the record (its Cache-Status on standard error),
    /// several print them all with a status each.
    Erp {
        /// The collection.
        collection: String,
        /// The record keys (1 to 100).
        #[arg(required = true, num_args = 1..=100)]
        keys: Vec<String>,
    },
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

impl ClientCmd {
    pub(super) fn run(self) -> anyhow::Result<()> {
        let client = Client::open(&self.profile)?;
        match self.action {
            ClientAction::Login { password_file, totp } => {
                let password = match password_file {
                    Some(f) => crate::app::unlock::from_file(&f)?,
                    None => match client.profile_password()? {
                        Some(p) => p,
                        None if std::io::stdin().is_terminal() => Passphrase::new(rpassword::prompt_password(
                            format!("password of {}: ", client.profile().username),
                        )?),
                        None => anyhow::bail!("no terminal to ask for the password on: pass --password-file FILE"),
                    },
                };
                let session = client.login(&password, totp.as_deref())?;
                eprintln!(
                    "logged in as {} until {} (session kept in {})",
                    client.profile().username,
                    session.expires,
                    client.state_path().display()
                );
            }
            ClientAction::Logout => {
                client.logout()?;
                eprintln!("logged out");
            }
            ClientAction::Put {
                file,
                name,
                title,
                tags,
                team,
                content_type,
            } => {
                let doc = client.put(
                    &file,
                    &PutOptions {
                        name,
                        title,
                        tags,
                        team,
                        content_type,
                    },
                )?;
                print_json(&doc);
            }
            ClientAction::Get { id, out } => {
                let n = client.get(&id, out.as_deref())?;
                if let Some(out) = out {
                    eprintln!("wrote {n} bytes to {}", out.display());
                }
            }
            ClientAction::List { limit, tag, cursor } => {
                let enc =
                    |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
                let mut query = Vec::new();
                if let Some(l) = limit {
                    query.push(format!("limit={l}"));
                }
                if let Some(c) = cursor {
                    query.push(format!("cursor={}", enc(&c)));
                }
                if let Some(t) = tag {
                    query.push(format!("tag={}", enc(&t)));
                }
                print_json(&client.list(&query.join("&"))?);
            }
            ClientAction::Meta { id } => print_json(&client.meta(&id)?),
            ClientAction::Rm { id } => {
                client.rm(&id)?;
                eprintln!("deleted {id}");
            }
            ClientAction::Erp { collection, keys } => {
                let (value, cache_status) = client.erp_get(&collection, &keys)?;
                if let Some(status) = cache_status {
                    eprintln!("cache-status: {status}");
                }
                print_json(&value);
            }
        }
        Ok(())
    }
}
