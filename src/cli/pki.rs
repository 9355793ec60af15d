//! `coffer pins` and `coffer cert renew-server`.

use clap::{Args, Subcommand};

use super::Context;
use crate::admin::{Request, Response};
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
    /// Issue a new server certificate for the same key (pins stay valid). A running server
    /// switches to it at once; it also repairs the keys directory after an interrupted
    /// key rotation.
    RenewServer(RenewCmd),
    /// Promote the next server key (whose pin apps already carry as their backup pin) to
    /// current, with a new certificate, and make a new next key. A running server switches
    /// at once (and on SIGHUP); ship the new next pin (`coffer pins`) in the next app release.
    RotateServerKey(RotateCmd),
}

/// `coffer cert rotate-server-key`.
#[derive(Debug, Args)]
pub struct RotateCmd {
    /// Rotate only if the next key has this pin (the backup pin the apps carry, as
    /// `coffer pins` printed it): guards against promoting a key no app knows.
    #[arg(long, value_name = "PIN")]
    expect_next: Option<String>,
}

/// `coffer cert renew-server`.
#[derive(Debug, Args)]
pub struct RenewCmd {
    /// Names for the new certificate (default: those of the current one); repeat for each.
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<San>,
}

fn until(not_after: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(not_after)
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

impl CertCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let request = match self {
            Self::RenewServer(cmd) => Request::CertRenewServer {
                sans: cmd.sans.iter().map(ToString::to_string).collect(),
            },
            Self::RotateServerKey(cmd) => Request::CertRotateServerKey {
                expect_next: cmd.expect_next,
            },
        };
        let Response::ServerCert {
            sans,
            not_after,
            pins,
            finished_rotation,
        } = ctx.admin(request)?
        else {
            return Err(super::unexpected("`coffer cert`"));
        };
        let path = crate::app::pki::server_cert_path(&ctx.paths());
        if let Some([current, next]) = &finished_rotation {
            println!("finished an interrupted server key rotation:");
            println!("{current}  current (was the backup pin)");
            println!("{next}  next (ship it as the new backup pin before rotating again)");
        }
        match pins {
            None => println!(
                "renewed {} for {} (valid until {}); the key and its pin are unchanged",
                path.display(),
                sans.join(", "),
                until(not_after)
            ),
            Some([retired, current, next]) => {
                println!(
                    "rotated the server key; {} is for the new key (valid until {})",
                    path.display(),
                    until(not_after)
                );
                println!("{retired}  retired (apps may drop it)");
                println!("{current}  current (was the backup pin)");
                println!("{next}  next (ship it as the new backup pin)");
            }
        }
        println!("a running coffer serve uses it for new connections now; open connections keep theirs");
        Ok(())
    }
}
