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

/// Milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
