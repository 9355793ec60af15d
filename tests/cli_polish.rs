//! The command line's finish, through the real binary: `--version` names the revision,
//! `completions` needs nothing but the command line, every error ends with what to do
//! next, and progress bars stay out of scripts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::binary::{Cli, text};
use common::*;

const CLI: Cli = Cli { env: &[] };

/// `coffer ARGS` outside any coffer: no configuration, directory or passphrase from the
/// caller's environment, run in a temp dir.
fn bare(args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer"));
    isolate(&mut cmd, dir.path());
    let out = cmd.args(args).output().unwrap();
    (out, dir)
}

/// The one `error: ` line of a failed command, which must be its last line.
#[track_caller]
fn error_line(out: &Output, code: i32) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "the error comes last: {stderr}");
    errors[0].to_owned()
}

/// Fails unless `line` ends with `hint`.
#[track_caller]
fn assert_ends_with(line: &str, hint: &str) {
    assert!(
        line.ends_with(hint),
        "expected the next step {hint:?} at the end of: {line}"
    );
}

// ---- --version ----

#[test]
fn version_names_the_crate_version_and_the_git_revision() {
    let (out, _dir) = bare(&["--version"]);
    let stdout = expect_ok_text(out);
    let prefix = format!("coffer {} (git ", env!("CARGO_PKG_VERSION"));
    let rest = stdout
        .trim_end()
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `{prefix}...)`: {stdout:?}"));
    if rest == "unknown" {
        return;
    }
    let (rev, date) = rest.split_once(", ").unwrap_or((rest, ""));
    let commit = rev.strip_suffix("-dirty").unwrap_or(rev);
    assert!(
        commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a 12-hex revision: {stdout:?}"
    );
    assert!(date.is_empty() || date.len() == "2026-11-29".len(), "{stdout:?}");
    // Inside the repository (and unless a packager set the revision), it is HEAD's.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Ok(head) = head
        && head.status.success()
        && std::env::var_os("COFFER_GIT_REV").is_none()
    {
        assert_eq!(commit, text(&head.stdout).trim(), "{stdout:?}");
    }
}

fn expect_ok_text(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout)
}

// ---- completions ----

#[test]
fn bash_completions_cover_the_subcommands() {
    let (out, _dir) = bare(&["completions", "bash"]);
    let script = expect_ok_text(out);
    assert!(script.contains("_coffer()"), "not a bash completion function");
    for sub in ["backup", "restore", "device", "user", "completions"] {
        assert!(script.contains(sub), "{sub} is not completed");
    }
    assert!(script.contains("complete -F _coffer"), "the function is not registered");
}

#[test]
fn completions_for_each_shell_need_no_configuration_passphrase_or_coffer() {
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        // A configuration file that does not exist, directories that do not either: the
        // script is made from the command line alone.
        let (out, dir) = bare(&[
            "--config",
            "absent.toml",
            "--data-dir",
            "no-data",
            "--keys-dir",
            "no-keys",
            "completions",
            shell,
        ]);
        let script = expect_ok_text(out);
        assert!(
            script.contains("backup") && script.contains("device"),
            "{shell}: {script}"
        );
        assert!(!dir.path().join("no-data").exists(), "{shell} created a data directory");
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_ones_it_knows() {
    let (out, _dir) = bare(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
    assert!(
        stderr.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{stderr}"
    );
}

#[test]
fn the_completions_help_shows_how_to_install_them() {
    let (out, _dir) = bare(&["completions", "--help"]);
    let help = expect_ok_text(out);
    assert!(
        help.contains("coffer completions bash > /etc/bash_completion.d/coffer"),
        "{help}"
    );
}

// ---- every error ends with what to do next ----

#[test]
fn without_a_key_file_the_error_says_to_run_init() {
    let dirs = empty_dirs();
    let out = CLI.coffer(&dirs).args(["key", "status"]).output().unwrap();
    let line = error_line(&out, 1);
    assert!(line.starts_with("error: no key file at "), "{line}");
    assert_ends_with(&line, ": run `coffer init` first (or pass the right --keys-dir)");
}

#[test]
fn a_wrong_passphrase_says_to_check_it_and_retry() {
    let dirs = init_dirs();
    let out = CLI
        .without_passphrase(&dirs)
        .env("COFFER_PASSPHRASE", WRONG_PASSPHRASE)
        .args(["key", "status"])
        .output()
        .unwrap();
    let line = error_line(&out, 2);
    assert!(line.starts_with("error: wrong passphrase for "), "{line}");
    assert_ends_with(
        &line,
        "check the passphrase (or the file that --passphrase-file or COFFER_PASSPHRASE_FILE names) and retry",
    );
    assert!(!line.contains(WRONG_PASSPHRASE) && !line.contains(PASSPHRASE), "{line}");
}

#[test]
fn a_data_directory_without_a_database_says_to_run_init() {
    // Keys from an init, a data directory without its database (a wrong --data-dir).
    let dirs = init_dirs();
    std::fs::remove_file(dirs.database()).unwrap();
    let out = CLI.coffer(&dirs).args(["key", "status"]).output().unwrap();
    let line = error_line(&out, 1);
    assert!(line.starts_with("error: no database at "), "{line}");
    assert_ends_with(&line, ": run `coffer init` first (or pass the right --data-dir)");
}

#[test]
fn a_database_file_that_is_not_one_says_to_check_the_directory_or_restore() {
    let dirs = init_dirs();
    std::fs::write(dirs.database(), vec![0x5a; 8192]).unwrap();
    let out = CLI.coffer(&dirs).arg("verify").output().unwrap();
    let line = error_line(&out, 1);
    assert!(line.starts_with("error: database error: "), "{line}");
    assert_ends_with(
        &line,
        "; the database file is damaged or not coffer's: check --data-dir, or restore it from a backup \
         (`coffer restore FILE`, with the server stopped)",
    );
}

#[test]
fn restoring_a_missing_file_says_to_check_the_path() {
    let dirs = init_dirs();
    for check in [false, true] {
        let mut cmd = CLI.coffer(&dirs);
        cmd.arg("restore");
        if check {
            cmd.arg("--check");
        }
        let out = cmd.arg("no-such.bak").output().unwrap();
        let line = error_line(&out, 1);
        assert!(line.starts_with("error: no backup file at no-such.bak"), "{line}");
        assert_ends_with(
            &line,
            ": check the path (backups are the files `coffer backup --out FILE` wrote)",
        );
    }
}

#[test]
fn restoring_a_file_that_is_no_backup_says_to_check_the_name() {
    let dirs = init_dirs();
    let file = write_file(dirs.root.path(), "notes.txt", &"not a backup\n".repeat(100));
    let out = CLI
        .coffer(&dirs)
        .args(["restore", "--check", file.to_str().unwrap()])
        .output()
        .unwrap();
    let line = error_line(&out, 1);
    assert!(line.contains("not a coffer backup"), "{line}");
    assert_ends_with(&line, ": check the file name (backups are written by `coffer backup`)");
}

#[test]
fn an_unknown_user_says_where_to_find_the_names() {
    let dirs = init_dirs();
    let out = CLI.coffer(&dirs).args(["user", "disable", "nobody"]).output().unwrap();
    let line = error_line(&out, 1);
    assert!(line.starts_with("error: no user named \"nobody\""), "{line}");
    assert_ends_with(
        &line,
        ": check the name with `coffer user list`, or add the user with `coffer user add`",
    );
}

#[test]
fn a_malformed_device_id_says_where_to_copy_it_from() {
    let dirs = init_dirs();
    let out = CLI
        .coffer(&dirs)
        .args(["device", "revoke", "phone-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not a device id (32 hexadecimal characters): copy it from `coffer device list`"),
        "{stderr}"
    );
}

#[test]
fn a_broken_configuration_file_says_to_fix_and_check_it() {
    let dirs = empty_dirs();
    std::fs::create_dir_all(dirs.root.path()).unwrap();
    let config = write_file(dirs.root.path(), "coffer.toml", "[unclosed\n");
    let out = CLI
        .coffer(&dirs)
        .arg("--config")
        .arg(&config)
        .args(["key", "status"])
        .output()
        .unwrap();
    let line = error_line(&out, 1);
    assert!(line.contains("coffer.toml"), "{line}");
    assert_ends_with(
        &line,
        "; fix the file there and retry (`coffer config check` validates it)",
    );
}

#[test]
fn an_os_error_on_the_output_path_gets_a_next_step() {
    let dirs = init_dirs();
    // The parent of --out is a file: the operating system refuses, coffer says what to do.
    let file = write_file(dirs.root.path(), "plain", "x");
    let out = CLI
        .coffer(&dirs)
        .args(["backup", "--out"])
        .arg(file.join("b.bak"))
        .output()
        .unwrap();
    let line = error_line(&out, 1);
    assert_ends_with(&line, "; check the path and retry");
    // The operating system's reason is said once, not once per layer.
    let reason = std::io::Error::from(std::io::ErrorKind::NotADirectory).to_string();
    assert!(line.matches(&reason).count() <= 1, "{line}");
}

// ---- progress bars stay out of scripts ----

#[test]
fn long_commands_draw_no_progress_when_stderr_is_not_a_terminal() {
    let dirs = init_dirs();
    {
        let vault = open_vault(&dirs.paths);
        for i in 0..3 {
            store_document(&vault, &format!("doc{i}.bin"), &pattern(i, 1_500_000));
        }
    }
    let backup = dirs.root.path().join("all.bak");
    let backup = backup.to_str().unwrap();
    for args in [
        &["verify", "--deep"][..],
        &["backup", "--out", backup],
        &["restore", "--check", backup],
        &["audit", "verify"],
        &["key", "rotate"],
    ] {
        let out = CLI.coffer(&dirs).args(args).output().unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            !stderr.contains('\r') && !stderr.contains("\x1b["),
            "{args:?} drew progress into a pipe: {stderr:?}"
        );
        assert!(!stderr.contains("eta"), "{args:?}: {stderr:?}");
    }
}
