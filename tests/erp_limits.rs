//! What bounds the work a caller can make the ERP cache do: waiting upstream calls per
//! device and overall (`503 upstream-busy` rather than an unbounded queue), the budget of
//! a multi-get answer (records past it are not opened), and credentials that would travel
//! in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Barrier;
use std::time::Duration;

use coffer::config::Config;
use coffer::erp::{Erp, MAX_MISSES_PER_DEVICE};
use coffer::http::ServerOptions;
use common::client::{Response, unique_nonce};
use common::erp::{Behaviour, FakeErp};
use common::server::{TestServer, start_server_with, test_options};

fn server_with(toml: &str) -> (TestServer, Erp) {
    let config = Config::from_toml(toml, "limits.toml").expect("parses");
    config.validate().expect("valid");
    let erp = Erp::from_config(&config.erp).expect("builds");
    let server = start_server_with(ServerOptions {
        erp: erp.clone(),
        ..test_options()
    });
    (server, erp)
}

fn collection_toml(upstream: &FakeErp, extra: &str) -> String {
    format!(
        "[erp]\n{extra}\n[erp.collections.customers]\nread_roles = [\"member\"]\nupstream = \"{}\"\nupstream_timeout = \"10s\"\n",
        upstream.url_template()
    )
}

/// GETs every key at once, each on its own connection of the same device.
fn read_all_at_once(server: &TestServer, device: &common::server::Identity, keys: &[String]) -> Vec<Response> {
    let barrier = Barrier::new(keys.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    let path = format!("/v1/erp/customers/{k}");
                    let mut conn = server.connect(device);
                    barrier.wait();
                    // On a machine under load the server may have dropped a connection
                    // whose handshake it could not finish in time: one fresh try.
                    conn.request("GET", &path, &[], b"")
                        .or_else(|_| server.connect(device).request("GET", &path, &[], b""))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn one_device_waits_on_at_most_eight_upstream_calls_others_are_not_held_up() {
    let upstream = FakeErp::start("/api/customers/");
    let n = MAX_MISSES_PER_DEVICE as usize + 3;
    let keys: Vec<String> = (0..n).map(|i| format!("C-{i}")).collect();
    for k in &keys {
        upstream.put_json(k, &serde_json::json!({ "id": k }));
    }
    upstream.put_json("other", &serde_json::json!({ "id": "other" }));
    // Long enough that every request has arrived while the first calls still run.
    upstream.set(Behaviour::Serve {
        delay: Duration::from_secs(3),
    });
    let (server, _erp) = server_with(&collection_toml(&upstream, ""));
    let greedy = server.issue_device(server.add_member("greedy").id);
    let patient = server.issue_device(server.add_member("patient").id);
    let (responses, other) = std::thread::scope(|s| {
        let all = s.spawn(|| read_all_at_once(&server, &greedy, &keys));
        // Another device, while the first has all its turns in use.
        std::thread::sleep(Duration::from_millis(500));
        let mut conn = server.connect(&patient);
        let other = conn.request("GET", "/v1/erp/customers/other", &[], b"").unwrap();
        (all.join().unwrap(), other)
    });
    assert_eq!(other.status, 200, "{}", String::from_utf8_lossy(&other.body));
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();
    assert!(ok <= MAX_MISSES_PER_DEVICE as usize, "{ok} served");
    assert_eq!(ok + busy.len(), n, "every request is either served or told to retry");
    assert!(!busy.is_empty());
    for r in busy {
        assert_eq!(r.problem(), "upstream-busy");
        assert!(r.header("retry-after").is_some());
    }
    // The keys refused were never asked of the ERP.
    assert_eq!(upstream.total_calls(), ok + 1);
}

#[test]
fn calls_queue_for_a_turn_no_longer_than_the_upstream_timeout() {
    let upstream = FakeErp::start("/api/customers/");
    let keys: Vec<String> = (0..4).map(|i| format!("Q-{i}")).collect();
    for k in &keys {
        upstream.put_json(k, &serde_json::json!({ "id": k }));
    }
    // One call at a time, each taking most of the timeout: the later keys' turns would
    // come only after their callers' patience.
    upstream.set(Behaviour::Serve {
        delay: Duration::from_millis(800),
    });
    let toml = format!(
        "[erp]\nmax_upstream_fetches = 1\n[erp.collections.customers]\nread_roles = [\"member\"]\nupstream = \"{}\"\nupstream_timeout = \"1s\"\n",
        upstream.url_template()
    );
    let (server, erp) = server_with(&toml);
    let member = server.issue_device(server.add_member("mia").id);
    let responses = read_all_at_once(&server, &member, &keys);
    let busy = responses.iter().filter(|r| r.status == 503).count();
    assert!(
        busy >= 1,
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in responses.iter().filter(|r| r.status != 200) {
        assert!(
            ["upstream-busy", "upstream-timeout"].contains(&r.problem().as_str()),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Calls that never got a turn were not made, now or later.
    std::thread::sleep(Duration::from_millis(1500));
    let counters = erp.counters("customers").unwrap();
    assert_eq!(counters.upstream_calls as usize, upstream.total_calls());
    assert!(upstream.total_calls() <= keys.len() - busy, "{counters:?}");
}

#[test]
fn a_multi_get_opens_no_record_past_its_answer_budget() {
    let (server, _erp) =
        server_with("[erp]\nmax_record_bytes = 8388608\n[erp.collections.prices]\nread_roles = [\"member\"]\n");
    let integration = {
        let mut id = server.issue_device(server.add_integration("sync").id);
        id.token = None;
        id
    };
    let member = server.issue_device(server.add_member("mia").id);
    let big = format!("\"{}\"", "x".repeat(6 * 1024 * 1024));
    for k in ["a", "b", "c"] {
        let mut conn = server.connect(&integration);
        let nonce = unique_nonce();
        let r = conn
            .request(
                "PUT",
                &format!("/v1/erp/prices/{k}"),
                &[("content-type", "application/json"), ("x-coffer-nonce", &nonce)],
                big.as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let mut conn = server.connect(&member);
    let r = conn
        .request("GET", "/v1/erp/prices?key=a&key=b&key=c", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    let records = r.json()["records"].as_array().unwrap().clone();
    let statuses: Vec<u64> = records.iter().map(|e| e["status"].as_u64().unwrap()).collect();
    // 16 MiB of values per answer: two 6 MiB records, the third is to be read alone.
    assert_eq!(statuses, vec![200, 200, 413]);
    assert_eq!(records[2]["problem"], "urn:coffer:problem:payload-too-large");
    assert!(records[2].get("value").is_none());
    let alone = conn.request("GET", "/v1/erp/prices/c", &[], b"").unwrap();
    assert_eq!(alone.status, 200);
    assert_eq!(alone.body.len(), big.len());
}

#[test]
fn a_bearer_token_is_not_sent_in_clear_to_another_machine() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token\n").unwrap();
    let toml = |url: &str| {
        format!(
            "[erp.collections.c]\nread_roles = [\"member\"]\nupstream = \"{url}\"\nupstream_bearer_token_file = \"{}\"\n",
            token.display()
        )
    };
    let config = Config::from_toml(&toml("http://erp.internal/api/{key}"), "x").unwrap();
    let err = Erp::from_config(&config.erp).unwrap_err().to_string();
    assert!(
        err.contains("https://") && err.contains("erp.collections.c.upstream"),
        "{err}"
    );
    assert!(!err.contains("secret-token"), "{err}");
    // To this machine (an ERP agent or tunnel on loopback) it is allowed.
    let config = Config::from_toml(&toml("http://127.0.0.1:8080/api/{key}"), "x").unwrap();
    assert!(Erp::from_config(&config.erp).is_ok());
}

#[test]
fn a_hanging_erp_cannot_stretch_a_multi_get_past_the_upstream_timeout() {
    let upstream = FakeErp::start("/api/customers/");
    let keys: Vec<String> = (0..40).map(|i| format!("K-{i}")).collect();
    for k in &keys {
        upstream.put_json(k, &serde_json::json!({ "id": k }));
    }
    let toml = format!(
        "[erp.collections.customers]\nread_roles = [\"member\"]\nttl = \"1s\"\nstale_if_error = \"1h\"\nupstream = \"{}\"\nupstream_timeout = \"2s\"\n",
        upstream.url_template()
    );
    let (server, _erp) = server_with(&toml);
    let member = server.issue_device(server.add_member("mia").id);
    let path = format!(
        "/v1/erp/customers?{}",
        keys.iter().map(|k| format!("key={k}")).collect::<Vec<_>>().join("&")
    );
    let mut conn = server.connect(&member);
    let first = conn.request("GET", &path, &[], b"").unwrap();
    assert_eq!(first.status, 200);
    assert!(
        first.json()["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 200)
    );
    assert_eq!(upstream.total_calls(), 40);
    // Every copy expires; the ERP now hangs far longer than the timeout.
    std::thread::sleep(Duration::from_millis(1200));
    upstream.set(Behaviour::Serve {
        delay: Duration::from_secs(30),
    });
    let again = conn.request("GET", &path, &[], b"").unwrap();
    assert_eq!(again.status, 200);
    let records = again.json()["records"].as_array().unwrap().clone();
    for r in &records {
        assert_eq!(r["status"], 200, "{r}");
        let status = r["cache_status"].as_str().unwrap();
        assert!(
            status.contains("fwd-status=504") && status.contains("detail=stale-if-error"),
            "{status}"
        );
    }
    // Only the first keys' calls were started (four at a time, until the timeout);
    // the rest were answered from the cache without asking.
    let asked = upstream.total_calls() - 40;
    assert!((1..=8).contains(&asked), "{asked} upstream calls for one multi-get");
}
