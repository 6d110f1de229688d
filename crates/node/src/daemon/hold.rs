//! A submitted DAG outlives its submitter: before a node acknowledges a submit, other nodes hold
//! every blob the DAG needs that only this node may have (the DAG blob, its jobs' images with
//! their rootfs trees, its `blake3:` inputs: uploaded `file:` inputs among them).
//!
//! Pull, over the sync protocol: the submitter asks the connected peers that rank first for the
//! DAG (rendezvous hash, as for output replicas) to hold it (`SyncReq::Hold`); each fetches what
//! it lacks over iroh, from the submitter first, and pins it. A peer answers an ask as soon as it
//! holds everything, or with its progress after [`HOLD_ANSWER_WAIT_MS`] (`SyncResp::Holding`),
//! and the submitter asks again at once: a long poll, so a DAG whose blobs the peer has costs one
//! round trip, and no request comes near the sync timeout however large the blobs. A peer that
//! fails is replaced by the next one; when all failed, a new round starts a moment later, until
//! the submit's time limit. The
//! Submit fact is made only once `replicas - 1` peers (at least one) hold the blobs, so an
//! acknowledged DAG never names blobs that die with its submitter. With no other node connected
//! the submit is acknowledged at once, and the reply says the DAG depends on this node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::mesh::net::{SyncRequest, SyncResponse};
use anyhow::{Result, anyhow};
use libp2p::PeerId;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use shoal_dag::{Dag, Hash, ImageRef};
use shoal_mesh::ledger::NodeId;
use shoal_mesh::wire::{self, HoldState, SyncReq, SyncResp};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{Node, Shared, SubmitAck, exec, fetch_dag, node_of_peer, now_unix_ms, peer_id_of_node};

/// How often waiting submits and unanswered asks are looked at, in ms.
pub(super) const HOLD_TICK_MS: u64 = 100;
/// How long a peer keeps an ask of a DAG it is still fetching before it answers with its
/// progress, in ms (well under the sync protocol's timeout).
const HOLD_ANSWER_WAIT_MS: u64 = 1_000;
/// How long a submitting node waits before it asks its peers again when every one failed to
/// hold the DAG's blobs (a peer that has just connected may not know our blob address yet), in ms.
const HOLD_RETRY_MS: u64 = 1_000;
/// Rounds in which every connected peer failed to hold a DAG's blobs before its submit is
/// refused (a blob nobody has fails every round; a peer that just connected, one at most).
const HOLD_ROUNDS_MAX: u32 = 3;
/// How often a submit waiting for its blobs to be held logs its progress, in ms.
const HOLD_PROGRESS_LOG_MS: u64 = 5_000;
/// DAGs whose blobs this node fetches at once for submitting peers; past it, it answers busy.
const HOLDS_IN_FLIGHT_MAX: usize = 16;
/// Final answers kept for asks that have not come back; past it they are dropped (an asker that
/// comes back after that is answered by a new hold, at once when the blobs are here).
const HOLDS_KEPT_MAX: usize = 256;
/// Progress reports of hold tasks waiting for the loop.
const HOLD_UPDATES_QUEUED_MAX: usize = 256;

/// A hold task's report: the DAG and where its holding stands.
type HoldUpdate = (Hash, HoldState);

/// A node's side of holding: its own submits waiting for holders, and the DAGs it holds (or
/// fetches) for other submitters.
pub(super) struct Holding {
    /// Submits waiting for other nodes to hold their DAG's blobs, by DAG.
    submits: BTreeMap<Hash, PendingSubmit>,
    /// Our `Hold` asks in flight: request -> (DAG, the peer asked).
    pub(super) requests: BTreeMap<OutboundRequestId, (Hash, NodeId)>,
    /// DAGs this node fetches (or fetched) for a submitting peer, and how far it got; a final
    /// state stays until it is answered.
    holds: BTreeMap<Hash, HoldState>,
    /// Asks not answered yet: the DAG, where to answer, and when to answer with progress.
    waiting: Vec<(Hash, ResponseChannel<SyncResponse>, Instant)>,
    /// Hold tasks report here (their progress and their end).
    pub(super) updates: (mpsc::Sender<HoldUpdate>, mpsc::Receiver<HoldUpdate>),
    /// A submit's peers answered: move it on after this event.
    pub(super) dirty: bool,
}

impl Default for Holding {
    fn default() -> Self {
        Holding {
            submits: BTreeMap::new(),
            requests: BTreeMap::new(),
            holds: BTreeMap::new(),
            waiting: Vec::new(),
            updates: mpsc::channel(HOLD_UPDATES_QUEUED_MAX),
            dirty: false,
        }
    }
}

impl Holding {
    /// Whether anything waits for time to pass.
    pub(super) fn active(&self) -> bool {
        !self.submits.is_empty() || !self.waiting.is_empty()
    }
}

/// A submit whose DAG's blobs are being copied to other nodes before it is acknowledged.
struct PendingSubmit {
    dag: Dag,
    max_attempts: u32,
    /// Every API request submitting this DAG meanwhile.
    replies: Vec<oneshot::Sender<Result<SubmitAck, String>>>,
    /// Other nodes that hold the blobs needed, and how many are wanted.
    holders: Vec<NodeId>,
    wanted: usize,
    /// Peers not asked yet in this round, best ranked first.
    candidates: Vec<NodeId>,
    /// Peers asked, and where each stands.
    asking: BTreeMap<NodeId, Asking>,
    /// The last failure of each peer that failed, for the error when all do.
    failures: BTreeMap<NodeId, String>,
    started: Instant,
    deadline: Instant,
    /// When the next round may start, once every peer of this one failed, and the rounds
    /// that ended so.
    next_round: Option<Instant>,
    rounds_failed: u32,
    last_log: Instant,
}

/// One peer asked to hold a DAG's blobs.
struct Asking {
    /// Whether an ask is in flight (it is answered within about [`HOLD_ANSWER_WAIT_MS`]).
    in_flight: bool,
    /// Its last progress: (items held, items, bytes arrived).
    progress: (u32, u32, u64),
}

fn short(node: &NodeId) -> String {
    hex::encode(&node[..6])
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

impl Node {
    /// Connected peers, ranked for `dag` by rendezvous hash (every submitter of one DAG asks the
    /// same peers first).
    fn hold_candidates(&self, dag: Hash) -> Vec<NodeId> {
        shoal_mesh::replicas::dag_holders(dag, self.connected.iter().filter_map(node_of_peer))
    }

    pub(super) async fn start_submit(
        &mut self,
        hash: Hash,
        dag: Dag,
        max_attempts: u32,
        reply: oneshot::Sender<Result<SubmitAck, String>>,
    ) {
        if let Some(pending) = self.hold.submits.get_mut(&hash) {
            pending.replies.push(reply);
            return;
        }
        let candidates = self.hold_candidates(hash);
        if candidates.is_empty() {
            info!(%hash, "submitted with no other node connected: the DAG depends on this node until a peer fetches its blobs");
            self.finish_submit(hash, dag, max_attempts, vec![reply], Vec::new()).await;
            return;
        }
        let now = Instant::now();
        let timeout = Duration::from_secs(self.opts.submit_replication_timeout_s);
        self.hold.submits.insert(
            hash,
            PendingSubmit {
                dag,
                max_attempts,
                replies: vec![reply],
                holders: Vec::new(),
                wanted: self.opts.settings.replicas.max(2) - 1,
                candidates,
                asking: BTreeMap::new(),
                failures: BTreeMap::new(),
                started: now,
                deadline: now + timeout,
                next_round: None,
                rounds_failed: 0,
                last_log: now,
            },
        );
        self.drive_submits().await;
    }

    /// Makes the Submit fact durable (and gossips it), then acknowledges every request for it.
    async fn finish_submit(
        &mut self,
        hash: Hash,
        dag: Dag,
        max_attempts: u32,
        replies: Vec<oneshot::Sender<Result<SubmitAck, String>>>,
        holders: Vec<NodeId>,
    ) {
        let now = now_unix_ms();
        if !self.core.ledger().has_dag(&hash) {
            // A mesh above `--dag-topics-above-nodes` gives the DAG a group and a topic of its
            // own; this node follows it while its submitter may be asking how it goes.
            let topic_nodes = self.opts.settings.submit_topic_nodes(self.live_peers().len() + 1);
            self.core.submit_to_group(now, hash, dag, max_attempts, topic_nodes);
            if topic_nodes > 0 {
                self.dag_topics.watch(hash);
            }
        } else if self.core.dag(&hash).is_none() {
            self.core.handle_dag(now, hash, dag);
        }
        // Persist (and gossip) before answering: an acknowledged submit survives a kill -9.
        self.after_step().await;
        for reply in replies {
            let _ = reply.send(Ok(SubmitAck { holders: holders.clone() }));
        }
    }

    /// Moves every pending submit on: asks peers, re-asks those still fetching, replaces those
    /// that failed, acknowledges what is held and refuses what ran out of time.
    pub(super) async fn drive_submits(&mut self) {
        let now = Instant::now();
        let dags: Vec<Hash> = self.hold.submits.keys().copied().collect();
        for hash in dags {
            let Some(p) = self.hold.submits.get_mut(&hash) else { continue };
            let round_over = p.asking.is_empty() && p.candidates.is_empty();
            // Fewer holders than wanted are enough once the time is up or every other peer
            // failed: the DAG survives this node.
            if p.holders.len() >= p.wanted || (!p.holders.is_empty() && (now >= p.deadline || round_over)) {
                let p = self.hold.submits.remove(&hash).expect("present");
                info!(%hash, holders = ?p.holders.iter().map(short).collect::<Vec<_>>(),
                    "the DAG's blobs are held by other nodes in {} ms; submitted", p.started.elapsed().as_millis());
                self.finish_submit(hash, p.dag, p.max_attempts, p.replies, p.holders).await;
                continue;
            }
            let out_of_rounds = round_over && p.next_round.is_none() && p.rounds_failed + 1 >= HOLD_ROUNDS_MAX;
            if now >= p.deadline || out_of_rounds {
                let p = self.hold.submits.remove(&hash).expect("present");
                let cause = if out_of_rounds {
                    format!("every connected node failed to hold them, in {HOLD_ROUNDS_MAX} rounds")
                } else {
                    format!(
                        "none did within {} s (raise it with --submit-replication-timeout-s)",
                        self.opts.submit_replication_timeout_s
                    )
                };
                let why = refusal(&p, &cause);
                warn!(%hash, "submit refused: {why}");
                for reply in p.replies {
                    let _ = reply.send(Err(why.clone()));
                }
                continue;
            }
            if round_over {
                match p.next_round {
                    None => {
                        p.rounds_failed += 1;
                        p.next_round = Some(now + Duration::from_millis(HOLD_RETRY_MS));
                        continue;
                    }
                    Some(t) if t > now => continue,
                    Some(_) => {
                        p.next_round = None;
                        let holders = p.holders.clone();
                        let fresh: Vec<NodeId> =
                            self.hold_candidates(hash).into_iter().filter(|n| !holders.contains(n)).collect();
                        let p = self.hold.submits.get_mut(&hash).expect("present");
                        p.candidates = fresh;
                        debug!(%hash, peers = p.candidates.len(), "asking the peers again to hold a DAG's blobs");
                    }
                }
            }
            let p = self.hold.submits.get_mut(&hash).expect("present");
            while p.holders.len() + p.asking.len() < p.wanted && !p.candidates.is_empty() {
                let node = p.candidates.remove(0);
                debug!(%hash, peer = %short(&node), "asking a peer to hold a DAG's blobs");
                p.asking.insert(node, Asking { in_flight: false, progress: (0, 0, 0) });
            }
            if now.duration_since(p.last_log) >= Duration::from_millis(HOLD_PROGRESS_LOG_MS) {
                p.last_log = now;
                for (node, a) in &p.asking {
                    let (done, items, bytes) = a.progress;
                    info!(%hash, peer = %short(node), "submit waiting for a peer to hold the DAG's blobs: {done} of {items} items, {} so far, {} s left",
                        mib(bytes), p.deadline.saturating_duration_since(now).as_secs());
                }
            }
            let due: Vec<NodeId> = p.asking.iter().filter(|(_, a)| !a.in_flight).map(|(n, _)| *n).collect();
            for node in due {
                let Some(peer) = peer_id_of_node(&node) else {
                    self.hold_failed(hash, node, "its node id is not an ed25519 key".into());
                    continue;
                };
                let id = self.net.request(&peer, SyncRequest(wire::encode(&SyncReq::Hold { dag: hash })));
                self.hold.requests.insert(id, (hash, node));
                if let Some(a) = self.hold.submits.get_mut(&hash).and_then(|p| p.asking.get_mut(&node)) {
                    a.in_flight = true;
                }
            }
        }
    }

    /// A peer's answer to our `Hold`.
    pub(super) fn on_hold_response(&mut self, dag: Hash, node: NodeId, bytes: &[u8]) {
        let state = match wire::decode::<SyncResp>(bytes) {
            Ok(SyncResp::Holding { dag: d, state }) if d == dag => state,
            Ok(SyncResp::Refused { reason }) => HoldState::Failed { reason: format!("refused the request: {reason}") },
            Ok(other) => HoldState::Failed { reason: format!("answered {other:?} instead") },
            Err(e) => HoldState::Failed { reason: e.to_string() },
        };
        let Some(p) = self.hold.submits.get_mut(&dag) else { return };
        match state {
            HoldState::Held { bytes } => {
                info!(%dag, peer = %short(&node), "a peer holds the DAG's blobs ({} fetched)", mib(bytes));
                p.asking.remove(&node);
                if !p.holders.contains(&node) {
                    p.holders.push(node);
                }
            }
            HoldState::Fetching { done, items, bytes } => {
                // Asked again at once: the peer answers when it is done or a moment later.
                if let Some(a) = p.asking.get_mut(&node) {
                    a.in_flight = false;
                    a.progress = (done, items, bytes);
                }
            }
            HoldState::Failed { reason } => self.hold_failed(dag, node, reason),
        }
        self.hold.dirty = true;
    }

    pub(super) fn hold_failed(&mut self, dag: Hash, node: NodeId, reason: String) {
        let Some(p) = self.hold.submits.get_mut(&dag) else { return };
        debug!(%dag, peer = %short(&node), "a peer cannot hold the DAG's blobs: {reason}");
        p.asking.remove(&node);
        p.failures.insert(node, reason);
        self.hold.dirty = true;
    }

    /// Answers the asks that waited long enough with the progress of their DAG, and moves the
    /// waiting submits on.
    pub(super) async fn hold_tick(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.hold.waiting).into_iter().partition(|w| w.2 <= now);
        self.hold.waiting = waiting;
        for (dag, channel, _) in due {
            let state =
                self.hold.holds.get(&dag).cloned().unwrap_or(HoldState::Fetching { done: 0, items: 0, bytes: 0 });
            self.answer_hold(dag, channel, state);
        }
        if !self.hold.submits.is_empty() {
            self.drive_submits().await;
        }
    }

    fn answer_hold(&mut self, dag: Hash, channel: ResponseChannel<SyncResponse>, state: HoldState) {
        if !matches!(state, HoldState::Fetching { .. }) {
            // A final state is answered once; an ask after it starts over (quickly, when the
            // blobs are here).
            self.hold.holds.remove(&dag);
        }
        self.net.respond(channel, SyncResponse(wire::encode(&SyncResp::Holding { dag, state })));
    }

    /// A hold task's progress, or its end: answers the asks waiting for it when it ended.
    pub(super) fn on_hold_update(&mut self, dag: Hash, state: HoldState) {
        let fetching = matches!(state, HoldState::Fetching { .. });
        self.hold.holds.insert(dag, state.clone());
        if fetching {
            return;
        }
        let (answer, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.hold.waiting).into_iter().partition(|w| w.0 == dag);
        self.hold.waiting = waiting;
        for (_, channel, _) in answer {
            self.answer_hold(dag, channel, state.clone());
        }
    }

    /// A peer asks this node to hold `dag`'s blobs: starts fetching them unless it is; answers
    /// once they are held (or cannot be), or with the progress after [`HOLD_ANSWER_WAIT_MS`].
    pub(super) fn hold(&mut self, dag: Hash, asker: &PeerId, channel: ResponseChannel<SyncResponse>) {
        match self.hold.holds.get(&dag) {
            Some(HoldState::Fetching { .. }) => {}
            Some(state) => {
                let state = state.clone();
                return self.answer_hold(dag, channel, state);
            }
            None => {
                let fetching = self.hold.holds.values().filter(|s| matches!(s, HoldState::Fetching { .. })).count();
                if fetching >= HOLDS_IN_FLIGHT_MAX {
                    let reason = format!(
                        "busy: fetching the blobs of {HOLDS_IN_FLIGHT_MAX} DAGs for other submitters already; ask another node"
                    );
                    return self.answer_hold(dag, channel, HoldState::Failed { reason });
                }
                if self.hold.holds.len() >= HOLDS_KEPT_MAX {
                    self.hold.holds.retain(|_, s| matches!(s, HoldState::Fetching { .. }));
                }
                self.hold.holds.insert(dag, HoldState::Fetching { done: 0, items: 0, bytes: 0 });
                // The asker has what it submitted; the other live peers may hold some of it too.
                let first = node_of_peer(asker);
                let providers: Vec<NodeId> =
                    first.into_iter().chain(self.live_peers().into_iter().filter(|n| Some(*n) != first)).collect();
                let (shared, updates) = (self.shared.clone(), self.hold.updates.0.clone());
                tokio::spawn(async move {
                    let state = match hold_dag(&shared, dag, &providers, &updates).await {
                        Ok(bytes) => HoldState::Held { bytes },
                        Err(e) => {
                            warn!(%dag, "cannot hold a submitted DAG's blobs for its submitter: {e:#}");
                            HoldState::Failed { reason: format!("{e:#}") }
                        }
                    };
                    let _ = updates.send((dag, state)).await;
                });
            }
        }
        self.hold.waiting.push((dag, channel, Instant::now() + Duration::from_millis(HOLD_ANSWER_WAIT_MS)));
    }
}

/// The error of a submit whose blobs no other node came to hold in time.
fn refusal(p: &PendingSubmit, cause: &str) -> String {
    let mut peers: Vec<String> = p
        .asking
        .iter()
        .map(|(n, a)| {
            let (done, items, bytes) = a.progress;
            format!("node {} was still fetching ({done} of {items} items, {})", short(n), mib(bytes))
        })
        .collect();
    peers.extend(
        p.failures
            .iter()
            .filter(|(n, _)| !p.asking.contains_key(*n))
            .map(|(n, why)| format!("node {}: {why}", short(n))),
    );
    format!(
        "the DAG was not submitted: another node must hold its images and inputs first, so that it survives this \
         node, and {cause} ({}); check that every blake3: input exists on this node or a peer, and the peers \
         (`shoal peers`), then submit again",
        if peers.is_empty() { "no peer answered".to_string() } else { peers.join("; ") }
    )
}

/// Fetches and pins every blob `dag` needs: the DAG blob, each job's image (blob and rootfs
/// tree) and each `blake3:` input or stdin, reporting progress to `updates`. Returns the bytes
/// that arrived.
async fn hold_dag(
    shared: &Shared,
    dag_hash: Hash,
    providers: &[NodeId],
    updates: &mpsc::Sender<HoldUpdate>,
) -> Result<u64> {
    if providers.is_empty() {
        return Err(anyhow!("no peer to fetch from"));
    }
    // Progress is best effort: a full queue skips a report, never the work.
    let progress = |done: u32, items: u32, bytes: u64| {
        let _ = updates.try_send((dag_hash, HoldState::Fetching { done, items, bytes }));
    };
    let before = shared.store.has(dag_hash).await?;
    let dag = fetch_dag(shared, dag_hash, providers).await?;
    let mut bytes = if before { 0 } else { shared.store.size(dag_hash).await?.unwrap_or(0) };
    let mut images = std::collections::BTreeSet::new();
    let mut inputs = std::collections::BTreeSet::new();
    for job in &dag.jobs {
        if let ImageRef::Blake3(id) = &job.image {
            images.insert(*id);
        }
        for r in job.inputs.values().chain(job.stdin.iter()) {
            if let Some(h) = r.root().known_blake3() {
                inputs.insert(h);
            }
        }
    }
    let items = (1 + images.len() + inputs.len()) as u32;
    let mut done = 1;
    progress(done, items, bytes);
    for id in images {
        let arrived = Arc::new(AtomicU64::new(0));
        let counted = arrived.clone();
        let blobs = &shared.blobs;
        shared
            .complete
            .once(id, async move {
                let n = blobs.fetch_image(id, providers).await?;
                counted.store(n, Ordering::Relaxed);
                Ok(())
            })
            .await
            .map_err(|e| anyhow!("fetching image {id}: {e:#}"))?;
        // Pinned, so that `gc` keeps it while the DAG may run: an image fetched for a job is
        // kept only while tagged or pinned.
        shared.store.pin(id)?;
        if let Some(image) = shared.store.get_image(id).await? {
            shared.store.pin(image.rootfs)?;
        }
        bytes += arrived.load(Ordering::Relaxed);
        done += 1;
        progress(done, items, bytes);
    }
    for h in inputs {
        bytes += exec::fetch_bare(shared, h, providers).await?;
        shared.store.pin(h)?;
        done += 1;
        progress(done, items, bytes);
    }
    shared.store.flush().await?;
    Ok(bytes)
}
