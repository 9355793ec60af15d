//! Records the git revision the binary is built from in `COFFER_GIT_REV`, for `coffer
//! --version`: `1a2b3c4d5e6f, 2026-11-29` (commit and its date), with `-dirty` after the
//! commit when tracked files had uncommitted changes, or `unknown` when there is no git or
//! no repository (a source tarball). A packager can set `COFFER_GIT_REV` to override it.
//!
//! The script reruns only when HEAD, the branch it points to, the index or the sources
//! change, so an unchanged tree does not rebuild coffer. Edits outside `src/` that are not
//! staged (tests, docs) do not mark the build dirty until the index or `src/` changes.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=COFFER_GIT_REV");
    let rev = match std::env::var("COFFER_GIT_REV") {
        Ok(rev) if !rev.trim().is_empty() => rev,
        _ => git_revision().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=COFFER_GIT_REV={rev}");
}

/// `<commit>[-dirty], <commit date>`, watching the files that change it; `None` without git.
fn git_revision() -> Option<String> {
    // A tarball unpacked inside some other repository must not report that one's commit.
    let top = std::fs::canonicalize(git(&["rev-parse", "--show-toplevel"])?).ok()?;
    let here = std::fs::canonicalize(std::env::var_os("CARGO_MANIFEST_DIR")?).ok()?;
    if top != here {
        return None;
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Worktrees and packed refs keep these files in different places: ask git where.
    let mut watched = vec!["HEAD".to_owned(), "index".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            // A missing path would make cargo rerun this script on every build.
            println!("cargo:rerun-if-changed={path}");
        }
    }
    for path in ["src", "Cargo.toml", "Cargo.lock"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    // No optional locks: `git status` would otherwise refresh (rewrite) the index it watches.
    let dirty =
        git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let date = git(&["show", "-s", "--date=short", "--format=%cd", "HEAD"]);
    let mut rev = commit;
    if dirty {
        rev.push_str("-dirty");
    }
    if let Some(date) = date {
        rev.push_str(", ");
        rev.push_str(&date);
    }
    Some(rev)
}

/// Runs git in the package directory; its trimmed standard output, or `None` if git is
/// missing or fails (no repository).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}
