//! A small blocking HTTP/1.1 client over rustls, for tests and the load bench. It gives
//! exact control over what a real device does: which certificate it presents, which TLS
//! versions it offers, whether it resumes sessions, and which requests share one
//! keep-alive connection. Self-contained (benches include it by path).
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion};

/// TLS 1.3 only.
pub const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// TLS 1.2 only.
pub const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// How a test client sets up TLS.
pub struct ClientSetup<'a> {
    /// CA certificate (PEM) the server certificate must chain to.
    pub ca_pem: &'a str,
    /// Client certificate and key (PEM), if the client presents one.
    pub identity: Option<(&'a str, &'a str)>,
    /// TLS versions offered.
    pub versions: &'a [&'static SupportedProtocolVersion],
    /// Keep a session cache so reconnects try to resume.
    pub resumption: bool,
}

impl<'a> ClientSetup<'a> {
    /// TLS 1.3, no resumption, with the given identity.
    pub fn new(ca_pem: &'a str, identity: Option<(&'a str, &'a str)>) -> Self {
        Self {
            ca_pem,
            identity,
            versions: TLS13_ONLY,
            resumption: false,
        }
    }

    /// The rustls configuration (ring provider, as the server uses).
    pub fn build(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(self.versions)
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match self.identity {
            Some((cert_pem, key_pem)) => {
                let certs: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .map(|c| c.expect("client certificate PEM"))
                    .collect();
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("client key PEM");
                builder.with_client_auth_cert(certs, key).expect("client identity")
            }
            None => builder.with_no_client_auth(),
        };
        if !self.resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(config)
    }
}

/// A response read in full.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The problem `type` of an error response, without the `urn:coffer:problem:` prefix.
    pub fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "status {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let kind = self.json()["type"].as_str().expect("problem type").to_owned();
        kind.strip_prefix("urn:coffer:problem:")
            .expect("problem type prefix")
            .to_owned()
    }
}

/// A device's SigV4 credentials and, once logged in, its session token. Requests made on
/// a connection with a signer are signed (and carry the token) automatically.
#[derive(Clone, Debug)]
pub struct Signer {
    /// The device id.
    pub access_key: String,
    /// The device's signing secret.
    pub secret: String,
    /// The region (`local` by default).
    pub region: String,
    /// Session token, sent as `X-Amz-Security-Token`.
    pub token: Option<String>,
}

impl Signer {
    /// Signs a request head: returns the headers to add (`x-amz-date`, the token,
    /// `authorization`). Every header in `headers` and `host` is signed.
    pub fn sign(
        &self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
        payload_sha256: &str,
    ) -> Vec<(String, String)> {
        self.sign_at(
            method,
            target,
            host,
            headers,
            payload_sha256,
            time::OffsetDateTime::now_utc(),
        )
    }

    /// [`sign`](Self::sign) with the clock set to `at`.
    pub fn sign_at(
        &self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
        payload_sha256: &str,
        at: time::OffsetDateTime,
    ) -> Vec<(String, String)> {
        let date = coffer::sigv4::amz_date(at);
        let mut added = vec![("x-amz-date".to_owned(), date.clone())];
        if let Some(token) = &self.token {
            added.push(("x-amz-security-token".to_owned(), token.clone()));
        }
        let mut all: Vec<(String, Vec<u8>)> = vec![("host".to_owned(), host.as_bytes().to_vec())];
        all.extend(
            headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec())),
        );
        all.extend(added.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())));
        let mut names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let req = coffer::sigv4::Request {
            method,
            path,
            query,
            headers: all.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect(),
        };
        // The signing key is derived once per secret and day (as SDK signers cache it).
        thread_local! {
            static KEY: std::cell::RefCell<Option<(String, String, [u8; 32])>> = const { std::cell::RefCell::new(None) };
        }
        let day = date[..8].to_owned();
        let cached = KEY.with(|k| {
            k.borrow()
                .as_ref()
                .filter(|(secret, d, _)| *secret == self.secret && *d == day)
                .map(|(_, _, key)| *key)
        });
        let key = cached.unwrap_or_else(|| {
            let key = *coffer::sigv4::signing_key(&self.secret, &day, &self.region, "coffer");
            KEY.with(|k| *k.borrow_mut() = Some((self.secret.clone(), day.clone(), key)));
            key
        });
        let creds = coffer::sigv4::Credentials {
            access_key: &self.access_key,
            secret: &self.secret,
            region: &self.region,
            service: "coffer",
            key: Some((day, zeroize::Zeroizing::new(key))),
        };
        let auth = coffer::sigv4::authorization(&req, &creds, &date, &names, payload_sha256).expect("sign");
        added.push(("authorization".to_owned(), auth));
        added
    }
}

/// One TLS connection carrying keep-alive HTTP/1.1 requests.
pub struct Connection {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    host: String,
    signer: Option<Signer>,
}

impl Connection {
    /// Connects and completes the handshake (an error here means the server refused it).
    pub fn open(config: Arc<ClientConfig>, addr: SocketAddr, server_name: &str) -> io::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(io::Error::other)?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        // With TLS 1.3 the client finishes its handshake before the server has checked its
        // certificate: a refusal (an alert) surfaces on the first read, i.e. the first
        // request. (Polling here would block: the server sends nothing unasked.)
        Ok(Self {
            stream: BufReader::with_capacity(256 * 1024, stream),
            host: server_name.to_owned(),
            signer: None,
        })
    }

    /// Signs every following request with `signer` (`None`: unsigned).
    pub fn set_signer(&mut self, signer: Option<Signer>) {
        self.signer = signer;
    }

    /// The signer, to change its token.
    pub fn signer_mut(&mut self) -> Option<&mut Signer> {
        self.signer.as_mut()
    }

    /// Whether the handshake was full or resumed.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.stream.get_ref().conn.handshake_kind()
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.get_ref().conn.protocol_version()
    }

    fn write_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        len: Option<u64>,
        payload_sha256: &str,
    ) -> io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(signer) = &self.signer {
            for (n, v) in signer.sign(method, path, &self.host, headers, payload_sha256) {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        if let Some(len) = len {
            head.push_str(&format!("content-length: {len}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.get_mut().write_all(head.as_bytes())
    }

    /// Sends a request with a body held in memory and reads the whole response.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        let len = if body.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE") {
            None
        } else {
            Some(body.len() as u64)
        };
        self.write_head(method, path, headers, len, &coffer::sigv4::sha256_hex(body))?;
        self.stream.get_mut().write_all(body)?;
        self.stream.get_mut().flush()?;
        let mut out = Vec::new();
        let (status, headers) = self.read_response(method == "HEAD", |b| out.extend_from_slice(b))?;
        Ok(Response {
            status,
            headers,
            body: out,
        })
    }

    /// Sends `len` bytes from `body` in pieces of `piece` bytes (the body is never whole in
    /// memory), with `Content-Length`, and reads the whole response. A signed connection
    /// declares `payload_sha256` in `x-amz-content-sha256` (the body must match it).
    #[allow(clippy::too_many_arguments)]
    pub fn request_streamed(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        len: u64,
        mut body: impl Read,
        piece: usize,
        payload_sha256: &str,
    ) -> io::Result<Response> {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if self.signer.is_some() {
            all.push(("x-amz-content-sha256", payload_sha256));
        }
        self.write_head(method, path, &all, Some(len), payload_sha256)?;
        let mut buf = vec![0u8; piece.max(1)];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = body.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body source ended early"));
            }
            match self.stream.get_mut().write_all(&buf[..n]) {
                Ok(()) => {}
                // The server may answer (413) and close before the body is through.
                Err(_) => break,
            }
            left -= n as u64;
        }
        let _ = self.stream.get_mut().flush();
        let mut out = Vec::new();
        let (status, headers) = self.read_response(false, |b| out.extend_from_slice(b))?;
        Ok(Response {
            status,
            headers,
            body: out,
        })
    }

    /// Sends a request without a body and hands the response body to `sink` piece by piece.
    pub fn get_streamed(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        sink: impl FnMut(&[u8]),
    ) -> io::Result<(u16, Vec<(String, String)>)> {
        self.write_head("GET", path, headers, None, coffer::sigv4::EMPTY_SHA256)?;
        self.stream.get_mut().flush()?;
        self.read_response(false, sink)
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read_response(&mut self, head: bool, mut sink: impl FnMut(&[u8])) -> io::Result<(u16, Vec<(String, String)>)> {
        let status_line = self.read_line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok((status, headers));
        }
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let size_line = self.read_line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                self.copy_exact(size as u64, &mut sink)?;
                self.read_line()?;
            }
        } else if let Some(len) = get("content-length") {
            let len: u64 = len.parse().map_err(|_| io::Error::other("bad content-length"))?;
            self.copy_exact(len, &mut sink)?;
        } else {
            let mut buf = Vec::new();
            self.stream.read_to_end(&mut buf)?;
            sink(&buf);
        }
        Ok((status, headers))
    }

    fn copy_exact(&mut self, mut len: u64, sink: &mut impl FnMut(&[u8])) -> io::Result<()> {
        while len > 0 {
            let buf = self.stream.fill_buf()?;
            if buf.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
            }
            let n = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
            sink(&buf[..n]);
            self.stream.consume(n);
            len -= n as u64;
        }
        Ok(())
    }
}

// ---- raw access, for tests that send partial requests or watch the server close ----

pub type RawStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection without the test client's framing, with a read timeout, so a test can
/// send part of a request, pause, or see the server close the connection.
pub fn raw_tls(config: Arc<ClientConfig>, addr: SocketAddr) -> RawStream {
    let name = ServerName::try_from("localhost".to_owned()).expect("server name");
    let conn = ClientConnection::new(config, name).expect("client connection");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("handshake");
    }
    stream
}

/// Reads one response whose body has a Content-Length.
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::UnexpectedEof, format!("no status line ({line:?})")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed inside the head"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("header line");
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("content-length"));
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Response { status, headers, body })
}

/// The head of a request written by hand: the request line, `host`, `headers` as given,
/// and (with a signer) the signature headers over `host` and every one of `headers` with
/// `payload_sha256` as the body's hash, then the blank line. Without a signer, unsigned.
pub fn signed_head(
    signer: Option<&Signer>,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    payload_sha256: &str,
) -> String {
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(signer) = signer {
        for (n, v) in signer.sign(method, target, host, headers, payload_sha256) {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    head
}

/// A value for `x-coffer-nonce` that no other call in this process returns, so that a
/// write repeated within the same second is signed differently (not a replay).
pub fn unique_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{now}-{n}", std::process::id())
}
