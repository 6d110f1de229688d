//! The wall clock as leases, records, tokens and the explorer's quotas read it: the system's,
//! moved by an offset when the node follows the mesh's time (`shoal node --clock-from-mesh`, for a
//! PC whose clock is wrong and that no NTP server corrected), so everything this process stamps
//! agrees with the mesh. One clock per process: a node is one process.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a test says this machine's clock is off by, in ms (`--test-clock-offset-ms`).
static TEST_OFFSET_MS: AtomicI64 = AtomicI64::new(0);
/// The offset taken from the mesh, in ms (0 unless `--clock-from-mesh` took one).
static MESH_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the Unix epoch as this process uses them: the local clock plus the offset
/// taken from the mesh (0 for a clock set before 1970).
pub fn now_unix_ms() -> u64 {
    local_unix_ms().saturating_add_signed(MESH_OFFSET_MS.load(Ordering::Relaxed))
}

/// This machine's clock, without the mesh's offset: what peers' clocks are compared with.
pub fn local_unix_ms() -> u64 {
    let system = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    system.saturating_add_signed(TEST_OFFSET_MS.load(Ordering::Relaxed))
}

/// Makes the local clock read `offset_ms` off the system's (tests of a machine whose clock is wrong).
pub fn set_test_offset_ms(offset_ms: i64) {
    TEST_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// Follows the mesh: [`now_unix_ms`] reads the local clock plus `offset_ms`.
pub fn set_mesh_offset_ms(offset_ms: i64) {
    MESH_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// The offset taken from the mesh, in ms.
pub fn mesh_offset_ms() -> i64 {
    MESH_OFFSET_MS.load(Ordering::Relaxed)
}
