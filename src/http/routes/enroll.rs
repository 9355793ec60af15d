//! `POST /v1/enroll`: the one route open without a client certificate. The enrolment code
//! authenticates the request; the CSR's key (made on the phone, never sent) gets a client
//! certificate, and the device its id and signing secret.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{read_small_body, require_json, rfc3339};
use crate::app::enrol::EnrolError;
use crate::app::pki::PkiFileError;
use crate::http::State;
use crate::http::error::{Problem, Reason};
use crate::secret::SecretString;

/// How long an enrolment request body may take in all.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolJson {
    code: SecretString,
    csr: String,
    device_name: String,
}

#[derive(Serialize)]
struct EnrolledJson {
    device_id: String,
    certificate_chain: String,
    secret_access_key: SecretString,
    region: String,
    service: &'static str,
    expires: String,
}

/// `POST /v1/enroll` (`{"code", "csr", "device_name"}`).
pub async fn enroll(req: HttpRequest, payload: web::Payload, state: web::Data<State>) -> Result<HttpResponse, Problem> {
    let ip = req.peer_addr().map(|a| a.ip());
    let shown_ip = ip.map_or_else(|| "?".to_owned(), |i| i.to_string());
    // Every attempt counts, successes included: codes cannot be guessed at any useful rate.
    if let Err(wait) = state.enrolments.attempt(ip) {
        // Anyone can cause these: counted and logged sparingly, not one line each.
        if let Some(ip) = ip {
            state.enrolment_refusals.record(ip);
        }
        return Err(Problem {
            retry_after: Some(wait),
            ..Problem::detail(
                Reason::TooManyEnrolments,
                format!("too many enrolment attempts from this address; retry in {wait} s"),
            )
        });
    }
    require_json(&req)?;
    // A whole enrolment body is under 2 KiB: whoever trickles it holds a connection
    // without any credential, so it gets a deadline, not just the idle timeout.
    let body = tokio::time::timeout(BODY_DEADLINE, read_small_body(&state, payload))
        .await
        .map_err(|_| Problem {
            close: true,
            ..Problem::detail(
                Reason::RequestTimeout,
                format!("the enrolment body did not arrive within {} s", BODY_DEADLINE.as_secs()),
            )
        })??;
    let request: EnrolJson = serde_json::from_slice(&body).map_err(|_| Problem {
        close: true,
        ..Problem::detail(
            Reason::InvalidRequest,
            "expected a JSON object {\"code\", \"csr\" (PEM), \"device_name\"}",
        )
    })?;
    let vault = state.vault.clone();
    let days = state.options.device_days;
    let outcome = web::block(move || vault.enrol(request.code.expose(), &request.csr, &request.device_name, days))
        .await
        .map_err(|_| Problem::new(Reason::Internal))?;
    let enrolled = match outcome {
        Ok(e) => e,
        Err(e) => {
            let (problem, why) = match e {
                EnrolError::CodeInvalid => (Problem::new(Reason::EnrolmentCodeInvalid), "code invalid".to_owned()),
                EnrolError::Csr(e) => (Problem::detail(Reason::CsrInvalid, e.to_string()), e.to_string()),
                EnrolError::Revoked => (
                    Problem::detail(
                        Reason::EnrolmentCodeInvalid,
                        "the device was revoked: ask an admin for a new code",
                    ),
                    "device revoked".to_owned(),
                ),
                EnrolError::Pki(PkiFileError::Vault(e)) => {
                    let why = e.to_string();
                    (Problem::from(e), why)
                }
                EnrolError::Pki(e) => {
                    tracing::error!("enrolment failed: {e}");
                    (Problem::new(Reason::Internal), "internal error".to_owned())
                }
            };
            tracing::info!("enrol: refused an attempt from {shown_ip}: {why}");
            return Err(problem);
        }
    };
    tracing::info!(
        "enrol: device {} {} from {shown_ip}",
        enrolled.device.id,
        if enrolled.renewed { "renewed" } else { "enrolled" }
    );
    let chain = format!(
        "{}{}",
        crate::pki::to_pem(&enrolled.cert_der),
        crate::pki::to_pem(&enrolled.ca_der)
    );
    let json = EnrolledJson {
        device_id: enrolled.device.id.to_string(),
        certificate_chain: chain,
        secret_access_key: enrolled.secret,
        region: state.auth.region.clone(),
        service: crate::http::auth::SERVICE,
        expires: rfc3339(enrolled.device.expires),
    };
    let body = zeroize::Zeroizing::new(serde_json::to_vec(&json).map_err(|_| Problem::new(Reason::Internal))?);
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/json")
        .body(body.to_vec()))
}
