//! The `coffer` binary as the CLI tests drive it: commands on a coffer in a [`TestDirs`]
//! (run the way one test file wants them, see [`Cli`]), and a spawned process such as
//! `coffer serve` ([`Running`]) that is killed when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CHEAP_KDF, CHEAP_KDF_ENV, PASSPHRASE, TestDirs, coffer_command, empty_dirs, isolate, write_file};

/// How long a start of the binary may take (the first `serve --dev` creates a coffer).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The password [`Cli::initialised_with_alice`] gives `alice`.
pub const ALICE_PASSWORD: &str = "correct horse battery";

/// Bytes as text, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Nothing from the caller's environment that could choose a configuration, directories,
/// a listen address or a passphrase; cheap argon2id; runs in `cwd`.
pub fn isolate_cheap(cmd: &mut Command, cwd: &Path) {
    isolate(cmd, cwd);
    cmd.envs(CHEAP_KDF_ENV);
}

/// Panics with the command's output unless it succeeded; returns stdout.
#[track_caller]
pub fn expect_ok(out: Output, what: &str) -> String {
    expect_ok_with_stderr(out, what).0
}

/// Panics with the command's output unless it succeeded; returns stdout and stderr.
#[track_caller]
pub fn expect_ok_with_stderr(out: Output, what: &str) -> (String, String) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// How one test file runs `coffer --data-dir .. --keys-dir ..` on a [`TestDirs`]: nothing
/// from the caller's environment, cheap argon2id, in the temp dir, and then `env` (what
/// the files differ in: `COFFER_ALLOW_CIDRS`, `COFFER_MAX_FUTURE_WRITE_SECS`).
#[derive(Clone, Copy)]
pub struct Cli {
    /// Variables set on every command, on top of the isolated environment.
    pub env: &'static [(&'static str, &'static str)],
}

impl Cli {
    /// The command without a passphrase: one that needs the database either goes through
    /// a running server's admin socket or fails.
    pub fn without_passphrase(self, dirs: &TestDirs) -> Command {
        let mut cmd = coffer_command(&dirs.paths);
        isolate_cheap(&mut cmd, dirs.root.path());
        cmd.envs(self.env.iter().copied());
        cmd
    }

    /// The command with the test passphrase in `COFFER_PASSPHRASE`.
    pub fn coffer(self, dirs: &TestDirs) -> Command {
        let mut cmd = self.without_passphrase(dirs);
        cmd.env("COFFER_PASSPHRASE", PASSPHRASE);
        cmd
    }

    /// Runs `coffer ARGS` with the passphrase; panics unless it succeeds; returns stdout.
    #[track_caller]
    pub fn ok(self, dirs: &TestDirs, args: &[&str]) -> String {
        expect_ok(
            self.coffer(dirs).args(args).output().expect("run coffer"),
            &format!("coffer {args:?}"),
        )
    }

    /// A coffer made by `coffer init`, with a member `alice` (password
    /// [`ALICE_PASSWORD`]).
    pub fn initialised_with_alice(self) -> TestDirs {
        let dirs = empty_dirs();
        let mut args = vec!["init"];
        args.extend(CHEAP_KDF);
        self.ok(&dirs, &args);
        let password = write_file(dirs.root.path(), "alice.password", &format!("{ALICE_PASSWORD}\n"));
        self.ok(
            &dirs,
            &[
                "user",
                "add",
                "alice",
                "--role",
                "member",
                "--password-file",
                password.to_str().unwrap(),
            ],
        );
        dirs
    }
}

// ---- a coffer process that is killed when the test ends ----

/// A spawned `coffer` with its output collected (stdout line by line, stderr as it
/// arrives); killed (and waited for) when dropped.
pub struct Running {
    child: Option<Child>,
    stdout_lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts `cmd` with stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start coffer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child: Some(child),
            stdout_lines: rx,
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }

    /// What the process wrote on stderr so far.
    pub fn stderr_now(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to `timeout`) for `needle` on stderr; returns all of stderr.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration, what: &str) -> String {
        self.wait_stderr_count(needle, 1, timeout, what)
    }

    /// Waits (up to `timeout`) until `needle` occurs `times` times on stderr; returns all
    /// of stderr.
    pub fn wait_stderr_count(&self, needle: &str, times: usize, timeout: Duration, what: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.stderr_now();
            if now.matches(needle).count() >= times {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {needle:?} not {times} time(s) on stderr: {now}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All of stderr, once the process closed it.
    fn collect_stderr(&mut self) -> String {
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        self.stderr_now()
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal` to the process.
    pub fn signal(&mut self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(self.child());
        rustix::process::kill_process(pid, signal).expect("send a signal");
    }

    /// Kills the process (SIGKILL) and returns what it wrote on stderr.
    pub fn kill(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.collect_stderr()
    }

    /// Waits for the process to end by itself; kills it and panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration, what: &str) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let stderr = self.kill();
                panic!("{what}: still running after {timeout:?}; stderr: {stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        (status, self.collect_stderr())
    }

    /// The next stdout line, if one was printed already.
    pub fn try_next_line(&self) -> Option<String> {
        self.stdout_lines.try_recv().ok()
    }

    /// The next stdout line; kills the process and panics if none comes within
    /// [`START_TIMEOUT`].
    pub fn next_line(&mut self, what: &str) -> String {
        match self.stdout_lines.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                let stderr = self.kill();
                panic!("{what}: printed no (further) line within {START_TIMEOUT:?}; stderr: {stderr}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let stderr = self.kill();
                panic!("{what}: ended without printing a (further) line; stderr: {stderr}")
            }
        }
    }

    /// The address of the first stdout line, `coffer listening on https://ADDR`; returns
    /// once the server accepts signatures (from the second after its start).
    pub fn listening_on(&mut self, what: &str) -> SocketAddr {
        let line = self.next_line(what);
        let started = time::OffsetDateTime::now_utc().unix_timestamp();
        let addr = line
            .strip_prefix("coffer listening on https://")
            .unwrap_or_else(|| panic!("{what}: unexpected first line {line:?}"));
        let addr = addr.parse().unwrap_or_else(|e| panic!("{what}: address {addr:?}: {e}"));
        // Requests signed in the second the server started are refused.
        while time::OffsetDateTime::now_utc().unix_timestamp() <= started {
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
