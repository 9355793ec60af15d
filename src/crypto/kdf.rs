//! Passphrase → key-encryption key, with argon2id.

use argon2::{Algorithm, Argon2, Params, Version};

use crate::secret::{Passphrase, SecretKey};

/// Cost parameters of argon2id. Production defaults are [`KdfParams::DEFAULT`]; tests use
/// [`KdfParams::for_tests`] through explicit configuration, never by changing the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

/// Limits on parameters read from a key file, so a damaged or hostile file cannot make
/// unlocking allocate without bound or spin for hours.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

/// Parameters outside the accepted range.
#[derive(Debug, thiserror::Error)]
#[error(
    "argon2id parameters out of range (memory {m_cost_kib} KiB, iterations {t_cost}, lanes {p_cost}); \
     accepted: memory 8×lanes..=4194304 KiB, iterations 1..=64, lanes 1..=16"
)]
pub struct KdfParamsError {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
}

impl KdfParams {
    /// Production default: 64 MiB, 3 passes, 1 lane (~0.2 s on the target machine).
    pub const DEFAULT: Self = Self {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Cheap parameters for tests only (a few milliseconds). Never a default.
    pub const fn for_tests() -> Self {
        Self {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// Checks the parameters are within the accepted range.
    pub fn validate(self) -> Result<Self, KdfParamsError> {
        let ok = (1..=MAX_P_COST).contains(&self.p_cost)
            && (1..=MAX_T_COST).contains(&self.t_cost)
            && self.m_cost_kib >= 8 * self.p_cost
            && self.m_cost_kib <= MAX_M_COST_KIB;
        if ok {
            Ok(self)
        } else {
            Err(KdfParamsError {
                m_cost_kib: self.m_cost_kib,
                t_cost: self.t_cost,
                p_cost: self.p_cost,
            })
        }
    }

    /// True when weaker than the production default in any dimension.
    pub fn is_weaker_than_default(self) -> bool {
        self.m_cost_kib < Self::DEFAULT.m_cost_kib || self.t_cost < Self::DEFAULT.t_cost
    }

    /// Derives the 32-byte key-encryption key from a passphrase and salt.
    pub fn derive(self, passphrase: &Passphrase, salt: &[u8]) -> Result<SecretKey, KdfParamsError> {
        let params = self.validate()?;
        let err = KdfParamsError {
            m_cost_kib: params.m_cost_kib,
            t_cost: params.t_cost,
            p_cost: params.p_cost,
        };
        let argon_params =
            Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32)).map_err(|_| KdfParamsError {
                m_cost_kib: params.m_cost_kib,
                t_cost: params.t_cost,
                p_cost: params.p_cost,
            })?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
        SecretKey::from_fn(|out| argon.hash_password_into(passphrase.expose(), salt, out)).map_err(|_| err)
    }
}

/// A password hash could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct PasswordHashError(String);

impl KdfParams {
    /// An argon2id PHC string of `password` with a fresh random salt and these parameters.
    pub fn hash_password(self, password: &Passphrase) -> Result<String, PasswordHashError> {
        use argon2::PasswordHasher;
        let params = self.validate().map_err(|e| PasswordHashError(e.to_string()))?;
        let argon_params = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(|e| PasswordHashError(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
        let salt: [u8; 16] = super::random_bytes().map_err(|e| PasswordHashError(e.to_string()))?;
        let hash = argon
            .hash_password_with_salt(password.expose(), &salt)
            .map_err(|e| PasswordHashError(e.to_string()))?;
        Ok(hash.to_string())
    }
}

/// True when `password` matches the PHC string `hash` (checked with the parameters inside
/// the string; the comparison is constant-time). A malformed hash never matches.
pub fn verify_password(hash: &str, password: &Passphrase) -> bool {
    use argon2::{PasswordHash, PasswordVerifier};
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    // Parameters come from the stored string, which coffer wrote; still refuse absurd ones.
    let sane = Params::try_from(&parsed).is_ok_and(|p| {
        KdfParams {
            m_cost_kib: p.m_cost(),
            t_cost: p.t_cost(),
            p_cost: p.p_cost(),
        }
        .validate()
        .is_ok()
    });
    sane && Argon2::default().verify_password(password.expose(), &parsed).is_ok()
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_at_least_the_required_strength() {
        let d = KdfParams::default();
        assert!(d.m_cost_kib >= 65536 && d.t_cost >= 3 && d.p_cost >= 1);
        assert!(!d.is_weaker_than_default());
        assert!(KdfParams::for_tests().is_weaker_than_default());
    }

    #[test]
    fn derivation_is_deterministic_and_salted() {
        let p = Passphrase::new("correct horse battery staple".into());
        let k1 = KdfParams::for_tests().derive(&p, &[1; 32]).unwrap();
        let k2 = KdfParams::for_tests().derive(&p, &[1; 32]).unwrap();
        let k3 = KdfParams::for_tests().derive(&p, &[2; 32]).unwrap();
        assert_eq!(k1.expose(), k2.expose());
        assert_ne!(k1.expose(), k3.expose());
    }

    #[test]
    fn password_hashes_verify() {
        let p = Passphrase::new("hunter2-but-longer".into());
        let h = KdfParams::for_tests().hash_password(&p).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, &p));
        assert!(!verify_password(&h, &Passphrase::new("wrong".into())));
        assert!(!verify_password("not a hash", &p));
    }

    #[test]
    fn absurd_parameters_are_refused() {
        let huge = KdfParams {
            m_cost_kib: u32::MAX,
            t_cost: 3,
            p_cost: 1,
        };
        assert!(huge.validate().is_err());
        let zero = KdfParams {
            m_cost_kib: 64,
            t_cost: 0,
            p_cost: 1,
        };
        assert!(zero.validate().is_err());
    }
}
