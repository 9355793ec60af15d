//! A stand-in for the company ERP: a plain HTTP/1.1 server on `127.0.0.1:0` that serves
//! `GET {prefix}{key}` with a JSON body per key from a shared map, counts the calls per
//! key, records what each request looked like (raw target, `Authorization`), and can be
//! switched at run time to be slow, to fail, to redirect, to hang up, or to be down
//! (connection refused).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the fake ERP answers the requests that reach it.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers from the map (200 with the stored body, 404 for an unknown key) after
    /// waiting `delay`.
    Serve {
        /// Wait before answering (longer than coffer's `upstream_timeout`: a slow ERP).
        delay: Duration,
    },
    /// Answers every request with this status and a small JSON body.
    Status(u16),
    /// Answers every request with `302 Found` and this `Location`.
    Redirect(String),
    /// Accepts the connection, reads the request and closes without answering.
    Hangup,
    /// Answers from the map, but sends the body one byte per `interval` (each byte well
    /// inside any per-read timeout, the whole body past a short overall one).
    Drip {
        /// Pause before each byte of the body.
        interval: Duration,
    },
}

/// One request as the fake ERP received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Request method.
    pub method: String,
    /// The request target exactly as sent (still percent-encoded).
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The percent-decoded key, when the target is `{prefix}{one clean segment}`.
    pub key: Option<String>,
}

struct Shared {
    prefix: String,
    records: Mutex<HashMap<String, Vec<u8>>>,
    behaviour: Mutex<Behaviour>,
    calls: Mutex<HashMap<String, u64>>,
    seen: Mutex<Vec<SeenRequest>>,
}

/// A running fake ERP. Dropping it stops accepting connections.
pub struct FakeErp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<Mutex<Option<TcpListener>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler thread must not hide the state from the test.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeErp {
    /// Starts a fake ERP serving `GET {prefix}{key}` (e.g. `/api/customers/`).
    pub fn start(prefix: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake ERP");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("fake ERP address");
        let shared = Arc::new(Shared {
            prefix: prefix.to_owned(),
            records: Mutex::new(HashMap::new()),
            behaviour: Mutex::new(Behaviour::Serve { delay: Duration::ZERO }),
            calls: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
        });
        let listener = Arc::new(Mutex::new(Some(listener)));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (listener, stop, shared) = (listener.clone(), stop.clone(), shared.clone());
            std::thread::spawn(move || accept_loop(&listener, &stop, &shared))
        };
        Self {
            addr,
            shared,
            listener,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `upstream` template for coffer: `http://127.0.0.1:PORT{prefix}{key}`.
    pub fn url_template(&self) -> String {
        format!("http://{}{}{{key}}", self.addr, self.shared.prefix)
    }

    /// An absolute URL on this server.
    pub fn url(&self, target: &str) -> String {
        format!("http://{}{target}", self.addr)
    }

    /// Serves `body` (raw bytes, normally JSON) for `key`.
    pub fn put_raw(&self, key: &str, body: impl Into<Vec<u8>>) {
        lock(&self.shared.records).insert(key.to_owned(), body.into());
    }

    /// Serves `value` as JSON for `key`.
    pub fn put_json(&self, key: &str, value: &serde_json::Value) {
        self.put_raw(key, serde_json::to_vec(value).expect("serialise JSON"));
    }

    /// Forgets `key` (it answers 404 from now on).
    pub fn remove(&self, key: &str) {
        lock(&self.shared.records).remove(key);
    }

    /// Changes how requests are answered from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// Serves from the map after `delay` per request.
    pub fn set_delay(&self, delay: Duration) {
        self.set(Behaviour::Serve { delay });
    }

    /// Closes the listening socket: from now on connections are refused. (There is no
    /// way back up: the port may be another listener's by then.)
    pub fn go_down(&self) {
        lock(&self.listener).take();
    }

    /// Requests that reached the fake ERP for the decoded `key`.
    pub fn calls(&self, key: &str) -> u64 {
        lock(&self.shared.calls).get(key).copied().unwrap_or(0)
    }

    /// Every request that reached the fake ERP, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }

    /// Number of requests that reached the fake ERP.
    pub fn total_calls(&self) -> usize {
        lock(&self.shared.seen).len()
    }
}

impl Drop for FakeErp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &Mutex<Option<TcpListener>>, stop: &AtomicBool, shared: &Arc<Shared>) {
    while !stop.load(Ordering::SeqCst) {
        let accepted = match lock(listener).as_ref() {
            Some(l) => l.accept().ok(),
            None => None,
        };
        match accepted {
            Some((stream, _)) => {
                let shared = shared.clone();
                // Detached: a slow answer may outlive the test that asked for it.
                std::thread::spawn(move || handle(stream, &shared));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The key a target names, if it is `prefix` followed by one clean path segment.
fn key_of(prefix: &str, target: &str) -> Option<String> {
    let segment = target.strip_prefix(prefix)?;
    if segment.is_empty() || segment.contains(['/', '?', '#']) {
        return None;
    }
    let key = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?
        .into_owned();
    (key != "." && key != "..").then_some(key)
}

fn handle(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let key = key_of(&shared.prefix, &target);
    {
        let counted = key.clone().unwrap_or_else(|| target.clone());
        *lock(&shared.calls).entry(counted).or_insert(0) += 1;
    }
    lock(&shared.seen).push(SeenRequest {
        method,
        target,
        authorization,
        key: key.clone(),
    });
    let behaviour = lock(&shared.behaviour).clone();
    let mut stream = stream;
    match behaviour {
        Behaviour::Hangup => {}
        Behaviour::Status(status) => respond(&mut stream, status, &[], br#"{"error":"as configured"}"#),
        Behaviour::Redirect(location) => respond(&mut stream, 302, &[("location", &location)], b"{}"),
        Behaviour::Serve { delay } => {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            let (status, body) = lookup(shared, key.as_deref());
            respond(&mut stream, status, &[], &body);
        }
        Behaviour::Drip { interval } => {
            let (status, body) = lookup(shared, key.as_deref());
            let head = format!(
                "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            for byte in body {
                std::thread::sleep(interval);
                if stream.write_all(&[byte]).and_then(|()| stream.flush()).is_err() {
                    return; // coffer gave up
                }
            }
        }
    }
}

/// The status and body the map gives for `key`.
fn lookup(shared: &Shared, key: Option<&str>) -> (u16, Vec<u8>) {
    let Some(key) = key else {
        return (400, br#"{"error":"not one clean path segment"}"#.to_vec());
    };
    match lock(&shared.records).get(key) {
        Some(body) => (200, body.clone()),
        None => (404, br#"{"error":"no such record"}"#.to_vec()),
    }
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // coffer may have given up (timeout) and closed: nothing to do about it here.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// The ERP tables as `src/store/tables.rs` defines them, for raw access to the file.
pub const ERP_RECORDS: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("erp_records");
/// Keyed hash of (collection, key) → record id.
pub const ERP_KEYS: redb::TableDefinition<[u8; 32], u128> = redb::TableDefinition::new("erp_keys");
