//! Placement: where a node stands among the peers that could run a job. Every node ranks the
//! same way from what every node sees alike (the ledger's completions, announced capabilities),
//! and waits its place's stagger before claiming (see the parent module's documentation).

use std::collections::BTreeMap;

use shoal_dag::Hash;

use super::NodeCore;
use crate::capabilities::{Capabilities, TCG_VM_SPEED_PER_MILLE, VmAccel, mismatches};
use crate::ledger::{JobState, NodeId};

/// Peers' announced capabilities, shared between cores (a simulator hands one table to all its
/// nodes). Built once per change of what peers announce.
#[derive(Clone, Debug, Default)]
pub struct PeerTable {
    /// By rendezvous key: capabilities and ln(speed).
    peers: BTreeMap<u64, (Capabilities, f64)>,
}

impl PeerTable {
    pub fn new(caps: impl IntoIterator<Item = (NodeId, Capabilities)>) -> PeerTable {
        PeerTable {
            peers: caps
                .into_iter()
                .map(|(n, c)| {
                    let ln_speed = ln_speed(c.speed);
                    (key64(&n), (c, ln_speed))
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

pub(super) fn ln_speed(speed: u32) -> f64 {
    (f64::from(speed.max(1)) / f64::from(crate::capabilities::SPEED_REFERENCE)).ln()
}

/// What a node's ln(speed) counts for in placing a job: less for an `isolation: vm` job on a node
/// that runs microVMs under TCG ([`TCG_VM_SPEED_PER_MILLE`]), and its emulated speed for a job of
/// an architecture it emulates.
fn ln_speed_for(ln_speed: f64, req: &shoal_dag::Requirements, caps: &Capabilities) -> f64 {
    let ln_speed = match req.arch {
        Some(a) if a != caps.arch => caps.speed_for(Some(a)).map_or(ln_speed, self::ln_speed),
        _ => ln_speed,
    };
    if req.isolation == Some(shoal_dag::Isolation::Vm) && caps.vm_accel == Some(VmAccel::Tcg) {
        ln_speed + (f64::from(TCG_VM_SPEED_PER_MILLE) / 1000.0).ln()
    } else {
        ln_speed
    }
}

/// A 64-bit mixer (splitmix64's finaliser): rendezvous scores from a job's point and a node's key
/// in a few ns, so ranking a job among 10k peers costs microseconds, not 10k BLAKE3 hashes.
pub(super) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(super) fn key64(id: &NodeId) -> u64 {
    u64::from_le_bytes(id[..8].try_into().expect("8 bytes"))
}

pub(super) fn point(dag: &Hash, job: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&dag.0);
    h.update(job.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

impl NodeCore {
    /// This node's place for job `idx` of `dag` among the known peers that could run it: 0 claims
    /// first. See the module's documentation for the order.
    pub(super) fn rank_for(&self, dag: &Hash, idx: u32, now_ms: u64) -> u64 {
        let Some(s) = self.sched.get(dag) else { return 0 };
        let job = &s.dag.jobs[idx as usize];
        let (req, point) = (&job.requirements, s.point[idx as usize]);
        // Bytes of the job's inputs each node holds, as the runner of a dependency.
        let mut held: Vec<(u64, u64)> = Vec::new();
        for &d in &s.deps[idx as usize] {
            if let Some(JobState::Done { node, bytes, .. }) =
                self.ledger.job_state(dag, &s.dag.jobs[d as usize].id, now_ms)
            {
                let k = key64(&node);
                match held.iter_mut().find(|(n, _)| *n == k) {
                    Some(e) => e.1 += bytes,
                    None => held.push((k, bytes)),
                }
            }
        }
        let min = self.cfg.locality_bytes_min;
        let local = |p: u64| {
            let bytes = held.iter().find(|(n, _)| *n == p).map_or(0, |e| e.1);
            if bytes >= min { bytes } else { 0 }
        };
        // The longer the chain a job starts, the more its node's speed decides when the DAG ends:
        // the full exponent for the jobs starting the longest chain, a quarter for the last jobs.
        let k = f64::from(self.cfg.speed_exponent)
            * (0.25 + 0.75 * f64::from(s.height[idx as usize]) / f64::from(s.max_height.max(1)));
        // Weighted rendezvous in log space: ln(-ln u) - k ln(speed), smaller first.
        let weighted = |p: u64, ln_speed: f64| {
            let u = ((mix(point ^ p) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (-u.ln()).ln() - k * ln_speed
        };
        let mine = (local(self.me), weighted(self.me, ln_speed_for(self.ln_speed, req, &self.caps)));
        let peers = self.dag_peers.get(dag).unwrap_or(&self.peers);
        let mut rank = 0;
        for &p in peers.iter().filter(|&&p| p != self.me) {
            let ln_speed = match self.peer_caps.peers.get(&p) {
                Some((c, _)) if !mismatches(req, c).is_empty() => continue,
                Some((c, ln)) => ln_speed_for(*ln, req, c),
                None => 0.0,
            };
            let theirs = local(p);
            if theirs != mine.0 {
                rank += u64::from(theirs > mine.0);
                continue;
            }
            rank += u64::from(weighted(p, ln_speed) < mine.1);
        }
        rank
    }
}
