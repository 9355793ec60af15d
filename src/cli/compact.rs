//! `coffer compact`.

use super::GlobalArgs;

pub(super) fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let mut vault = global.open_vault()?;
    let before = vault.store().space()?;
    let report = vault.vacuum()?;
    let after = vault.store().space()?;
    println!(
        "{}: rewritten with live data only; allocated {} -> {} bytes (file {} -> {} bytes; \
         redb grows files in steps, so the file can stay larger than what it holds)",
        vault.paths().database().display(),
        before.allocated_bytes,
        after.allocated_bytes,
        report.bytes_before,
        report.bytes_after
    );
    Ok(())
}
