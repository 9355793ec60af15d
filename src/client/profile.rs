//! The client profile: one TOML file with everything a client needs to reach coffer as one
//! device. `coffer device issue` (and `serve --dev`) write it beside the credentials; the
//! reference client reads it, and so can any tool:
//!
//! ```toml
//! endpoint = "https://coffer.example.com:8443"
//! region = "local"
//! service = "coffer"
//! access_key_id = "<device id>"
//! secret_access_key = "<signing secret>"
//! ca = "ca.crt"          # paths relative to this file
//! cert = "device.crt"
//! key = "device.key"
//! username = "anna"
//! # password_file = "password"   # development profiles only
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::SecretString;

/// A client profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The server's URL, `https://host:port`.
    pub endpoint: String,
    /// SigV4 region.
    pub region: String,
    /// SigV4 service (`coffer`).
    pub service: String,
    /// The device id.
    pub access_key_id: String,
    /// The device's signing secret.
    pub secret_access_key: SecretString,
    /// CA certificate (PEM), relative to the profile.
    pub ca: PathBuf,
    /// Device certificate (PEM), relative to the profile.
    pub cert: PathBuf,
    /// Device private key (PEM), relative to the profile.
    pub key: PathBuf,
    /// The device owner's user name.
    pub username: String,
    /// A file holding the password (development profiles only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// A profile could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The file cannot be read.
    #[error("cannot read the profile {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a valid profile.
    #[error("{path} is not a valid coffer profile: {message}; use the profile that `coffer device issue` wrote")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Profile {
    /// Reads a profile.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ProfileError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// The profile as TOML (it holds the signing secret: write it owner-only).
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# coffer client profile: keep it private (it holds the device's signing secret)\n");
        out.push_str(&toml::to_string(self).unwrap_or_default());
        out
    }

    /// `p` relative to the profile's directory (absolute paths stay as they are).
    pub fn resolve(profile_path: &Path, p: &Path) -> PathBuf {
        match profile_path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_keys() {
        let p = Profile {
            endpoint: "https://127.0.0.1:8443".into(),
            region: "local".into(),
            service: "coffer".into(),
            access_key_id: "00".repeat(16),
            secret_access_key: SecretString::new("s3cr3t".into()),
            ca: "ca.crt".into(),
            cert: "device.crt".into(),
            key: "device.key".into(),
            username: "anna".into(),
            password_file: None,
        };
        let text = p.to_toml();
        assert!(text.contains("secret_access_key = \"s3cr3t\""));
        assert_eq!(toml::from_str::<Profile>(&text).unwrap(), p);
        assert!(toml::from_str::<Profile>(&format!("{text}\nextra = 1\n")).is_err());
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }
}
