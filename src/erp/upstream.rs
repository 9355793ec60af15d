//! The upstream ERP: a URL template and an HTTP agent. Calls are server-side requests
//! built from client input, so: the key is percent-encoded into one path segment (no `/`,
//! `?`, `#` or dot segment can escape it), only the configured origin is contacted (no
//! proxy from the environment, no redirects), and responses are size-capped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The placeholder in an upstream URL template.
pub const KEY_PLACEHOLDER: &str = "{key}";

/// A checked upstream URL template: `prefix` + encoded key + `suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    prefix: String,
    suffix: String,
    /// `scheme://authority`, which every built URL must keep.
    origin: String,
}

impl Template {
    /// Parses `https://host[:port]/path/{key}[/more][?query]`: `http` or `https`, `{key}`
    /// exactly once, inside the path.
    pub fn parse(template: &str) -> Result<Self, String> {
        let rest = template
            .strip_prefix("https://")
            .map(|r| ("https", r))
            .or_else(|| template.strip_prefix("http://").map(|r| ("http", r)));
        let Some((scheme, rest)) = rest else {
            return Err("must start with https:// or http://".into());
        };
        if template.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        if template.matches(KEY_PLACEHOLDER).count() != 1 {
            return Err("must contain {key} exactly once".into());
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if authority.is_empty() || authority.contains('@') || authority.contains('{') {
            return Err("must name a host (without user information) before the path".into());
        }
        let path_and_more = &rest[authority_end..];
        let path_end = path_and_more.find(['?', '#']).unwrap_or(path_and_more.len());
        if !path_and_more.starts_with('/') || !path_and_more[..path_end].contains(KEY_PLACEHOLDER) {
            return Err("{key} must be in the path (e.g. https://erp.internal/api/customers/{key})".into());
        }
        if path_and_more.contains('#') {
            return Err("must not contain a fragment (#)".into());
        }
        let at = template.find(KEY_PLACEHOLDER).unwrap_or_default();
        let built = Self {
            prefix: template[..at].to_owned(),
            suffix: template[at + KEY_PLACEHOLDER.len()..].to_owned(),
            origin: format!("{scheme}://{authority}"),
        };
        let sample = built.url("sample");
        sample
            .parse::<ureq::http::Uri>()
            .map_err(|e| format!("is not a valid URL once {{key}} is filled in: {e}"))?;
        Ok(built)
    }

    /// The URL for `key` (which the caller has checked is not `.` or `..`).
    pub fn url(&self, key: &str) -> String {
        format!("{}{}{}", self.prefix, utf8_percent_encode(key, SEGMENT), self.suffix)
    }

    /// `scheme://authority`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether the upstream is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.origin.starts_with("https://")
    }

    /// Whether the upstream is this machine (`localhost`, `127.0.0.0/8`, `[::1]`).
    pub fn is_loopback(&self) -> bool {
        let authority = self.origin.split_once("://").map_or("", |(_, a)| a);
        let host = match authority.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// How an upstream call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// No complete answer within the timeout.
    Timeout,
    /// Anything else (connection refused, TLS, a 5xx or unexpected status, a redirect, a
    /// body that is not JSON or too large). The text is for the server's log.
    Failed(String),
}

/// What the upstream said about a key.
#[derive(Debug)]
pub enum Fetched {
    /// `200` with a JSON body within the size limit.
    Found(Vec<u8>),
    /// `404` or `410`: the ERP has no such record.
    Gone,
}

/// TLS material for an `https` upstream.
pub struct TlsFiles<'a> {
    /// PEM roots (default: the system's).
    pub ca: Option<&'a Path>,
    /// PEM chain and key presented to the upstream.
    pub client: Option<(&'a Path, &'a Path)>,
}

/// A configured upstream: the template, an agent (connection pool) and the credentials.
pub struct Upstream {
    template: Template,
    agent: ureq::Agent,
    /// `Bearer <token>`, marked sensitive; built once, so no copy is made per call.
    bearer: Option<ureq::http::HeaderValue>,
    max_bytes: u64,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.template.origin)
            .field("bearer", &self.bearer.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

/// Warns when a credential file can be read by other users than its owner.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} can be read by other users: chmod 600 it (it holds an ERP credential)",
            path.display()
        );
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn pem_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = read_file(path, "certificate file")?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

impl Upstream {
    /// Builds the agent and reads the credentials. `bearer_file` holds the token (one line;
    /// surrounding whitespace is ignored).
    pub fn new(
        template: Template,
        bearer_file: Option<&Path>,
        tls: &TlsFiles<'_>,
        connect_timeout: Duration,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Self, String> {
        let bearer = match bearer_file {
            None => None,
            Some(path) => {
                if !template.is_https() && !template.is_loopback() {
                    return Err(
                        "a bearer token would travel in clear over http:// to another machine: use https://".into(),
                    );
                }
                warn_if_readable_by_others(path);
                let raw = zeroize::Zeroizing::new(read_file(path, "bearer token file")?);
                let token = std::str::from_utf8(&raw).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
                let token = token.trim();
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "{} must hold one token of visible ASCII characters",
                        path.display()
                    ));
                }
                let text = zeroize::Zeroizing::new(format!("Bearer {token}"));
                let mut value = ureq::http::HeaderValue::from_str(&text)
                    .map_err(|_| format!("{} does not hold a valid header value", path.display()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls_config = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider);
        if template.is_https() {
            let roots = match tls.ca {
                Some(path) => pem_certs(path)?,
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    if found.certs.is_empty() {
                        return Err("no system certificate authorities found: set upstream_ca_file".into());
                    }
                    found
                        .certs
                        .into_iter()
                        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                        .collect()
                }
            };
            tls_config = tls_config.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
            if let Some((cert, key)) = tls.client {
                warn_if_readable_by_others(key);
                let chain = pem_certs(cert)?;
                let key_pem = read_file(key, "client key file")?;
                let key = ureq::tls::PrivateKey::from_pem(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
                tls_config = tls_config.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
            }
        } else if tls.ca.is_some() || tls.client.is_some() {
            return Err("TLS files are set but the upstream is http://; use https://".into());
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls_config.build())
            .https_only(false)
            .http_status_as_error(false)
            .max_redirects(0)
            .save_redirect_history(false)
            .proxy(None)
            .user_agent("coffer")
            .max_response_header_size(64 * 1024)
            .timeout_connect(Some(connect_timeout))
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Ok(Self {
            template,
            agent,
            bearer,
            max_bytes,
            timeout,
        })
    }

    /// The configured time for a whole call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The template's origin (`scheme://authority`), for messages.
    pub fn origin(&self) -> &str {
        self.template.origin()
    }

    /// Asks the upstream for `key`. Blocking: run it off the async workers.
    pub fn fetch(&self, key: &str) -> Result<Fetched, FetchError> {
        let url = self.template.url(key);
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| FetchError::Failed(format!("the URL for this key does not parse: {e}")))?;
        // The key cannot change the origin (it is encoded into one segment); checked anyway.
        let origin_ok = uri
            .scheme_str()
            .zip(uri.authority())
            .is_some_and(|(scheme, authority)| format!("{scheme}://{}", authority.as_str()) == self.template.origin());
        if !origin_ok {
            return Err(FetchError::Failed(
                "the URL for this key leaves the configured origin".into(),
            ));
        }
        let mut request = self.agent.get(uri).header("accept", "application/json");
        if let Some(value) = &self.bearer {
            request = request.header("authorization", value.clone());
        }
        let mut response = request.call().map_err(classify)?;
        match response.status().as_u16() {
            200 => {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(self.max_bytes)
                    .read_to_vec()
                    .map_err(classify)?;
                if let Err(why) = super::check_json(&body) {
                    return Err(FetchError::Failed(format!("the upstream answered 200 but {why}")));
                }
                Ok(Fetched::Found(body))
            }
            404 | 410 => Ok(Fetched::Gone),
            status => Err(FetchError::Failed(format!("the upstream answered {status}"))),
        }
    }
}

fn classify(e: ureq::Error) -> FetchError {
    match e {
        ureq::Error::Timeout(_) => FetchError::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => FetchError::Timeout,
        ureq::Error::BodyExceedsLimit(limit) => {
            FetchError::Failed(format!("the upstream's record is larger than {limit} bytes"))
        }
        other => FetchError::Failed(describe(&other)),
    }
}

/// What went wrong, for the log, without the URL (it holds a record key, which the
/// database keeps only as a keyed hash).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("I/O error ({})", io.kind()),
        ureq::Error::HostNotFound => "the host name does not resolve".to_owned(),
        ureq::Error::ConnectionFailed => "the connection failed".to_owned(),
        ureq::Error::Protocol(p) => format!("HTTP protocol error: {p}"),
        ureq::Error::Tls(m) => format!("TLS: {m}"),
        ureq::Error::Rustls(r) => format!("TLS: {r}"),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => "a redirect (not followed)".to_owned(),
        _ => "the call failed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
        let t = Template::parse("https://erp.internal:8443/api/customers/{key}?full=1").unwrap();
        assert_eq!(t.origin(), "https://erp.internal:8443");
        assert_eq!(
            t.url("a/b?c#d"),
            "https://erp.internal:8443/api/customers/a%2Fb%3Fc%23d?full=1"
        );
        assert_eq!(
            t.url("Müller & Co"),
            "https://erp.internal:8443/api/customers/M%C3%BCller%20%26%20Co?full=1"
        );
        assert_eq!(
            t.url("a-b.c_d~e"),
            "https://erp.internal:8443/api/customers/a-b.c_d~e?full=1"
        );
        for bad in [
            "ftp://erp/{key}",
            "https://erp/api/customers",
            "https://erp/{key}/{key}",
            "https://{key}/x",
            "https://erp/api?id={key}",
            "https://user@erp/api/{key}",
            "https://erp/api/{key}#frag",
            "https:///api/{key}",
            "https://erp/a b/{key}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
