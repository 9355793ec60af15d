//! `coffer audit verify|export`.

use std::io::Write;

use clap::Subcommand;

use super::Context;
use super::progress::Bar;
use crate::admin::{Request, Response};
use crate::app::audit::AuditFilter;
use crate::model::Timestamp;

/// The audit log.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain end to end; names the first broken entry.
    Verify,
    /// Print entries as JSON lines, oldest first.
    Export {
        /// Only entries at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only entries of this user (login name or user id).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
}

fn parse_time(s: &str) -> anyhow::Result<Timestamp> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| anyhow::anyhow!("--since {s:?} is not an RFC 3339 time: write e.g. 2026-11-01T00:00:00Z"))?;
    Ok(Timestamp(
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
    ))
}

impl AuditCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::Verify => {
                let bar = Bar::new("checking entries", false);
                let answer = ctx.admin_with(Request::AuditVerify, &mut |d, _| bar.update(d, 0))?;
                bar.finish();
                let Response::AuditCheck(c) = answer else {
                    return Err(super::unexpected("audit verify"));
                };
                if let Some((seq, why)) = c.broken {
                    anyhow::bail!(
                        "audit log broken at entry {seq}: {why}; the entries before it ({} checked) are intact. \
                         Compare with an exported copy or a backup to see what changed",
                        c.entries
                    );
                }
                match c.anchor {
                    Some((seq, before)) => println!(
                        "audit log intact: {} entries ({}..{}), after entries up to {seq} pruned (older than {})",
                        c.entries,
                        c.first,
                        c.last,
                        crate::http::rfc3339(Timestamp(before))
                    ),
                    None => println!("audit log intact: {} entries", c.entries),
                }
                println!(
                    "head hash {} (record it elsewhere to detect a cut-off end later)",
                    c.head
                );
                Ok(())
            }
            Self::Export { since, user } => {
                let since = since.as_deref().map(parse_time).transpose()?;
                let user = match user {
                    None => None,
                    Some(u) => Some(match u.parse::<crate::model::UserId>() {
                        Ok(id) => id,
                        Err(_) => {
                            let Response::Users(users) = ctx.admin(Request::UserList)? else {
                                return Err(super::unexpected("user list"));
                            };
                            let row = users
                                .into_iter()
                                .find(|r| r.name == u)
                                .ok_or_else(|| anyhow::anyhow!("no user named {u:?} (see `coffer user list`)"))?;
                            row.id.parse().map_err(|_| {
                                anyhow::anyhow!(
                                    "user {u:?} has an unreadable id: check the database with `coffer verify`"
                                )
                            })?
                        }
                    }),
                };
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                if crate::admin::socket::connect(&ctx.config.data_dir)?.is_none() {
                    // No server: one pass over the database opened here.
                    let vault = ctx.open_vault()?;
                    let filter = AuditFilter {
                        since,
                        user,
                        from_seq: 0,
                        limit: 0,
                        continuation: false,
                    };
                    let mut failed = None;
                    vault.audit_export(&filter, &mut |r| {
                        if failed.is_none()
                            && let Err(e) = serde_json::to_writer(&mut out, &r)
                                .map_err(std::io::Error::from)
                                .and_then(|()| out.write_all(b"\n"))
                        {
                            failed = Some(e);
                        }
                    })?;
                    if let Some(e) = failed {
                        return Err(e.into());
                    }
                    vault.audit_admin("audit export", None, Ok(()))?;
                } else {
                    let mut from = 0;
                    loop {
                        let filter = AuditFilter {
                            since,
                            user,
                            from_seq: from,
                            limit: 0,
                            continuation: from > 0,
                        };
                        let Response::AuditPage(records, next) = ctx.admin(Request::AuditExport(filter))? else {
                            return Err(super::unexpected("audit export"));
                        };
                        for r in &records {
                            serde_json::to_writer(&mut out, r)?;
                            out.write_all(b"\n")?;
                        }
                        match next {
                            Some(n) if n > from => from = n,
                            _ => break,
                        }
                    }
                }
                out.flush()?;
                Ok(())
            }
        }
    }
}
