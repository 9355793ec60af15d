//! Domain types shared by every layer: ids, roles, visibility, timestamps. No I/O.

mod ids;

pub use ids::{DeviceId, DocumentId, IdParseError, UserId};

use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Manages users and devices; sees every document.
    Admin,
    /// A member of staff using the mobile app.
    Member,
    /// A service identity that pushes ERP records.
    Integration,
}

impl Role {
    /// The wire and command-line name (`admin`, `member`, `integration`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Integration => "integration",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            "integration" => Ok(Self::Integration),
            _ => Err(format!("unknown role {s:?}: use admin, member or integration")),
        }
    }
}

/// Who may see a document besides its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Visibility {
    /// The owner and admins.
    Private,
    /// Every member.
    Team,
}

impl Visibility {
    /// The wire name (`private`, `team`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Team => "team",
        }
    }
}

impl std::str::FromStr for Visibility {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "private" => Ok(Self::Private),
            "team" => Ok(Self::Team),
            _ => Err(format!("unknown visibility {s:?}: use private or team")),
        }
    }
}

/// Milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self(ms)
    }
}
