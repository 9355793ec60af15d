//! Who is calling: the client certificate's thumbprint (captured once per connection),
//! looked up on every request, so a revocation or a disabled owner takes effect on the
//! next request even on an open keep-alive connection.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};

use super::State;
use super::error::{Problem, Reason};
use crate::app::principals::{DeviceInfo, UserInfo};
use crate::model::{Role, Timestamp};

/// Connection data: the SHA-256 thumbprint of the client's leaf certificate, if any.
#[derive(Clone, Copy, Debug)]
pub struct ClientCert(pub Option<[u8; 32]>);

/// Captures the client certificate when a connection is accepted (after the handshake,
/// whose verifier already checked the chain to the CA and the validity dates).
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let thumbprint = conn.downcast_ref::<Tls>().and_then(|tls| {
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| crate::pki::thumbprint(leaf))
    });
    ext.insert(ClientCert(thumbprint));
}

/// An authenticated caller: an active device and its enabled owner.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The device of the client certificate.
    pub device: DeviceInfo,
    /// Its owner.
    pub user: UserInfo,
}

impl Caller {
    /// The owner's role.
    pub fn role(&self) -> Role {
        self.user.body.role
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, Problem> {
    let state = req
        .app_data::<web::Data<State>>()
        .ok_or_else(|| Problem::new(Reason::Internal))?;
    let thumbprint = req.conn_data::<ClientCert>().and_then(|c| c.0).ok_or_else(|| {
        Problem::detail(
            Reason::ClientCertificateRequired,
            "connect with the device's client certificate, or enrol the device",
        )
    })?;
    let device = state
        .vault
        .device_by_thumbprint(&thumbprint)?
        .ok_or_else(|| Problem::new(Reason::DeviceUnknown))?;
    if device.body.revoked {
        return Err(Problem::detail(Reason::DeviceRevoked, "enrol the device again"));
    }
    if device.expires <= Timestamp::now() {
        return Err(Problem::detail(Reason::DeviceExpired, "enrol the device again"));
    }
    let user = match state.vault.user(device.owner) {
        Ok(u) => u,
        Err(crate::app::VaultError::NotFound(_)) => return Err(Problem::new(Reason::DeviceUnknown)),
        Err(e) => return Err(e.into()),
    };
    if user.body.disabled {
        return Err(Problem::new(Reason::UserDisabled));
    }
    Ok(Caller { device, user })
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}
