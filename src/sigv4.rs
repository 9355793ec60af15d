//! AWS Signature Version 4, header form: parsing the `Authorization` header, the canonical
//! request exactly as AWS specifies it, the string to sign, the signing key, and signing
//! (for coffer's own client). Pure: no clock, no I/O, no policy beyond the algorithm; the
//! HTTP layer decides which headers must be signed, the clock window and replays.
//!
//! Canonical URI: the raw request path, URI-encoded once more (non-S3 "double encoding":
//! `%3D` becomes `%253D`), either with dot segments and empty segments removed
//! ([`PathForm::Normalized`], what AWS SDKs do for every service but S3) or as sent
//! ([`PathForm::AsSent`]). A verifier cannot know which one the signer used, so
//! [`verify`] accepts either.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The credential scope terminator.
pub const TERMINATOR: &str = "aws4_request";
/// SHA-256 of the empty string, hex: the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a signature was not accepted. The texts are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigError {
    /// The `Authorization` header is not a SigV4 header.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// A header the signature needs is absent or unreadable.
    #[error("{0}")]
    Header(String),
    /// The credential scope names another date, region or service.
    #[error("{0}")]
    Scope(String),
    /// The signature does not match the request.
    #[error("the signature does not match the request")]
    Mismatch,
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Access key id (coffer: the device id).
    pub access_key: String,
    /// Scope date, `YYYYMMDD`.
    pub date: String,
    /// Scope region.
    pub region: String,
    /// Scope service.
    pub service: String,
    /// Signed header names, lower case, sorted, as sent.
    pub signed_headers: Vec<String>,
    /// The signature.
    pub signature: [u8; 32],
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("access_key", &self.access_key)
            .field("date", &self.date)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("signed_headers", &self.signed_headers)
            .finish_non_exhaustive()
    }
}

impl Authorization {
    /// The credential scope, `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/{TERMINATOR}", self.date, self.region, self.service)
    }

    /// Parses the header value. Components may be separated by `,` with or without spaces.
    pub fn parse(value: &str) -> Result<Self, SigError> {
        let rest = value
            .strip_prefix(ALGORITHM)
            .ok_or(SigError::Malformed("expected the AWS4-HMAC-SHA256 algorithm"))?;
        if !rest.starts_with(' ') {
            return Err(SigError::Malformed("expected a space after the algorithm"));
        }
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim_matches(' ');
            let (key, val) = part.split_once('=').ok_or(SigError::Malformed(
                "expected Credential=, SignedHeaders= and Signature=",
            ))?;
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return Err(SigError::Malformed("unknown component")),
            };
            if slot.replace(val).is_some() {
                return Err(SigError::Malformed("a component appears twice"));
            }
        }
        let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
            return Err(SigError::Malformed(
                "expected Credential=, SignedHeaders= and Signature=",
            ));
        };
        let mut scope = credential.split('/');
        let (Some(access_key), Some(date), Some(region), Some(service), Some(terminator), None) = (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) else {
            return Err(SigError::Malformed(
                "Credential must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
            ));
        };
        if terminator != TERMINATOR {
            return Err(SigError::Malformed("the credential scope must end in aws4_request"));
        }
        if access_key.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SigError::Malformed(
                "Credential must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
            ));
        }
        let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
        let well_formed = signed_headers.iter().all(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b))
        });
        if !well_formed {
            return Err(SigError::Malformed("SignedHeaders must be lower-case header names"));
        }
        if signed_headers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SigError::Malformed("SignedHeaders must be sorted and without repeats"));
        }
        let signature = parse_hex32(signature).ok_or(SigError::Malformed("Signature must be 64 hex digits"))?;
        Ok(Self {
            access_key: access_key.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature,
        })
    }

    /// Whether `name` (lower case) is among the signed headers.
    pub fn signs(&self, name: &str) -> bool {
        self.signed_headers.binary_search_by(|h| h.as_str().cmp(name)).is_ok()
    }
}

/// 64 hex digits (either case) as 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// SHA-256, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The parts of a request a signature covers. Its `Debug` shows header names only (values
/// may be a session token or a signature).
#[derive(Clone)]
pub struct Request<'a> {
    /// Method, upper case as sent.
    pub method: &'a str,
    /// Path as sent on the request line (percent-encoded, or raw).
    pub path: &'a str,
    /// Query as sent, without `?` (empty if none).
    pub query: &'a str,
    /// Every header as sent (any case; repeated names allowed, in order).
    pub headers: Vec<(&'a str, &'a [u8])>,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &self.headers.iter().map(|(n, _)| *n).collect::<Vec<_>>())
            .finish()
    }
}

impl Request<'_> {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The one value of header `name`; `None` if absent, an error if sent more than once
    /// or not text.
    pub fn single<'s>(&'s self, name: &'s str) -> Result<Option<&'s str>, SigError> {
        let mut values = self.values(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(SigError::Header(format!("{name} must be sent once")));
        }
        first
            .map(|v| std::str::from_utf8(v).map_err(|_| SigError::Header(format!("{name} must be ASCII"))))
            .transpose()
    }
}

/// How the canonical URI treats dot segments and repeated slashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathForm {
    /// Removed, as AWS SDKs do for every service but S3.
    Normalized,
    /// Kept as sent.
    AsSent,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// AWS URI encoding: everything but unreserved characters (and `/` if `keep_slash`) as
/// `%XX` with upper-case hex.
pub fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// Removes `.` and `..` segments and empty segments; keeps a trailing slash.
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&segments.join("/"));
    let trailing = ["/", "/.", "/.."].iter().any(|t| path.ends_with(t));
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// The canonical URI of `path` (the path as sent).
pub fn canonical_uri(path: &str, form: PathForm) -> String {
    let path = if path.is_empty() { "/" } else { path };
    match form {
        PathForm::Normalized => uri_encode(normalize_path(path).as_bytes(), true),
        PathForm::AsSent => uri_encode(path.as_bytes(), true),
    }
}

/// The canonical query string: every parameter decoded and URI-encoded again, sorted by
/// name, then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
            (uri_encode(&decode(k), false), uri_encode(&decode(v), false))
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// A header value trimmed, with every run of whitespace inside it made one space.
fn trim_all(value: &[u8], out: &mut Vec<u8>) {
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            pending_space = started;
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
            started = true;
        }
    }
}

/// The canonical request (bytes: header values need not be UTF-8).
pub fn canonical_request(
    req: &Request<'_>,
    signed_headers: &[String],
    payload_hash: &str,
    form: PathForm,
) -> Result<Vec<u8>, SigError> {
    canonical_request_with(req, signed_headers, payload_hash, form, QueryForm::Canonical)
}

/// How the canonical request's query line is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryForm {
    /// Decoded, re-encoded and sorted, as AWS specifies.
    Canonical,
    /// Exactly as sent (what curl 7.x signs).
    AsSent,
}

fn canonical_request_with(
    req: &Request<'_>,
    signed_headers: &[String],
    payload_hash: &str,
    form: PathForm,
    query: QueryForm,
) -> Result<Vec<u8>, SigError> {
    let tail = canonical_tail(req, signed_headers, payload_hash)?;
    let uri = canonical_uri(req.path, form);
    let query = match query {
        QueryForm::Canonical => canonical_query(req.query),
        QueryForm::AsSent => req.query.to_owned(),
    };
    let mut out = Vec::with_capacity(req.method.len() + uri.len() + query.len() + tail.len() + 3);
    for part in request_parts(req.method, &uri, &query, &tail) {
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// The pieces of a canonical request in order: its request lines and the shared tail.
fn request_parts<'p>(method: &'p str, uri: &'p str, query: &'p str, tail: &'p [u8]) -> [&'p [u8]; 7] {
    [
        method.as_bytes(),
        b"\n",
        uri.as_bytes(),
        b"\n",
        query.as_bytes(),
        b"\n",
        tail,
    ]
}

/// The canonical request after the query line: the canonical headers, the signed header
/// list and the payload hash (the same for every path and query form).
fn canonical_tail(req: &Request<'_>, signed_headers: &[String], payload_hash: &str) -> Result<Vec<u8>, SigError> {
    let mut out = Vec::with_capacity(512);
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut any = false;
        for value in req.values(name) {
            if any {
                out.push(b',');
            }
            trim_all(value, &mut out);
            any = true;
        }
        if !any {
            return Err(SigError::Header(format!("the signed header {name} is missing")));
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

/// Whether `path` has empty, `.` or `..` segments (a trailing slash aside), i.e. whether
/// its normalized canonical URI differs from the as-sent one.
pub fn has_dot_segments(path: &str) -> bool {
    let inner = path.strip_prefix('/').unwrap_or(path);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    !inner.is_empty() && inner.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || path.ends_with("/.")
        || path.ends_with("/..")
        || path == "//"
}

/// The string to sign.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The signing key for one secret, date (`YYYYMMDD`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    seed.extend_from_slice(b"AWS4");
    seed.extend_from_slice(secret.as_bytes());
    let k_date = hmac(&seed, date.as_bytes());
    let k_region = hmac(&*k_date, region.as_bytes());
    let k_service = hmac(&*k_region, service.as_bytes());
    hmac(&*k_service, TERMINATOR.as_bytes())
}

/// The signature of a string to sign.
pub fn signature(key: &[u8; 32], string_to_sign: &str) -> [u8; 32] {
    *hmac(key, string_to_sign.as_bytes())
}

/// Checks `auth` against the request, compared in constant time. The canonical request is
/// tried in the forms signers are known to produce: the path normalized or as sent (see
/// the module notes), and the query canonical or as sent (curl 7.x signs it unsorted).
/// The normalized path does not cover bytes of segments that `..` removes: the HTTP layer
/// refuses paths with empty, `.` or `..` segments, so for every path it accepts both
/// forms cover every byte. `amz_date` is the request's
/// `x-amz-date`; scope, clock and header policy are the caller's business.
pub fn verify(
    req: &Request<'_>,
    auth: &Authorization,
    amz_date: &str,
    payload_hash: &str,
    key: &[u8; 32],
) -> Result<(), SigError> {
    let scope = auth.scope();
    // The part shared by every form is built once; each form only hashes its own request
    // line in front of it.
    let tail = canonical_tail(req, &auth.signed_headers, payload_hash)?;
    let normalized = canonical_uri(req.path, PathForm::Normalized);
    let mut uris = vec![normalized];
    let as_sent = canonical_uri(req.path, PathForm::AsSent);
    if as_sent != uris[0] {
        uris.push(as_sent);
    }
    let canonical = canonical_query(req.query);
    let mut queries = vec![canonical.as_str()];
    if canonical != req.query {
        queries.push(req.query);
    }
    let mut matched = subtle::Choice::from(0);
    for uri in &uris {
        for query in &queries {
            let mut h = Sha256::new();
            for part in request_parts(req.method, uri, query, &tail) {
                h.update(part);
            }
            let sts = format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex(&h.finalize()));
            matched |= signature(key, &sts).ct_eq(&auth.signature);
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

/// What a client needs to sign a request.
pub struct Credentials<'a> {
    /// Access key id (the device id).
    pub access_key: &'a str,
    /// The signing secret.
    pub secret: &'a str,
    /// Region.
    pub region: &'a str,
    /// Service.
    pub service: &'a str,
    /// The signing key already derived for a date (`YYYYMMDD`), if the caller caches it
    /// (used when the request's date matches).
    pub key: Option<(String, Zeroizing<[u8; 32]>)>,
}

/// The `x-amz-date` form of a time: `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses an `x-amz-date` value.
pub fn parse_amz_date(s: &str) -> Option<time::OffsetDateTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &format).ok().map(|t| t.assume_utc())
}

/// Signs a request: returns the `Authorization` value. The request must already carry every
/// header in `signed_headers` (any case, any order), including `host` and `x-amz-date`.
pub fn authorization(
    req: &Request<'_>,
    creds: &Credentials<'_>,
    amz_date: &str,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, SigError> {
    let mut sorted: Vec<String> = signed_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    sorted.sort();
    sorted.dedup();
    let signed_headers = &sorted;
    let date = amz_date
        .get(..8)
        .ok_or(SigError::Malformed("x-amz-date is too short"))?;
    let scope = format!("{date}/{}/{}/{TERMINATOR}", creds.region, creds.service);
    let canonical = canonical_request(req, signed_headers, payload_hash, PathForm::Normalized)?;
    let key = match &creds.key {
        Some((d, k)) if d == date => k.clone(),
        _ => signing_key(creds.secret, date, creds.region, creds.service),
    };
    let sig = signature(&key, &string_to_sign(amz_date, &scope, &canonical));
    Ok(format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={}",
        creds.access_key,
        signed_headers.join(";"),
        hex(&sig)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_like_aws() {
        assert_eq!(canonical_uri("//example//", PathForm::Normalized), "/example/");
        assert_eq!(canonical_uri("//example//", PathForm::AsSent), "//example//");
        assert_eq!(canonical_uri("/example/..", PathForm::Normalized), "/");
        assert_eq!(canonical_uri("/./example", PathForm::Normalized), "/example");
        assert_eq!(canonical_uri("/a%3Db", PathForm::Normalized), "/a%253Db");
        assert_eq!(canonical_uri("", PathForm::Normalized), "/");
    }

    #[test]
    fn dot_segments_are_what_normalizing_changes() {
        for path in [
            "/",
            "/v1/documents",
            "/v1/documents/",
            "/a/b/c",
            "/a%2F/b",
            "/v1/documents/x.y",
            "/.well",
            "/..x",
            "//",
            "//example//",
            "/a//b",
            "/./",
            "/./example",
            "/a/.",
            "/a/..",
            "/example/../x",
            "/a/./b",
            "",
        ] {
            let differs = canonical_uri(path, PathForm::AsSent) != canonical_uri(path, PathForm::Normalized);
            assert_eq!(has_dot_segments(path), differs, "{path:?}");
        }
    }

    #[test]
    fn queries_sort_and_encode() {
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query("k"), "k=");
        assert_eq!(canonical_query("x=a%20b&y=~"), "x=a%20b&y=~");
        assert_eq!(canonical_query("x=a+b"), "x=a%2Bb");
    }

    #[test]
    fn authorization_parses_and_refuses_junk() {
        let a = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        )
        .unwrap();
        assert_eq!(a.access_key, "AK");
        assert_eq!(a.scope(), "20150830/us-east-1/service/aws4_request");
        assert!(a.signs("host") && !a.signs("x-amz-content-sha256"));
        for bad in [
            "",
            "AWS4-HMAC-SHA1 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/2015083/r/s/aws4_request, SignedHeaders=host, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/x, SignedHeaders=host, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=x-amz-date;host, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=Host, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host, Signature=zz",
        ] {
            assert!(Authorization::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sign_then_verify_round_trips_and_detects_changes() {
        let creds = Credentials {
            access_key: "dev",
            secret: "secret",
            region: "local",
            service: "coffer",
            key: None,
        };
        let headers = vec![("Host", &b"localhost"[..]), ("X-Amz-Date", &b"20261129T080000Z"[..])];
        let req = Request {
            method: "GET",
            path: "/v1/documents",
            query: "limit=5",
            headers,
        };
        let signed: Vec<String> = vec!["host".into(), "x-amz-date".into()];
        let value = authorization(&req, &creds, "20261129T080000Z", &signed, EMPTY_SHA256).unwrap();
        let auth = Authorization::parse(&value).unwrap();
        let key = signing_key("secret", "20261129", "local", "coffer");
        verify(&req, &auth, "20261129T080000Z", EMPTY_SHA256, &key).unwrap();
        let other = Request {
            query: "limit=6",
            ..req.clone()
        };
        assert_eq!(
            verify(&other, &auth, "20261129T080000Z", EMPTY_SHA256, &key),
            Err(SigError::Mismatch)
        );
        let wrong_key = signing_key("secreT", "20261129", "local", "coffer");
        assert_eq!(
            verify(&req, &auth, "20261129T080000Z", EMPTY_SHA256, &wrong_key),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn amz_dates_round_trip() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert!(parse_amz_date("2015-08-30T12:36:00Z").is_none());
    }
}
