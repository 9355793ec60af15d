//! The AWS Signature Version 4 signing test suite (`../shared/aws-signing-test-suite/v4`,
//! header form) replayed against coffer's verifier in `src/sigv4.rs`.
//!
//! For every case with a `context.json`: the canonical request built from
//! `header-signed-request.txt` must equal `header-canonical-request.txt` byte for byte, the
//! string to sign `header-string-to-sign.txt`, the signature `header-signature.txt` and the
//! one in the signed request; [`verify`] must accept the signed request and refuse
//! it once one character of the signature, one byte of the path or one byte of a signed
//! header value is changed. The two cases without a context are checked as far as their
//! files allow (see [`check_double_url_encode`] and [`check_double_encode_path`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

use coffer::sigv4::{
    Authorization, EMPTY_SHA256, PathForm, Request, SigError, canonical_request, canonical_uri, hex, parse_amz_date,
    sha256_hex, signature, signing_key, string_to_sign, verify,
};

/// Cases of the suite whose signature [`verify`] accepts but which coffer's HTTP
/// layer refuses anyway, as `(case, reason)`.
///
/// The suite test asserts the facts behind each reason on the case's files, and that no
/// other case shows such a fact, so this list stays complete and true.
///
/// The get-space and get-utf8 cases sign a path encoded once; a double-encoding signer
/// cannot produce them from a request that can be sent, and the `aws-sigv4` crate skips
/// them in its own run of the suite for that reason. Refusals that depend on the
/// deployment (the access key must be the device id, the region is configured, the service
/// is `coffer`, `x-amz-date` must be within 5 minutes of the server's clock) apply to every
/// case alike and are not listed.
const REFUSED_BY_THE_SERVER: &[(&str, &str)] = &[
    ("get-relative-normalized", DOT_SEGMENTS),
    ("get-relative-relative-normalized", DOT_SEGMENTS),
    ("get-relative-relative-unnormalized", DOT_SEGMENTS),
    ("get-relative-unnormalized", DOT_SEGMENTS),
    ("get-slash-dot-slash-normalized", DOT_SEGMENTS),
    ("get-slash-dot-slash-unnormalized", DOT_SEGMENTS),
    ("get-slash-normalized", DOT_SEGMENTS),
    ("get-slash-pointless-dot-normalized", DOT_SEGMENTS),
    ("get-slash-pointless-dot-unnormalized", DOT_SEGMENTS),
    ("get-slash-unnormalized", DOT_SEGMENTS),
    ("get-slashes-normalized", DOT_SEGMENTS),
    ("get-slashes-unnormalized", DOT_SEGMENTS),
    (
        "get-header-value-multiline",
        "the My-Header1 value is continued on indented lines (obs-fold), which coffer's HTTP/1.1 \
         parser rejects with 400 (RFC 9112 §5.2 lets a server reject it): the request never reaches \
         the signature check",
    ),
    (
        "get-space-normalized",
        "the request target contains a space, which no HTTP/1.1 request line can carry (RFC 9112 \
         §3); sent percent-encoded, as a client must, the path's %20 is encoded again in the \
         canonical URI (%2520, AWS's double encoding for every service but S3), while the case \
         signs it encoded once",
    ),
    (
        "get-space-unnormalized",
        "the request target contains a space, which no HTTP/1.1 request line can carry (RFC 9112 \
         §3); sent percent-encoded, as a client must, the path's %20 is encoded again in the \
         canonical URI (%2520, AWS's double encoding for every service but S3), while the case \
         signs it encoded once",
    ),
    (
        "get-utf8",
        "the path is raw UTF-8, which the server's URI parser rejects with 400; sent \
         percent-encoded, the canonical URI encodes it again (/%25E1%2588%25B4, AWS's double \
         encoding for every service but S3), while the case signs /%E1%88%B4",
    ),
    (
        "post-sts-header-after",
        "X-Amz-Security-Token is sent but is not in SignedHeaders (the signer added it after \
         signing); coffer requires x-amz-security-token, like every x-amz-* header, to be signed \
         when present",
    ),
];

/// The example credentials of the suite, used by the one case that has a signature but no
/// `context.json` (`double-url-encode`).
const EXAMPLE_ACCESS_KEY: &str = "AKIDEXAMPLE";
const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// Headers a signer adds to `request.txt` to make `header-signed-request.txt`.
const ADDED_BY_THE_SIGNER: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
];

fn suite_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/aws-signing-test-suite/v4");
    assert!(
        dir.is_dir(),
        "the AWS SigV4 test suite is missing: expected the case directories in {} \
         (../shared/aws-signing-test-suite/v4 relative to the crate)",
        dir.display()
    );
    dir
}

/// The case directory names, sorted; fails loudly if the suite looks incomplete.
fn case_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry"))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().into_string().expect("a UTF-8 case name"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 40,
        "the AWS SigV4 test suite in {} has {} case directories, expected at least 40",
        dir.display(),
        names.len()
    );
    names
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    std::fs::read(dir.join(file)).map_err(|e| format!("cannot read {file}: {e}"))
}

fn read_text(dir: &Path, file: &str) -> Result<String, String> {
    String::from_utf8(read(dir, file)?).map_err(|_| format!("{file} is not UTF-8"))
}

/// A raw HTTP request as the suite writes it.
#[derive(Debug, Clone)]
struct Message {
    method: String,
    path: String,
    query: String,
    /// `(name as written, value)`: the value without surrounding spaces and tabs (as an
    /// HTTP server hands it over); continuation lines joined to it with `\n`.
    headers: Vec<(String, Vec<u8>)>,
    /// Whether a header value was continued on a line starting with whitespace.
    obs_fold: bool,
    body: Vec<u8>,
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

impl Message {
    /// Request line (`METHOD target [HTTP/1.1]`), `Name:value` lines (a line starting with
    /// whitespace continues the previous value), a blank line, the body.
    fn parse(file: &str, bytes: &[u8]) -> Result<Self, String> {
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut rest = bytes;
        loop {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let line = rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]);
                    rest = &rest[i + 1..];
                    if line.is_empty() {
                        break;
                    }
                    lines.push(line);
                }
                None => {
                    if !rest.is_empty() {
                        lines.push(rest);
                    }
                    rest = &[];
                    break;
                }
            }
        }
        let body = rest.to_vec();
        let (request_line, header_lines) = lines.split_first().ok_or(format!("{file} is empty"))?;
        let request_line =
            std::str::from_utf8(request_line).map_err(|_| format!("{file}: the request line is not UTF-8"))?;
        let (method, rest) = request_line
            .split_once(' ')
            .ok_or(format!("{file}: no request target on {request_line:?}"))?;
        // The target may contain spaces (get-space-*); the version is optional (double-url-encode).
        let target = match rest.rsplit_once(' ') {
            Some((target, version)) if version.starts_with("HTTP/") => target,
            _ => rest,
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        let mut obs_fold = false;
        for line in header_lines {
            if matches!(line.first(), Some(b' ' | b'\t')) {
                let (_, value) = headers
                    .last_mut()
                    .ok_or(format!("{file}: a continuation line before any header"))?;
                value.push(b'\n');
                value.extend_from_slice(line);
                obs_fold = true;
                continue;
            }
            let colon = line.iter().position(|&b| b == b':').ok_or(format!(
                "{file}: no ':' in header line {:?}",
                String::from_utf8_lossy(line)
            ))?;
            let name = std::str::from_utf8(&line[..colon])
                .ok()
                .filter(|n| !n.is_empty() && !n.contains([' ', '\t']))
                .ok_or(format!(
                    "{file}: bad header name in {:?}",
                    String::from_utf8_lossy(line)
                ))?;
            headers.push((name.to_owned(), trim_ows(&line[colon + 1..]).to_vec()));
        }
        Ok(Self {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            obs_fold,
            body,
        })
    }

    fn request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect(),
        }
    }

    /// The one value of `name`, as text.
    fn single(&self, name: &str) -> Result<Option<String>, String> {
        self.request()
            .single(name)
            .map(|v| v.map(str::to_owned))
            .map_err(|e| e.to_string())
    }

    fn required(&self, name: &str) -> Result<String, String> {
        self.single(name)?
            .ok_or(format!("the signed request has no {name} header"))
    }
}

/// `context.json`.
struct Context {
    access_key: String,
    secret: String,
    token: Option<String>,
    region: String,
    service: String,
    timestamp: String,
    normalize: bool,
    sign_body: bool,
    omit_session_token: bool,
}

impl Context {
    fn parse(text: &str) -> Result<Self, String> {
        use serde_json::Value;
        let v: Value = serde_json::from_str(text).map_err(|e| format!("context.json: {e}"))?;
        let text = |ptr: &str| {
            v.pointer(ptr)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(format!("context.json: {ptr} is missing or not a string"))
        };
        let flag = |ptr: &str| {
            v.pointer(ptr)
                .and_then(Value::as_bool)
                .ok_or(format!("context.json: {ptr} is missing or not a boolean"))
        };
        Ok(Self {
            access_key: text("/credentials/access_key_id")?,
            secret: text("/credentials/secret_access_key")?,
            token: v
                .pointer("/credentials/token")
                .and_then(Value::as_str)
                .map(str::to_owned),
            region: text("/region")?,
            service: text("/service")?,
            timestamp: text("/timestamp")?,
            normalize: flag("/normalize")?,
            sign_body: flag("/sign_body")?,
            omit_session_token: v.get("omit_session_token").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// One case's failures, each prefixed with the case name.
struct Checks {
    case: String,
    failures: Vec<String>,
}

impl Checks {
    fn fail(&mut self, message: impl std::fmt::Display) {
        self.failures.push(format!("{}: {message}", self.case));
    }

    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(message());
        }
    }

    /// Byte-for-byte equality, reported as the first differing line.
    fn same_lines(&mut self, what: &str, expected: &[u8], actual: &[u8]) {
        if expected == actual {
            return;
        }
        let show = |line: Option<&&[u8]>| match line {
            Some(l) => format!("{:?}", String::from_utf8_lossy(l)),
            None => "<no such line>".to_owned(),
        };
        let e: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
        let a: Vec<&[u8]> = actual.split(|&b| b == b'\n').collect();
        let line = (0..e.len().max(a.len())).find(|&i| e.get(i) != a.get(i)).unwrap_or(0);
        self.fail(format!(
            "{what} differs at line {}: expected {}, got {}",
            line + 1,
            show(e.get(line)),
            show(a.get(line))
        ));
    }
}

fn last_line(text: &[u8]) -> String {
    let line = text.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

fn date_of(amz_date: &str) -> Result<&str, String> {
    amz_date.get(..8).ok_or(format!("x-amz-date {amz_date:?} is too short"))
}

/// `request.txt` is `header-signed-request.txt` without the headers the signer adds. The
/// paths are compared percent-decoded: get-space-normalized's request.txt has
/// `/example%20space/` where its signed request has `/example space/`.
fn check_same_request(c: &mut Checks, request: &Message, signed: &Message) {
    let line = |m: &Message| {
        let path = percent_encoding::percent_decode_str(&m.path).decode_utf8_lossy();
        format!("{} {path}?{}", m.method, m.query)
    };
    c.check(line(request) == line(signed), || {
        format!(
            "request line differs: request.txt {:?}, header-signed-request.txt {:?}",
            line(request),
            line(signed)
        )
    });
    let unsigned = |m: &Message| -> Vec<(String, Vec<u8>)> {
        m.headers
            .iter()
            .filter(|(n, _)| !ADDED_BY_THE_SIGNER.contains(&n.to_ascii_lowercase().as_str()))
            .cloned()
            .collect()
    };
    c.check(unsigned(request) == unsigned(signed), || {
        "the headers of request.txt are not those of header-signed-request.txt less the signer's".to_owned()
    });
    c.check(request.body == signed.body, || "the bodies differ".to_owned());
}

/// What the HTTP layer refuses in a request whose signature is fine.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// A header value continued on an indented line.
    ObsFold,
    /// The request target has bytes a request line cannot carry (space, control, non-ASCII),
    /// and with them percent-encoded, as a client sends them, the signature no longer matches.
    TargetNotSendable,
    /// A header coffer requires to be signed (`host`, `x-amz-date`, any `x-amz-*` or
    /// `x-coffer-*` header present) is not in SignedHeaders.
    Unsigned(String),
    /// The path has empty, `.` or `..` segments, which coffer refuses before checking a
    /// signature (its normalized form would not cover every byte of the path).
    DotSegments,
}

/// Why the cases whose paths have empty, `.` or `..` segments are refused.
const DOT_SEGMENTS: &str = "the path has empty, '.' or '..' segments: coffer refuses such paths before \
     checking a signature, because the normalized canonical URI a signer may have used does not \
     cover the bytes of removed segments (coffer's API has no such paths)";

/// The facts behind each entry of [`REFUSED_BY_THE_SERVER`].
fn expected_refusals(case: &str) -> Option<Vec<Refusal>> {
    match case {
        "get-header-value-multiline" => Some(vec![Refusal::ObsFold]),
        "get-space-normalized" | "get-space-unnormalized" | "get-utf8" => Some(vec![Refusal::TargetNotSendable]),
        "post-sts-header-after" => Some(vec![Refusal::Unsigned("x-amz-security-token".to_owned())]),
        c if REFUSED_BY_THE_SERVER.contains(&(c, DOT_SEGMENTS)) => Some(vec![Refusal::DotSegments]),
        _ => None,
    }
}

/// Bytes of a request target that a request line cannot carry (RFC 9112 §3: no whitespace;
/// RFC 3986: ASCII only) percent-encoded, as a client sends them.
fn wire_form(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for &b in target.as_bytes() {
        if b <= b' ' || b >= 0x7f {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

fn refusals(
    request: &Message,
    signed: &Message,
    auth: &Authorization,
    amz_date: &str,
    payload_hash: &str,
    key: &[u8; 32],
) -> Vec<Refusal> {
    let mut found = Vec::new();
    if request.obs_fold || signed.obs_fold {
        found.push(Refusal::ObsFold);
    }
    let wire = Message {
        path: wire_form(&signed.path),
        query: wire_form(&signed.query),
        ..signed.clone()
    };
    if (wire.path != signed.path || wire.query != signed.query)
        && verify(&wire.request(), auth, amz_date, payload_hash, key).is_err()
    {
        found.push(Refusal::TargetNotSendable);
    }
    if coffer::sigv4::canonical_uri(&wire.path, PathForm::AsSent)
        != coffer::sigv4::canonical_uri(&wire.path, PathForm::Normalized)
    {
        found.push(Refusal::DotSegments);
    }
    let mut must_sign: Vec<String> = vec!["host".to_owned(), "x-amz-date".to_owned()];
    for (name, _) in &signed.headers {
        let name = name.to_ascii_lowercase();
        if (name.starts_with("x-amz-") || name.starts_with("x-coffer-")) && !must_sign.contains(&name) {
            must_sign.push(name);
        }
    }
    for name in must_sign {
        if !auth.signs(&name) {
            found.push(Refusal::Unsigned(name));
        }
    }
    found
}

/// `b` changed to another byte of the same class (ASCII stays ASCII).
fn other_byte(b: u8) -> u8 {
    if b == b'a' { b'b' } else { b'a' }
}

/// Changing one character of the signature, one byte of the path or one byte of any signed
/// header value must make [`verify`] refuse the request.
fn check_tampering(
    c: &mut Checks,
    signed: &Message,
    auth_value: &str,
    amz_date: &str,
    payload_hash: &str,
    key: &[u8; 32],
) -> Result<(), String> {
    let auth = Authorization::parse(auth_value).map_err(|e| format!("Authorization: {e}"))?;

    // One hex digit of the signature.
    let at = auth_value.find("Signature=").ok_or("no Signature= in Authorization")? + "Signature=".len();
    let digit = auth_value.as_bytes()[at];
    let flipped = format!(
        "{}{}{}",
        &auth_value[..at],
        if digit == b'0' { '1' } else { '0' },
        &auth_value[at + 1..]
    );
    let flipped = Authorization::parse(&flipped).map_err(|e| format!("the flipped Authorization: {e}"))?;
    let got = verify(&signed.request(), &flipped, amz_date, payload_hash, key);
    c.check(got == Err(SigError::Mismatch), || {
        format!("verify accepted a signature with its first digit changed ({got:?})")
    });

    // One byte of the path: the last ASCII byte, so that the change survives normalization
    // (a byte inside a segment that `..` removes would not change the normalized path, and
    // the normalized form is what most of these cases sign).
    let mut path = signed.path.clone().into_bytes();
    let at = path
        .iter()
        .rposition(u8::is_ascii)
        .ok_or("the path has no ASCII byte to change")?;
    path[at] = other_byte(path[at]);
    let tampered = Message {
        path: String::from_utf8(path).map_err(|_| "the changed path is not UTF-8")?,
        ..signed.clone()
    };
    for form in [PathForm::Normalized, PathForm::AsSent] {
        c.check(
            canonical_uri(&tampered.path, form) != canonical_uri(&signed.path, form),
            || {
                format!(
                    "test bug: changing the path to {:?} leaves its {form:?} form unchanged",
                    tampered.path
                )
            },
        );
    }
    let got = verify(&tampered.request(), &auth, amz_date, payload_hash, key);
    c.check(got == Err(SigError::Mismatch), || {
        format!("verify accepted the path changed to {:?} ({got:?})", tampered.path)
    });

    // One byte of each signed header value: its first non-whitespace byte.
    for name in &auth.signed_headers {
        let mut tampered = signed.clone();
        let Some((_, value)) = tampered.headers.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
            c.fail(format!("the signed header {name} is missing"));
            continue;
        };
        let Some(at) = value.iter().position(|b| !b.is_ascii_whitespace()) else {
            c.fail(format!("the signed header {name} is blank"));
            continue;
        };
        value[at] = other_byte(value[at]);
        let shown = String::from_utf8_lossy(value).into_owned();
        let got = verify(&tampered.request(), &auth, amz_date, payload_hash, key);
        c.check(got == Err(SigError::Mismatch), || {
            format!("verify accepted the signed header {name} changed to {shown:?} ({got:?})")
        });
    }
    Ok(())
}

/// A case with `context.json`. Returns what the HTTP layer would refuse in it.
fn check_signed_case(dir: &Path, c: &mut Checks) -> Result<Vec<Refusal>, String> {
    let ctx = Context::parse(&read_text(dir, "context.json")?)?;
    let request = Message::parse("request.txt", &read(dir, "request.txt")?)?;
    let signed = Message::parse("header-signed-request.txt", &read(dir, "header-signed-request.txt")?)?;
    let expected_canonical = read(dir, "header-canonical-request.txt")?;
    let expected_sts = read(dir, "header-string-to-sign.txt")?;
    let expected_signature = read_text(dir, "header-signature.txt")?;
    let expected_signature = expected_signature.trim();
    check_same_request(c, &request, &signed);

    let auth_value = signed.required("authorization")?;
    let auth = Authorization::parse(&auth_value).map_err(|e| format!("Authorization::parse: {e}"))?;
    let amz_date = signed.required("x-amz-date")?;
    let date = date_of(&amz_date)?;

    // The scope and the clock: the credential scope is the case's, dated x-amz-date's day,
    // and x-amz-date is the case's timestamp.
    let scope = format!("{date}/{}/{}/aws4_request", ctx.region, ctx.service);
    c.check(auth.scope() == scope, || {
        format!("credential scope {:?}, expected {scope:?}", auth.scope())
    });
    c.check(auth.access_key == ctx.access_key, || {
        format!("access key {:?}, expected {:?}", auth.access_key, ctx.access_key)
    });
    let timestamp = time::OffsetDateTime::parse(&ctx.timestamp, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("context.json timestamp {:?}: {e}", ctx.timestamp))?;
    let signed_at = parse_amz_date(&amz_date).ok_or(format!("x-amz-date {amz_date:?} does not parse"))?;
    c.check(signed_at == timestamp, || {
        format!("x-amz-date {amz_date} is not the case's timestamp {}", ctx.timestamp)
    });

    // The session token: sent when the case has one, signed unless the case omits it.
    let token = signed.single("x-amz-security-token")?;
    c.check(token == ctx.token, || {
        format!("X-Amz-Security-Token {token:?}, the case's token {:?}", ctx.token)
    });
    if ctx.token.is_some() {
        c.check(auth.signs("x-amz-security-token") != ctx.omit_session_token, || {
            format!(
                "x-amz-security-token signed: {}, yet omit_session_token is {}",
                auth.signs("x-amz-security-token"),
                ctx.omit_session_token
            )
        });
    }

    // The payload hash: the last line of the canonical request says which one it is.
    let payload_hash = if ctx.sign_body {
        sha256_hex(&signed.body)
    } else {
        EMPTY_SHA256.to_owned()
    };
    let file_hash = last_line(&expected_canonical);
    c.check(file_hash == payload_hash, || {
        format!(
            "the canonical request's payload hash is {file_hash}, but sign_body={} gives {payload_hash}",
            ctx.sign_body
        )
    });
    let content_sha256 = signed.single("x-amz-content-sha256")?;
    if ctx.sign_body {
        c.check(content_sha256.as_deref() == Some(payload_hash.as_str()), || {
            format!("x-amz-content-sha256 is {content_sha256:?}, the body's SHA-256 {payload_hash}")
        });
        c.check(auth.signs("x-amz-content-sha256"), || {
            "x-amz-content-sha256 is not signed".to_owned()
        });
    } else {
        c.check(content_sha256.is_none(), || {
            format!("x-amz-content-sha256 {content_sha256:?} sent although sign_body is false")
        });
    }

    // Canonical request, string to sign, signature.
    let form = if ctx.normalize {
        PathForm::Normalized
    } else {
        PathForm::AsSent
    };
    let canonical = canonical_request(&signed.request(), &auth.signed_headers, &payload_hash, form)
        .map_err(|e| format!("canonical_request: {e}"))?;
    c.same_lines("canonical request", &expected_canonical, &canonical);
    let sts = string_to_sign(&amz_date, &scope, &canonical);
    c.same_lines("string to sign", &expected_sts, sts.as_bytes());
    let key = signing_key(&ctx.secret, date, &ctx.region, &ctx.service);
    let computed = hex(&signature(&key, &sts));
    c.check(computed == expected_signature, || {
        format!("signature {computed}, header-signature.txt {expected_signature}")
    });
    c.check(hex(&auth.signature) == expected_signature, || {
        format!(
            "the signed request's Signature {} is not header-signature.txt {expected_signature}",
            hex(&auth.signature)
        )
    });

    // Acceptance, then tampering.
    let got = verify(&signed.request(), &auth, &amz_date, &payload_hash, &key);
    c.check(got.is_ok(), || format!("verify refused the signed request: {got:?}"));
    check_tampering(c, &signed, &auth_value, &amz_date, &payload_hash, &key)?;
    if ctx.sign_body && !signed.body.is_empty() {
        let mut body = signed.body.clone();
        body[0] = other_byte(body[0]);
        let got = verify(&signed.request(), &auth, &amz_date, &sha256_hex(&body), &key);
        c.check(got == Err(SigError::Mismatch), || {
            format!("verify accepted the payload hash of a changed body ({got:?})")
        });
    }

    Ok(refusals(&request, &signed, &auth, &amz_date, &payload_hash, &key))
}

/// `double-url-encode` (a Lambda invocation path with `%3A`) has no `context.json`, no
/// `header-signature.txt`, and its signed request line has no HTTP version. Its credential
/// is the suite's usual example access key, scoped to us-east-2/lambda; the signature in the
/// signed request is checked with the usual example secret, which confirms the assumption.
/// Its `header-string-to-sign.txt`, unlike every other case's, ends with a newline.
fn check_double_url_encode(dir: &Path, c: &mut Checks) -> Result<(), String> {
    let request = Message::parse("request.txt", &read(dir, "request.txt")?)?;
    let signed = Message::parse("header-signed-request.txt", &read(dir, "header-signed-request.txt")?)?;
    let expected_canonical = read(dir, "header-canonical-request.txt")?;
    let expected_sts = read(dir, "header-string-to-sign.txt")?;
    check_same_request(c, &request, &signed);

    let auth_value = signed.required("authorization")?;
    let auth = Authorization::parse(&auth_value).map_err(|e| format!("Authorization::parse: {e}"))?;
    let amz_date = signed.required("x-amz-date")?;
    c.check(auth.access_key == EXAMPLE_ACCESS_KEY, || {
        format!("access key {:?}, expected {EXAMPLE_ACCESS_KEY}", auth.access_key)
    });
    c.check(auth.date == date_of(&amz_date)?, || {
        format!("credential date {}, x-amz-date {amz_date}", auth.date)
    });
    c.check(
        (auth.region.as_str(), auth.service.as_str()) == ("us-east-2", "lambda"),
        || format!("scope {}", auth.scope()),
    );
    let file_hash = last_line(&expected_canonical);
    c.check(file_hash == EMPTY_SHA256 && signed.body.is_empty(), || {
        format!("payload hash {file_hash} for a body of {} bytes", signed.body.len())
    });

    // Both path forms give the same canonical URI here (no dot or empty segments).
    let canonical = canonical_request(
        &signed.request(),
        &auth.signed_headers,
        EMPTY_SHA256,
        PathForm::Normalized,
    )
    .map_err(|e| format!("canonical_request: {e}"))?;
    c.same_lines("canonical request", &expected_canonical, &canonical);
    let sts = string_to_sign(&amz_date, &auth.scope(), &canonical);
    c.same_lines(
        "string to sign (the file has a final newline)",
        &expected_sts,
        format!("{sts}\n").as_bytes(),
    );
    let key = signing_key(EXAMPLE_SECRET, &auth.date, &auth.region, &auth.service);
    let computed = hex(&signature(&key, &sts));
    c.check(computed == hex(&auth.signature), || {
        format!("signature {computed}, the signed request's {}", hex(&auth.signature))
    });
    let got = verify(&signed.request(), &auth, &amz_date, EMPTY_SHA256, &key);
    c.check(got.is_ok(), || format!("verify refused the signed request: {got:?}"));
    check_tampering(c, &signed, &auth_value, &amz_date, EMPTY_SHA256, &key)
}

/// `double-encode-path` has no `context.json`; its access key (ANOTREAL) has no published
/// secret, and its `header-canonical-request.txt` carries x-amz-date 20210511T154045Z while
/// its request and signed request carry 20150830T123600Z, so neither the canonical request
/// as a whole, nor a string to sign, nor the signature can be reproduced from its files.
/// Only the canonical URI line can: `@` and the already-encoded `%3D` encoded once more.
fn check_double_encode_path(dir: &Path, c: &mut Checks) -> Result<(), String> {
    let signed = Message::parse("header-signed-request.txt", &read(dir, "header-signed-request.txt")?)?;
    let expected_canonical = read_text(dir, "header-canonical-request.txt")?;
    let expected_uri = expected_canonical
        .lines()
        .nth(1)
        .ok_or("header-canonical-request.txt has no canonical URI line")?;
    for form in [PathForm::Normalized, PathForm::AsSent] {
        let uri = canonical_uri(&signed.path, form);
        c.check(uri == expected_uri, || {
            format!("canonical URI ({form:?}) {uri:?}, header-canonical-request.txt {expected_uri:?}")
        });
    }
    // The reason only the URI is checked; if the suite is ever fixed, check the rest too.
    let amz_date = signed.required("x-amz-date")?;
    c.check(
        !expected_canonical.contains(&format!("x-amz-date:{amz_date}\n")),
        || "the canonical request now has the request's x-amz-date: check this case in full".to_owned(),
    );
    Ok(())
}

#[test]
fn the_suite_has_forty_cases() {
    let dir = suite_dir();
    let names = case_names(&dir);
    assert_eq!(names.len(), 40, "case directories in {}: {names:?}", dir.display());
}

#[test]
fn the_verifier_passes_the_aws_sigv4_test_suite() {
    let dir = suite_dir();
    let mut failures = Vec::new();
    let mut refused: Vec<(String, Vec<Refusal>)> = Vec::new();
    for case in case_names(&dir) {
        let case_dir = dir.join(&case);
        let mut c = Checks {
            case: case.clone(),
            failures: Vec::new(),
        };
        let outcome = if case_dir.join("context.json").exists() {
            check_signed_case(&case_dir, &mut c).map(|found| {
                if !found.is_empty() {
                    refused.push((case.clone(), found));
                }
            })
        } else {
            match case.as_str() {
                "double-url-encode" => check_double_url_encode(&case_dir, &mut c),
                "double-encode-path" => check_double_encode_path(&case_dir, &mut c),
                _ => Err("no context.json, and this test does not know how to check the case".to_owned()),
            }
        };
        if let Err(e) = outcome {
            c.fail(e);
        }
        failures.extend(c.failures);
    }

    // The refusals: exactly the listed cases, for exactly the listed reasons.
    for (case, found) in &refused {
        match REFUSED_BY_THE_SERVER.iter().find(|(name, _)| name == case) {
            None => failures.push(format!(
                "{case}: the server would refuse it ({found:?}) but it is not in REFUSED_BY_THE_SERVER"
            )),
            Some(_) => match expected_refusals(case) {
                Some(expected) if &expected == found => {}
                expected => failures.push(format!(
                    "{case}: the server would refuse it for {found:?}, the list says {expected:?}"
                )),
            },
        }
    }
    for (case, reason) in REFUSED_BY_THE_SERVER {
        if reason.is_empty() || !refused.iter().any(|(name, _)| name == case) {
            failures.push(format!(
                "{case}: listed in REFUSED_BY_THE_SERVER ({reason:?}), but its files show no such fact"
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} failure(s) against the AWS SigV4 test suite:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
