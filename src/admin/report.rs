//! One line for a failed command: the message, each cause once, and what to do next.
//! Used by the CLI for what it prints and by the server for the answers it sends over the
//! admin socket (which carry text only), so both say the same.

use std::io::ErrorKind;

/// `message: cause: cause; next step`. A cause already quoted by the message before it
/// (`cannot write X: {source}` with that source also in the chain) is left out. When the
/// line ends with an operating-system or database error that no message explained, the
/// next step for its kind follows (permission denied, disk full, ...).
pub fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || parts.last().is_some_and(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    let mut line = parts.join(": ");
    if let Some(root) = e.chain().last()
        && line.ends_with(&root.to_string())
        && let Some(step) = next_step(root)
    {
        line.push_str("; ");
        line.push_str(step);
    }
    line
}

/// The next step for an error that states only what the operating system or redb said.
fn next_step(root: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    if let Some(io) = root.downcast_ref::<std::io::Error>() {
        return io_next_step(io.kind());
    }
    const DAMAGED: &str = "the database file is damaged or not coffer's: check --data-dir, or restore it from a \
                           backup (`coffer restore FILE`, with the server stopped)";
    match root.downcast_ref::<redb::Error>()? {
        // redb reports a file without its magic number as invalid data.
        redb::Error::Io(io) if io.kind() == ErrorKind::InvalidData => Some(DAMAGED),
        redb::Error::Io(io) => io_next_step(io.kind()),
        redb::Error::Corrupted(_) => Some(DAMAGED),
        _ => None,
    }
}

fn io_next_step(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::PermissionDenied => {
            "check that the user running coffer may read and write that path (owner, mode), or choose another one"
        }
        ErrorKind::NotFound | ErrorKind::NotADirectory => "check the path and retry",
        ErrorKind::IsADirectory => "name a file, not a directory",
        ErrorKind::AlreadyExists => "move the existing file away or choose another name",
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            "free some disk space (or choose another disk), then retry"
        }
        ErrorKind::ReadOnlyFilesystem => "the file system is read-only: choose a path on a writable one",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write {path}: {source}")]
    struct Write {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_quoted_cause_is_not_repeated_and_the_next_step_follows() {
        let e = anyhow::Error::new(Write {
            path: "/b/x".into(),
            source: std::io::Error::from(ErrorKind::StorageFull),
        });
        let line = describe(&e);
        let os = std::io::Error::from(ErrorKind::StorageFull).to_string();
        assert_eq!(line.matches(&os).count(), 1, "{line}");
        assert!(line.starts_with("cannot write /b/x: "), "{line}");
        assert!(
            line.ends_with("; free some disk space (or choose another disk), then retry"),
            "{line}"
        );
    }

    #[test]
    fn causes_follow_the_context() {
        let e = anyhow::Error::new(std::io::Error::from(ErrorKind::PermissionDenied)).context("cannot write /b/x");
        let line = describe(&e);
        let os = std::io::Error::from(ErrorKind::PermissionDenied).to_string();
        assert!(
            line.starts_with(&format!("cannot write /b/x: {os}; check that")),
            "{line}"
        );
    }

    #[test]
    fn a_message_with_its_own_next_step_gets_no_other() {
        let e = anyhow::anyhow!("no key file at /k/master.key: run `coffer init` first");
        assert_eq!(describe(&e), "no key file at /k/master.key: run `coffer init` first");
    }

    #[test]
    fn damage_reported_by_redb_points_to_a_restore() {
        let e = anyhow::Error::new(crate::store::StoreError::Db(redb::Error::Corrupted("bad page".into())));
        assert!(describe(&e).contains("coffer restore FILE"), "{}", describe(&e));
    }
}
