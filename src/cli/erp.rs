//! `coffer erp stats|purge`: the ERP record cache. Through the running server's admin
//! socket when it runs (with its counters), else on the database opened here.

use clap::Subcommand;

use super::Context;
use crate::admin::{ErpCollectionRow, Request, Response};

/// The ERP record cache.
#[derive(Debug, Subcommand)]
pub enum ErpCmd {
    /// Records and bytes per collection; with the server running, also its hits, misses,
    /// stale answers, refreshes, upstream errors and calls, and reads refused because too
    /// many upstream calls were waiting, since it started.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove every record of a collection, or one record: the next read fetches it again
    /// from the upstream (pushed records are gone until pushed again).
    Purge {
        /// The collection.
        collection: String,
        /// One record's key (default: all of the collection's records).
        key: Option<String>,
    },
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn table(rows: &[ErpCollectionRow]) -> String {
    if rows.is_empty() {
        return "no ERP collections are configured and none hold records\n".to_owned();
    }
    let serving = rows.iter().any(|r| r.counters.is_some());
    let mut out = String::new();
    out.push_str(&format!("{:<20} {:>9} {:>11}", "COLLECTION", "RECORDS", "BYTES"));
    if serving {
        out.push_str(&format!(
            " {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "HITS", "MISSES", "STALE", "REFRESHES", "ERRORS", "UPSTREAM", "BUSY"
        ));
    }
    out.push_str("  SOURCE\n");
    for r in rows {
        out.push_str(&format!("{:<20} {:>9} {:>11}", r.name, r.records, human(r.bytes)));
        if serving {
            let c = r.counters.unwrap_or_default();
            out.push_str(&format!(
                " {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                c.hits, c.misses, c.stale, c.refreshes, c.errors, c.upstream_calls, c.busy
            ));
        }
        let source = match (&r.upstream, r.configured) {
            (Some(origin), _) => format!("reads through {origin}"),
            (None, true) => "pushed only".to_owned(),
            (None, false) => "not configured (swept when stale, or `coffer erp purge`)".to_owned(),
        };
        out.push_str(&format!("  {source}\n"));
    }
    if !serving {
        out.push_str("(no server running: hit and miss counts exist only while it runs)\n");
    }
    out
}

impl ErpCmd {
    pub(super) fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::Stats { json } => match ctx.admin(Request::ErpStats)? {
                Response::ErpStats(rows) if json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Response::ErpStats(rows) => print!("{}", table(&rows)),
                _ => return Err(super::unexpected("erp stats")),
            },
            Self::Purge { collection, key } => match ctx.admin(Request::ErpPurge { collection, key })? {
                Response::Done(text) => println!("{text}"),
                _ => return Err(super::unexpected("erp purge")),
            },
        }
        Ok(())
    }
}
