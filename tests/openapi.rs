//! `docs/openapi.yaml` against the server it describes:
//!
//! - the routes registered in `src/http/routes/mod.rs` (read as text, so a resource added
//!   to the router without the spec fails here) are exactly the spec's paths and methods
//!   (`POST /v1/erp/{collection}/{key}` is the spec's `POST /v1/erp/{collection}/batch`);
//! - a live server, asked with a method no path implements (`OPTIONS`) by a valid device
//!   with a valid signature and session, answers `405` with an `Allow` header that names
//!   exactly the spec's methods for that path (the batch path and `{key}` are one resource
//!   to the server, so its `Allow` is the union of both);
//! - the problem types of `src/http/error.rs` (the arms of `Reason::slug` and
//!   `Reason::status`) are exactly the spec's `ProblemType` catalogue, each is answered by
//!   some operation under its own status, and the spec names no other;
//! - the document is OpenAPI 3.1.0, every operation has an `operationId` and responses,
//!   every response carries `X-Request-Id`, every path template parameter is declared, and
//!   every `$ref` resolves.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use common::client::unique_nonce;
use common::server::start_server;

const SPEC_YAML: &str = include_str!("../docs/openapi.yaml");
const ROUTES_RS: &str = include_str!("../src/http/routes/mod.rs");
const ERROR_RS: &str = include_str!("../src/http/error.rs");

/// The operation keys of an OpenAPI path item.
const OPERATIONS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// The other keys a path item may have (besides `x-` extensions).
const PATH_ITEM_KEYS: [&str; 5] = ["summary", "description", "parameters", "servers", "$ref"];
/// The router's resource whose `POST` is the batch.
const KEY_ROUTE: &str = "/v1/erp/{collection}/{key}";
/// The spec's own path for that `POST`.
const BATCH_PATH: &str = "/v1/erp/{collection}/batch";
/// Path-item extension naming the response to methods the path does not implement.
const NOT_ALLOWED_EXT: &str = "x-method-not-allowed";
/// Response extension listing the problem slugs a response can carry.
const PROBLEM_TYPES_EXT: &str = "x-problem-types";

// ---- reading the spec ----

fn spec() -> Value {
    let yaml: serde_norway::Value = serde_norway::from_str(SPEC_YAML).expect("docs/openapi.yaml is not valid YAML");
    to_json(yaml, "")
}

/// YAML to JSON, mapping keys as text (`200:` and `'200':` are the same response code).
fn to_json(value: serde_norway::Value, at: &str) -> Value {
    use serde_norway::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{at}/{i}")))
                .collect(),
        ),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        other => panic!("docs/openapi.yaml{at}: a mapping key that is not text: {other:?}"),
                    };
                    let value = to_json(v, &format!("{at}/{key}"));
                    (key, value)
                })
                .collect(),
        ),
        Y::Tagged(t) => panic!("docs/openapi.yaml{at}: YAML tag {} has no meaning in OpenAPI", t.tag),
    }
}

/// Follows `$ref`s (local JSON pointers) until a value that is not a reference.
fn resolve<'a>(spec: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                value = r
                    .strip_prefix('#')
                    .and_then(|p| spec.pointer(p))
                    .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
            }
            None => return value,
        }
    }
    panic!("a $ref chain longer than 16 (a cycle?)")
}

fn paths(spec: &Value) -> &serde_json::Map<String, Value> {
    spec["paths"].as_object().expect("paths is an object")
}

/// The operations of a path item: (upper-case method, operation).
fn operations(item: &Value) -> Vec<(String, &Value)> {
    OPERATIONS
        .iter()
        .filter_map(|m| item.get(*m).map(|op| (m.to_ascii_uppercase(), op)))
        .collect()
}

/// (path, METHOD) of every operation in the spec.
fn spec_routes(spec: &Value) -> BTreeSet<(String, String)> {
    paths(spec)
        .iter()
        .flat_map(|(path, item)| operations(item).into_iter().map(move |(m, _)| (path.clone(), m)))
        .collect()
}

// ---- reading the router ----

/// Every `web::resource("…")` of `src/http/routes/mod.rs` with the methods of its
/// `.route(web::<method>()…)` lines, and any `.route("…", web::<method>()…)` registered
/// directly. Anything it cannot read fails, rather than being skipped.
fn router_routes() -> BTreeMap<String, BTreeSet<String>> {
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, raw) in ROUTES_RS.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with("//") {
            continue;
        }
        let at = || format!("src/http/routes/mod.rs:{}: {line}", n + 1);
        for unsupported in [
            "web::scope(",
            "#[get(",
            "#[post(",
            "#[put(",
            "#[delete(",
            "#[patch(",
            "#[route(",
        ] {
            assert!(
                !line.contains(unsupported),
                "{}: `{unsupported}` is not understood by tests/openapi.rs; teach it, so the route is checked",
                at()
            );
        }
        for piece in line.split("web::resource(\"").skip(1) {
            let path = piece.split('"').next().unwrap_or_default().to_owned();
            routes.entry(path.clone()).or_default();
            current = Some(path);
        }
        // `cfg.route("/path", web::get().to(...))`: a resource of its own.
        for piece in line.split(".route(\"").skip(1) {
            let (path, rest) = piece
                .split_once('"')
                .unwrap_or_else(|| panic!("{}: unreadable route", at()));
            let method = rest
                .split_once("web::")
                .and_then(|(_, m)| m.split_once("()"))
                .map(|(m, _)| m)
                .unwrap_or_else(|| panic!("{}: no web::<method>() in the route", at()));
            routes
                .entry(path.to_owned())
                .or_default()
                .insert(method_name(method, &at()));
        }
        for piece in line.split(".route(web::").skip(1) {
            let method = piece
                .split_once("()")
                .map(|(m, _)| m)
                .unwrap_or_else(|| panic!("{}: unreadable route", at()));
            let path = current
                .clone()
                .unwrap_or_else(|| panic!("{}: a route before any web::resource", at()));
            routes.entry(path).or_default().insert(method_name(method, &at()));
        }
    }
    assert!(
        routes.len() >= 5,
        "read only {} resources from src/http/routes/mod.rs: has the router's layout changed?",
        routes.len()
    );
    routes
}

fn method_name(method: &str, at: &str) -> String {
    assert!(
        OPERATIONS.contains(&method),
        "{at}: `web::{method}()` is not an HTTP method tests/openapi.rs knows"
    );
    method.to_ascii_uppercase()
}

/// The router's routes as spec paths: `POST` on the record route is the batch path.
fn router_routes_as_spec() -> BTreeSet<(String, String)> {
    router_routes()
        .into_iter()
        .flat_map(|(path, methods)| {
            methods.into_iter().map(move |m| {
                if path == KEY_ROUTE && m == "POST" {
                    (BATCH_PATH.to_owned(), m)
                } else {
                    (path.clone(), m)
                }
            })
        })
        .collect()
}

/// The router resource a spec path belongs to.
fn resource_of(spec_path: &str) -> &str {
    if spec_path == BATCH_PATH { KEY_ROUTE } else { spec_path }
}

// ---- reading the problem types ----

/// The text of the block of `pub fn NAME(` in `src`, from its `{` to the matching `}`.
fn fn_body<'a>(src: &'a str, name: &str) -> &'a str {
    let start = src
        .find(&format!("pub fn {name}("))
        .unwrap_or_else(|| panic!("no `pub fn {name}(` in src/http/error.rs"));
    let open = start + src[start..].find('{').expect("a function body");
    let mut depth = 0usize;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &src[open..=open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces in `fn {name}`")
}

/// The arms of a `match self` in `body`: each variant with the right-hand side of its arm.
fn match_arms(body: &str) -> Vec<(String, String)> {
    let mut arms = Vec::new();
    for arm in body.split(',') {
        let Some((lhs, rhs)) = arm.split_once("=>") else {
            continue;
        };
        let lhs = lhs.rsplit('{').next().unwrap_or(lhs);
        for variant in lhs.split('|') {
            let variant = variant.trim();
            let name = variant
                .strip_prefix("Self::")
                .unwrap_or_else(|| panic!("unreadable match arm {variant:?} in src/http/error.rs"));
            arms.push((name.to_owned(), rhs.trim().to_owned()));
        }
    }
    arms
}

/// `StatusCode::NAME` → its number (the constant names are the canonical reasons).
fn status_number(constant: &str) -> u16 {
    let name = constant
        .strip_prefix("StatusCode::")
        .unwrap_or_else(|| panic!("unreadable status {constant:?} in src/http/error.rs"));
    (100..600)
        .filter_map(|n| actix_web::http::StatusCode::from_u16(n).ok())
        .find(|s| {
            s.canonical_reason()
                .is_some_and(|r| r.to_ascii_uppercase().replace([' ', '-'], "_") == name)
        })
        .map(|s| s.as_u16())
        .unwrap_or_else(|| panic!("unknown status constant {constant}"))
}

/// Every problem slug of `src/http/error.rs` with its status.
fn problem_slugs() -> BTreeMap<String, u16> {
    let slugs: BTreeMap<String, String> = match_arms(fn_body(ERROR_RS, "slug"))
        .into_iter()
        .map(|(variant, rhs)| {
            let slug = rhs
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or_else(|| panic!("unreadable slug {rhs:?} of {variant}"));
            (variant, slug.to_owned())
        })
        .collect();
    let statuses: BTreeMap<String, u16> = match_arms(fn_body(ERROR_RS, "status"))
        .into_iter()
        .map(|(variant, rhs)| (variant, status_number(&rhs)))
        .collect();
    assert_eq!(
        slugs.keys().collect::<Vec<_>>(),
        statuses.keys().collect::<Vec<_>>(),
        "Reason::slug and Reason::status name different variants"
    );
    assert!(
        slugs.len() >= 30,
        "read only {} slugs from src/http/error.rs: has its layout changed?",
        slugs.len()
    );
    let out: BTreeMap<String, u16> = slugs
        .iter()
        .map(|(variant, slug)| (slug.clone(), statuses[variant]))
        .collect();
    assert_eq!(out.len(), slugs.len(), "two reasons share a slug");
    // The text read is the code that runs.
    use coffer::http::error::Reason;
    for reason in [
        Reason::ClientCertificateRequired,
        Reason::Replayed,
        Reason::MethodNotAllowed,
        Reason::UpstreamBusy,
        Reason::Internal,
    ] {
        assert_eq!(
            out.get(reason.slug()),
            Some(&reason.status().as_u16()),
            "{reason:?} as read from src/http/error.rs"
        );
    }
    out
}

/// Every `x-problem-types` of the spec: (where, status of the response, slugs).
fn spec_problem_lists(spec: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut add = |at: String, status: &str, response: &Value| {
        let response = resolve(spec, response);
        if let Some(list) = response.get(PROBLEM_TYPES_EXT) {
            let slugs = list
                .as_array()
                .unwrap_or_else(|| panic!("{at}: {PROBLEM_TYPES_EXT} is not a list"))
                .iter()
                .map(|s| {
                    s.as_str()
                        .unwrap_or_else(|| panic!("{at}: {PROBLEM_TYPES_EXT} holds a non-string"))
                        .to_owned()
                })
                .collect();
            out.push((at, status.to_owned(), slugs));
        }
    };
    for (path, item) in paths(spec) {
        if let Some(r) = item.get(NOT_ALLOWED_EXT) {
            add(format!("{path} {NOT_ALLOWED_EXT}"), "405", r);
        }
        for (method, op) in operations(item) {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                add(format!("{method} {path} {status}"), status, response);
            }
        }
    }
    out
}

/// Every string in the spec (values, not keys), with where it is.
fn strings(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((at.to_owned(), s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                strings(v, &format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                strings(v, &format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// Every `x-problem-types` list anywhere in the spec, with where it is.
fn problem_lists_anywhere(value: &Value, at: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    match value {
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                out.extend(problem_lists_anywhere(v, &format!("{at}/{i}")));
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{at}/{k}");
                if k == PROBLEM_TYPES_EXT {
                    let slugs = v
                        .as_array()
                        .unwrap_or_else(|| panic!("{here}: not a list"))
                        .iter()
                        .map(|s| s.as_str().unwrap_or_else(|| panic!("{here}: a non-string")).to_owned())
                        .collect();
                    out.push((here, slugs));
                } else {
                    out.extend(problem_lists_anywhere(v, &here));
                }
            }
        }
        _ => {}
    }
    out
}

// ---- the tests ----

#[test]
fn spec_is_openapi_3_1_with_ids_responses_and_resolving_refs() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0", "docs/openapi.yaml must be OpenAPI 3.1.0");
    assert!(spec["info"]["title"].is_string() && spec["info"]["version"].is_string());
    assert!(!paths(&spec).is_empty(), "no paths");

    // Every $ref is local and resolves.
    let mut all = Vec::new();
    strings(&spec, "", &mut all);
    let refs: Vec<_> = all.iter().filter(|(at, _)| at.ends_with("/$ref")).collect();
    assert!(refs.len() > 50, "expected the spec to use $ref, found {}", refs.len());
    let mut broken = Vec::new();
    for (at, r) in &refs {
        if r.strip_prefix('#').and_then(|p| spec.pointer(p)).is_none() {
            broken.push(format!("{at}: {r}"));
        }
    }
    assert!(broken.is_empty(), "$refs that do not resolve:\n{}", broken.join("\n"));

    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, item) in paths(&spec) {
        if !path.starts_with("/v1/") {
            problems.push(format!("{path}: every path is under /v1/"));
        }
        for key in item.as_object().expect("path item").keys() {
            let known = OPERATIONS.contains(&key.as_str()) || PATH_ITEM_KEYS.contains(&key.as_str());
            if !known && !key.starts_with("x-") {
                problems.push(format!("{path}: unknown path item key {key}"));
            }
        }
        if item.get(NOT_ALLOWED_EXT).is_none() {
            problems.push(format!(
                "{path}: no {NOT_ALLOWED_EXT} (every path answers other methods with 405)"
            ));
        }
        let ops = operations(item);
        if ops.is_empty() {
            problems.push(format!("{path}: no operation"));
        }
        let template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let path_level: Vec<&Value> = item["parameters"].as_array().into_iter().flatten().collect();
        for (method, op) in ops {
            let at = format!("{method} {path}");
            match op["operationId"].as_str() {
                Some(id) if !id.is_empty() => {
                    if !ids.insert(id.to_owned()) {
                        problems.push(format!("{at}: operationId {id} is used twice"));
                    }
                }
                _ => problems.push(format!("{at}: no operationId")),
            }
            let responses = op["responses"].as_object();
            if responses.is_none_or(serde_json::Map::is_empty) {
                problems.push(format!("{at}: no responses"));
            }
            for (status, response) in responses.into_iter().flatten() {
                let ok_code = status == "default"
                    || (status.len() == 3 && status.chars().all(|c| c.is_ascii_digit() || c == 'X'));
                if !ok_code {
                    problems.push(format!("{at}: response key {status}"));
                }
                let response = resolve(&spec, response);
                if !response["description"].is_string() {
                    problems.push(format!("{at} {status}: no description"));
                }
                if response["headers"].get("X-Request-Id").is_none() {
                    problems.push(format!("{at} {status}: no X-Request-Id header"));
                }
            }
            // Path template parameters: declared, required, and nothing else `in: path`.
            let declared: BTreeMap<String, &Value> = path_level
                .iter()
                .copied()
                .chain(op["parameters"].as_array().into_iter().flatten())
                .map(|p| resolve(&spec, p))
                .filter(|p| p["in"] == "path")
                .map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p))
                .collect();
            for name in &template {
                match declared.get(*name) {
                    Some(p) if p["required"] == true => {}
                    Some(_) => problems.push(format!("{at}: path parameter {name} is not required: true")),
                    None => problems.push(format!("{at}: path parameter {name} is not declared")),
                }
            }
            for name in declared.keys() {
                if !template.contains(name.as_str()) {
                    problems.push(format!("{at}: path parameter {name} is not in the path"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "docs/openapi.yaml:\n{}", problems.join("\n"));
}

#[test]
fn spec_paths_and_methods_are_the_routers() {
    let spec = spec();
    let documented = spec_routes(&spec);
    let routed = router_routes_as_spec();
    let missing: Vec<_> = routed
        .difference(&documented)
        .map(|(p, m)| format!("  {m} {p}"))
        .collect();
    let extra: Vec<_> = documented
        .difference(&routed)
        .map(|(p, m)| format!("  {m} {p}"))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "src/http/routes/mod.rs and docs/openapi.yaml differ\n\
         routed but not in the spec:\n{}\n\
         in the spec but not routed:\n{}",
        missing.join("\n"),
        extra.join("\n")
    );
}

#[test]
fn spec_problem_types_are_the_servers() {
    let spec = spec();
    let known = problem_slugs();
    let prefix = coffer::http::error::PROBLEM_TYPE_PREFIX;
    let mut problems = Vec::new();

    // The catalogue: exactly the server's slugs.
    let catalogue: BTreeSet<String> = spec["components"]["schemas"]["ProblemType"]["enum"]
        .as_array()
        .expect("components.schemas.ProblemType.enum")
        .iter()
        .map(|v| {
            let t = v.as_str().expect("a problem type");
            t.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("ProblemType {t} does not start with {prefix}"))
                .to_owned()
        })
        .collect();
    let server: BTreeSet<String> = known.keys().cloned().collect();
    for slug in server.difference(&catalogue) {
        problems.push(format!("{slug}: in src/http/error.rs, not in ProblemType"));
    }
    for slug in catalogue.difference(&server) {
        problems.push(format!("{slug}: in ProblemType, not in src/http/error.rs"));
    }

    // Every response's list: known slugs under their own status, as problem+json.
    let mut answered = BTreeSet::new();
    for (at, status, slugs) in spec_problem_lists(&spec) {
        for slug in slugs {
            match known.get(&slug) {
                None => problems.push(format!("{at}: unknown problem type {slug}")),
                Some(s) if s.to_string() != status => {
                    problems.push(format!("{at}: {slug} is a {s}, listed under {status}"));
                }
                Some(_) => {}
            }
            answered.insert(slug);
        }
    }
    for slug in server.difference(&answered) {
        problems.push(format!(
            "{slug}: no operation's response lists it in {PROBLEM_TYPES_EXT}"
        ));
    }
    for (path, item) in paths(&spec) {
        let not_allowed = item.get(NOT_ALLOWED_EXT).into_iter().map(|r| ("405", r));
        for (method, op) in operations(item) {
            for (status, response) in op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(s, r)| (s.as_str(), r))
                .chain(not_allowed.clone())
            {
                let response = resolve(&spec, response);
                let is_error = status.starts_with('4') || status.starts_with('5');
                let listed = response.get(PROBLEM_TYPES_EXT).is_some();
                if is_error != listed {
                    problems.push(format!(
                        "{method} {path} {status}: an error response lists its {PROBLEM_TYPES_EXT}, and only those"
                    ));
                }
                if listed {
                    let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                    if schema != "#/components/schemas/Problem" {
                        problems.push(format!(
                            "{method} {path} {status}: not application/problem+json with the Problem schema"
                        ));
                    }
                }
            }
        }
    }

    // No other problem type named anywhere: in any `x-problem-types` (also a schema's, like
    // the multi-get entries'), nor as a type in descriptions and examples.
    for (at, slugs) in problem_lists_anywhere(&spec, "") {
        for slug in slugs {
            if !known.contains_key(&slug) {
                problems.push(format!("{at}: unknown problem type {slug}"));
            }
        }
    }
    let mut all = Vec::new();
    strings(&spec, "", &mut all);
    for (at, text) in all {
        for piece in text.split(prefix).skip(1) {
            let slug: String = piece
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            // The prefix alone (or before a placeholder such as `<slug>`) names none.
            if !slug.is_empty() && !known.contains_key(&slug) {
                problems.push(format!("{at}: names unknown problem type {prefix}{slug}"));
            }
        }
    }
    assert!(problems.is_empty(), "problem types:\n{}", problems.join("\n"));
}

/// The spec path with its parameters filled in with plausible values.
fn fill(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{id}" => "0123456789abcdef0123456789abcdef",
            "{collection}" => "customers",
            "{key}" => "C-1",
            s if s.starts_with('{') => panic!("{path}: no test value for {s}; add one to fill()"),
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn allow_set(allow: &str) -> BTreeSet<String> {
    allow
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn live_server_allows_exactly_the_spec_methods() {
    let spec = spec();
    let problem_schema = &spec["components"]["schemas"]["Problem"];
    let properties: BTreeSet<&str> = problem_schema["properties"]
        .as_object()
        .expect("Problem properties")
        .keys()
        .map(String::as_str)
        .collect();
    let request_id = |res: &common::client::Response, what: &str| {
        let id = res
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id"));
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{what}: X-Request-Id {id:?} is not 16 hex digits"
        );
    };

    // The methods of each router resource, as the spec has them.
    let mut by_resource: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in paths(&spec) {
        let methods = by_resource.entry(resource_of(path)).or_default();
        methods.extend(operations(item).into_iter().map(|(m, _)| m));
    }

    let server = start_server();
    let anna = server.add_member("anna");
    let device = server.issue_device(anna.id);
    assert!(device.token.is_some(), "the member has a session");
    let mut conn = server.connect(&device);
    let mut problems = Vec::new();
    for path in paths(&spec).keys() {
        let expected = &by_resource[resource_of(path)];
        let method = ["OPTIONS", "TRACE"]
            .into_iter()
            .find(|m| !expected.contains(*m))
            .expect("a method the path does not implement");
        let target = fill(path);
        let what = format!("{method} {target} (spec path {path})");
        let res = conn
            .request(method, &target, &[], b"")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        request_id(&res, &what);
        if res.status != 405 {
            problems.push(format!(
                "{what}: expected 405 with Allow, got {} {} (a path the server does not route?)",
                res.status,
                String::from_utf8_lossy(&res.body)
            ));
            continue;
        }
        assert_eq!(res.problem(), "method-not-allowed", "{what}");
        let body = res.json();
        for key in body.as_object().expect("a problem object").keys() {
            assert!(
                properties.contains(key.as_str()),
                "{what}: problem field {key} is not in the Problem schema"
            );
        }
        for required in problem_schema["required"].as_array().expect("Problem required") {
            let required = required.as_str().expect("a field name");
            assert!(body.get(required).is_some(), "{what}: problem without {required}");
        }
        let Some(allow) = res.header("allow") else {
            problems.push(format!("{what}: 405 without Allow"));
            continue;
        };
        let allowed = allow_set(allow);
        if &allowed != expected {
            problems.push(format!(
                "{what}: the server allows {allowed:?} (Allow: {allow}), the spec describes {expected:?}"
            ));
        }
    }

    // `POST` to a record that is not `batch` (as an integration, the only role that gets
    // that far) is a 405 whose Allow is exactly the spec's record methods.
    let erp = server.add_integration("erp-sync");
    let integration = server.issue_device(erp.id);
    let mut conn = server.connect(&integration);
    let target = fill(KEY_ROUTE);
    let nonce = unique_nonce();
    let res = conn
        .request(
            "POST",
            &target,
            &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
            b"{}",
        )
        .expect("POST to a record");
    request_id(&res, "POST to a record");
    assert_eq!(res.status, 405, "POST {target}: {}", String::from_utf8_lossy(&res.body));
    let record_methods: BTreeSet<String> = operations(&paths(&spec)[KEY_ROUTE])
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let allowed = allow_set(res.header("allow").expect("Allow on the 405"));
    if allowed != record_methods {
        problems.push(format!(
            "POST {target}: the server allows {allowed:?}, the spec's {KEY_ROUTE} has {record_methods:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/openapi.yaml against a live server:\n{}",
        problems.join("\n")
    );
}
