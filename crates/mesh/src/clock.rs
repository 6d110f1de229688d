//! What time the mesh thinks it is, from its peers' announcements: each [`Announce`] carries when
//! its author sent it by its own clock (`sent_unix_ms`), and the receiver notes how far that is
//! from its own clock when it arrives. The median of those offsets over the peers heard is the
//! mesh's clock as seen from here: one liar (a PC with a dead CMOS battery) among three peers does
//! not move it. Pure: the driver passes both times in.
//!
//! `shoal node --clock-from-mesh` (the live image passes it when NTP failed) takes that offset as
//! its own ([`ClockStep::Take`]) and claims nothing until it has heard one peer's time; without
//! the flag a node trusts its own clock and says once when the mesh disagrees with it by more than
//! [`CLOCK_SKEW_MAX_MS`] ([`ClockStep::Warn`]).
//!
//! [`Announce`]: crate::wire::Announce

use std::collections::BTreeMap;

use crate::ledger::NodeId;
use crate::settings::CLOCK_SKEW_MAX_MS;

/// Peers whose clock offset is kept; further peers are not timed (the median of this many is as
/// good as of more, and the map stays bounded whatever the mesh's size).
pub const TIMED_PEERS_MAX: usize = 256;
/// The least change of the mesh's offset a node following it takes, in ms: below this, one-way
/// delay and the peers' own jitter, not a clock that is wrong.
pub const CLOCK_STEP_MIN_MS: u64 = 1_000;

/// The peers' clocks as seen from this node.
#[derive(Clone, Debug, Default)]
pub struct MeshClock {
    /// Per peer, its clock minus this node's local clock at its latest announcement, in ms.
    offsets: BTreeMap<NodeId, i64>,
}

/// What a node should do about its clock after an announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockStep {
    /// Nothing: no peer heard, or the clock already agrees.
    Keep,
    /// Follow the mesh: use local clock + this offset (ms) as now.
    Take(i64),
    /// This node trusts its own clock, and the mesh's median reads this far from it (ms): say so.
    Warn(i64),
}

impl MeshClock {
    pub fn new() -> MeshClock {
        MeshClock::default()
    }

    /// `node` announced that it sent at `sent_unix_ms` by its clock; it arrived at
    /// `received_unix_ms` by this node's local clock (not corrected by any offset it took).
    pub fn handle_announce(&mut self, node: NodeId, sent_unix_ms: u64, received_unix_ms: u64) {
        if self.offsets.len() >= TIMED_PEERS_MAX && !self.offsets.contains_key(&node) {
            return;
        }
        let offset = i128::from(sent_unix_ms) - i128::from(received_unix_ms);
        let offset = offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.offsets.insert(node, offset);
    }

    /// A peer gone (forgotten by liveness): its clock no longer counts.
    pub fn forget(&mut self, node: &NodeId) {
        self.offsets.remove(node);
    }

    /// How many peers' clocks are known.
    pub fn heard(&self) -> usize {
        self.offsets.len()
    }

    /// The peers' clocks minus this node's local clock, in ms: the median over the peers heard.
    /// For an even count, the one of the two middle offsets nearer this node's clock: an average
    /// would put the mesh's clock halfway between an honest peer and a liar, and this node's own
    /// clock is the best third opinion there is (two honest peers and one liar a year behind give
    /// [-1 y, 0]: 0). None before any peer is heard.
    pub fn median_offset_ms(&self) -> Option<i64> {
        let mut all: Vec<i64> = self.offsets.values().copied().collect();
        all.sort_unstable();
        let n = all.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(all[n / 2]),
            _ => Some(*[all[n / 2 - 1], all[n / 2]].iter().min_by_key(|o| (o.unsigned_abs(), **o)).expect("two")),
        }
    }

    /// What to do now: a node following the mesh (`from_mesh`) whose offset in use is
    /// `current_offset_ms` takes the median when it moved by at least [`CLOCK_STEP_MIN_MS`]; a node
    /// trusting its own clock is told when the median is more than [`CLOCK_SKEW_MAX_MS`] away.
    pub fn step(&self, from_mesh: bool, current_offset_ms: i64) -> ClockStep {
        let Some(median) = self.median_offset_ms() else { return ClockStep::Keep };
        if from_mesh {
            if median.abs_diff(current_offset_ms) >= CLOCK_STEP_MIN_MS {
                return ClockStep::Take(median);
            }
        } else if median.unsigned_abs() > CLOCK_SKEW_MAX_MS {
            return ClockStep::Warn(median);
        }
        ClockStep::Keep
    }
}

/// An offset in ms for people: "-365 d", "+2 h", "+45 s", "-300 ms" (in the largest unit it
/// fills, rounded).
pub fn describe_offset(offset_ms: i64) -> String {
    let sign = if offset_ms < 0 { "-" } else { "+" };
    let ms = offset_ms.unsigned_abs();
    let (per, unit) = match ms {
        _ if ms >= 86_400_000 => (86_400_000, "d"),
        _ if ms >= 3_600_000 => (3_600_000, "h"),
        _ if ms >= 60_000 => (60_000, "min"),
        _ if ms >= 1_000 => (1_000, "s"),
        _ => (1, "ms"),
    };
    // Rounded: a clock set a year back reads 365 d off, not 364 d and some hours.
    let n = (ms + per / 2) / per;
    format!("{sign}{n} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR_MS: u64 = 365 * 86_400_000;
    const NOW: u64 = 1_800_000_000_000;

    fn node(i: u8) -> NodeId {
        [i; 32]
    }

    #[test]
    fn the_median_ignores_one_liar_among_three() {
        let mut c = MeshClock::new();
        assert_eq!(c.median_offset_ms(), None);
        assert_eq!(c.step(true, 0), ClockStep::Keep, "nothing heard: nothing to take");
        c.handle_announce(node(1), NOW + 40, NOW);
        c.handle_announce(node(2), NOW - YEAR_MS, NOW);
        c.handle_announce(node(3), NOW + 60, NOW);
        assert_eq!(c.median_offset_ms(), Some(40));
        // A liar a year ahead instead: the same.
        c.handle_announce(node(2), NOW + YEAR_MS, NOW);
        assert_eq!(c.median_offset_ms(), Some(60));
        c.forget(&node(3));
        assert_eq!(c.heard(), 2);
        assert_eq!(c.median_offset_ms(), Some(40), "two: the one nearer this clock, not an average with the liar");
        c.handle_announce(node(2), NOW - YEAR_MS, NOW);
        assert_eq!(c.median_offset_ms(), Some(40), "a liar behind is not taken either");
    }

    #[test]
    fn a_node_a_year_behind_takes_the_mesh_time_and_an_honest_one_warns() {
        let mut c = MeshClock::new();
        // This node's clock reads a year behind its one peer's.
        c.handle_announce(node(1), NOW, NOW - YEAR_MS);
        let year = YEAR_MS as i64;
        assert_eq!(c.step(true, 0), ClockStep::Take(year));
        assert_eq!(c.step(true, year), ClockStep::Keep, "already taken");
        assert_eq!(c.step(true, year - 500), ClockStep::Keep, "below CLOCK_STEP_MIN_MS: jitter");
        assert_eq!(c.step(false, 0), ClockStep::Warn(year));
        let mut near = MeshClock::new();
        near.handle_announce(node(1), NOW + CLOCK_SKEW_MAX_MS, NOW);
        assert_eq!(near.step(false, 0), ClockStep::Keep, "within the bound: no warning");
        assert_eq!(near.step(true, 0), ClockStep::Take(CLOCK_SKEW_MAX_MS as i64));
    }

    #[test]
    fn timed_peers_are_bounded() {
        let mut c = MeshClock::new();
        for i in 0..TIMED_PEERS_MAX as u64 + 10 {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_le_bytes());
            c.handle_announce(id, NOW, NOW);
        }
        assert_eq!(c.heard(), TIMED_PEERS_MAX);
        c.handle_announce(u64_node(0), u64::MAX, 0);
        assert_eq!(c.median_offset_ms(), Some(0), "a known peer is updated; an absurd offset saturates");
    }

    fn u64_node(i: u64) -> NodeId {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_le_bytes());
        id
    }

    #[test]
    fn offsets_read_as_people_say_them() {
        for (ms, text) in [
            (-(YEAR_MS as i64), "-365 d"),
            (7_200_000, "+2 h"),
            (90_000, "+2 min"),
            (-(YEAR_MS as i64) + 3, "-365 d"),
            (45_000, "+45 s"),
            (-300, "-300 ms"),
            (0, "+0 ms"),
        ] {
            assert_eq!(describe_offset(ms), text);
        }
    }
}
