//! The admin socket: how admin subcommands reach a running `coffer serve`.
//!
//! redb lets one process open the database, so while the server runs, admin commands travel over
//! `<data_dir>/admin.sock`; with no server they open the database themselves. This module is only
//! the transport: a frame is a 4-byte big-endian length and at most [`MAX_FRAME`] bytes of payload.
//!
//! Trust rests on file ownership and peer credentials: the data directory must be ours and not
//! writable by group or others, the socket is 0600, and both ends check that the other process runs
//! under the same effective uid. Root is not exempt: it gains nothing it could not do anyway, and
//! a root `coffer user add` falling back to opening the database would leave root-owned files in the
//! data directory. Run admin commands as the service user (`sudo -u <user> coffer ...`).

use std::fs::{self, Metadata, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use zeroize::Zeroize;

/// File name of the socket inside the data directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// Longest socket path a Unix socket address holds (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Largest payload of one frame, in either direction.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// How long the server waits for a complete request frame (and for each write of a response).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the serving thread looks at its stop flag while idle.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Setting up, serving or using the admin socket failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The data directory or the socket path could not be examined.
    #[error("cannot inspect {0}: {1}; check that the data directory exists and is readable")]
    Inspect(PathBuf, #[source] io::Error),
    /// The data directory belongs to another user.
    #[error("data directory {0} is owned by uid {1}, but coffer runs as uid {2}; run coffer as its owner")]
    DataDirNotOwned(PathBuf, u32, u32),
    /// Group or others could write into the data directory and swap the socket.
    #[error("data directory {0} is writable by group or others (mode {1:o}); run `chmod 700 {0}`")]
    DataDirWritable(PathBuf, u32),
    /// The socket path is a symbolic link; it is neither followed nor removed.
    #[error("{0} is a symbolic link, which coffer does not follow; find out who made it, remove it, retry")]
    Symlink(PathBuf),
    /// The socket path belongs to another user; coffer will not replace or talk to it.
    #[error("{0} is owned by uid {1}, not by uid {2} that coffer runs as; run coffer as uid {1}, or remove the file")]
    ForeignOwner(PathBuf, u32, u32),
    /// Something other than a socket sits at the socket path; it is never deleted.
    #[error("{0} exists and is not a socket; move it out of the data directory, then retry")]
    NotASocket(PathBuf),
    /// A live server already answers on the socket.
    #[error("another coffer serve is running on this data directory ({0} answers); stop it first")]
    AlreadyRunning(PathBuf),
    /// Creating the socket failed.
    #[error("cannot create the admin socket {0}: {1}")]
    Bind(PathBuf, #[source] io::Error),
    /// The socket path does not fit a Unix socket address.
    #[error(
        "the admin socket path {0} is longer than a Unix socket address allows ({MAX_SOCKET_PATH} bytes): \
         use a shorter data_dir (e.g. /var/lib/coffer/data)"
    )]
    PathTooLong(PathBuf),
    /// After binding, the path was not the owner-only socket just created (removed if it was ours).
    #[error(
        "{0} is not the socket coffer just created with mode 600 and owner uid {2} (found mode {1:o}); \
         check that the data directory's file system keeps Unix permissions and nothing else writes there"
    )]
    NotOwnerOnly(PathBuf, u32, u32),
    /// The serving thread could not be started.
    #[error("cannot start the admin socket thread: {0}")]
    Spawn(#[source] io::Error),
    /// Connecting failed for a reason other than "no server is listening".
    #[error(
        "cannot connect to the admin socket {0}: {1}; run admin commands as the user running coffer serve, \
         and see the server's log"
    )]
    Connect(PathBuf, #[source] io::Error),
    /// The process listening on the socket runs as another user.
    #[error(
        "the process listening on {0} runs as uid {1}, not uid {2}; run admin commands as the user running coffer serve"
    )]
    PeerRefused(PathBuf, u32, u32),
    /// A frame is larger than [`MAX_FRAME`].
    #[error("admin frame of {0} bytes exceeds the {MAX_FRAME}-byte limit; run the same coffer version as the server")]
    FrameTooLarge(usize),
    /// The server closed the connection before answering.
    #[error("coffer serve closed the admin connection on {0} before answering; see the server's log")]
    Closed(PathBuf),
    /// Sending a request or receiving its response failed.
    #[error("admin connection on {0} failed: {1}; see the server's log")]
    Transfer(PathBuf, #[source] io::Error),
}

/// `<data_dir>/admin.sock`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A bound, not yet serving, admin socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct AdminListener {
    listener: UnixListener,
    file: SocketFile,
}

/// Binds `<data_dir>/admin.sock`, owner-only, after checking the data directory and whatever is
/// already at the path (a stale socket of ours is replaced; anything else is refused and left).
pub fn bind(data_dir: &Path) -> Result<AdminListener, SocketError> {
    check_data_dir(data_dir)?;
    let path = socket_path(data_dir);
    // sun_path holds 108 bytes with the terminating NUL. The staging path below is exactly
    // as long as the final one (".aXXXXXX/s" and "admin.sock").
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SocketError::PathTooLong(path));
    }
    if inspect(&path)?.is_some() {
        match UnixStream::connect(&path) {
            Ok(_) => return Err(SocketError::AlreadyRunning(path)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                fs::remove_file(&path).map_err(|e| SocketError::Bind(path.clone(), e))?
            }
            Err(e) => return Err(SocketError::Connect(path, e)),
        }
    }
    let bind_err = |e| SocketError::Bind(path.clone(), e);
    // Bind inside a fresh 0700 directory, narrow the socket to 0600, then hard-link it into place.
    // Unlike a umask change (process-wide, racing the server's other threads), this never exposes
    // the socket with wider permissions, and link(2), unlike rename(2), never replaces a file that
    // appeared at the path since it was checked.
    let private = tempfile::Builder::new()
        .prefix(".a")
        .rand_bytes(6)
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(data_dir)
        .map_err(bind_err)?;
    let staged = private.path().join("s");
    let listener = UnixListener::bind(&staged).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    fs::set_permissions(&staged, Permissions::from_mode(0o600)).map_err(bind_err)?;
    let ours = fs::symlink_metadata(&staged).map_err(bind_err)?;
    fs::hard_link(&staged, &path).map_err(bind_err)?;
    if let Err(e) = private.close() {
        tracing::warn!(
            "admin socket: cannot remove the staging directory in {}: {e}",
            data_dir.display()
        );
    }
    // From here on, an early return drops `file`, which removes the socket if it is still ours.
    let file = SocketFile {
        path: path.clone(),
        dev: ours.dev(),
        ino: ours.ino(),
    };
    let meta = fs::symlink_metadata(&path).map_err(bind_err)?;
    let mode = meta.mode() & 0o7777;
    if !file.is(&meta) || !meta.file_type().is_socket() || mode != 0o600 || meta.uid() != euid() {
        return Err(SocketError::NotOwnerOnly(path, mode, euid()));
    }
    Ok(AdminListener { listener, file })
}

impl AdminListener {
    /// Serves on a dedicated thread named "coffer-admin", one connection at a time; each
    /// connection carries requests answered in order until the client closes it.
    pub fn serve<H>(self, handler: H) -> Result<AdminServer, SocketError>
    where
        H: FnMut(Vec<u8>, &mut dyn FnMut(&[u8]) -> io::Result<()>) -> Vec<u8> + Send + 'static,
    {
        let AdminListener { listener, file } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("coffer-admin".into())
            .spawn(move || accept_loop(&listener, &flag, handler))
            .map_err(SocketError::Spawn)?;
        Ok(AdminServer {
            stop,
            thread: Some(thread),
            file,
        })
    }
}

/// The serving thread. Stopping it, explicitly or on drop, ends the thread within about 100 ms
/// (waiting for a running handler to return) and removes the socket file if it is still ours.
#[derive(Debug)]
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    // Dropped after `Drop::drop` has joined the thread, so the file outlives the listener.
    file: SocketFile,
}

impl AdminServer {
    /// Stops serving and removes the socket file.
    pub fn stop(self) {
        drop(self);
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("admin socket: the serving thread panicked");
        }
    }
}

/// Connects to a running server's socket; `Ok(None)` when no server listens (no socket file, or a
/// stale one). A symlink, a foreign-owned file or a server running as another uid is an error.
pub fn connect(data_dir: &Path) -> Result<Option<AdminConnection>, SocketError> {
    let path = socket_path(data_dir);
    if inspect(&path)?.is_none() {
        return Ok(None);
    }
    let stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(SocketError::Connect(path, e)),
    };
    // The lstat above gives clear errors; this check is the guarantee, as the path could change.
    let peer = peer_uid(&stream).map_err(|e| SocketError::Connect(path.clone(), e))?;
    if peer != euid() {
        return Err(SocketError::PeerRefused(path, peer, euid()));
    }
    // No read timeout: an admin operation such as a backup may run for minutes.
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| SocketError::Connect(path.clone(), e))?;
    Ok(Some(AdminConnection { stream, path }))
}

/// A client connection to the admin socket. After an error, drop it and connect again.
#[derive(Debug)]
pub struct AdminConnection {
    stream: UnixStream,
    path: PathBuf,
}

impl AdminConnection {
    /// Sends one request frame and waits for its response frame.
    pub fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, SocketError> {
        if request.len() > MAX_FRAME {
            return Err(SocketError::FrameTooLarge(request.len()));
        }
        let transfer = |e: io::Error| match e.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => SocketError::Closed(self.path.clone()),
            _ => SocketError::Transfer(self.path.clone(), e),
        };
        write_frame(&mut self.stream, request).map_err(transfer)?;
        self.next_frame()
    }

    /// Reads the next frame the server sends (after a progress frame, another one follows).
    pub fn next_frame(&mut self) -> Result<Vec<u8>, SocketError> {
        let transfer = |e: io::Error| match e.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => SocketError::Closed(self.path.clone()),
            _ => SocketError::Transfer(self.path.clone(), e),
        };
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).map_err(transfer)?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(SocketError::FrameTooLarge(len));
        }
        let mut response = vec![0; len];
        self.stream.read_exact(&mut response).map_err(transfer)?;
        Ok(response)
    }
}

/// The socket file this process bound, known by device and inode; removed on drop only if the
/// path still names it, so a socket another process put there since is left alone.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn is(&self, meta: &Metadata) -> bool {
        meta.dev() == self.dev && meta.ino() == self.ino
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && self.is(&meta)
            && let Err(e) = fs::remove_file(&self.path)
        {
            tracing::warn!(
                "admin socket: cannot remove {}: {e}; remove it by hand",
                self.path.display()
            );
        }
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// The data directory must be ours and writable by us alone.
fn check_data_dir(dir: &Path) -> Result<(), SocketError> {
    let meta = fs::metadata(dir).map_err(|e| SocketError::Inspect(dir.to_path_buf(), e))?;
    if meta.uid() != euid() {
        return Err(SocketError::DataDirNotOwned(dir.to_path_buf(), meta.uid(), euid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(SocketError::DataDirWritable(dir.to_path_buf(), meta.mode() & 0o7777));
    }
    Ok(())
}

/// `lstat`s the socket path: `None` if absent, the metadata if it is a socket of ours, else an error.
fn inspect(path: &Path) -> Result<Option<Metadata>, SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SocketError::Inspect(path.to_path_buf(), e)),
    };
    if meta.file_type().is_symlink() {
        return Err(SocketError::Symlink(path.to_path_buf()));
    }
    if meta.uid() != euid() {
        return Err(SocketError::ForeignOwner(path.to_path_buf(), meta.uid(), euid()));
    }
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    Ok(Some(meta))
}

fn write_frame(stream: &mut UnixStream, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_FRAME)
        .ok_or_else(|| {
            let message = format!("frame of {} bytes exceeds the {MAX_FRAME}-byte limit", payload.len());
            io::Error::new(ErrorKind::InvalidInput, message)
        })?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(payload)
}

fn accept_loop<H: FnMut(Vec<u8>, &mut dyn FnMut(&[u8]) -> io::Result<()>) -> Vec<u8>>(
    listener: &UnixListener,
    stop: &AtomicBool,
    mut handler: H,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_connection(stream, stop, &mut handler)
                    && !stop.load(Ordering::Relaxed)
                {
                    tracing::warn!("admin socket: connection dropped: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("admin socket: accept failed: {e}");
                thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// Answers requests in order until the client closes; frame contents are never logged.
fn serve_connection(
    mut stream: UnixStream,
    stop: &AtomicBool,
    handler: &mut impl FnMut(Vec<u8>, &mut dyn FnMut(&[u8]) -> io::Result<()>) -> Vec<u8>,
) -> io::Result<()> {
    let peer = peer_uid(&stream)?;
    if peer != euid() {
        tracing::warn!(
            "admin socket: refused a connection from uid {peer} (only uid {} may connect)",
            euid()
        );
        return Ok(());
    }
    stream.set_nonblocking(false)?;
    // Short read slices let the loop notice a stop request; the 30 s limit is kept per request.
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    while let Some(request) = read_request(&mut stream, stop)? {
        let mut response = handler(request, &mut |interim| write_frame(&mut stream, interim));
        let sent = write_frame(&mut stream, &response);
        response.zeroize();
        sent?;
    }
    Ok(())
}

/// The next request, or `None` if the client closed the connection between requests.
fn read_request(stream: &mut UnixStream, stop: &AtomicBool) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut header = [0u8; 4];
    match fill(stream, &mut header, deadline, stop)? {
        0 => return Ok(None),
        4 => {}
        _ => return Err(ErrorKind::UnexpectedEof.into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        let message = format!("request frame of {len} bytes exceeds the {MAX_FRAME}-byte limit");
        return Err(io::Error::new(ErrorKind::InvalidData, message));
    }
    let mut request = vec![0; len];
    if fill(stream, &mut request, deadline, stop)? < len {
        request.zeroize();
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(request))
}

/// Reads until `buf` is full or the peer closes; returns the bytes read.
fn fill(stream: &mut UnixStream, buf: &mut [u8], deadline: Instant, stop: &AtomicBool) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Err(io::Error::other("server stopping"));
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::new(ErrorKind::TimedOut, "no complete request within 30 s"));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use tempfile::TempDir;

    use super::*;

    fn private_dir() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn echo_server(dir: &Path) -> AdminServer {
        bind(dir).unwrap().serve(|request, _| request).unwrap()
    }

    fn call(dir: &Path, request: &[u8]) -> Vec<u8> {
        connect(dir).unwrap().unwrap().call(request).unwrap()
    }

    #[test]
    fn one_connection_carries_several_frames_in_order() {
        let dir = private_dir();
        let _server = echo_server(dir.path());
        let mut connection = connect(dir.path()).unwrap().unwrap();
        let big = vec![7u8; 1 << 20];
        for request in [&b"first"[..], b"", &big, b"last"] {
            assert_eq!(connection.call(request).unwrap(), request);
        }
    }

    #[test]
    fn sequential_connections_are_each_served() {
        let dir = private_dir();
        let _server = echo_server(dir.path());
        assert_eq!(call(dir.path(), b"one"), b"one");
        assert_eq!(call(dir.path(), b"two"), b"two");
    }

    #[test]
    fn socket_is_owner_only() {
        let dir = private_dir();
        let server = echo_server(dir.path());
        let meta = fs::symlink_metadata(server.path()).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(meta.uid(), euid());
        // The staging directory is gone.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bind_refuses_a_symlink_and_leaves_it() {
        let dir = private_dir();
        let path = socket_path(dir.path());
        symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(matches!(bind(dir.path()), Err(SocketError::Symlink(_))));
        assert!(matches!(connect(dir.path()), Err(SocketError::Symlink(_))));
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }

    #[test]
    fn bind_refuses_a_regular_file_and_leaves_it() {
        let dir = private_dir();
        let path = socket_path(dir.path());
        fs::write(&path, b"keep me").unwrap();
        assert!(matches!(bind(dir.path()), Err(SocketError::NotASocket(_))));
        assert_eq!(fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = private_dir();
        drop(UnixListener::bind(socket_path(dir.path())).unwrap());
        let _server = echo_server(dir.path());
        assert_eq!(call(dir.path(), b"fresh"), b"fresh");
    }

    #[test]
    fn second_bind_while_serving_is_refused() {
        let dir = private_dir();
        let _server = echo_server(dir.path());
        let error = bind(dir.path()).unwrap_err();
        assert!(matches!(error, SocketError::AlreadyRunning(_)));
        assert!(error.to_string().contains("another coffer serve is running"));
        assert_eq!(call(dir.path(), b"still here"), b"still here");
    }

    #[test]
    fn connect_finds_no_server_without_socket_or_with_a_stale_one() {
        let dir = private_dir();
        assert!(connect(dir.path()).unwrap().is_none());
        drop(UnixListener::bind(socket_path(dir.path())).unwrap());
        assert!(connect(dir.path()).unwrap().is_none());
    }

    #[test]
    fn stop_removes_the_socket() {
        let dir = private_dir();
        let server = echo_server(dir.path());
        let path = server.path().to_path_buf();
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!path.exists());
        assert!(connect(dir.path()).unwrap().is_none());
    }

    #[test]
    fn stop_ends_an_idle_connection_promptly() {
        let dir = private_dir();
        let server = echo_server(dir.path());
        let _idle = UnixStream::connect(server.path()).unwrap();
        thread::sleep(POLL_INTERVAL * 2);
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn stop_leaves_a_socket_it_did_not_bind() {
        let dir = private_dir();
        let server = echo_server(dir.path());
        fs::remove_file(server.path()).unwrap();
        let _other = UnixListener::bind(server.path()).unwrap();
        let path = server.path().to_path_buf();
        server.stop();
        assert!(path.exists());
    }

    #[test]
    fn over_long_frame_closes_the_connection_and_serving_goes_on() {
        let dir = private_dir();
        let server = echo_server(dir.path());
        let mut raw = UnixStream::connect(server.path()).unwrap();
        raw.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes()).unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)));
        assert_eq!(call(dir.path(), b"after"), b"after");
        let too_big = vec![0u8; MAX_FRAME + 1];
        let mut connection = connect(dir.path()).unwrap().unwrap();
        assert!(matches!(connection.call(&too_big), Err(SocketError::FrameTooLarge(_))));
    }

    #[test]
    fn foreign_owned_socket_is_refused_by_bind_and_connect() {
        if euid() != 0 {
            return; // giving a file away needs root
        }
        let dir = private_dir();
        let path = socket_path(dir.path());
        drop(UnixListener::bind(&path).unwrap());
        std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
        assert!(matches!(bind(dir.path()), Err(SocketError::ForeignOwner(..))));
        assert!(matches!(connect(dir.path()), Err(SocketError::ForeignOwner(..))));
        assert!(path.exists());
    }

    #[test]
    fn group_writable_data_dir_is_refused() {
        let dir = private_dir();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o770)).unwrap();
        let error = bind(dir.path()).unwrap_err();
        assert!(matches!(error, SocketError::DataDirWritable(..)));
        assert!(error.to_string().contains("chmod 700"));
    }
}
