//! User sessions: login with password (and TOTP when enrolled), lockout with exponential
//! backoff, and opaque tokens bound to the device they were issued to.
//!
//! A token is 256 random bits; only its SHA-256 is stored, so a copy of the database opens
//! no session. A session belongs to one device (the client certificate it logged in with)
//! and that device's owner; revoking the device or disabling the user removes it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::principals::{DeviceInfo, UserInfo};
use super::{Vault, VaultError};
use crate::config::AuthConfig;
use crate::crypto::totp;
use crate::model::{DeviceId, Timestamp, UserId};
use crate::secret::{Passphrase, SecretBytes, SecretString};
use crate::store::{LoginState, StoredSession};

/// Sessions kept per device; a login beyond this ends the device's oldest session.
pub const SESSIONS_PER_DEVICE: usize = 8;
/// A session's last use is written at most this often (ms).
pub const TOUCH_EVERY_MS: i64 = 60_000;

/// Session and lockout rules, from `[auth]`.
#[derive(Clone, Copy, Debug)]
pub struct SessionPolicy {
    /// Absolute lifetime, ms.
    pub ttl_ms: i64,
    /// Idle lifetime, ms.
    pub idle_ms: i64,
    /// Failures in a row that lock the account.
    pub max_failures: u32,
    /// First lock, ms.
    pub lockout_ms: i64,
    /// Longest lock, ms.
    pub lockout_max_ms: i64,
}

impl From<&AuthConfig> for SessionPolicy {
    fn from(a: &AuthConfig) -> Self {
        Self {
            ttl_ms: i64::from(a.session_ttl_secs) * 1000,
            idle_ms: i64::from(a.session_idle_secs) * 1000,
            max_failures: a.max_login_failures,
            lockout_ms: i64::from(a.lockout_secs) * 1000,
            lockout_max_ms: i64::from(a.lockout_max_secs) * 1000,
        }
    }
}

impl SessionPolicy {
    /// The lock after the `failures`-th failure in a row, if it locks.
    fn lock_for(&self, failures: u32) -> Option<i64> {
        let over = failures.checked_sub(self.max_failures)?;
        let factor = 1i64.checked_shl(over.min(40)).unwrap_or(i64::MAX);
        Some(self.lockout_ms.saturating_mul(factor).min(self.lockout_max_ms))
    }
}

/// What the user typed.
pub struct Credentials<'a> {
    /// User name.
    pub username: &'a str,
    /// Password.
    pub password: &'a Passphrase,
    /// Current TOTP code, if the app asked for one.
    pub totp: Option<&'a str>,
}

/// A login was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Wrong user name, password or TOTP code (which one is not said). Counted.
    #[error("wrong user name, password or one-time code")]
    Failed,
    /// The password was right but the account has a second factor: send the TOTP code.
    #[error("a one-time code (TOTP) is required")]
    TotpRequired,
    /// Too many failures: logins are refused until then.
    #[error("the account is locked until {0:?}")]
    Locked(Timestamp),
    /// The user is disabled.
    #[error("the user is disabled")]
    Disabled,
    /// Anything else.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<crate::store::StoreError> for LoginError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Vault(e.into())
    }
}

/// A new session: the token, shown to the client once.
#[derive(Debug)]
pub struct NewSession {
    /// The token (sent as `X-Amz-Security-Token`).
    pub token: SecretString,
    /// Absolute expiry.
    pub expires: Timestamp,
    /// Who logged in.
    pub user: UserId,
}

/// Why a token was not accepted (logged, not told to the client: it gets one answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// No session has this token (never issued, logged out, revoked, swept).
    Unknown,
    /// The session belongs to another device.
    OtherDevice,
    /// The session belongs to another user than the device's owner.
    OtherUser,
    /// Past its absolute lifetime.
    Expired,
    /// Unused for longer than the idle lifetime.
    Idle,
}

impl SessionRefusal {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown or ended session",
            Self::OtherDevice => "session of another device",
            Self::OtherUser => "session of another user",
            Self::Expired => "session expired",
            Self::Idle => "session idle too long",
        }
    }
}

/// An accepted session.
#[derive(Clone, Copy, Debug)]
pub struct ValidSession {
    /// The token's hash (the session's key).
    pub token_hash: [u8; 32],
    /// The session.
    pub user: UserId,
    /// Whether its last use should be recorded (see [`Vault::touch_session`]).
    pub needs_touch: bool,
}

/// SHA-256 of a token: the key it is stored under.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What binds a session to the certificate it was made with: SHA-256 over the token and
/// the certificate's thumbprint. Without the token (never stored) it reveals nothing about
/// the certificate, unlike the thumbprint itself.
fn certificate_binding(token: &str, thumbprint: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"coffer session binding v1\0");
    h.update(token.as_bytes());
    h.update(thumbprint);
    h.finalize().into()
}

fn unix_secs(t: Timestamp) -> u64 {
    u64::try_from(t.0 / 1000).unwrap_or(0)
}

impl Vault {
    /// Logs the owner of `device` in. Runs argon2id: call it where blocking is fine, with
    /// the number of calls in flight bounded.
    pub fn login(
        &self,
        device: &DeviceInfo,
        creds: &Credentials<'_>,
        policy: &SessionPolicy,
        now: Timestamp,
    ) -> Result<NewSession, LoginError> {
        let user: UserInfo = self.user(device.owner)?;
        if user.body.disabled {
            return Err(LoginError::Disabled);
        }
        let before = self.store.snapshot()?.login_state(user.id)?;
        if before.locked_until > now {
            return Err(LoginError::Locked(before.locked_until));
        }
        // The password is checked even when the name is wrong, so timing tells nothing.
        let password_ok = crate::crypto::kdf::verify_password(&user.body.password_hash, creds.password);
        let name_ok = bool::from(creds.username.as_bytes().ct_eq(user.body.name.as_bytes()));
        let seed = user.body.totp.clone();
        let outcome = self.store.update_login(user.id, |st: &mut LoginState| {
            let fail = |st: &mut LoginState| {
                st.failures = st.failures.saturating_add(1);
                match policy.lock_for(st.failures) {
                    Some(ms) => {
                        st.locked_until = Timestamp(now.0.saturating_add(ms));
                        Err(LoginError::Locked(st.locked_until))
                    }
                    None => Err(LoginError::Failed),
                }
            };
            if st.locked_until > now {
                return Err(LoginError::Locked(st.locked_until));
            }
            if !(password_ok && name_ok) {
                return fail(st);
            }
            if let Some(seed) = &seed {
                let Some(code) = creds.totp else {
                    return Err(LoginError::TotpRequired);
                };
                match totp::verify(seed.expose(), code, unix_secs(now), st.last_totp_step) {
                    Some(step) => st.last_totp_step = step,
                    None => return fail(st),
                }
            }
            st.failures = 0;
            st.locked_until = Timestamp(0);
            Ok(())
        })?;
        outcome?;
        let token = SecretString::random(32).map_err(|e| VaultError::Seal(e.into()))?;
        let expires = Timestamp(now.0.saturating_add(policy.ttl_ms));
        self.store.insert_session(
            token_hash(token.expose()),
            &StoredSession {
                device: device.id,
                user: user.id,
                created: now,
                expires,
                last_seen: now,
                binding: certificate_binding(token.expose(), &device.body.thumbprint),
            },
            SESSIONS_PER_DEVICE,
        )?;
        Ok(NewSession {
            token,
            expires,
            user: user.id,
        })
    }

    /// Checks a token presented by `device` (its certificate and owner): the session must
    /// have been made with this very certificate (RFC 8705's idea: a token is useless
    /// with any other), so a renewal also retires every session made before it.
    pub fn check_session(
        &self,
        token: &str,
        device: &DeviceInfo,
        policy: &SessionPolicy,
        now: Timestamp,
    ) -> Result<Result<ValidSession, SessionRefusal>, VaultError> {
        let hash = token_hash(token);
        let Some(s) = self.store.snapshot()?.session(hash)? else {
            return Ok(Err(SessionRefusal::Unknown));
        };
        let owner = device.owner;
        let binding = certificate_binding(token, &device.body.thumbprint);
        if s.device != device.id || !bool::from(subtle::ConstantTimeEq::ct_eq(&s.binding[..], &binding[..])) {
            return Ok(Err(SessionRefusal::OtherDevice));
        }
        if s.user != owner {
            return Ok(Err(SessionRefusal::OtherUser));
        }
        if now >= s.expires {
            return Ok(Err(SessionRefusal::Expired));
        }
        if now.0.saturating_sub(s.last_seen.0) >= policy.idle_ms {
            return Ok(Err(SessionRefusal::Idle));
        }
        Ok(Ok(ValidSession {
            token_hash: hash,
            user: s.user,
            needs_touch: now.0.saturating_sub(s.last_seen.0) >= TOUCH_EVERY_MS,
        }))
    }

    /// Records a session's use (not fsynced; see [`crate::store::Store::touch_session`]).
    pub fn touch_session(&self, token_hash: [u8; 32], now: Timestamp) -> Result<(), VaultError> {
        Ok(self.store.touch_session(token_hash, now)?)
    }

    /// Ends the session of `token`; whether there was one.
    pub fn logout(&self, token_hash: [u8; 32]) -> Result<bool, VaultError> {
        Ok(self.store.remove_session(token_hash)?)
    }

    /// Ends every session of a device.
    pub fn end_device_sessions(&self, device: DeviceId) -> Result<usize, VaultError> {
        Ok(self.store.remove_sessions(|s| s.device == device)?)
    }

    /// Ends every session of a user.
    pub fn end_user_sessions(&self, user: UserId) -> Result<usize, VaultError> {
        Ok(self.store.remove_sessions(|s| s.user == user)?)
    }

    /// Sessions that have not expired, for `coffer user list` and tests.
    pub fn live_sessions(&self, now: Timestamp) -> Result<Vec<StoredSession>, VaultError> {
        let mut all = self.store.snapshot()?.sessions()?;
        all.retain(|s| s.expires > now);
        Ok(all)
    }

    /// A user's failure count and lock.
    pub fn login_state(&self, user: UserId) -> Result<LoginState, VaultError> {
        Ok(self.store.snapshot()?.login_state(user)?)
    }

    /// Clears a user's failures and lock (`coffer user unlock`).
    pub fn unlock_user(&self, user: UserId) -> Result<(), VaultError> {
        self.user(user)?;
        self.store.update_login(user, |st| {
            st.failures = 0;
            st.locked_until = Timestamp(0);
        })?;
        Ok(())
    }

    /// Enrols a new TOTP seed for `user` (replacing any), or removes it; returns the seed.
    pub fn set_totp(&self, user: UserId, enable: bool) -> Result<Option<SecretBytes>, VaultError> {
        let seed = if enable {
            Some(SecretBytes::random(totp::SEED_LEN).map_err(|e| VaultError::Seal(e.into()))?)
        } else {
            None
        };
        let stored = seed.clone();
        self.update_user(user, move |b| b.totp = stored)?;
        // A new seed starts a new sequence of codes.
        self.store.update_login(user, |st| st.last_totp_step = 0)?;
        Ok(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_doubles_and_caps() {
        let p = SessionPolicy {
            ttl_ms: 1,
            idle_ms: 1,
            max_failures: 5,
            lockout_ms: 60_000,
            lockout_max_ms: 3_600_000,
        };
        assert_eq!(p.lock_for(4), None);
        assert_eq!(p.lock_for(5), Some(60_000));
        assert_eq!(p.lock_for(6), Some(120_000));
        assert_eq!(p.lock_for(7), Some(240_000));
        assert_eq!(p.lock_for(20), Some(3_600_000));
        assert_eq!(p.lock_for(u32::MAX), Some(3_600_000));
    }
}
