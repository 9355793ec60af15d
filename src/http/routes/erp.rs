//! `/v1/erp`: cached ERP records. Reads by the roles a collection lists (members and
//! admins with a session, integration devices by signature alone); writes by
//! `integration` devices only. The cache logic is in [`crate::erp`].

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::app::erp::{ETAG_LEN, ErpOp, NewErpRecord, Written};
use crate::erp::{Budget, Collection, ReadError, ReadOptions, Served, check_key};
use crate::http::State;
use crate::http::auth::{Body, Caller, Identified};
use crate::http::error::{PROBLEM_TYPE_PREFIX, Problem, Reason};
use crate::http::limits::Transfer;
use crate::model::{Role, Timestamp};

/// Path prefix of every ERP route.
const PREFIX: &str = "/v1/erp/";
/// Most keys in one multi-get.
pub const MAX_KEYS_PER_GET: usize = 100;
/// Most value bytes in one multi-get answer; records past it are answered `413` inside
/// the body (fetch them alone).
pub const MAX_MULTI_GET_BYTES: usize = 16 * 1024 * 1024;
/// Records of one multi-get read at a time.
const MULTI_GET_CONCURRENCY: usize = 4;
/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 1000;
/// Largest batch body, bytes.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Latest `expires` accepted: ten years ahead.
const MAX_EXPIRES_AHEAD_MS: i64 = 10 * 366 * 86_400 * 1000;

fn etag_text(etag: &[u8; ETAG_LEN]) -> String {
    format!("\"{}\"", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(etag))
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::detail(Reason::InvalidRequest, detail)
}

/// Percent-decodes a path segment or query value into UTF-8 (`+` is a plus sign).
fn decode(raw: &str, what: &str) -> Result<String, Problem> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid(format!("the {what} is not percent-encoded UTF-8")))
}

/// The collection (configured, readable or writable by the caller's role is checked by
/// the caller) named in the path.
fn collection<'s>(state: &'s State, name: &str) -> Result<&'s Collection, Problem> {
    state
        .options
        .erp
        .collection(name)
        .ok_or_else(|| Problem::new(Reason::NotFound))
}

/// The `{collection}` and decoded `{key}` of `/v1/erp/{collection}/{key}`, from the raw
/// path (so `%2F` is a `/` inside the key, never a separator).
fn collection_and_key(req: &HttpRequest) -> Result<(String, String), Problem> {
    let rest = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .ok_or_else(|| Problem::new(Reason::NotFound))?;
    let (name, raw_key) = rest.split_once('/').ok_or_else(|| Problem::new(Reason::NotFound))?;
    if raw_key.contains('/') {
        return Err(Problem::new(Reason::NotFound));
    }
    let key = decode(raw_key, "record key")?;
    check_key(&key).map_err(invalid)?;
    Ok((decode(name, "collection name")?, key))
}

fn require_reader(caller: &Caller, c: &Collection) -> Result<(), Problem> {
    if c.readable_by(caller.role()) {
        Ok(())
    } else {
        Err(Problem::detail(
            Reason::RoleNotPermitted,
            format!("the role {} may not read this collection", caller.role().as_str()),
        ))
    }
}

fn require_writer(role: Role) -> Result<(), Problem> {
    if role == Role::Integration {
        Ok(())
    } else {
        Err(Problem {
            close: true,
            ..Problem::detail(
                Reason::RoleNotPermitted,
                "only integration identities write ERP records",
            )
        })
    }
}

fn read_problem(e: ReadError) -> Problem {
    match e {
        ReadError::NotFound => Problem::new(Reason::NotFound),
        ReadError::UpstreamFailed => Problem {
            retry_after: Some(10),
            ..Problem::detail(
                Reason::UpstreamFailed,
                "the ERP could not provide this record and no cached copy is usable; retry later",
            )
        },
        ReadError::UpstreamTimeout => Problem {
            retry_after: Some(10),
            ..Problem::detail(
                Reason::UpstreamTimeout,
                "the ERP did not answer in time and no cached copy is usable; retry later",
            )
        },
        ReadError::Busy => Problem {
            retry_after: Some(5),
            ..Problem::detail(
                Reason::UpstreamBusy,
                "too many ERP calls are waiting (for this device or overall) and no cached copy is usable; retry later",
            )
        },
        ReadError::TooLarge => Problem::detail(
            Reason::PayloadTooLarge,
            "the records asked for together are too large for one answer: read this one alone",
        ),
        ReadError::Vault(e) => e.into(),
        ReadError::Internal => Problem::new(Reason::Internal),
    }
}

/// Whether `If-None-Match` matches `etag` (weak comparison, as RFC 9110 asks for it).
fn none_match(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn cache_headers(res: &mut actix_web::HttpResponseBuilder, served: &Served, etag: &str) {
    res.insert_header((header::ETAG, etag.to_owned()))
        .insert_header((header::AGE, served.age_secs().to_string()))
        .insert_header(("cache-status", served.cache_status()))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache")));
}

/// Tells the connection's watchdog that a request waiting on the ERP is alive.
fn keepalive(req: &HttpRequest) -> impl Fn() + Sync + use<> {
    let activity = req
        .conn_data::<crate::http::watchdog::ConnActivity>()
        .map(|c| c.activity.clone());
    move || {
        if let Some(a) = &activity {
            a.touch();
        }
    }
}

/// `GET /v1/erp/{collection}/{key}`.
pub async fn read_one(caller: Caller, req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, Problem> {
    let (name, key) = collection_and_key(&req)?;
    let c = collection(&state, &name)?;
    require_reader(&caller, c)?;
    let alive = keepalive(&req);
    let how = ReadOptions {
        keepalive: &alive,
        ..ReadOptions::single()
    };
    let served = state
        .options
        .erp
        .read(&state.vault, c, &key, caller.device.id, &how)
        .await
        .map_err(read_problem)?;
    let etag = etag_text(&served.record.etag);
    if none_match(&req, &etag) {
        let mut res = HttpResponse::NotModified();
        cache_headers(&mut res, &served, &etag);
        return Ok(res.finish());
    }
    let mut res = HttpResponse::Ok();
    cache_headers(&mut res, &served, &etag);
    res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
    Ok(res.body(served.record.value))
}

/// The `key` values of a query string, decoded, each once, in order.
fn query_keys(query: &str) -> Result<Vec<String>, Problem> {
    let mut keys: Vec<String> = Vec::new();
    if query.split('&').filter(|p| !p.is_empty()).count() > MAX_KEYS_PER_GET {
        return Err(invalid(format!("at most {MAX_KEYS_PER_GET} keys per request")));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "key" {
            return Err(invalid(format!(
                "unknown query parameter {:?}: ask for records with key=...&key=...",
                decode(name, "query parameter").unwrap_or_default()
            )));
        }
        let key = decode(value, "record key")?;
        check_key(&key).map_err(invalid)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(invalid("name the records to read: ?key=a&key=b"));
    }
    if keys.len() > MAX_KEYS_PER_GET {
        return Err(invalid(format!("at most {MAX_KEYS_PER_GET} keys per request")));
    }
    Ok(keys)
}

#[derive(Serialize)]
struct EntryHead<'a> {
    key: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

/// `GET /v1/erp/{collection}?key=a&key=b`.
pub async fn read_many(
    caller: Caller,
    req: HttpRequest,
    name: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    let c = collection(&state, &name)?;
    require_reader(&caller, c)?;
    let keys = query_keys(req.query_string())?;
    // A multi-get is a transfer like a listing: bounded per device and overall.
    let _slot = state.transfers.begin(Transfer::Download, caller.device.id)?;
    let erp = &state.options.erp;
    // A few records at a time, each opened only if it fits what is left of the answer's
    // budget (reserved before it is opened), so memory stays bounded whatever the
    // records' sizes. Past the collection's upstream timeout, the remaining keys are
    // answered from the cache alone: a hanging ERP cannot stretch one answer for minutes.
    let budget = Budget::new(MAX_MULTI_GET_BYTES as u64);
    let device = caller.device.id;
    let alive = keepalive(&req);
    let deadline = std::time::Instant::now() + c.upstream_timeout();
    let vault = &state.vault;
    let results: Vec<_> = futures_util::stream::iter(keys.iter())
        .map(|k| {
            let how = ReadOptions {
                budget: Some(budget.clone()),
                upstream: std::time::Instant::now() < deadline,
                keepalive: &alive,
            };
            async move { erp.read(vault, c, k, device, &how).await }
        })
        .buffered(MULTI_GET_CONCURRENCY)
        .inspect(|_| alive())
        .collect()
        .await;
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"records\":[");
    for (i, (key, result)) in keys.iter().zip(results).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let (head, value) = match result {
            Ok(served) => (
                EntryHead {
                    key,
                    status: 200,
                    etag: Some(etag_text(&served.record.etag)),
                    age: Some(served.age_secs()),
                    cache_status: Some(served.cache_status()),
                    problem: None,
                },
                Some(served.record.value),
            ),
            Err(e) => (error_entry(key, read_problem(e).reason), None),
        };
        let head = serde_json::to_vec(&head).map_err(|_| Problem::new(Reason::Internal))?;
        match (value, head.strip_suffix(b"}")) {
            (Some(value), Some(open)) => {
                // The head without its closing brace, then the value as stored (JSON).
                body.extend_from_slice(open);
                body.extend_from_slice(b",\"value\":");
                body.extend_from_slice(&value);
                body.push(b'}');
            }
            (Some(_), None) => return Err(Problem::new(Reason::Internal)),
            (None, _) => body.extend_from_slice(&head),
        }
    }
    body.extend_from_slice(b"]}");
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache")))
        .body(body))
}

fn error_entry(key: &str, reason: Reason) -> EntryHead<'_> {
    EntryHead {
        key,
        status: reason.status().as_u16(),
        etag: None,
        age: None,
        cache_status: None,
        problem: Some(format!("{PROBLEM_TYPE_PREFIX}{}", reason.slug())),
    }
}

/// Reads a request body of at most `limit` bytes (413 past it).
async fn read_body(state: &State, payload: web::Payload, limit: usize) -> Result<Bytes, Problem> {
    super::read_body_limited(state, payload, limit, "ERP request bodies").await
}

/// An `expires` time: RFC 3339, in the future, at most ten years ahead.
fn parse_expires(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("expires {text:?} is not an RFC 3339 time such as 2026-12-01T00:00:00Z"))?;
    let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| "expires is out of range".to_owned())?;
    if ms <= now.0 {
        return Err(format!("expires {text:?} is not in the future"));
    }
    if ms > now.0.saturating_add(MAX_EXPIRES_AHEAD_MS) {
        return Err(format!("expires {text:?} is more than ten years ahead"));
    }
    Ok(Timestamp(ms))
}

/// A record to store: its value checked as JSON within the size limit, its times.
fn new_record(
    c: &Collection,
    max_bytes: usize,
    key: String,
    value: &[u8],
    expires: Option<&str>,
    now: Timestamp,
) -> Result<NewErpRecord, Problem> {
    if value.len() > max_bytes {
        return Err(Problem::detail(
            Reason::PayloadTooLarge,
            format!("a record is at most {max_bytes} bytes (erp.max_record_bytes)"),
        ));
    }
    crate::erp::check_json(value).map_err(invalid)?;
    let fresh_until = match expires {
        Some(text) => parse_expires(text, now).map_err(invalid)?,
        None => Timestamp(now.0.saturating_add(c.ttl_ms())),
    };
    Ok(NewErpRecord {
        key,
        value: value.to_vec(),
        fresh_until,
        stale_until: Timestamp(fresh_until.0.saturating_add(c.stale_ms())),
    })
}

#[derive(Serialize)]
struct PutAnswer {
    key: String,
    etag: String,
    expires: String,
}

async fn write(state: &State, name: String, ops: Vec<ErpOp>, now: Timestamp) -> Result<Vec<Written>, Problem> {
    let vault = Arc::clone(&state.vault);
    match web::block(move || vault.erp_write(&name, &ops, now)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Problem::new(Reason::Internal)),
    }
}

/// `PUT /v1/erp/{collection}/{key}[?expires=RFC3339]`.
pub async fn put(
    who: Identified,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    require_writer(who.role())?;
    // Bodies are read whole before the signature can be checked: bounded per device and
    // overall like uploads.
    let _slot = state.transfers.begin(Transfer::Upload, who.device_id())?;
    let max = state.options.erp.max_record_bytes();
    let body = read_body(&state, payload, max).await?;
    let caller = who.verify(&req, Body::Bytes(&body), true)?;
    require_writer(caller.role())?;
    let (name, key) = collection_and_key(&req)?;
    let c = collection(&state, &name)?;
    super::require_json(&req)?;
    let mut expires = None;
    for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("expires", v)) if expires.is_none() => expires = Some(decode(v, "expires time")?),
            _ => return Err(invalid("the only query parameter of a PUT is expires=RFC3339, once")),
        }
    }
    let now = Timestamp::now();
    let record = new_record(c, max, key.clone(), &body, expires.as_deref(), now)?;
    let fresh_until = record.fresh_until;
    let written = write(&state, name, vec![ErpOp::Put(record)], now).await?;
    let Some(Written::Put { replaced, etag }) = written.first() else {
        return Err(Problem::new(Reason::Internal));
    };
    let etag = etag_text(etag);
    let status = if *replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok(HttpResponse::build(status)
        .insert_header((header::ETAG, etag.clone()))
        .json(PutAnswer {
            key,
            etag,
            expires: super::rfc3339(fresh_until),
        }))
}

/// `DELETE /v1/erp/{collection}/{key}`.
pub async fn delete(
    who: Identified,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    require_writer(who.role())?;
    let body = read_body(&state, payload, super::MAX_JSON_BODY).await?;
    let caller = who.verify(&req, Body::Bytes(&body), true)?;
    require_writer(caller.role())?;
    let (name, key) = collection_and_key(&req)?;
    collection(&state, &name)?;
    write(&state, name, vec![ErpOp::Delete(key)], Timestamp::now()).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    /// Parsed one by one, so an error names its operation; more than
    /// [`MAX_BATCH_OPS`] stop the parse at once.
    #[serde(borrow, deserialize_with = "at_most_max_ops")]
    operations: Vec<&'a RawValue>,
}

fn at_most_max_ops<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<&'de RawValue>, D::Error> {
    struct Ops;
    impl<'de> serde::de::Visitor<'de> for Ops {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_BATCH_OPS} operations")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ops = Vec::new();
            while let Some(op) = seq.next_element::<&'de RawValue>()? {
                if ops.len() == MAX_BATCH_OPS {
                    return Err(serde::de::Error::custom(format!(
                        "a batch holds 1 to {MAX_BATCH_OPS} operations"
                    )));
                }
                ops.push(op);
            }
            Ok(ops)
        }
    }
    d.deserialize_seq(Ops)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOp<'a> {
    op: String,
    key: String,
    /// Present (even `null`) or absent.
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default)]
    expires: Option<String>,
}

/// A field that is there, whatever its JSON value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Serialize)]
struct BatchAnswer {
    put: u64,
    deleted: u64,
}

/// `POST /v1/erp/{collection}/batch`: up to 1,000 puts and deletes in one commit.
pub async fn batch(
    who: Identified,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    require_writer(who.role())?;
    let _slot = state.transfers.begin(Transfer::Upload, who.device_id())?;
    let body = read_body(&state, payload, MAX_BATCH_BYTES).await?;
    let caller = who.verify(&req, Body::Bytes(&body), true)?;
    require_writer(caller.role())?;
    let (name, key) = collection_and_key(&req)?;
    if key != "batch" {
        return Err(Problem {
            allow: Some("GET, PUT, DELETE"),
            ..Problem::new(Reason::MethodNotAllowed)
        });
    }
    let c = collection(&state, &name)?;
    super::require_json(&req)?;
    let parsed: BatchBody<'_> =
        serde_json::from_slice(&body).map_err(|e| invalid(format!("invalid batch body: {e}")))?;
    if parsed.operations.is_empty() || parsed.operations.len() > MAX_BATCH_OPS {
        return Err(invalid(format!("a batch holds 1 to {MAX_BATCH_OPS} operations")));
    }
    let max = state.options.erp.max_record_bytes();
    let now = Timestamp::now();
    let mut ops = Vec::with_capacity(parsed.operations.len());
    for (i, raw) in parsed.operations.into_iter().enumerate() {
        let at = |p: Problem| Problem {
            detail: Some(format!(
                "operations[{i}]: {}",
                p.detail.as_deref().unwrap_or(p.reason.title())
            )),
            reason: if p.reason == Reason::PayloadTooLarge {
                Reason::InvalidRequest
            } else {
                p.reason
            },
            ..p
        };
        let op: BatchOp<'_> = serde_json::from_str(raw.get()).map_err(|e| {
            at(invalid(format!(
                "{e} (an operation is {{\"op\":\"put\",\"key\":...,\"value\":...}} or {{\"op\":\"delete\",\"key\":...}})"
            )))
        })?;
        check_key(&op.key).map_err(|m| at(invalid(m)))?;
        match (op.op.as_str(), op.value) {
            ("put", Some(value)) => {
                let record =
                    new_record(c, max, op.key, value.get().as_bytes(), op.expires.as_deref(), now).map_err(at)?;
                ops.push(ErpOp::Put(record));
            }
            ("put", None) => return Err(at(invalid("a put needs a value"))),
            ("delete", None) if op.expires.is_none() => ops.push(ErpOp::Delete(op.key)),
            ("delete", _) => return Err(at(invalid("a delete takes only a key"))),
            (other, _) => return Err(at(invalid(format!("unknown op {other:?}: use put or delete")))),
        }
    }
    let written = write(&state, name, ops, now).await?;
    let mut answer = BatchAnswer { put: 0, deleted: 0 };
    for w in written {
        match w {
            Written::Put { .. } => answer.put += 1,
            Written::Deleted { removed: true } => answer.deleted += 1,
            Written::Deleted { removed: false } => {}
        }
    }
    Ok(HttpResponse::Ok().json(answer))
}
