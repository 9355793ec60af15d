//! Where the passphrase comes from, in order: `--passphrase-file`,
//! `$CREDENTIALS_DIRECTORY/coffer-passphrase` (systemd `LoadCredential=`),
//! `COFFER_PASSPHRASE` (dev/CI), and last a no-echo prompt on the terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::secret::Passphrase;

/// Name of the systemd credential holding the passphrase.
pub const CREDENTIAL_NAME: &str = "coffer-passphrase";
/// Environment variable holding the passphrase (dev and CI only).
pub const PASSPHRASE_ENV: &str = "COFFER_PASSPHRASE";
/// Shortest passphrase accepted for a new key file.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// The passphrase could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// A passphrase file could not be read.
    #[error("cannot read the passphrase file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No source gave a passphrase and there is no terminal to ask on.
    #[error(
        "no passphrase: pass --passphrase-file FILE, set $CREDENTIALS_DIRECTORY (systemd LoadCredential=coffer-passphrase:...), \
         set COFFER_PASSPHRASE, or run on a terminal"
    )]
    Unavailable,
    /// The passphrase is empty.
    #[error(
        "the passphrase is empty: give the key file's passphrase (a passphrase file holds it alone, with at \
         most one trailing newline)"
    )]
    Empty,
    /// A new passphrase is too short.
    #[error("the new passphrase is too short: use at least {MIN_PASSPHRASE_CHARS} characters")]
    TooShort,
    /// The two entries of a new passphrase differ.
    #[error("the two passphrases do not match; nothing was changed: run the command again and type the same one twice")]
    Mismatch,
    /// Reading from the terminal failed.
    #[error("cannot read the passphrase from the terminal: {0}; pass --passphrase-file FILE instead")]
    Prompt(std::io::Error),
}

/// Reads a passphrase file: the whole file, without one trailing newline.
pub fn from_file(path: &Path) -> Result<Passphrase, PassphraseError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| PassphraseError::Read {
        path: path.display().to_string(),
        source,
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| PassphraseError::Read {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text);
    non_empty(Passphrase::new(text.to_owned()))
}

fn non_empty(p: Passphrase) -> Result<Passphrase, PassphraseError> {
    if p.is_empty() {
        Err(PassphraseError::Empty)
    } else {
        Ok(p)
    }
}

/// The passphrase that unlocks an existing key file, from the first source that has one.
pub fn existing(file: Option<&Path>) -> Result<Passphrase, PassphraseError> {
    if let Some(path) = file {
        return from_file(path);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = PathBuf::from(dir).join(CREDENTIAL_NAME);
        if path.exists() {
            return from_file(&path);
        }
    }
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return non_empty(Passphrase::new(p));
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("coffer passphrase: ").map_err(PassphraseError::Prompt)?;
        return non_empty(Passphrase::new(p));
    }
    Err(PassphraseError::Unavailable)
}

/// Like [`existing`], but before asking on the terminal, uses the development passphrase
/// file `dev` if it exists (calling `warn` with its path first).
pub fn existing_or_dev(
    file: Option<&Path>,
    dev: Option<&Path>,
    warn: &mut dyn FnMut(&Path),
) -> Result<Passphrase, PassphraseError> {
    let explicit = file.is_some()
        || std::env::var_os("CREDENTIALS_DIRECTORY").is_some_and(|d| PathBuf::from(d).join(CREDENTIAL_NAME).exists())
        || std::env::var_os(PASSPHRASE_ENV).is_some();
    if !explicit && let Some(dev) = dev.filter(|d| d.is_file()) {
        warn(dev);
        return from_file(dev);
    }
    existing(file)
}

/// A new passphrase: from `file` when given (or the usual non-interactive sources),
/// otherwise asked twice at the terminal. Checked for length.
pub fn new(file: Option<&Path>, allow_env: bool) -> Result<Passphrase, PassphraseError> {
    let p = match file {
        Some(path) => from_file(path)?,
        None if allow_env && std::env::var_os(PASSPHRASE_ENV).is_some() => existing(None)?,
        None if std::io::stdin().is_terminal() => {
            let a = Passphrase::new(rpassword::prompt_password("new passphrase: ").map_err(PassphraseError::Prompt)?);
            let b = Passphrase::new(rpassword::prompt_password("repeat it: ").map_err(PassphraseError::Prompt)?);
            if a.expose() != b.expose() {
                return Err(PassphraseError::Mismatch);
            }
            a
        }
        None => return Err(PassphraseError::Unavailable),
    };
    if p.char_count() < MIN_PASSPHRASE_CHARS {
        return Err(PassphraseError::TooShort);
    }
    Ok(p)
}
