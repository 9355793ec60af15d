//! Sessions and login state. Neither holds a secret: a session is found by the SHA-256 of
//! its random 256-bit token (the token itself is never stored), and both records hold only
//! ids, times and counters, which the design keeps in clear.

use redb::{Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::{LOGINS, SESSIONS};
use super::{Snapshot, Store, StoreError};
use crate::model::{DeviceId, Timestamp, UserId};

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The device (client certificate) the session is bound to.
    pub device: DeviceId,
    /// The user who logged in (the device's owner).
    pub user: UserId,
    /// Login time.
    pub created: Timestamp,
    /// Absolute expiry.
    pub expires: Timestamp,
    /// Last use (updated at most once a minute).
    pub last_seen: Timestamp,
    /// Binds the session to the client certificate it was made with (SHA-256 over the
    /// token and the certificate's thumbprint): it works with that certificate only, and
    /// without the token it says nothing about the certificate.
    pub binding: [u8; 32],
}

/// Format 1 of a session (bound to the device id only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSessionV1 {
    device: DeviceId,
    user: UserId,
    created: Timestamp,
    expires: Timestamp,
    last_seen: Timestamp,
}

/// Versioned encoding of [`StoredSession`].
#[derive(Serialize, Deserialize)]
pub enum SessionRecord {
    /// Format 1: read with an all-zero binding, which matches no certificate (such a
    /// session is refused and its user logs in again).
    V1(StoredSessionV1),
    /// Format 2: with the certificate thumbprint.
    V2(StoredSession),
}

/// A user's login failures and TOTP replay guard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// Failed logins since the last success.
    pub failures: u32,
    /// Logins are refused until then (0: not locked).
    pub locked_until: Timestamp,
    /// The last TOTP time step accepted (codes of this step and earlier are refused).
    pub last_totp_step: u64,
}

#[derive(Serialize, Deserialize)]
enum LoginRecord {
    V1(LoginState),
}

const SESSION: &str = "a session record";
const LOGIN: &str = "a login record";

fn decode_session(bytes: &[u8]) -> Result<StoredSession, StoreError> {
    match decode::<SessionRecord>(bytes, SESSION)? {
        SessionRecord::V1(s) => Ok(StoredSession {
            device: s.device,
            user: s.user,
            created: s.created,
            expires: s.expires,
            last_seen: s.last_seen,
            binding: [0; 32],
        }),
        SessionRecord::V2(s) => Ok(s),
    }
}

impl Store {
    /// Stores a new session durably; removes expired sessions, and the oldest sessions of
    /// the same device beyond `keep_per_device - 1`, in the same commit.
    pub fn insert_session(
        &self,
        token_hash: [u8; 32],
        session: &StoredSession,
        keep_per_device: usize,
    ) -> Result<(), StoreError> {
        let txn = self.write(Durability::Immediate)?;
        {
            let mut t = txn.open_table(SESSIONS)?;
            let mut expired = Vec::new();
            let mut same_device = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                // An unreadable record is dropped rather than kept forever.
                match decode_session(v.value()) {
                    Ok(s) if s.expires <= session.created => expired.push(k.value()),
                    Ok(s) if s.device == session.device => same_device.push((s.created, k.value())),
                    Ok(_) => {}
                    Err(_) => expired.push(k.value()),
                }
            }
            same_device.sort();
            let surplus = (same_device.len() + 1).saturating_sub(keep_per_device.max(1));
            for key in expired
                .into_iter()
                .chain(same_device.into_iter().take(surplus).map(|(_, k)| k))
            {
                t.remove(key)?;
            }
            t.insert(token_hash, encode(&SessionRecord::V2(session.clone()))?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records a session's last use. Not fsynced: losing it in a crash only shortens the
    /// idle window the session gets after a restart.
    pub fn touch_session(&self, token_hash: [u8; 32], seen: Timestamp) -> Result<(), StoreError> {
        let txn = self.write(Durability::None)?;
        {
            let mut t = txn.open_table(SESSIONS)?;
            let current = t.get(token_hash)?.map(|g| decode_session(g.value())).transpose()?;
            if let Some(mut s) = current {
                s.last_seen = s.last_seen.max(seen);
                t.insert(token_hash, encode(&SessionRecord::V2(s))?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes one session; whether it existed.
    pub fn remove_session(&self, token_hash: [u8; 32]) -> Result<bool, StoreError> {
        let txn = self.write(Durability::Immediate)?;
        let existed = txn.open_table(SESSIONS)?.remove(token_hash)?.is_some();
        txn.commit()?;
        Ok(existed)
    }

    /// Removes every session matching `which` (a device's, a user's); how many.
    pub fn remove_sessions(&self, which: impl Fn(&StoredSession) -> bool) -> Result<usize, StoreError> {
        let txn = self.write(Durability::Immediate)?;
        let removed;
        {
            let mut t = txn.open_table(SESSIONS)?;
            let mut doomed = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                if decode_session(v.value()).map_or(true, |s| which(&s)) {
                    doomed.push(k.value());
                }
            }
            removed = doomed.len();
            for key in doomed {
                t.remove(key)?;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Read-modify-write of a user's login state in one durable commit; returns what
    /// `change` returned.
    pub fn update_login<T>(&self, user: UserId, change: impl FnOnce(&mut LoginState) -> T) -> Result<T, StoreError> {
        let txn = self.write(Durability::Immediate)?;
        let out;
        {
            let mut t = txn.open_table(LOGINS)?;
            let mut state = match t.get(user.0)? {
                Some(g) => match decode::<LoginRecord>(g.value(), LOGIN)? {
                    LoginRecord::V1(s) => s,
                },
                None => LoginState::default(),
            };
            out = change(&mut state);
            if state == LoginState::default() {
                t.remove(user.0)?;
            } else {
                t.insert(user.0, encode(&LoginRecord::V1(state))?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(out)
    }
}

impl Snapshot {
    /// The session under a token hash.
    pub fn session(&self, token_hash: [u8; 32]) -> Result<Option<StoredSession>, StoreError> {
        let t = self.txn.open_table(SESSIONS)?;
        let guard = t.get(token_hash)?;
        guard.map(|g| decode_session(g.value())).transpose()
    }

    /// Every session, for listings.
    pub fn sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        let t = self.txn.open_table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (_, v) = entry?;
            out.push(decode_session(v.value())?);
        }
        Ok(out)
    }

    /// A user's login state.
    pub fn login_state(&self, user: UserId) -> Result<LoginState, StoreError> {
        let t = self.txn.open_table(LOGINS)?;
        let guard = t.get(user.0)?;
        match guard {
            None => Ok(LoginState::default()),
            Some(g) => match decode::<LoginRecord>(g.value(), LOGIN)? {
                LoginRecord::V1(s) => Ok(s),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_session_reads_with_a_binding_no_certificate_has() {
        let old = StoredSessionV1 {
            device: DeviceId(7),
            user: UserId(9),
            created: Timestamp(1),
            expires: Timestamp(2),
            last_seen: Timestamp(1),
        };
        let bytes = encode(&SessionRecord::V1(old)).unwrap();
        let s = decode_session(&bytes).unwrap();
        assert_eq!((s.device, s.user, s.expires), (DeviceId(7), UserId(9), Timestamp(2)));
        assert_eq!(s.binding, [0; 32]);
    }
}
