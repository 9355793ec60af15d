//! `/v1/documents`: streamed upload, listing, streamed and ranged download, metadata,
//! deletion. Authorisation: the owner and admins; `team` documents are readable by every
//! member. What a caller may not see answers 404, exactly like a missing id.

use std::ops::Range;
use std::sync::Arc;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::app::documents::{DocumentInfo, MetaChange, NewDocument};
use crate::app::{Vault, VaultError};
use crate::http::State;
use crate::http::auth::{Body, Caller, Identified};
use crate::http::error::{Problem, Reason};
use crate::http::limits::Transfer;
use crate::http::watchdog::ConnActivity;
use crate::model::{DocumentId, Role, Timestamp, Visibility};

/// Header carrying the file name (percent-encoded UTF-8).
pub const NAME_HEADER: &str = "x-coffer-name";
/// Header carrying the title (percent-encoded UTF-8).
pub const TITLE_HEADER: &str = "x-coffer-title";
/// Header carrying comma-separated tags (each percent-encoded UTF-8).
pub const TAGS_HEADER: &str = "x-coffer-tags";
/// Header carrying the visibility (`private` or `team`).
pub const VISIBILITY_HEADER: &str = "x-coffer-visibility";

/// Decrypted pieces that may wait between the reader thread and the connection.
const DOWNLOAD_QUEUE: usize = 4;
/// Body pieces that may wait between the connection and the upload thread.
const UPLOAD_QUEUE: usize = 16;

/// A document as every endpoint returns it.
#[derive(Debug, Serialize)]
pub struct DocumentJson {
    id: String,
    name: String,
    title: String,
    content_type: String,
    size: u64,
    sha256: String,
    tags: Vec<String>,
    visibility: &'static str,
    owner: String,
    created: String,
    updated: String,
}

use super::rfc3339;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl From<&DocumentInfo> for DocumentJson {
    fn from(d: &DocumentInfo) -> Self {
        Self {
            id: d.id.to_string(),
            name: d.meta.name.clone(),
            title: d.meta.title.clone(),
            content_type: d.meta.content_type.clone(),
            size: d.size,
            sha256: hex(&d.meta.sha256),
            tags: d.meta.tags.clone(),
            visibility: d.meta.visibility.as_str(),
            owner: d.owner.to_string(),
            created: rfc3339(d.created),
            updated: rfc3339(d.updated),
        }
    }
}

fn etag(d: &DocumentInfo) -> String {
    format!("\"{}\"", hex(&d.meta.sha256))
}

/// Members and admins use documents; integration identities do not.
fn require_document_role(caller: &Caller) -> Result<(), Problem> {
    match caller.role() {
        Role::Admin | Role::Member => Ok(()),
        _ => Err(Problem::detail(
            Reason::RoleNotPermitted,
            "integration identities cannot use documents",
        )),
    }
}

fn can_read(caller: &Caller, d: &DocumentInfo) -> bool {
    caller.role() == Role::Admin
        || d.owner == caller.user.id
        || (d.meta.visibility == Visibility::Team && caller.role() == Role::Member)
}

fn can_change(caller: &Caller, d: &DocumentInfo) -> bool {
    caller.role() == Role::Admin || d.owner == caller.user.id
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, VaultError> + Send + 'static) -> Result<T, Problem> {
    match web::block(f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Problem::new(Reason::Internal)),
    }
}

/// The document `id` if the caller may read it; otherwise 404, as if it did not exist.
async fn visible(state: &State, caller: &Caller, id: &str) -> Result<DocumentInfo, Problem> {
    let id: DocumentId = id.parse().map_err(|_| Problem::new(Reason::NotFound))?;
    let vault = state.vault.clone();
    let info = match blocking(move || vault.document(id)).await {
        Ok(info) => info,
        Err(e) => return Err(hide_damage(state, caller, id, e).await),
    };
    if can_read(caller, &info) {
        Ok(info)
    } else {
        Err(Problem::new(Reason::NotFound))
    }
}

/// The one value of header `name`; sent twice, it is refused (a proxy taking the other
/// copy would see another document).
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h header::HeaderValue>, Problem> {
    let mut values = headers.get_all(name);
    let first = values.next();
    if values.next().is_some() {
        return Err(Problem::detail(
            Reason::InvalidRequest,
            format!("{name} must be sent once"),
        ));
    }
    Ok(first)
}

/// A document whose metadata does not open: only its owner or an admin may learn that it
/// is damaged; to anyone else it does not exist (its clear owner field decides).
async fn hide_damage(state: &State, caller: &Caller, id: DocumentId, e: Problem) -> Problem {
    if e.reason != Reason::IntegrityError || caller.role() == Role::Admin {
        return e;
    }
    let vault = state.vault.clone();
    match blocking(move || vault.document_owner(id)).await {
        Ok(Some(owner)) if owner == caller.user.id => e,
        // Someone else's, or a record too damaged to name its owner: not visible.
        _ => Problem::new(Reason::NotFound),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, Problem> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    let bad = || Problem::detail(Reason::InvalidRequest, format!("{name} must be percent-encoded UTF-8"));
    let raw = value.to_str().map_err(|_| bad())?;
    percent_decode(raw).map(Some).ok_or_else(bad)
}

fn percent_decode(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn new_document(req: &HttpRequest, caller: &Caller) -> Result<NewDocument, Problem> {
    let headers = req.headers();
    let name = header_text(headers, NAME_HEADER)?.ok_or_else(|| {
        Problem::detail(
            Reason::InvalidRequest,
            "the X-Coffer-Name header (file name) is required",
        )
    })?;
    let content_type = match single(headers, header::CONTENT_TYPE.as_str())? {
        Some(v) => v
            .to_str()
            .map_err(|_| Problem::detail(Reason::InvalidRequest, "Content-Type must be ASCII"))?
            .to_owned(),
        None => "application/octet-stream".to_owned(),
    };
    let title = header_text(headers, TITLE_HEADER)?.unwrap_or_default();
    let tags = match single(headers, TAGS_HEADER)? {
        None => Vec::new(),
        Some(v) => {
            let bad = || {
                Problem::detail(
                    Reason::InvalidRequest,
                    "X-Coffer-Tags: comma-separated, percent-encoded UTF-8",
                )
            };
            v.to_str()
                .map_err(|_| bad())?
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| percent_decode(t).ok_or_else(bad))
                .collect::<Result<_, _>>()?
        }
    };
    let visibility = match header_text(headers, VISIBILITY_HEADER)? {
        None => Visibility::Private,
        Some(v) => v
            .parse()
            .map_err(|e: String| Problem::detail(Reason::InvalidRequest, e))?,
    };
    let new = NewDocument {
        owner: caller.user.id,
        name,
        content_type,
        title,
        tags,
        visibility,
    };
    // Refused here, before a slot or a thread is taken for it.
    new.validate()?;
    Ok(new)
}

enum UploadMsg {
    Data(Bytes),
    Finish,
}

fn too_large(limit: u64) -> Problem {
    Problem::detail(
        Reason::PayloadTooLarge,
        format!("documents are limited to {limit} bytes"),
    )
}

/// `POST /v1/documents`: the body is the content, streamed through an upload thread that
/// encrypts and stages it; nothing is visible (or kept) unless the whole body arrived
/// within the size limit.
pub async fn upload(
    who: Identified,
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    let (caller, body_check) = who.verify_streamed(&req, true)?;
    require_document_role(&caller)?;
    let new = new_document(&req, &caller)?;
    let limit = state.options.limits.max_upload_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let slot = state.transfers.begin(Transfer::Upload, caller.device.id)?;
    let activity = req.conn_data::<ConnActivity>().map(|c| c.activity.clone());
    let idle = std::time::Duration::from_secs(u64::from(state.options.limits.body_idle_timeout_secs));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<UploadMsg>(UPLOAD_QUEUE);
    let vault: Arc<Vault> = state.vault.clone();
    let origin = crate::http::auth::Origin::of(&req);
    let check_state = state.clone();
    let job = actix_web::rt::task::spawn_blocking(move || -> Result<Option<DocumentInfo>, Problem> {
        let _slot = slot; // held until the upload is finished or discarded
        let mut writer = vault.upload(new)?;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                UploadMsg::Data(b) => writer.write(&b)?,
                UploadMsg::Finish => {
                    let complete = writer.complete()?;
                    // The signature and the signed hash must cover these exact bytes;
                    // dropping `complete` on failure discards every staged chunk.
                    body_check.finish(&check_state, &origin, complete.sha256())?;
                    return Ok(Some(complete.publish()?));
                }
            }
        }
        // The connection side gave up: dropping the writer discards the staged chunks.
        writer.abort()?;
        Ok(None)
    });
    let mut total = 0u64;
    let mut failure = None;
    loop {
        let piece = match tokio::time::timeout(idle, payload.next()).await {
            Err(_) => {
                failure = Some(Problem::detail(
                    Reason::RequestTimeout,
                    format!("no body bytes arrived for {} s", idle.as_secs()),
                ));
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(p))) => {
                if let Some(a) = &activity {
                    a.touch();
                }
                p
            }
            Ok(Some(Err(e))) => {
                failure = Some(Problem::detail(
                    Reason::InvalidRequest,
                    format!("the upload was cut short: {e}"),
                ));
                break;
            }
        };
        total += piece.len() as u64;
        if total > limit {
            failure = Some(too_large(limit));
            break;
        }
        if tx.send(UploadMsg::Data(piece)).await.is_err() {
            break; // the upload thread failed: its error is reported below
        }
    }
    if failure.is_none() {
        let _ = tx.send(UploadMsg::Finish).await;
    }
    drop(tx);
    let outcome = job.await.map_err(|_| Problem::new(Reason::Internal))?;
    if let Some(problem) = failure {
        return Err(Problem { close: true, ..problem });
    }
    let info = match outcome {
        Ok(Some(info)) => info,
        Ok(None) => return Err(Problem::new(Reason::Internal)),
        // The body may be partly unread: do not let actix drain it on this connection.
        Err(e) => return Err(Problem { close: true, ..e }),
    };
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/documents/{}", info.id)))
        .insert_header((header::ETAG, etag(&info)))
        .json(DocumentJson::from(&info)))
}

/// Query of `GET /v1/documents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size (default and maximum from config).
    limit: Option<u32>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
    /// Only documents carrying this tag.
    tag: Option<String>,
    /// Only documents whose name starts with this.
    name_prefix: Option<String>,
}

#[derive(Serialize)]
struct ListJson {
    documents: Vec<DocumentJson>,
    next_cursor: Option<String>,
}

fn encode_cursor(d: &DocumentInfo) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}.{}", d.created.0, d.id))
}

fn decode_cursor(c: &str) -> Option<(Timestamp, DocumentId)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (t, id) = text.split_once('.')?;
    Some((Timestamp(t.parse().ok()?), id.parse().ok()?))
}

/// `GET /v1/documents`: the caller's visible documents, newest first, paginated.
pub async fn list(
    caller: Caller,
    query: web::Query<ListQuery>,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    require_document_role(&caller)?;
    let q = query.into_inner();
    let max = state.options.limits.max_page_size;
    let limit = q.limit.unwrap_or(max).clamp(1, max) as usize;
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| Problem::detail(Reason::InvalidRequest, "invalid cursor"))?),
    };
    let slot = state.transfers.begin(Transfer::Download, caller.device.id)?;
    let vault = state.vault.clone();
    let who = caller.clone();
    let page = blocking(move || {
        let _slot = slot;
        vault.list_page(after, limit, |d| {
            can_read(&who, d)
                && q.tag.as_ref().is_none_or(|t| d.meta.tags.contains(t))
                && q.name_prefix
                    .as_ref()
                    .is_none_or(|p| d.meta.name.starts_with(p.as_str()))
        })
    })
    .await?;
    if !page.damaged.is_empty() {
        tracing::warn!(
            "{} damaged document(s) left out of a listing; run `coffer key status`",
            page.damaged.len()
        );
    }
    let next_cursor = if page.more {
        page.documents.last().map(encode_cursor)
    } else {
        None
    };
    let page = page.documents;
    Ok(HttpResponse::Ok().json(ListJson {
        documents: page.iter().map(DocumentJson::from).collect(),
        next_cursor,
    }))
}

/// A single-range `Range` header: the range to serve, `Err` if unsatisfiable, or `None` to
/// serve the whole document (absent, malformed, multi-range, or a unit other than bytes:
/// RFC 9110 lets a server ignore those).
fn parse_range(value: &str, size: u64) -> Option<Result<Range<u64>, ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return Some(if n == 0 || size == 0 {
            Err(())
        } else {
            Ok(size.saturating_sub(n)..size)
        });
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        let last: u64 = b.parse().ok()?;
        if last < start {
            return None;
        }
        last.saturating_add(1).min(size)
    };
    Some(if start >= size { Err(()) } else { Ok(start..end) })
}

/// `attachment; filename*=UTF-8''<percent-encoded name>` (RFC 6266, RFC 8187).
fn attachment(name: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    format!(
        "attachment; filename*=UTF-8''{}",
        percent_encoding::utf8_percent_encode(name, KEEP)
    )
}

fn matches_etag(value: &str, tag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|v| v == "*" || v == tag || v.strip_prefix("W/") == Some(tag))
}

/// `GET` and `HEAD /v1/documents/{id}`: the content, streamed, with ranges and ETags.
pub async fn download(
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    require_document_role(&caller)?;
    let info = visible(&state, &caller, &id).await?;
    let tag = etag(&info);
    let headers = req.headers();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches_etag(v, &tag))
    {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, tag)).finish());
    }
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().ok() == Some(tag.as_str()));
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => parse_range(r, info.size),
        _ => None,
    };
    let (status, range) = match range {
        None => (StatusCode::OK, 0..info.size),
        Some(Ok(r)) => (StatusCode::PARTIAL_CONTENT, r),
        Some(Err(())) => {
            return Err(Problem {
                size: Some(info.size),
                ..Problem::detail(
                    Reason::RangeNotSatisfiable,
                    format!("the document has {} bytes", info.size),
                )
            });
        }
    };
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CONTENT_TYPE, info.meta.content_type.clone()))
        .insert_header((header::ETAG, tag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .insert_header(("x-content-type-options", "nosniff"))
        // Stored content is never rendered as a page of this origin: a member's HTML must
        // not run script with an admin's client certificate.
        .insert_header((header::CONTENT_DISPOSITION, attachment(&info.meta.name)))
        .insert_header(("content-security-policy", "sandbox; default-src 'none'"));
    if status == StatusCode::PARTIAL_CONTENT {
        res.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", range.start, range.end - 1, info.size),
        ));
    }
    let len = range.end - range.start;
    if req.method() == Method::HEAD {
        return Ok(res.body(SizedStream::new(
            len,
            futures_util::stream::empty::<Result<Bytes, std::io::Error>>(),
        )));
    }
    let slot = state.transfers.begin(Transfer::Download, caller.device.id)?;
    let activity = req.conn_data::<ConnActivity>().map(|c| c.activity.clone());
    let vault = state.vault.clone();
    let doc = info.id;
    let partial = status == StatusCode::PARTIAL_CONTENT;
    let reader = blocking(move || vault.read(doc, partial.then_some(range))).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(DOWNLOAD_QUEUE);
    // Decryption runs on a blocking thread while the connection sends the previous piece.
    actix_web::rt::task::spawn_blocking(move || {
        let _slot = slot; // held until the last piece is handed over or the client is gone
        for piece in reader {
            let item = piece.map(Bytes::from).map_err(|e| {
                tracing::error!("download of {doc} stopped: {e}");
                std::io::Error::other("integrity error")
            });
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break; // the client went away, or the stream is cut
            }
            // The connection took the previous piece: the client is reading.
            if let Some(a) = &activity {
                a.touch();
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(res.body(SizedStream::new(len, body)))
}

/// `GET /v1/documents/{id}/meta`.
pub async fn meta(caller: Caller, id: web::Path<String>, state: web::Data<State>) -> Result<HttpResponse, Problem> {
    require_document_role(&caller)?;
    let info = visible(&state, &caller, &id).await?;
    // No ETag: the content's tag does not change when the metadata does.
    Ok(HttpResponse::Ok().json(DocumentJson::from(&info)))
}

/// Body of `PATCH /v1/documents/{id}/meta`; absent fields stay as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaPatch {
    title: Option<String>,
    tags: Option<Vec<String>>,
    visibility: Option<String>,
}

/// `PATCH /v1/documents/{id}/meta`: owner and admins.
pub async fn patch_meta(
    who: Identified,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    let body = super::read_small_body(&state, payload).await?;
    let caller = who.verify(&req, Body::Bytes(&body), true)?;
    require_document_role(&caller)?;
    super::require_json(&req)?;
    let patch: MetaPatch = serde_json::from_slice(&body).map_err(|e| Problem {
        close: true,
        ..Problem::detail(Reason::InvalidRequest, format!("invalid JSON body: {e}"))
    })?;
    let visibility = match patch.visibility {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|e: String| Problem::detail(Reason::InvalidRequest, e))?,
        ),
    };
    let change = MetaChange {
        title: patch.title,
        tags: patch.tags,
        visibility,
    };
    let id: DocumentId = id.parse().map_err(|_| Problem::new(Reason::NotFound))?;
    let vault = state.vault.clone();
    let who = caller.clone();
    let result = blocking(move || {
        vault.update_meta(id, change, |d| {
            if !can_read(&who, d) {
                Err(VaultError::NotFound("document"))
            } else if !can_change(&who, d) {
                Err(VaultError::NotPermitted(NOT_PERMITTED))
            } else {
                Ok(())
            }
        })
    })
    .await;
    let info = match result {
        Ok(info) => info,
        Err(e) => return Err(hide_damage(&state, &caller, id, e).await),
    };
    Ok(HttpResponse::Ok().json(DocumentJson::from(&info)))
}

const NOT_PERMITTED: &str = "only the owner or an admin can change or delete this document";

/// `DELETE /v1/documents/{id}`: owner and admins.
pub async fn delete(caller: Caller, id: web::Path<String>, state: web::Data<State>) -> Result<HttpResponse, Problem> {
    require_document_role(&caller)?;
    let info = visible(&state, &caller, &id).await?;
    if !can_change(&caller, &info) {
        return Err(Problem::detail(Reason::NotPermitted, NOT_PERMITTED));
    }
    let vault = state.vault.clone();
    blocking(move || vault.delete(info.id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok(0..10)));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok(90..100)));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok(90..100)));
        assert_eq!(parse_range("bytes=-1000", 100), Some(Ok(0..100)));
        assert_eq!(parse_range("bytes=50-1000", 100), Some(Ok(50..100)));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-", 0), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=x-1", 100), None);
    }

    #[test]
    fn cursors_round_trip() {
        let c = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}.{}", 17, DocumentId(5)));
        assert_eq!(decode_cursor(&c), Some((Timestamp(17), DocumentId(5))));
        assert_eq!(decode_cursor("!!"), None);
    }
}
