//! `/v1/session`: log in (password, and TOTP when enrolled) for a session bound to this
//! device; log out.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::read_small_body;
use crate::app::sessions::{Credentials, LoginError};
use crate::http::State;
use crate::http::auth::{Body, Caller, Identified, refuse};
use crate::http::error::{Problem, Reason};
use crate::model::{Role, Timestamp};
use crate::secret::Passphrase;

/// How long a login waits for a free password-check slot before answering 503.
const PASSWORD_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginJson {
    username: String,
    password: String,
    totp: Option<String>,
}

#[derive(Serialize)]
struct SessionJson {
    token: String,
    expires: String,
}

/// `POST /v1/session`.
pub async fn login(
    who: Identified,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    let body = read_small_body(&state, payload).await?;
    let caller = who.verify(&req, Body::Bytes(&body), false)?;
    if caller.role() == Role::Integration {
        return Err(Problem::detail(
            Reason::RoleNotPermitted,
            "integration identities sign their requests and hold no session",
        ));
    }
    super::require_json(&req)?;
    let login: LoginJson = serde_json::from_slice(&body).map_err(|_| {
        Problem::detail(
            Reason::InvalidRequest,
            "expected a JSON object {\"username\", \"password\", \"totp\"?}",
        )
    })?;
    let LoginJson {
        username,
        password,
        totp,
    } = login;
    let password = Passphrase::new(password);
    // One login at a time per device, and a budget of attempts (successes included): a
    // device cannot keep the shared password-check slots busy.
    let _ticket = match state.logins.begin(caller.device.id) {
        Ok(t) => t,
        Err(wait) => {
            return Err(Problem {
                retry_after: Some(wait),
                ..Problem::detail(
                    Reason::TooManyWrites,
                    format!("too many logins from this device; retry in {wait} s"),
                )
            });
        }
    };
    let Ok(permit) = tokio::time::timeout(PASSWORD_CHECK_WAIT, state.password_checks.clone().acquire_owned()).await
    else {
        return Err(Problem {
            retry_after: Some(5),
            ..Problem::detail(Reason::Unavailable, "too many logins at once; retry in a few seconds")
        });
    };
    let permit = permit.map_err(|_| Problem::new(Reason::Internal))?;
    let vault = state.vault.clone();
    let device = caller.device.clone();
    let policy = state.auth.policy;
    let outcome = web::block(move || {
        let _permit = permit;
        let creds = Credentials {
            username: &username,
            password: &password,
            totp: totp.as_deref(),
        };
        vault.login(&device, &creds, &policy, Timestamp::now())
    })
    .await
    .map_err(|_| Problem::new(Reason::Internal))?;
    let ip = req.peer_addr().map_or_else(|| "-".to_owned(), |a| a.ip().to_string());
    let id = caller.device.id;
    match outcome {
        Ok(session) => {
            tracing::info!("auth: login ok (user {}, device {id}, ip {ip})", session.user);
            Ok(HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(SessionJson {
                    token: session.token.expose().to_owned(),
                    expires: super::rfc3339(session.expires),
                }))
        }
        Err(LoginError::Failed) => Err(refuse(
            &state,
            &req,
            Some(id),
            Problem::detail(Reason::LoginFailed, "wrong user name, password or one-time code"),
            "login failed",
        )),
        Err(LoginError::TotpRequired) => {
            tracing::info!("auth: login needs a one-time code (device {id}, ip {ip})");
            Err(Problem::detail(
                Reason::TotpRequired,
                "send the current code of the authenticator app as \"totp\"",
            ))
        }
        Err(LoginError::Locked(until)) => {
            let wait = u64::try_from((until.0 - Timestamp::now().0).max(1000) / 1000).unwrap_or(1);
            Err(refuse(
                &state,
                &req,
                Some(id),
                Problem {
                    retry_after: Some(wait),
                    ..Problem::detail(
                        Reason::AccountLocked,
                        format!("too many failed logins; try again in {wait} s or ask an administrator"),
                    )
                },
                "login while locked",
            ))
        }
        Err(LoginError::Disabled) => Err(refuse(
            &state,
            &req,
            Some(id),
            Problem::new(Reason::UserDisabled),
            "login of a disabled user",
        )),
        Err(LoginError::Vault(e)) => Err(e.into()),
    }
}

/// `DELETE /v1/session`: ends the session the request carries.
pub async fn logout(caller: Caller, req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, Problem> {
    if let Some(session) = caller.session {
        let vault = state.vault.clone();
        web::block(move || vault.logout(session.token_hash))
            .await
            .map_err(|_| Problem::new(Reason::Internal))??;
        let ip = req.peer_addr().map_or_else(|| "-".to_owned(), |a| a.ip().to_string());
        tracing::info!(
            "auth: logout (user {}, device {}, ip {ip})",
            caller.user.id,
            caller.device.id
        );
    }
    Ok(HttpResponse::NoContent().finish())
}
