//! `coffer verify [--deep]`.

use clap::Args;

use super::Context;
use super::progress::Bar;
use crate::admin::{Request, Response};

/// `coffer verify`.
#[derive(Debug, Args)]
pub struct VerifyCmd {
    /// Also decrypt every chunk of every document and check its content hash.
    #[arg(long)]
    deep: bool,
}

impl VerifyCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let bar = Bar::new("verifying", self.deep);
        let answer = ctx.admin_with(Request::Verify { deep: self.deep }, &mut |d, t| bar.update(d, t))?;
        bar.finish();
        let Response::Verify(report) = answer else {
            return Err(super::unexpected("verify"));
        };
        for d in &report.damaged {
            println!("damaged: {} {}: {}", d.kind, d.id, d.reason);
        }
        let what = if report.deep {
            format!(
                "{} objects ({} documents, {} chunks, {} bytes decrypted and hashed)",
                report.objects, report.documents, report.chunks, report.bytes
            )
        } else {
            format!("{} objects ({} documents)", report.objects, report.documents)
        };
        if report.more_damaged > 0 {
            println!("damaged: {} more objects not listed", report.more_damaged);
        }
        if report.damaged_count() == 0 {
            println!("verified {what}: no damage found");
            Ok(())
        } else {
            anyhow::bail!(
                "verified {what}: {} damaged; restore from a backup (`coffer restore`), or delete the damaged \
                 documents and re-upload them",
                report.damaged_count()
            )
        }
    }
}
