//! Connection watchdog: closes a connection on which nothing has moved for the idle
//! timeout. actix-web times out only the headers of a connection's first request; a
//! client holding a valid device could otherwise keep connections open for ever (a
//! second request started and never finished, a JSON body never completed, an unread
//! chunked body that actix drains without a timer, a download it stops reading).
//!
//! Activity is a request starting or ending, a piece of upload body arriving, or a piece
//! of download handed to the connection. The watchdog shuts the socket down (on a
//! duplicate of its descriptor, so it never touches a descriptor number that was closed
//! and reused), which makes actix's next read or write fail and drop the connection,
//! and with it any transfer slot it held.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// When a connection last showed activity, in milliseconds since the watchdog started.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records activity now.
    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One watched connection; dropped (with the connection's data) when the connection ends.
#[derive(Debug)]
struct Watched {
    socket: OwnedFd,
    activity: Arc<Activity>,
    closed: AtomicBool,
    /// Cut at the next sweep, whatever its activity.
    cut: AtomicBool,
}

/// Connection data: the connection's activity record (handlers touch it) and its entry in
/// the watchdog, released when the connection ends.
#[derive(Clone, Debug)]
pub struct ConnActivity {
    /// Touch on progress.
    pub activity: Arc<Activity>,
    _entry: Arc<Watched>,
}

/// The watchdog of one server.
#[derive(Debug)]
pub struct Watchdog {
    epoch: Instant,
    idle: Duration,
    conns: Mutex<Vec<Weak<Watched>>>,
}

impl ConnActivity {
    /// Has the connection cut at the watchdog's next sweep (within a second).
    pub fn cut_soon(&self) {
        self._entry.cut.store(true, Ordering::Relaxed);
    }
}

impl Watchdog {
    /// Starts the watchdog thread; it ends when the returned handle is dropped.
    pub fn start(idle: Duration) -> std::io::Result<Arc<Self>> {
        let dog = Arc::new(Self {
            epoch: Instant::now(),
            idle,
            conns: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&dog);
        let tick = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("coffer-watchdog".into())
            .spawn(move || {
                while let Some(dog) = weak.upgrade() {
                    dog.sweep();
                    drop(dog);
                    std::thread::sleep(tick);
                }
            })?;
        Ok(dog)
    }

    /// Watches a newly accepted connection. `None` if its descriptor cannot be duplicated
    /// (out of descriptors): the connection then goes unwatched rather than refused.
    pub fn watch(&self, socket: impl AsFd) -> Option<ConnActivity> {
        let socket = rustix::io::fcntl_dupfd_cloexec(socket, 0).ok()?;
        let activity = Arc::new(Activity {
            epoch: self.epoch,
            last_ms: AtomicU64::new(0),
        });
        activity.touch();
        let entry = Arc::new(Watched {
            socket,
            activity: activity.clone(),
            closed: AtomicBool::new(false),
            cut: AtomicBool::new(false),
        });
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(&entry));
        Some(ConnActivity {
            activity,
            _entry: entry,
        })
    }

    fn sweep(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        conns.retain(|weak| {
            let Some(conn) = weak.upgrade() else {
                return false; // the connection ended
            };
            let due = conn.cut.load(Ordering::Relaxed) || conn.activity.idle_for() > self.idle;
            if due && !conn.closed.swap(true, Ordering::Relaxed) {
                // Best effort: the socket may already be gone.
                let _ = rustix::net::shutdown(&conn.socket, rustix::net::Shutdown::Both);
            }
            true
        });
    }
}
