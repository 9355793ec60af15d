//! `coffer compact`.

use super::Context;

pub(super) fn run(ctx: &Context) -> anyhow::Result<()> {
    if crate::admin::socket::connect(&ctx.config.data_dir)?.is_some() {
        anyhow::bail!(
            "coffer serve is running on {}: compaction rewrites the database file and needs it to itself \
             (redb compacts only with exclusive access); stop the server, run `coffer compact`, start it again",
            ctx.config.data_dir.display()
        );
    }
    let mut vault = ctx.open_vault()?;
    let before = vault.store().space()?;
    let result = vault.vacuum();
    let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
    if let Err(e) = vault.audit_admin("compact", None, outcome) {
        eprintln!("warning: the audit log could not record `compact`: {e}");
    }
    let report = result?;
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
