//! What keeps a public explorer (`shoal node --explorer-public`) usable by strangers without
//! letting them exhaust the node: per-client rate limits (a token bucket per address), a bounded
//! number of anonymous runs in progress, a per-client daily upload quota, and a disk high-water
//! mark. Token holders are not counted here; the retention of runs (pins) is for everyone.
//!
//! Anonymous callers see explorer runs' records and the files they show (a pin with an end marks
//! them), nothing else, and may run catalogue entries, never one with `network = true`. A refused
//! form costs nothing; then the disk high-water mark (`statvfs` of the store, 507), the bound on
//! anonymous runs in progress and the client's token bucket (an IPv4 address or an IPv6 /64; at
//! most 65,536 tracked, full buckets dropped first) answer 429 with `Retry-After`, and uploads
//! count against the client's daily quota as they stream. A token bucket in a few lines was
//! preferred to `governor`, whose keyed limiters bring dashmap and a clock abstraction for one map.
//! Known limits: behind a reverse proxy every client is the proxy (`X-Forwarded-For` is not
//! trusted); anyone may fetch a blob by its hash through `/v1/explorer/files/` (a 256-bit
//! capability, learnt from explorer run views).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::daemon::auth::ClientKey;

/// Clients whose counters are kept at once; past it, counters of clients that are back to full
/// are dropped first, and a new client waits when none is.
const CLIENTS_TRACKED_MAX: usize = 65_536;
/// What a client refused for a full queue is told to wait, in seconds.
const QUEUE_RETRY_AFTER_S: u64 = 10;
const DAY_S: u64 = 86_400;

/// The public explorer's settings (`shoal node --explorer-*`).
#[derive(Clone, Debug)]
pub struct PublicOptions {
    /// Anonymous callers may use the explorer.
    pub enabled: bool,
    /// Anonymous runs one client may start per minute (and at once, after a pause).
    pub runs_per_minute: u32,
    /// Anonymous runs in progress (uploading, waiting or running) at once, over all clients.
    pub runs_queued_max: usize,
    /// Bytes one client may upload per day (UTC), files and stdin together.
    pub upload_bytes_per_day: u64,
    /// Anonymous runs are refused while the store's file system has less free space than this, in
    /// percent of its size.
    pub disk_free_percent_min: u8,
    /// Every explorer run's record and files are kept (pinned against `shoal gc`) for at least
    /// this many days after its last run, so its permalink keeps working.
    pub keep_days: u32,
    /// Every run is committed to this git repository, whose commits open at `/c/<commit>`.
    pub provenance: Option<std::path::PathBuf>,
}

impl Default for PublicOptions {
    fn default() -> PublicOptions {
        PublicOptions {
            enabled: false,
            runs_per_minute: 10,
            runs_queued_max: 8,
            upload_bytes_per_day: 256 << 20,
            disk_free_percent_min: 10,
            keep_days: 30,
            provenance: None,
        }
    }
}

/// Why an anonymous request must wait or cannot be served.
#[derive(Debug)]
pub(crate) enum Limited {
    /// Too many requests: try again after this many seconds (429 + Retry-After).
    Wait { retry_after_s: u64, why: String },
    /// The node is short of disk (507).
    Disk(String),
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Counters {
    buckets: BTreeMap<ClientKey, Bucket>,
    /// Client → (day number, bytes uploaded that day).
    uploads: BTreeMap<ClientKey, (u64, u64)>,
}

pub(crate) struct Limits {
    pub opts: PublicOptions,
    counters: Mutex<Counters>,
    in_progress: AtomicUsize,
}

/// One admitted anonymous run; it leaves the queue when dropped.
pub(crate) struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    pub fn new(opts: PublicOptions) -> Limits {
        Limits { opts, counters: Mutex::new(Counters::default()), in_progress: AtomicUsize::new(0) }
    }

    /// Checks the disk, the queue and the client's rate, in that order (a refusal for the first
    /// two costs the client nothing).
    pub fn admit(&self, client: ClientKey, home: &Path, now: Instant) -> Result<Admitted<'_>, Limited> {
        if let Some((free, _)) = free_percent(home)
            && free < f64::from(self.opts.disk_free_percent_min)
        {
            return Err(Limited::Disk(format!(
                "this node is short of disk ({free:.1} % of its store's file system free, below the {} % it keeps \
                 free), so it takes no anonymous runs until space is freed; try again later or use another node",
                self.opts.disk_free_percent_min
            )));
        }
        let queued = self.in_progress.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(&self.in_progress);
        if queued >= self.opts.runs_queued_max {
            return Err(Limited::Wait {
                retry_after_s: QUEUE_RETRY_AFTER_S,
                why: format!(
                    "this node has {} anonymous runs in progress, the most it takes; try again in a few seconds",
                    self.opts.runs_queued_max
                ),
            });
        }
        self.take_run(client, now)?;
        Ok(admitted)
    }

    /// One run from the client's bucket: `runs_per_minute` refill over a minute, as many at most.
    fn take_run(&self, client: ClientKey, now: Instant) -> Result<(), Limited> {
        let per_minute = f64::from(self.opts.runs_per_minute.max(1));
        let rate_per_s = per_minute / 60.0;
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if !c.buckets.contains_key(&client) && c.buckets.len() >= CLIENTS_TRACKED_MAX {
            c.buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate_per_s < per_minute);
            if c.buckets.len() >= CLIENTS_TRACKED_MAX {
                return Err(Limited::Wait {
                    retry_after_s: 60,
                    why: "this node is serving too many clients at once; try again in a minute".into(),
                });
            }
        }
        let b = c.buckets.entry(client).or_insert(Bucket { tokens: per_minute, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate_per_s).min(per_minute);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let retry_after_s = ((1.0 - b.tokens) / rate_per_s).ceil().max(1.0) as u64;
        Err(Limited::Wait {
            retry_after_s,
            why: format!(
                "at most {} anonymous runs a minute from one address; the next in {retry_after_s} s",
                self.opts.runs_per_minute
            ),
        })
    }

    /// Counts `bytes` uploaded by the client today; refuses past the day's quota.
    pub fn charge_upload(&self, client: ClientKey, bytes: u64, unix_s: u64) -> Result<(), Limited> {
        let day = unix_s / DAY_S;
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if !c.uploads.contains_key(&client) && c.uploads.len() >= CLIENTS_TRACKED_MAX {
            c.uploads.retain(|_, (d, _)| *d == day);
        }
        let e = c.uploads.entry(client).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        if e.1 + bytes > self.opts.upload_bytes_per_day {
            let retry_after_s = (day + 1) * DAY_S - unix_s;
            return Err(Limited::Wait {
                retry_after_s,
                why: format!(
                    "this upload would pass the {} a day one address may upload to this node; the count starts \
                     again at 00:00 UTC",
                    crate::output::bytes(self.opts.upload_bytes_per_day)
                ),
            });
        }
        e.1 += bytes;
        Ok(())
    }
}

/// Free space of the file system holding `path`, in percent of its size, and its free bytes.
pub(crate) fn free_percent(path: &Path) -> Option<(f64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    if st.blocks() == 0 {
        return None;
    }
    let free = st.blocks_available() as f64 * 100.0 / st.blocks() as f64;
    Some((free, st.blocks_available() as u64 * st.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;

    fn limits(runs_per_minute: u32, queued: usize) -> Limits {
        Limits::new(PublicOptions {
            enabled: true,
            runs_per_minute,
            runs_queued_max: queued,
            upload_bytes_per_day: 1000,
            disk_free_percent_min: 0,
            keep_days: 1,
            provenance: None,
        })
    }

    const A: ClientKey = ClientKey(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    const B: ClientKey = ClientKey(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn a_bucket_per_client_refills_over_a_minute() {
        let l = limits(2, 100);
        let t0 = Instant::now();
        let home = std::env::temp_dir();
        let a1 = l.admit(A, &home, t0).unwrap();
        let a2 = l.admit(A, &home, t0).unwrap();
        match l.admit(A, &home, t0) {
            Err(Limited::Wait { retry_after_s, .. }) => assert_eq!(retry_after_s, 30),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(l.admit(B, &home, t0).is_ok(), "another client has its own bucket");
        assert!(l.admit(A, &home, t0 + Duration::from_secs(30)).is_ok(), "one run back after 30 s");
        drop((a1, a2));
    }

    #[test]
    fn the_queue_is_bounded_and_frees_when_runs_end() {
        let l = limits(100, 2);
        let home = std::env::temp_dir();
        let now = Instant::now();
        let a = l.admit(A, &home, now).unwrap();
        let b = l.admit(B, &home, now).unwrap();
        assert!(matches!(l.admit(A, &home, now), Err(Limited::Wait { retry_after_s: QUEUE_RETRY_AFTER_S, .. })));
        drop(a);
        let _c = l.admit(A, &home, now).unwrap();
        drop(b);
    }

    #[test]
    fn uploads_count_per_client_per_day() {
        let l = limits(1, 1);
        let day2 = 2 * DAY_S;
        l.charge_upload(A, 600, day2 + 10).unwrap();
        l.charge_upload(B, 900, day2 + 10).unwrap();
        match l.charge_upload(A, 500, day2 + 20) {
            Err(Limited::Wait { retry_after_s, .. }) => assert_eq!(retry_after_s, DAY_S - 20),
            other => panic!("{other:?}"),
        }
        l.charge_upload(A, 400, day2 + 30).unwrap();
        l.charge_upload(A, 1000, day2 + DAY_S).unwrap();
    }

    #[test]
    fn free_space_is_read() {
        let (percent, bytes) = free_percent(&std::env::temp_dir()).unwrap();
        assert!((0.0..=100.0).contains(&percent) && bytes > 0);
    }
}
