//! `coffer init`.

use clap::Args;

use super::{GlobalArgs, KdfArgs};
use crate::app::{init, unlock};

/// Create the key file and an empty database.
#[derive(Debug, Args)]
pub struct InitCmd {
    /// Key derivation cost.
    #[command(flatten)]
    kdf: KdfArgs,
}

impl InitCmd {
    pub(super) fn run(self, global: &GlobalArgs) -> anyhow::Result<()> {
        let params = self.kdf.params()?;
        let passphrase = unlock::new(global.passphrase_file.as_deref(), true)?;
        let paths = global.paths();
        init::init(&paths, &passphrase, params, global.store_options())?;
        println!("created {}", paths.key_file().display());
        println!("created {}", paths.database().display());
        println!(
            "keep the passphrase and a copy of {} safe: without both, no backup can be read",
            paths.keys_dir.display()
        );
        Ok(())
    }
}
