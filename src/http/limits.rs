//! Bounds on transfers in progress: uploads and downloads each hold a slot for as long as
//! they run, overall and per device, so neither many devices nor one stolen phone can tie
//! up the threads that serve everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{Problem, Reason};
use crate::model::DeviceId;

/// What kind of transfer a slot is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// An upload (a blocking thread and a stager thread while it lasts).
    Upload,
    /// A download or a listing.
    Download,
}

/// The slots of a server.
#[derive(Debug)]
pub struct Transfers {
    max_uploads: u32,
    max_downloads: u32,
    uploads: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
    per_device: Mutex<HashMap<DeviceId, u32>>,
    per_device_max: u32,
}

/// A slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    device: DeviceId,
    transfers: Arc<Transfers>,
}

impl Transfers {
    /// Slots for `uploads` uploads and `downloads` downloads overall, and `per_device`
    /// transfers of either kind per device.
    pub fn new(uploads: u32, downloads: u32, per_device: u32) -> Arc<Self> {
        Arc::new(Self {
            max_uploads: uploads,
            max_downloads: downloads,
            uploads: Arc::new(Semaphore::new(uploads as usize)),
            downloads: Arc::new(Semaphore::new(downloads as usize)),
            per_device: Mutex::new(HashMap::new()),
            per_device_max: per_device,
        })
    }

    /// Takes a slot, or refuses at once with `429 too-many-transfers` (never waits: a
    /// waiting request would hold its connection anyway).
    pub fn begin(self: &Arc<Self>, kind: Transfer, device: DeviceId) -> Result<Slot, Problem> {
        let busy = |what: &str| Problem::detail(Reason::TooManyTransfers, what.to_owned());
        {
            let mut counts = self
                .per_device
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = counts.entry(device).or_insert(0);
            if *n >= self.per_device_max {
                return Err(busy(
                    "this device has too many transfers in progress; retry when one ends",
                ));
            }
            *n += 1;
        }
        let semaphore = match kind {
            Transfer::Upload => &self.uploads,
            Transfer::Download => &self.downloads,
        };
        match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot {
                _permit: permit,
                device,
                transfers: self.clone(),
            }),
            Err(_) => {
                self.release(device);
                Err(busy("the server has too many transfers in progress; retry shortly"))
            }
        }
    }

    /// Transfers of `kind` in progress.
    pub fn in_progress(&self, kind: Transfer) -> u32 {
        let (max, semaphore) = match kind {
            Transfer::Upload => (self.max_uploads, &self.uploads),
            Transfer::Download => (self.max_downloads, &self.downloads),
        };
        max.saturating_sub(u32::try_from(semaphore.available_permits()).unwrap_or(u32::MAX))
    }

    fn release(&self, device: DeviceId) {
        let mut counts = self
            .per_device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&device);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.transfers.release(self.device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_overall_and_per_device_and_come_back() {
        let t = Transfers::new(2, 1, 2);
        let a = t.begin(Transfer::Upload, DeviceId(1)).unwrap();
        let _b = t.begin(Transfer::Download, DeviceId(1)).unwrap();
        // Device 1 is at its limit; device 2 is not.
        assert!(t.begin(Transfer::Upload, DeviceId(1)).is_err());
        let _c = t.begin(Transfer::Upload, DeviceId(2)).unwrap();
        // Uploads are at their overall limit, downloads too.
        assert!(t.begin(Transfer::Upload, DeviceId(3)).is_err());
        assert!(t.begin(Transfer::Download, DeviceId(3)).is_err());
        drop(a);
        let _d = t.begin(Transfer::Upload, DeviceId(3)).unwrap();
        // A refused request took nothing.
        assert_eq!(t.per_device.lock().unwrap().get(&DeviceId(3)), Some(&1));
    }
}

/// Counts a server's open connections; a connection's [`Counted`] is held in its
/// connection data and gives its place back when the connection ends.
#[derive(Debug)]
pub struct Connections {
    open: std::sync::atomic::AtomicUsize,
    max: usize,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

/// Connection data of a connection beyond `limits.max_connections`: each of its requests
/// is answered `503 too-many-connections` and the connection closed.
#[derive(Clone, Copy, Debug)]
pub struct OverCapacity;

/// One open connection's place in [`Connections`].
#[derive(Debug)]
pub struct Counted(Arc<Connections>);

impl Connections {
    /// Counts towards `max`, mirrored in `gauge`.
    pub fn new(max: u32, gauge: prometheus_client::metrics::gauge::Gauge) -> Arc<Self> {
        Arc::new(Self {
            open: std::sync::atomic::AtomicUsize::new(0),
            max: max as usize,
            gauge,
        })
    }

    /// Counts a new connection; also says whether it is beyond the cap.
    pub fn enter(self: &Arc<Self>) -> (Counted, bool) {
        let n = self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.gauge.inc();
        (Counted(self.clone()), n > self.max)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.gauge.dec();
    }
}
