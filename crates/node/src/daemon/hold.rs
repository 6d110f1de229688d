//! A submitted DAG outlives its submitter: before a node acknowledges a submit, other nodes hold
//! every blob the DAG needs that only this node may have (the DAG blob, its jobs' images with
//! their rootfs trees, its `blake3:` inputs: uploaded `file:` inputs among them).
//!
//! Pull, over the sync protocol: the submitter asks the connected peers that rank first for the
//! DAG (rendezvous hash, as for output replicas) to hold it (`SyncReq::Hold`); each fetches what
//! it lacks over iroh, from the submitter first, pins it, and answers every ask with where it
//! stands (`SyncResp::Holding`) until `Held` or `Failed`. A peer that fails is replaced by the next
//! one; when all failed, a new round starts a moment later, until the submit's time limit. The
//! Submit fact is made only once `replicas - 1` peers (at least one) hold the blobs, so an
//! acknowledged DAG never names blobs that die with its submitter. With no other node connected
//! the submit is acknowledged at once, and the reply says the DAG depends on this node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use libp2p::PeerId;
use shoal_dag::{Dag, Hash, ImageRef, InputRef};
use shoal_node::mesh::ledger::NodeId;
use shoal_node::mesh::net::SyncRequest;
use shoal_node::mesh::wire::{self, HoldState, SyncReq, SyncResp};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{
    HOLD_POLL_MS, HOLD_PROGRESS_LOG_MS, HOLD_RETRY_MS, HOLDS_IN_FLIGHT_MAX, Holds, Node, PendingSubmit, Shared,
    SubmitAck, exec, fetch_dag, node_of_peer, now_unix_ms, peer_id_of_node,
};

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
        let mut ranked: Vec<(blake3::Hash, NodeId)> = self
            .connected
            .iter()
            .filter_map(node_of_peer)
            .map(|n| {
                let mut h = blake3::Hasher::new();
                h.update(b"shoal hold");
                h.update(&dag.0);
                h.update(&n);
                (h.finalize(), n)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        ranked.into_iter().map(|(_, n)| n).collect()
    }

    pub(super) async fn start_submit(
        &mut self,
        hash: Hash,
        dag: Dag,
        max_attempts: u32,
        reply: oneshot::Sender<Result<SubmitAck, String>>,
    ) {
        if let Some(pending) = self.submits.get_mut(&hash) {
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
        self.submits.insert(
            hash,
            PendingSubmit {
                dag,
                max_attempts,
                replies: vec![reply],
                holders: Vec::new(),
                wanted: self.opts.replicas.max(2) - 1,
                candidates,
                asking: BTreeMap::new(),
                failures: BTreeMap::new(),
                started: now,
                deadline: now + timeout,
                next_round: None,
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
            self.core.submit(now, hash, dag, max_attempts);
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
        let dags: Vec<Hash> = self.submits.keys().copied().collect();
        for hash in dags {
            let Some(p) = self.submits.get_mut(&hash) else { continue };
            if p.holders.len() >= p.wanted || (now >= p.deadline && !p.holders.is_empty()) {
                let p = self.submits.remove(&hash).expect("present");
                info!(%hash, holders = ?p.holders.iter().map(short).collect::<Vec<_>>(),
                    "the DAG's blobs are held by other nodes in {} ms; submitted", p.started.elapsed().as_millis());
                self.finish_submit(hash, p.dag, p.max_attempts, p.replies, p.holders).await;
                continue;
            }
            if now >= p.deadline {
                let p = self.submits.remove(&hash).expect("present");
                let why = refusal(&p, self.opts.submit_replication_timeout_s);
                warn!(%hash, "submit refused: {why}");
                for reply in p.replies {
                    let _ = reply.send(Err(why.clone()));
                }
                continue;
            }
            if p.asking.is_empty() && p.candidates.is_empty() {
                match p.next_round {
                    None => {
                        p.next_round = Some(now + Duration::from_millis(HOLD_RETRY_MS));
                        continue;
                    }
                    Some(t) if t > now => continue,
                    Some(_) => {
                        p.next_round = None;
                        let holders = p.holders.clone();
                        let fresh: Vec<NodeId> =
                            self.hold_candidates(hash).into_iter().filter(|n| !holders.contains(n)).collect();
                        let p = self.submits.get_mut(&hash).expect("present");
                        p.candidates = fresh;
                        debug!(%hash, peers = p.candidates.len(), "asking the peers again to hold a DAG's blobs");
                    }
                }
            }
            let p = self.submits.get_mut(&hash).expect("present");
            while p.holders.len() + p.asking.len() < p.wanted && !p.candidates.is_empty() {
                let node = p.candidates.remove(0);
                debug!(%hash, peer = %short(&node), "asking a peer to hold a DAG's blobs");
                p.asking.insert(node, super::Asking { in_flight: false, next_ask: now, progress: (0, 0, 0) });
            }
            if now.duration_since(p.last_log) >= Duration::from_millis(HOLD_PROGRESS_LOG_MS) {
                p.last_log = now;
                for (node, a) in &p.asking {
                    let (done, items, bytes) = a.progress;
                    info!(%hash, peer = %short(node), "submit waiting for a peer to hold the DAG's blobs: {done} of {items} items, {} so far, {} s left",
                        mib(bytes), p.deadline.saturating_duration_since(now).as_secs());
                }
            }
            let due: Vec<NodeId> =
                p.asking.iter().filter(|(_, a)| !a.in_flight && a.next_ask <= now).map(|(n, _)| *n).collect();
            for node in due {
                let Some(peer) = peer_id_of_node(&node) else {
                    self.hold_failed(hash, node, "its node id is not an ed25519 key".into());
                    continue;
                };
                let id = self.net.request(&peer, SyncRequest(wire::encode(&SyncReq::Hold { dag: hash })));
                self.hold_requests.insert(id, (hash, node));
                if let Some(a) = self.submits.get_mut(&hash).and_then(|p| p.asking.get_mut(&node)) {
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
        let Some(p) = self.submits.get_mut(&dag) else { return };
        match state {
            HoldState::Held { bytes } => {
                info!(%dag, peer = %short(&node), "a peer holds the DAG's blobs ({} fetched)", mib(bytes));
                p.asking.remove(&node);
                if !p.holders.contains(&node) {
                    p.holders.push(node);
                }
            }
            HoldState::Fetching { done, items, bytes } => {
                if let Some(a) = p.asking.get_mut(&node) {
                    a.in_flight = false;
                    a.next_ask = Instant::now() + Duration::from_millis(HOLD_POLL_MS);
                    a.progress = (done, items, bytes);
                }
            }
            HoldState::Failed { reason } => self.hold_failed(dag, node, reason),
        }
    }

    pub(super) fn hold_failed(&mut self, dag: Hash, node: NodeId, reason: String) {
        let Some(p) = self.submits.get_mut(&dag) else { return };
        debug!(%dag, peer = %short(&node), "a peer cannot hold the DAG's blobs: {reason}");
        p.asking.remove(&node);
        p.failures.insert(node, reason);
    }

    /// A peer asks this node to hold `dag`'s blobs: starts fetching them, or says how far it got.
    /// A final answer (held, failed) is given once; asking again starts over (quickly, when the
    /// blobs are here).
    pub(super) fn hold(&mut self, dag: Hash, asker: &PeerId) -> HoldState {
        let mut holds = self.holds.lock().expect("holds lock");
        match holds.get(&dag) {
            Some(HoldState::Fetching { .. }) => return holds[&dag].clone(),
            Some(_) => return holds.remove(&dag).expect("present"),
            None => {}
        }
        if holds.len() >= HOLDS_IN_FLIGHT_MAX {
            return HoldState::Failed {
                reason: format!(
                    "busy: fetching the blobs of {HOLDS_IN_FLIGHT_MAX} DAGs for other submitters already; ask another node"
                ),
            };
        }
        let fetching = HoldState::Fetching { done: 0, items: 0, bytes: 0 };
        holds.insert(dag, fetching.clone());
        drop(holds);
        // The asker has what it submitted; the other live peers may hold some of it too.
        let first = node_of_peer(asker);
        let providers: Vec<NodeId> =
            first.into_iter().chain(self.live_peers().into_iter().filter(|n| Some(*n) != first)).collect();
        let (shared, holds) = (self.shared.clone(), self.holds.clone());
        tokio::spawn(async move {
            let state = match hold_dag(&shared, dag, &providers, &holds).await {
                Ok(bytes) => HoldState::Held { bytes },
                Err(e) => {
                    warn!(%dag, "cannot hold a submitted DAG's blobs for its submitter: {e:#}");
                    HoldState::Failed { reason: format!("{e:#}") }
                }
            };
            holds.lock().expect("holds lock").insert(dag, state);
        });
        fetching
    }
}

/// The error of a submit whose blobs no other node came to hold in time.
fn refusal(p: &PendingSubmit, timeout_s: u64) -> String {
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
        "the DAG was not submitted: no other node came to hold its blobs (images and inputs) within {timeout_s} s ({}); \
         a submit is acknowledged only once another node holds them, so that the DAG survives this node; \
         retry, check the peers with `shoal peers`, or start the node with a longer --submit-replication-timeout-s",
        if peers.is_empty() { "no peer answered".to_string() } else { peers.join("; ") }
    )
}

/// Fetches and pins every blob `dag` needs: the DAG blob, each job's image (blob and rootfs
/// tree) and each `blake3:` input or stdin, recording progress in `holds`. Returns the bytes
/// that arrived.
async fn hold_dag(shared: &Shared, dag_hash: Hash, providers: &[NodeId], holds: &Holds) -> Result<u64> {
    if providers.is_empty() {
        return Err(anyhow!("no peer to fetch from"));
    }
    let progress = |done: u32, items: u32, bytes: u64| {
        holds.lock().expect("holds lock").insert(dag_hash, HoldState::Fetching { done, items, bytes });
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
            if let InputRef::Blake3(h) = r {
                inputs.insert(*h);
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
