//! `coffer pins` and `coffer cert renew-server`.

use clap::{Args, Subcommand};

use super::Context;
use crate::pki::San;

/// Print the SPKI SHA-256 pins of the current and next server keys.
#[derive(Debug, Args)]
pub struct PinsCmd {
    /// Print `{"current": ..., "next": ...}` instead of text.
    #[arg(long)]
    json: bool,
}

impl PinsCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let (current, next) = crate::app::pki::pins(&ctx.paths())?;
        if self.json {
            println!("{}", serde_json::json!({ "current": current, "next": next }));
        } else {
            println!("{current}  current server key");
            println!("{next}  next server key (backup pin)");
        }
        Ok(())
    }
}

/// Server certificate management.
#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Issue a new server certificate for the same key (pins stay valid). Restart the
    /// server afterwards.
    RenewServer(RenewCmd),
}

/// `coffer cert renew-server`.
#[derive(Debug, Args)]
pub struct RenewCmd {
    /// Names for the new certificate (default: those of the current one); repeat for each.
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<San>,
}

impl CertCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::RenewServer(cmd) => {
                let vault = ctx.open_vault()?;
                let info = vault.renew_server_cert(&cmd.sans, ctx.config.pki.server_days)?;
                let until = time::OffsetDateTime::from_unix_timestamp(info.not_after)
                    .map(|t| t.date().to_string())
                    .unwrap_or_default();
                println!(
                    "renewed {} for {} (valid until {until}); the key and its pin are unchanged; \
                     restart `coffer serve` to use it",
                    crate::app::pki::server_cert_path(vault.paths()).display(),
                    info.sans.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                Ok(())
            }
        }
    }
}
