//! The reference client: what the mobile app does, as a library and `coffer client`.
//! It presents the device certificate, signs every request with SigV4 (the device id and
//! its signing secret from the [`Profile`]), logs in and keeps the session token in the
//! profile's state file, and streams files both ways.

pub mod profile;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use profile::{Profile, ProfileError};

use crate::secret::Passphrase;
use crate::sigv4;

/// A request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The profile cannot be read.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A local file cannot be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The credentials in the profile are unusable.
    #[error("{0}")]
    Credentials(String),
    /// The server could not be reached or the connection failed.
    #[error("cannot reach {endpoint}: {message}; check that the server runs and that the profile's endpoint is right")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// The server refused the request.
    #[error("the server answered {status} {kind}{}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default(), hint(kind))]
    Refused {
        /// HTTP status.
        status: u16,
        /// Problem type slug (`session-invalid`, ...), or `http-<status>`.
        kind: String,
        /// The server's detail.
        detail: Option<String>,
    },
    /// No session and no way to log in without asking.
    #[error("not logged in: run `coffer client --profile {0} login`")]
    NotLoggedIn(String),
}

fn hint(kind: &str) -> &'static str {
    match kind {
        "request-time-skewed" => " (check this machine's clock, then retry)",
        "signed-before-start" => " (retry in a few seconds; if it persists, check this machine's clock)",
        "device-revoked" | "device-expired" | "device-unknown" => " (this device must be enrolled again)",
        "login-failed" => " (check the user name and password)",
        "account-locked" | "too-many-auth-failures" => " (wait, or ask an administrator: coffer user unlock)",
        _ => "",
    }
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::File {
        path: path.display().to_string(),
        source,
    }
}

/// The session kept in the state file (its `Debug` redacts the token).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedSession {
    /// The token.
    pub token: crate::secret::SecretString,
    /// Its expiry (RFC 3339).
    pub expires: String,
}

/// What `put` sends besides the content.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// File name (default: the file's own name).
    pub name: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Visible to the team.
    pub team: bool,
    /// Content type (default `application/octet-stream`).
    pub content_type: Option<String>,
}

/// A client for one profile.
pub struct Client {
    profile: Profile,
    profile_path: PathBuf,
    agent: ureq::Agent,
    /// `https://host:port`, no trailing slash.
    base: String,
    /// The Host header (and signed host).
    host: String,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn pem_certs(pem: &[u8], path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ClientError> {
    let certs: Vec<_> = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::Credentials(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Credentials(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl Client {
    /// Reads the profile and its credentials.
    pub fn open(profile_path: &Path) -> Result<Self, ClientError> {
        use rustls::pki_types::pem::PemObject;
        let profile = Profile::load(profile_path)?;
        let read = |p: &Path| {
            let full = Profile::resolve(profile_path, p);
            std::fs::read(&full).map_err(file_err(&full)).map(|b| (full, b))
        };
        let (ca_path, ca) = read(&profile.ca)?;
        let (cert_path, cert) = read(&profile.cert)?;
        let (key_path, key) = read(&profile.key)?;
        // Checked here: ureq would only fail (or panic) on the first request.
        let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| ClientError::Credentials(format!("{}: {e}", key_path.display())))?;
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Credentials(format!("{}: {e}", cert_path.display())))?;
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Credentials(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| {
                ClientError::Credentials(format!(
                    "{} and {} do not form a usable identity: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?;
        let key = ureq::tls::PrivateKey::from_pem(&key)
            .map_err(|e| ClientError::Credentials(format!("{}: {e}", key_path.display())))?;
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(ureq::tls::RootCerts::new_with_certs(&pem_certs(&ca, &ca_path)?))
            .client_cert(Some(ureq::tls::ClientCert::new_with_certs(
                &pem_certs(&cert, &cert_path)?,
                key,
            )))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        let base = profile.endpoint.trim_end_matches('/').to_owned();
        let host = base
            .strip_prefix("https://")
            .and_then(|rest| rest.split('/').next())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                ClientError::Credentials(format!("endpoint {:?} must be https://host[:port]", profile.endpoint))
            })?
            .to_owned();
        Ok(Self {
            profile,
            profile_path: profile_path.to_path_buf(),
            agent,
            base,
            host,
        })
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Where the session is kept: `<profile stem>.session.toml` beside the profile.
    pub fn state_path(&self) -> PathBuf {
        let stem = self
            .profile_path
            .file_stem()
            .map_or_else(|| "profile".to_owned(), |s| s.to_string_lossy().into_owned());
        self.profile_path.with_file_name(format!("{stem}.session.toml"))
    }

    fn saved_session(&self) -> Option<SavedSession> {
        let text = std::fs::read_to_string(self.state_path()).ok()?;
        let s: SavedSession = toml::from_str(&text).ok()?;
        let expires = time::OffsetDateTime::parse(&s.expires, &time::format_description::well_known::Rfc3339).ok()?;
        (expires > time::OffsetDateTime::now_utc()).then_some(s)
    }

    fn signed_headers(
        &self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        payload_sha256: &str,
        token: Option<&str>,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let date = sigv4::amz_date(time::OffsetDateTime::now_utc());
        let mut all: Vec<(String, String)> =
            vec![("host".into(), self.host.clone()), ("x-amz-date".into(), date.clone())];
        all.extend(headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())));
        if let Some(t) = token {
            all.push(("x-amz-security-token".into(), t.to_owned()));
        }
        let mut names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let req = sigv4::Request {
            method,
            path,
            query,
            headers: all.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect(),
        };
        let creds = sigv4::Credentials {
            access_key: &self.profile.access_key_id,
            secret: self.profile.secret_access_key.expose(),
            region: &self.profile.region,
            service: &self.profile.service,
            key: None,
        };
        let auth = sigv4::authorization(&req, &creds, &date, &names, payload_sha256)
            .map_err(|e| ClientError::Credentials(e.to_string()))?;
        all.push(("authorization".into(), auth));
        Ok(all)
    }

    fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: Option<(&mut dyn Read, u64, String)>,
        token: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let payload_hash = body
            .as_ref()
            .map_or_else(|| sigv4::EMPTY_SHA256.to_owned(), |(_, _, h)| h.clone());
        let mut extra: Vec<(String, String)> = headers.to_vec();
        if method != "GET" && method != "HEAD" {
            // Every write is distinct, so a retry within the same second is not a replay.
            let nonce: [u8; 8] = crate::crypto::random_bytes().map_err(|e| ClientError::Credentials(e.to_string()))?;
            extra.push(("x-coffer-nonce".into(), sigv4::hex(&nonce)));
        }
        if body.is_some() {
            extra.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        }
        let signed = self.signed_headers(method, target, &extra, &payload_hash, token)?;
        let url = format!("{}{target}", self.base);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (n, v) in &signed {
            builder = builder.header(n.as_str(), v.as_str());
        }
        let transport = |e: ureq::Error| ClientError::Transport {
            endpoint: self.base.clone(),
            message: e.to_string(),
        };
        let result = match body {
            Some((reader, len, _)) => {
                let request = builder
                    .header("content-length", len.to_string())
                    .body(ureq::SendBody::from_reader(reader))
                    .map_err(|e| ClientError::Credentials(e.to_string()))?;
                self.agent.run(request)
            }
            None => {
                let request = builder.body(()).map_err(|e| ClientError::Credentials(e.to_string()))?;
                self.agent.run(request)
            }
        };
        result.map_err(transport)
    }

    fn refused(res: ureq::http::Response<ureq::Body>) -> ClientError {
        let status = res.status().as_u16();
        let text = res.into_body().read_to_string().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let kind = json["type"]
            .as_str()
            .and_then(|t| t.strip_prefix(crate::http::error::PROBLEM_TYPE_PREFIX))
            .map_or_else(|| format!("http-{status}"), str::to_owned);
        ClientError::Refused {
            status,
            kind,
            detail: json["detail"].as_str().map(str::to_owned),
        }
    }

    fn json(res: ureq::http::Response<ureq::Body>) -> Result<serde_json::Value, ClientError> {
        if !res.status().is_success() {
            return Err(Self::refused(res));
        }
        let text = res.into_body().read_to_string().map_err(|e| ClientError::Transport {
            endpoint: String::new(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Transport {
            endpoint: String::new(),
            message: format!("the server's answer is not JSON: {e}"),
        })
    }

    /// The password from the profile's `password_file`, if it names one.
    pub fn profile_password(&self) -> Result<Option<Passphrase>, ClientError> {
        let Some(p) = &self.profile.password_file else {
            return Ok(None);
        };
        let path = Profile::resolve(&self.profile_path, p);
        crate::app::unlock::from_file(&path)
            .map(Some)
            .map_err(|e| ClientError::Credentials(e.to_string()))
    }

    /// Logs in and keeps the session in the state file.
    pub fn login(&self, password: &Passphrase, totp: Option<&str>) -> Result<SavedSession, ClientError> {
        let password = std::str::from_utf8(password.expose())
            .map_err(|_| ClientError::Credentials("the password must be UTF-8".into()))?;
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "username": self.profile.username,
                "password": password,
                "totp": totp,
            }))
            .unwrap_or_default(),
        );
        let hash = sigv4::sha256_hex(&body);
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        let mut reader: &[u8] = &body;
        let res = self.send(
            "POST",
            "/v1/session",
            &headers,
            Some((&mut reader, body.len() as u64, hash)),
            None,
        )?;
        let json = Self::json(res)?;
        let session = SavedSession {
            token: crate::secret::SecretString::new(json["token"].as_str().unwrap_or_default().to_owned()),
            expires: json["expires"].as_str().unwrap_or_default().to_owned(),
        };
        let text = toml::to_string(&session).unwrap_or_default();
        let path = self.state_path();
        crate::app::durable::write_atomic(&path, text.as_bytes(), 0o600).map_err(file_err(&path))?;
        Ok(session)
    }

    /// Ends the session and forgets it.
    pub fn logout(&self) -> Result<(), ClientError> {
        if let Some(s) = self.saved_session() {
            let res = self.send("DELETE", "/v1/session", &[], None, Some(s.token.expose()))?;
            if !res.status().is_success() {
                let err = Self::refused(res);
                let _ = std::fs::remove_file(self.state_path());
                return Err(err);
            }
        }
        match std::fs::remove_file(self.state_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(file_err(&self.state_path())(e)),
            _ => Ok(()),
        }
    }

    /// A token: the saved session, or a new login with the profile's password file.
    fn token(&self, fresh: bool) -> Result<String, ClientError> {
        if !fresh && let Some(s) = self.saved_session() {
            return Ok(s.token.expose().to_owned());
        }
        match self.profile_password()? {
            Some(p) => Ok(self.login(&p, None)?.token.expose().to_owned()),
            None => Err(ClientError::NotLoggedIn(self.profile_path.display().to_string())),
        }
    }

    /// Runs `call` with a session; logs in again once if the server says it has ended.
    fn with_session<T>(
        &self,
        mut call: impl FnMut(&str) -> Result<ureq::http::Response<ureq::Body>, ClientError>,
        then: impl FnOnce(ureq::http::Response<ureq::Body>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let res = call(&self.token(false)?)?;
        let expired = res.status().as_u16() == 401 && self.profile.password_file.is_some();
        if expired {
            let err = Self::refused(res);
            if !matches!(&err, ClientError::Refused { kind, .. } if kind == "session-invalid" || kind == "session-required")
            {
                return Err(err);
            }
            return then(call(&self.token(true)?)?);
        }
        then(res)
    }

    /// Uploads `file`, streamed, with a progress bar on a terminal; returns the document JSON.
    pub fn put(&self, file: &Path, opts: &PutOptions) -> Result<serde_json::Value, ClientError> {
        let len = std::fs::metadata(file).map_err(file_err(file))?.len();
        let mut hasher = Sha256::new();
        let mut f = std::fs::File::open(file).map_err(file_err(file))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(file_err(file))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hash = sigv4::hex(&hasher.finalize());
        let name = opts
            .name
            .clone()
            .or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "document".into());
        let mut headers = vec![("x-coffer-name".to_owned(), enc(&name))];
        if let Some(t) = &opts.title {
            headers.push(("x-coffer-title".into(), enc(t)));
        }
        if !opts.tags.is_empty() {
            headers.push((
                "x-coffer-tags".into(),
                opts.tags.iter().map(|t| enc(t)).collect::<Vec<_>>().join(","),
            ));
        }
        if opts.team {
            headers.push(("x-coffer-visibility".into(), "team".into()));
        }
        headers.push((
            "content-type".into(),
            opts.content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
        ));
        self.with_session(
            |token| {
                let f = std::fs::File::open(file).map_err(file_err(file))?;
                let bar = progress(len, "upload");
                let mut reader = bar.wrap_read(f);
                let res = self.send(
                    "POST",
                    "/v1/documents",
                    &headers,
                    Some((&mut reader, len, hash.clone())),
                    Some(token),
                );
                bar.finish_and_clear();
                res
            },
            Self::json,
        )
    }

    /// Downloads document `id` into `out` (through a temporary file, renamed when complete)
    /// or to standard output; returns the bytes written.
    pub fn get(&self, id: &str, out: Option<&Path>) -> Result<u64, ClientError> {
        let target = format!("/v1/documents/{}", enc(id));
        self.with_session(
            |token| self.send("GET", &target, &[], None, Some(token)),
            |res| {
                if !res.status().is_success() {
                    return Err(Self::refused(res));
                }
                let len = res
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let bar = progress(len, "download");
                let mut body = bar.wrap_read(res.into_body().into_reader());
                let copied = match out {
                    Some(path) => {
                        let dir = path
                            .parent()
                            .filter(|p| !p.as_os_str().is_empty())
                            .unwrap_or(Path::new("."));
                        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(file_err(path))?;
                        let n = std::io::copy(&mut body, &mut tmp).map_err(file_err(path))?;
                        tmp.as_file().sync_all().map_err(file_err(path))?;
                        tmp.persist(path).map_err(|e| file_err(path)(e.error))?;
                        n
                    }
                    None => {
                        let mut stdout = std::io::stdout().lock();
                        let n = std::io::copy(&mut body, &mut stdout).map_err(file_err(Path::new("stdout")))?;
                        stdout.flush().map_err(file_err(Path::new("stdout")))?;
                        n
                    }
                };
                bar.finish_and_clear();
                if len != 0 && copied != len {
                    return Err(ClientError::Transport {
                        endpoint: self.base.clone(),
                        message: format!("the download stopped after {copied} of {len} bytes"),
                    });
                }
                Ok(copied)
            },
        )
    }

    /// One page of the listing (`query` without `?`, e.g. `limit=50&tag=x`).
    pub fn list(&self, query: &str) -> Result<serde_json::Value, ClientError> {
        let target = if query.is_empty() {
            "/v1/documents".to_owned()
        } else {
            format!("/v1/documents?{query}")
        };
        self.with_session(|token| self.send("GET", &target, &[], None, Some(token)), Self::json)
    }

    /// A document's metadata.
    pub fn meta(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        let target = format!("/v1/documents/{}/meta", enc(id));
        self.with_session(|token| self.send("GET", &target, &[], None, Some(token)), Self::json)
    }

    /// ERP records of `collection`: one key answers the record itself, several the
    /// multi-get document (`{"records": [...]}`). Also returns the `Cache-Status` of a
    /// single read.
    pub fn erp_get(
        &self,
        collection: &str,
        keys: &[String],
    ) -> Result<(serde_json::Value, Option<String>), ClientError> {
        let target = match keys {
            [key] => format!("/v1/erp/{}/{}", enc(collection), enc(key)),
            _ => {
                let query: Vec<String> = keys.iter().map(|k| format!("key={}", enc(k))).collect();
                format!("/v1/erp/{}?{}", enc(collection), query.join("&"))
            }
        };
        self.with_session(
            |token| self.send("GET", &target, &[], None, Some(token)),
            |res| {
                let status = res
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Ok((Self::json(res)?, status))
            },
        )
    }

    /// Deletes a document.
    pub fn rm(&self, id: &str) -> Result<(), ClientError> {
        let target = format!("/v1/documents/{}", enc(id));
        self.with_session(
            |token| self.send("DELETE", &target, &[], None, Some(token)),
            |res| {
                if res.status().is_success() {
                    Ok(())
                } else {
                    Err(Self::refused(res))
                }
            },
        )
    }
}

/// A byte progress bar on standard error, hidden when it is not a terminal (pipes, systemd,
/// CI): decided here rather than left to indicatif's own check, as in `cli::progress`.
fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} eta {{eta}}"
    )) {
        bar.set_style(style);
    }
    bar
}
