//! `coffer compact`.

use super::Context;

pub(super) fn run(ctx: &Context) -> anyhow::Result<()> {
    let mut vault = ctx.open_vault()?;
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
