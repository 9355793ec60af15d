//! `coffer init`.

use clap::Args;

use super::{Context, KdfArgs};
use crate::app::init::{PkiPlan, init_with_pki};
use crate::app::unlock;
use crate::pki::San;

/// Create the key file, an empty database, the CA and the server certificate.
#[derive(Debug, Args)]
pub struct InitCmd {
    /// A name clients use to reach the server (DNS name or IP address); repeat for each.
    /// Default: localhost, 127.0.0.1 and ::1 (enough for a trial on this machine only).
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<San>,
    /// Key derivation cost.
    #[command(flatten)]
    kdf: KdfArgs,
}

impl InitCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let params = self.kdf.params(ctx)?;
        let defaulted = self.sans.is_empty();
        let sans = if defaulted {
            ["localhost", "127.0.0.1", "::1"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect()
        } else {
            self.sans
        };
        let passphrase = unlock::new(ctx.passphrase_file.as_deref(), true)?;
        let paths = ctx.paths();
        let plan = PkiPlan {
            sans,
            ca_days: ctx.config.pki.ca_days,
            server_days: ctx.config.pki.server_days,
        };
        init_with_pki(&paths, &passphrase, params, ctx.store_options(), &plan)?;
        if defaulted {
            // After the fact: a failed init has no certificate to warn about.
            eprintln!(
                "note: no --san given: the server certificate names localhost, 127.0.0.1 and ::1 only; \
                 run `coffer cert renew-server --san NAME` before phones connect"
            );
        }
        println!("created {}", paths.key_file().display());
        println!("created {}", paths.database().display());
        println!(
            "created {} (give it to clients to trust)",
            crate::app::pki::ca_cert_path(&paths).display()
        );
        println!(
            "created {} for {}",
            crate::app::pki::server_cert_path(&paths).display(),
            plan.sans.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
        let (current, next) = crate::app::pki::pins(&paths)?;
        println!("server key pins for the app: {current} (current), {next} (next)");
        println!(
            "keep the passphrase and a copy of {} safe: without both, no backup can be read",
            paths.keys_dir.display()
        );
        Ok(())
    }
}
