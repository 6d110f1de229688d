//! The HTTP API's bodies: one type per route's request or answer, built by the server
//! (`daemon`'s handlers and loop) and read by its clients (`client`, `held`), so both sides
//! agree by construction rather than by string keys. Errors are `api_error`'s.
//!
//! The JSON is what `daemon/openapi.json` documents, byte for byte as before these types
//! existed. Bodies that `serde_json::json!` used to build had their keys in sorted order (its map
//! is a `BTreeMap`): those types declare their fields in that order, and [`JobStatus`] its
//! variants in the order of their names (so a map keyed by it orders as the strings did). The
//! tests below pin each type to a literal of its JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_dag::{Digest, Hash};
use shoal_mesh::capabilities::Capabilities;

pub use crate::explorer::catalogue::Problem;

/// Every error answer (`api_error::ApiError`), with its status code: what went wrong and what to
/// do, as the command would have printed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// One per option of a request that is wrong (the explorer's forms).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// When to ask again, in seconds (with a 429, as `Retry-After` says too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The node's id (hex of its ed25519 public key).
    pub node: String,
    pub ok: bool,
}

/// An answer that only says the request was carried out (`POST /v1/test/block`,
/// `/v1/local/ready`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
}

/// A job's state as the API shows it: the ledger's, or `unschedulable` for an open job no node
/// of the mesh can run. Declared in the order of the names (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Cancelled,
    Claimed,
    Done,
    Failed,
    Open,
    Unschedulable,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Cancelled,
        JobStatus::Claimed,
        JobStatus::Done,
        JobStatus::Failed,
        JobStatus::Open,
        JobStatus::Unschedulable,
    ];

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Cancelled => "cancelled",
            JobStatus::Claimed => "claimed",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Open => "open",
            JobStatus::Unschedulable => "unschedulable",
        }
    }

    /// Whether the job has ended (or cannot start): nothing will change it without a new submit.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Unschedulable)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/dags` (201): the DAG as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The pinned DAG's hash.
    pub dag: Hash,
    /// No other node was connected to hold its blobs: it needs this node until a peer fetched them.
    pub depends_on_this_node: bool,
    /// The other nodes that hold every blob the DAG needs (hex node ids).
    pub holders: Vec<String>,
    /// Its jobs' ids, in the DAG's order.
    pub jobs: Vec<String>,
}

/// `GET /v1/dags`: every DAG in this node's ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagList {
    pub dags: Vec<DagSummary>,
    pub node: String,
}

/// One DAG of [`DagList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagSummary {
    pub dag: Hash,
    /// How many jobs it has.
    pub jobs: usize,
    /// How many of them are in each state (states no job is in are left out).
    pub states: BTreeMap<JobStatus, usize>,
}

/// `GET /v1/dags/{dag}`: one DAG's jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagStatus {
    pub dag: Hash,
    pub jobs: BTreeMap<String, JobView>,
    /// Whether this node has the DAG's content (it fetches it by hash).
    pub known: bool,
    pub node: String,
    /// The group that schedules it, when it has a topic of its own (a mesh larger than
    /// `--dag-topics-above-nodes` when it was submitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<DagGroup>,
    /// This node's uploads of the DAG's outputs: the presigned ones it keeps (as the node the DAG
    /// was submitted to) and those of the jobs it ran; pending, done or failed and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploads: Vec<crate::data::upload::UploadRecord>,
}

/// The nodes that schedule a DAG with a topic of its own, as this node works them out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagGroup {
    /// The size its submit asked for.
    pub size: u32,
    /// The nodes in it (hex ids); fewer than `size` when fewer fit it, empty until this node
    /// has the DAG's content.
    pub nodes: Vec<String>,
    /// Whether this node is one of them (if not, it follows the DAG's topic for a while
    /// because it was asked about it).
    pub member: bool,
}

/// One job of a DAG.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub state: JobStatus,
    /// The node that runs it (claimed) or ran it (done), hex.
    pub node: Option<String>,
    /// Its run record, once done.
    pub record: Option<Hash>,
    /// Why each failed attempt failed, oldest first.
    pub failures: Vec<String>,
    /// Every run record reported done for the job, when more than one run finished (a race or
    /// a partition): equal outputs are one result, unequal ones a non-deterministic job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<DoneRun>,
    /// Set by the API once it compared the runs' outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nondeterministic: Option<bool>,
    /// Why no node of the mesh can run it, when none can; or, open under the DAG's quorum, that
    /// it waits for another node to run it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Done with a result of the mesh-wide action cache: the node that made it (hex), which is
    /// not `node` (the one that took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<String>,
}

/// `POST /v1/dags/{dag}/verify`: the done jobs the node ran again, and what it found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub dag: Hash,
    /// The node that ran them again (hex).
    pub node: String,
    pub jobs: Vec<VerifiedJob>,
}

/// One job run again by `shoal verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedJob {
    pub job: String,
    /// The completion checked, and the node that made it (hex).
    pub record: Hash,
    pub maker: String,
    /// The record of the run again, when it ran.
    pub rerun: Option<Hash>,
    /// Whether the outputs and exit are the same; absent when the run again did not end.
    pub agrees: Option<bool>,
    /// What differs (`output `o``, `the exit`); the maker is then quarantined.
    pub differs: Vec<String>,
    /// Why the job could not be run again.
    pub error: Option<String>,
}

/// A run of a job reported done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRun {
    pub node: String,
    pub record: Hash,
}

/// `GET /v1/dags/{dag}/facts`: every fact about each job of a DAG, in clock order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagFacts {
    pub dag: Hash,
    pub jobs: BTreeMap<String, Vec<FactView>>,
    pub node: String,
}

/// One fact about a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactView {
    /// claim, renew (protocol 1), done, fail, lost or release (the ledger's `Body::kind`).
    pub kind: String,
    /// Its author.
    pub node: String,
    /// Its hybrid logical clock: its author's wall clock (Unix ms) and a counter.
    pub at_unix_ms: u64,
    pub counter: u32,
}

/// `POST /v1/dags/{dag}/cancel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub cancelled: bool,
    pub dag: Hash,
}

/// `GET /v1/peers`: this node first, then every node it heard from; the peers refused for their
/// protocol; what this node's clock is taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    pub peers: Vec<PeerView>,
    /// Peers disconnected for speaking another protocol, newest refusals kept.
    #[serde(default)]
    pub refused: Vec<RefusedPeer>,
    #[serde(default)]
    pub clock: ClockView,
    /// Whether this node is reachable from outside, and the relays it reserved on (absent from
    /// a node older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatView>,
    /// Nodes whose outputs another node's `shoal verify` found wrong: their results answer no
    /// cache and they claim no job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<QuarantinedNode>,
}

/// A quarantined node, and why (the ledger's `Quarantine` fact).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedNode {
    pub node: String,
    /// The node whose run again disagreed (hex).
    pub by: String,
    /// The quarantined node's record, and the record of the run again.
    pub record: Hash,
    pub rerun: Hash,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// This node behind NAT or not: what AutoNAT found and the relays it reserved a slot on by itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatView {
    /// "public", "private" or "unknown" (no probe answered yet).
    pub reachability: String,
    /// Peer ids of the relays holding a reservation for it (not those of `--listen …/p2p-circuit`).
    pub relays: Vec<String>,
}

/// A peer refused for its protocol (`shoal node` logs it once at ERROR level).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedPeer {
    pub peer_id: String,
    /// Where its connection went.
    pub addr: Option<String>,
    /// Its release as it says it (`shoal/0.1.0`).
    pub agent: String,
    /// Its protocol version, if it names one.
    pub protocol: Option<u32>,
    /// Why, and what to do.
    pub reason: String,
    pub refused_ms_ago: u64,
}

/// This node's clock: its own, or the mesh's (`--clock-from-mesh`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockView {
    /// It takes the mesh's time (`--clock-from-mesh`).
    pub from_mesh: bool,
    /// The offset it adds to its local clock, in ms (0 unless it took the mesh's).
    pub offset_ms: i64,
    /// The median of its peers' clocks minus its local clock, in ms; None before any is heard.
    pub mesh_offset_ms: Option<i64>,
    /// Peers whose clocks are counted.
    pub peers_timed: usize,
    /// Whether it claims jobs (not before a peer's time is heard, with `from_mesh`).
    pub claiming: bool,
    /// The same for people: "own clock", "taking the mesh's time, offset -365 d", ...
    pub summary: String,
}

/// One node of [`Peers`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub node: String,
    pub peer_id: String,
    pub hostname: String,
    /// This is the node answering.
    pub me: bool,
    pub connected: bool,
    /// Its shoal release, as it announced it (empty from a node older than the field).
    #[serde(default)]
    pub version: String,
    /// None until an announcement with capabilities arrived.
    pub caps: Option<Capabilities>,
    /// Its API's URL, as it announced it.
    pub http: Option<String>,
    pub running: u32,
    pub free_cores: u32,
    /// Facts in its ledger.
    pub facts: u64,
    pub last_seen_ms_ago: u64,
    /// How this node reaches it now: "direct" or "relay" (absent when not connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The relay's peer id, with `via: "relay"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The direct connection is a hole punch (DCUtR) that replaced a relayed one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hole_punched: bool,
}

/// `POST /v1/blobs` (201), and each row of `GET /v1/local/blobs`: a stored blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlob {
    pub hash: Hash,
    pub size: u64,
}

/// `GET /v1/metrics`: counters of this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// DAGs compacted out of the ledger (their summaries kept).
    #[serde(default)]
    pub compacted_dags: usize,
    /// Peers with a connection now.
    pub connected: usize,
    pub cpu_sys_ms: u64,
    pub cpu_user_ms: u64,
    /// Facts in the ledger.
    pub facts: usize,
    /// Relayed connections DCUtR replaced by a direct one, and attempts that failed (the
    /// connection stayed relayed), since start.
    #[serde(default)]
    pub hole_punches: u64,
    #[serde(default)]
    pub hole_punches_failed: u64,
    /// Bytes of the ledger as stored (facts and the compacted index).
    #[serde(default)]
    pub ledger_bytes: u64,
    /// Equal on two nodes exactly when they hold the same facts (the soak compares them).
    pub ledger_digest: String,
    pub libp2p_bytes_in: u64,
    pub libp2p_bytes_out: u64,
    pub node: String,
    /// Peers heard from within the liveness timeout.
    pub peers_live: usize,
    /// DAGs whose run (context on the runner) this node keeps: those with a job running here.
    pub prepared_dags: usize,
    /// Relays this node holds a reservation on by itself (behind NAT).
    #[serde(default)]
    pub relays_reserved: usize,
    /// Mesh jobs running here.
    pub running: usize,
    /// Runs alive on this node's runner, of every kind: mesh DAGs, explorer and local runs.
    pub runs_live: usize,
    pub uptime_ms: u64,
}

/// What kind of change an [`Event`] is. Its name is also the SSE event's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Submitted,
    Claimed,
    Done,
    Failed,
    Cancelled,
    Lost,
    Released,
}

impl EventKind {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Claimed => "claimed",
            EventKind::Done => "done",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
            EventKind::Lost => "lost",
            EventKind::Released => "released",
        }
    }
}

/// `GET /v1/events` (SSE), one per event: a change the ledger saw, for `shoal watch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub dag: Hash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The fact's author.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the fact was made, by its author's clock (its HLC's wall time, Unix ms).
    pub at_unix_ms: u64,
}

/// `POST /v1/test/block` (only with `--test-partitions`): refuse, or accept again, these peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// libp2p peer ids.
    pub peers: Vec<String>,
    pub block: bool,
}

/// `$SHOAL_HOME/node.json` and `--ready-file`: where a running node listens (local commands
/// find it by this file, scripts wait for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    /// Its blob endpoint's addresses.
    pub blobs: Vec<SocketAddr>,
    /// Its API's URL.
    pub http: String,
    /// Its libp2p listen addresses, each ending in `/p2p/<peer id>`.
    pub listen: Vec<String>,
    pub node: String,
    pub peer_id: String,
}

/// `POST /v1/local/images/import` and `/v1/local/images/pull` (201): the stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    /// Its id (the hash of its manifest).
    pub image: Hash,
}

/// `POST /v1/local/images/pull`: what to pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Pull over plain HTTP (a registry on a trusted network).
    #[serde(default)]
    pub insecure: bool,
    pub reference: String,
    /// A local tag for it.
    pub tag: Option<String>,
    /// The platform to pull, `linux/arm64` (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// `POST /v1/local/gc`: what the collection did (`shoal_blobs::GcReport`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    pub blobs_kept: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub corrupt_removed: u64,
    pub rootfs_bytes_freed: u64,
    pub rootfs_removed: u64,
}

impl From<shoal_blobs::GcReport> for Collected {
    fn from(r: shoal_blobs::GcReport) -> Collected {
        Collected {
            blobs_kept: r.blobs_kept,
            blobs_removed: r.blobs_removed,
            bytes_freed: r.bytes_freed,
            corrupt_removed: r.corrupt_removed,
            rootfs_bytes_freed: r.rootfs_bytes_freed,
            rootfs_removed: r.rootfs_removed,
        }
    }
}

impl From<Collected> for shoal_blobs::GcReport {
    fn from(c: Collected) -> shoal_blobs::GcReport {
        shoal_blobs::GcReport {
            blobs_kept: c.blobs_kept,
            blobs_removed: c.blobs_removed,
            bytes_freed: c.bytes_freed,
            rootfs_removed: c.rootfs_removed,
            rootfs_bytes_freed: c.rootfs_bytes_freed,
            corrupt_removed: c.corrupt_removed,
        }
    }
}

/// `POST /v1/local/runs`: a `shoal run` sent to the node holding the home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// `microvm` or `namespace`.
    pub backend: String,
    /// At most this many of the node's cores for this run (the node's `--cores` bounds every
    /// run it makes together).
    pub cores: Option<u32>,
    /// The DAG file's text.
    pub dag: String,
    /// Each `file:` input by path as written in the DAG: its uploaded digest, or why the client
    /// could not read it (the job that needs it fails with that, as it would have locally).
    #[serde(default)]
    pub files: BTreeMap<String, FileInput>,
    /// Print the results as JSON (the client's `--json`).
    #[serde(default)]
    pub json: bool,
    /// The DAG file's name as the client shows it (error locations).
    pub name: String,
    #[serde(default)]
    pub no_cache: bool,
    /// Checked, but the node's warm pool (`shoal node --warm-vms`) is the one its runs use.
    pub warm_vms: usize,
}

/// A `file:` input of a [`RunRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileInput {
    /// Uploaded first (`POST /v1/local/blobs` or `/v1/local/trees`).
    Sent(Digest),
    /// The client could not read it: why.
    Unreadable { error: String },
}

/// The last line of a local run's stream (`application/x-ndjson`; the run's
/// `run::RunEvent`s come before it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunEnd {
    /// It ran: what `shoal run` prints, and whether every job succeeded.
    End { event: EndTag, ok: bool, stderr: String, stdout: String },
    /// It could not run.
    Error { error: String, event: ErrorTag },
}

impl RunEnd {
    pub fn end(ok: bool, stdout: String, stderr: String) -> RunEnd {
        RunEnd::End { event: EndTag::End, ok, stderr, stdout }
    }

    pub fn error(error: String) -> RunEnd {
        RunEnd::Error { error, event: ErrorTag::Error }
    }
}

/// The `"event": "end"` of [`RunEnd::End`]. A field of its own, not a serde tag, because the
/// error line has `error` before `event` (sorted keys, see the module doc) and a tag comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndTag {
    End,
}

/// The `"event": "error"` of [`RunEnd::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorTag {
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    const H1: &str = "blake3:0101010101010101010101010101010101010101010101010101010101010101";
    const H2: &str = "blake3:0202020202020202020202020202020202020202020202020202020202020202";

    fn h(s: &str) -> Hash {
        s.parse().unwrap()
    }

    /// `value` serializes to exactly `json` (the bytes the API sent before these types), and
    /// `json` reads back as `value`.
    #[track_caller]
    fn check<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(value: T, json: &str) {
        assert_eq!(serde_json::to_string(&value).unwrap(), json);
        assert_eq!(serde_json::from_str::<T>(json).unwrap(), value);
    }

    #[test]
    fn errors() {
        check(ErrorBody { error: "no".into(), problems: vec![], retry_after_s: None }, r#"{"error":"no"}"#);
        check(
            ErrorBody {
                error: "bad options".into(),
                problems: vec![Problem { message: "too long".into(), option: "define".into() }],
                retry_after_s: Some(3),
            },
            r#"{"error":"bad options","problems":[{"message":"too long","option":"define"}],"retry_after_s":3}"#,
        );
    }

    #[test]
    fn health_and_done() {
        check(Health { node: "ab".into(), ok: true }, r#"{"node":"ab","ok":true}"#);
        check(Done { ok: true }, r#"{"ok":true}"#);
    }

    #[test]
    fn job_states_are_lowercase_names_in_their_order() {
        let names: Vec<String> = JobStatus::ALL.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
        assert_eq!(
            names,
            [r#""cancelled""#, r#""claimed""#, r#""done""#, r#""failed""#, r#""open""#, r#""unschedulable""#]
        );
        for s in JobStatus::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        // The derived order is the names' order, so `states` maps print as they did.
        let mut sorted = JobStatus::ALL;
        sorted.sort_by_key(|s| s.as_str());
        assert_eq!(sorted, JobStatus::ALL);
        let terminal: Vec<JobStatus> = JobStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [JobStatus::Cancelled, JobStatus::Done, JobStatus::Failed, JobStatus::Unschedulable]);
        assert!(serde_json::from_str::<JobStatus>(r#""Done""#).is_err());
    }

    #[test]
    fn submitted() {
        check(
            Submitted {
                dag: h(H1),
                depends_on_this_node: false,
                holders: vec!["cd".into()],
                jobs: vec!["a".into(), "b".into()],
            },
            &format!(r#"{{"dag":"{H1}","depends_on_this_node":false,"holders":["cd"],"jobs":["a","b"]}}"#),
        );
    }

    #[test]
    fn dag_list() {
        let states = BTreeMap::from([(JobStatus::Open, 1), (JobStatus::Done, 2), (JobStatus::Claimed, 3)]);
        check(
            DagList { dags: vec![DagSummary { dag: h(H1), jobs: 6, states }], node: "ab".into() },
            &format!(
                r#"{{"dags":[{{"dag":"{H1}","jobs":6,"states":{{"claimed":3,"done":2,"open":1}}}}],"node":"ab"}}"#
            ),
        );
    }

    #[test]
    fn dag_status_with_every_kind_of_job() {
        let open = JobView {
            state: JobStatus::Unschedulable,
            node: None,
            record: None,
            failures: vec!["oom".into()],
            runs: vec![],
            nondeterministic: None,
            cached_from: None,
            reason: Some("no node has 64 cores".into()),
        };
        let done = JobView {
            state: JobStatus::Done,
            node: Some("cd".into()),
            record: Some(h(H2)),
            failures: vec![],
            runs: vec![DoneRun { node: "cd".into(), record: h(H2) }, DoneRun { node: "ef".into(), record: h(H1) }],
            nondeterministic: Some(true),
            reason: None,
            cached_from: Some("ab".into()),
        };
        check(
            DagStatus {
                dag: h(H1),
                jobs: BTreeMap::from([("a".into(), open), ("b".into(), done)]),
                known: true,
                node: "ab".into(),
                group: None,
                uploads: Vec::new(),
            },
            &format!(
                concat!(
                    r#"{{"dag":"{H1}","jobs":{{"a":{{"state":"unschedulable","node":null,"record":null,"#,
                    r#""failures":["oom"],"reason":"no node has 64 cores"}},"b":{{"state":"done","node":"cd","#,
                    r#""record":"{H2}","failures":[],"runs":[{{"node":"cd","record":"{H2}"}},"#,
                    r#"{{"node":"ef","record":"{H1}"}}],"nondeterministic":true,"cached_from":"ab"}}}},"known":true,"#,
                    r#""node":"ab"}}"#
                ),
                H1 = H1,
                H2 = H2
            ),
        );
    }

    #[test]
    fn dag_facts_and_cancel() {
        let fact = FactView { kind: "claim".into(), node: "ab".into(), at_unix_ms: 1_700_000_000_000, counter: 2 };
        check(
            DagFacts { dag: h(H1), jobs: BTreeMap::from([("a".into(), vec![fact])]), node: "cd".into() },
            &format!(
                r#"{{"dag":"{H1}","jobs":{{"a":[{{"kind":"claim","node":"ab","at_unix_ms":1700000000000,"counter":2}}]}},"node":"cd"}}"#
            ),
        );
        check(Cancelled { cancelled: true, dag: h(H1) }, &format!(r#"{{"cancelled":true,"dag":"{H1}"}}"#));
    }

    #[test]
    fn peers() {
        let caps = Capabilities {
            arch: shoal_dag::Arch::X86_64,
            cores: 4,
            memory_bytes: 1 << 30,
            cpu_flags: Default::default(),
            gpus: vec![],
            labels: BTreeMap::new(),
            microvm: true,
            vm_accel: None,
            speed: 1000,
            emulated: Vec::new(),
        };
        let caps_json = serde_json::to_string(&caps).unwrap();
        let me = PeerView {
            node: "ab".into(),
            peer_id: "12D3".into(),
            hostname: "h".into(),
            me: true,
            connected: true,
            version: "0.1.0".into(),
            caps: Some(caps),
            http: Some("http://127.0.0.1:7170".into()),
            running: 1,
            free_cores: 3,
            facts: 9,
            last_seen_ms_ago: 0,
            via: None,
            relay: None,
            hole_punched: false,
        };
        let other = PeerView { me: false, connected: false, caps: None, http: None, ..me.clone() };
        let refused = RefusedPeer {
            peer_id: "12D3old".into(),
            addr: Some("/ip4/127.0.0.1/tcp/4001".into()),
            agent: "shoal/0.0.9".into(),
            protocol: Some(0),
            reason: "this node speaks protocol 1".into(),
            refused_ms_ago: 5,
        };
        let clock = ClockView {
            from_mesh: true,
            offset_ms: -7,
            mesh_offset_ms: Some(-7),
            peers_timed: 1,
            claiming: true,
            summary: "s".into(),
        };
        check(
            Peers { peers: vec![me, other], refused: vec![refused], clock, nat: None, quarantined: vec![] },
            &format!(
                concat!(
                    r#"{{"peers":[{{"node":"ab","peer_id":"12D3","hostname":"h","me":true,"connected":true,"#,
                    r#""version":"0.1.0","#,
                    r#""caps":{caps},"http":"http://127.0.0.1:7170","running":1,"free_cores":3,"facts":9,"#,
                    r#""last_seen_ms_ago":0}},{{"node":"ab","peer_id":"12D3","hostname":"h","me":false,"#,
                    r#""connected":false,"version":"0.1.0","caps":null,"http":null,"running":1,"free_cores":3,"facts":9,"#,
                    r#""last_seen_ms_ago":0}}],"#,
                    r#""refused":[{{"peer_id":"12D3old","addr":"/ip4/127.0.0.1/tcp/4001","agent":"shoal/0.0.9","#,
                    r#""protocol":0,"reason":"this node speaks protocol 1","refused_ms_ago":5}}],"#,
                    r#""clock":{{"from_mesh":true,"offset_ms":-7,"mesh_offset_ms":-7,"peers_timed":1,"#,
                    r#""claiming":true,"summary":"s"}}}}"#
                ),
                caps = caps_json
            ),
        );
    }

    #[test]
    fn uploads_and_metrics() {
        check(StoredBlob { hash: h(H1), size: 5 }, &format!(r#"{{"hash":"{H1}","size":5}}"#));
        check(
            // The fixture the handlers' tests serve: each counter told apart by its value.
            crate::daemon::testing::metrics(9),
            concat!(
                r#"{"compacted_dags":15,"connected":1,"cpu_sys_ms":2,"cpu_user_ms":3,"facts":4,"hole_punches":12,"#,
                r#""hole_punches_failed":13,"ledger_bytes":16,"ledger_digest":"d","#,
                r#""libp2p_bytes_in":5,"libp2p_bytes_out":6,"node":"ab","peers_live":7,"prepared_dags":8,"#,
                r#""relays_reserved":14,"running":9,"runs_live":10,"uptime_ms":11}"#
            ),
        );
    }

    #[test]
    fn events() {
        let ev = Event {
            kind: EventKind::Failed,
            dag: h(H1),
            job: Some("a".into()),
            node: "ab".into(),
            detail: Some("exit 1".into()),
            at_unix_ms: 7,
        };
        check(
            ev.clone(),
            &format!(r#"{{"kind":"failed","dag":"{H1}","job":"a","node":"ab","detail":"exit 1","at_unix_ms":7}}"#),
        );
        check(
            Event { kind: EventKind::Cancelled, job: None, detail: None, ..ev },
            &format!(r#"{{"kind":"cancelled","dag":"{H1}","node":"ab","at_unix_ms":7}}"#),
        );
        for kind in [
            EventKind::Submitted,
            EventKind::Claimed,
            EventKind::Done,
            EventKind::Failed,
            EventKind::Cancelled,
            EventKind::Lost,
            EventKind::Released,
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn block_request_and_node_file() {
        check(BlockRequest { peers: vec!["12D3".into()], block: true }, r#"{"peers":["12D3"],"block":true}"#);
        check(
            NodeFile {
                blobs: vec!["127.0.0.1:4919".parse().unwrap()],
                http: "http://127.0.0.1:7170".into(),
                listen: vec!["/ip4/127.0.0.1/tcp/4001/p2p/12D3".into()],
                node: "ab".into(),
                peer_id: "12D3".into(),
            },
            concat!(
                r#"{"blobs":["127.0.0.1:4919"],"http":"http://127.0.0.1:7170","#,
                r#""listen":["/ip4/127.0.0.1/tcp/4001/p2p/12D3"],"node":"ab","peer_id":"12D3"}"#
            ),
        );
    }

    #[test]
    fn local_images_pull_and_gc() {
        check(StoredImage { image: h(H1) }, &format!(r#"{{"image":"{H1}"}}"#));
        check(
            PullRequest { insecure: false, reference: "alpine:3".into(), tag: None, platform: None },
            r#"{"insecure":false,"reference":"alpine:3","tag":null}"#,
        );
        // An older client may leave `insecure` out.
        assert!(!serde_json::from_str::<PullRequest>(r#"{"reference":"alpine:3","tag":"a"}"#).unwrap().insecure);
        let report = shoal_blobs::GcReport {
            blobs_kept: 1,
            blobs_removed: 2,
            bytes_freed: 3,
            rootfs_removed: 4,
            rootfs_bytes_freed: 5,
            corrupt_removed: 6,
        };
        check(
            Collected::from(report.clone()),
            concat!(
                r#"{"blobs_kept":1,"blobs_removed":2,"bytes_freed":3,"corrupt_removed":6,"#,
                r#""rootfs_bytes_freed":5,"rootfs_removed":4}"#
            ),
        );
        assert_eq!(shoal_blobs::GcReport::from(Collected::from(report.clone())), report);
    }

    #[test]
    fn local_runs() {
        let digest = Digest { hash: h(H1), kind: shoal_dag::DigestKind::File, size: 3 };
        let digest_json = serde_json::to_string(&digest).unwrap();
        check(
            RunRequest {
                backend: "namespace".into(),
                cores: Some(2),
                dag: "{}".into(),
                files: BTreeMap::from([
                    ("a.txt".into(), FileInput::Sent(digest)),
                    ("b.txt".into(), FileInput::Unreadable { error: "gone".into() }),
                ]),
                json: false,
                name: "d.json".into(),
                no_cache: true,
                warm_vms: 0,
            },
            &format!(
                concat!(
                    r#"{{"backend":"namespace","cores":2,"dag":"{{}}","files":{{"a.txt":{d},"#,
                    r#""b.txt":{{"error":"gone"}}}},"json":false,"name":"d.json","no_cache":true,"warm_vms":0}}"#
                ),
                d = digest_json
            ),
        );
        check(
            RunEnd::end(true, "out".into(), "err".into()),
            r#"{"event":"end","ok":true,"stderr":"err","stdout":"out"}"#,
        );
        check(RunEnd::error("no".into()), r#"{"error":"no","event":"error"}"#);
        // A run's own events are not its end.
        assert!(serde_json::from_str::<RunEnd>(r#"{"event":"job","id":"a"}"#).is_err());
    }
}
