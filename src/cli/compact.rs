//! `coffer compact`.

use super::GlobalArgs;

pub(super) fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let mut vault = global.open_vault()?;
    let report = vault.vacuum()?;
    println!(
        "{}: {} -> {} bytes",
        vault.paths().database().display(),
        report.bytes_before,
        report.bytes_after
    );
    Ok(())
}
