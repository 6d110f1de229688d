//! The commands the API sends the loop, and how the loop answers each.

use std::collections::BTreeMap;

use libp2p::PeerId;
use shoal_dag::{Dag, Hash};
use shoal_mesh::ledger::NodeId;
use shoal_mesh::lost::{self, Unfetchable, Verdict};
use tokio::sync::oneshot;
use tracing::warn;

use super::views::StatusView;
use super::{Node, now_unix_ms};
use crate::api::{FactView, Metrics, Peers};

/// Completions of an action as (record, maker), earliest first, and the live peers.
pub(crate) type CacheCandidates = (Vec<(Hash, NodeId)>, Vec<NodeId>);

/// What the API asks of the loop; each is answered on its `reply` channel.
pub(crate) enum Cmd {
    /// A pinned DAG (stored as a blob already) to submit from here; answered once other nodes
    /// hold the blobs it needs (or none is connected) and the Submit fact is durable, or with
    /// why the blobs could not be copied (then nothing was submitted).
    Submit {
        hash: Hash,
        dag: Dag,
        max_attempts: u32,
        reply: oneshot::Sender<Result<SubmitAck, String>>,
    },
    /// The ledger's view: of one DAG (with every run of each job), or of all.
    Status {
        dag: Option<Hash>,
        reply: oneshot::Sender<StatusView>,
    },
    Cancel {
        dag: Hash,
        reply: oneshot::Sender<bool>,
    },
    /// Every fact about each job of one DAG, in clock order; None if the ledger has no such DAG.
    Facts {
        dag: Hash,
        reply: oneshot::Sender<Option<BTreeMap<String, Vec<FactView>>>>,
    },
    Peers {
        reply: oneshot::Sender<Peers>,
    },
    /// Counters for `/v1/metrics`.
    Metrics {
        reply: oneshot::Sender<Metrics>,
    },
    /// Test-only (`--test-partitions`): refuse (or accept again) these peers at the swarm.
    Block {
        peers: Vec<PeerId>,
        block: bool,
        reply: oneshot::Sender<()>,
    },
    /// A compacted DAG's summary, read back after the start: its completions answer the
    /// mesh-wide cache again.
    Summary {
        summary: Box<shoal_mesh::ledger::DagSummary>,
    },
    /// Who may hold the blobs of a run record: its runner first, then every live peer.
    Providers {
        first: Option<NodeId>,
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    /// A completion's outputs could be fetched from no live peer: reported lost, so the job runs
    /// again, when `shoal_mesh::lost::judge` says so (not if its runner is alive: then the failure
    /// is taken as passing). Answers whether it was reported.
    Lost {
        output: Unfetchable,
        reply: oneshot::Sender<bool>,
    },
    /// What `shoal_mesh::lost::judge` says of an input a claimed job could not fetch; the job's
    /// run gives its claim up (and the core reports the output lost) on `Report` or `NotCurrent`,
    /// and asks again later otherwise.
    JudgeLost {
        output: Unfetchable,
        reply: oneshot::Sender<Verdict>,
    },
    /// The mesh-wide action cache: completions of `action` in any DAG of the ledger, as (record,
    /// its maker), earliest first, and the live peers (who else may hold their blobs).
    Cached {
        action: Hash,
        reply: oneshot::Sender<CacheCandidates>,
    },
    /// The records whose results this node must keep whatever its store's budget
    /// (`budget::kept_results`).
    KeptResults {
        reply: oneshot::Sender<std::collections::HashSet<Hash>>,
    },
    /// The store is over its budget with nothing left to evict (`full`), or under it again.
    StoreFull {
        full: bool,
    },
    /// Whether `record` was made by a quarantined node.
    Refused {
        record: Hash,
        reply: oneshot::Sender<bool>,
    },
    /// `shoal verify`: the done jobs of `dag` (or `job`) to run again here, or why none can be.
    VerifyPlan {
        dag: Hash,
        job: Option<String>,
        reply: oneshot::Sender<Result<super::verify::Plan, String>>,
    },
    /// A run again of `record` (made by `node`, a completion of `job` of `dag`) here gave other
    /// outputs (`rerun`): quarantine `node` and report the completion lost.
    Quarantine {
        node: NodeId,
        dag: Hash,
        job: String,
        record: Hash,
        rerun: Hash,
        reason: String,
        reply: oneshot::Sender<()>,
    },
}

/// An acknowledged submit.
#[derive(Clone, Debug)]
pub(crate) struct SubmitAck {
    /// The other nodes that hold every blob the DAG needs; empty when no other node was
    /// connected (the DAG then depends on this node until a peer has fetched them).
    pub holders: Vec<NodeId>,
}

impl Node {
    pub(super) async fn on_cmd(&mut self, cmd: Cmd) {
        let now = now_unix_ms();
        match cmd {
            Cmd::Submit { hash, dag, max_attempts, reply } => self.start_submit(hash, dag, max_attempts, reply).await,
            Cmd::Status { dag, reply } => {
                if let Some(d) = dag {
                    self.watch_if_outside(d);
                }
                let _ = reply.send(self.status_view(now, dag));
            }
            Cmd::Cancel { dag, reply } => {
                let known = self.core.ledger().has_dag(&dag);
                if known {
                    self.core.cancel(now, dag);
                    self.after_step().await;
                }
                let _ = reply.send(known);
            }
            Cmd::Peers { reply } => {
                let _ = reply.send(self.peers_view());
            }
            Cmd::Facts { dag, reply } => {
                self.watch_if_outside(dag);
                let _ = reply.send(self.facts_view(&dag));
            }
            Cmd::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            Cmd::Block { peers, block, reply } => {
                for p in peers {
                    if block {
                        self.net.block(p);
                    } else {
                        self.net.unblock(p);
                    }
                }
                if !block {
                    for a in self.opts.join.clone() {
                        let _ = self.net.dial(a);
                    }
                }
                let _ = reply.send(());
            }
            Cmd::JudgeLost { output, reply } => {
                let _ = reply.send(lost::judge(self.core.ledger(), now, self.core.id(), &self.live_peers(), &output));
            }
            Cmd::Lost { output, reply } => {
                let verdict = lost::judge(self.core.ledger(), now, self.core.id(), &self.live_peers(), &output);
                let report = verdict == Verdict::Report;
                if report {
                    let Unfetchable { dag, job, record, .. } = output;
                    warn!(%dag, job, %record, "no live peer holds a job's outputs: reporting them lost");
                    self.core.report_lost(now, dag, job, record);
                    self.after_step().await;
                }
                let _ = reply.send(report);
            }
            Cmd::Refused { record, reply } => {
                let ledger = self.core.ledger();
                let _ = reply.send(ledger.made_by(&record).is_some_and(|m| ledger.quarantine_of(&m).is_some()));
            }
            Cmd::VerifyPlan { dag, job, reply } => {
                let plan = super::verify::plan(&self.core, self.core.id(), dag, job.as_deref(), self.live_peers(), now);
                let _ = reply.send(plan);
            }
            Cmd::Quarantine { node, dag, job, record, rerun, reason, reply } => {
                self.core.quarantine(now, node, (dag, job), record, rerun, reason);
                self.after_step().await;
                let _ = reply.send(());
            }
            Cmd::KeptResults { reply } => {
                let mut nodes = self.live_peers();
                nodes.push(self.core.id());
                let holders = self.opts.settings.replicas;
                let _ = reply.send(super::budget::kept_results(&self.core, self.core.id(), &nodes, holders, now));
            }
            Cmd::StoreFull { full } => {
                self.claim_waits.store_full = full;
                self.update_claiming();
            }
            Cmd::Cached { action, reply } => {
                let _ = reply.send((self.core.ledger().cached(&action), self.live_peers()));
            }
            Cmd::Summary { summary } => self.core.restore_compacted(&summary),
            Cmd::Providers { first, reply } => {
                let mut list: Vec<NodeId> = first.into_iter().collect();
                list.extend(self.live_peers().into_iter().filter(|p| Some(*p) != first));
                let _ = reply.send(list);
            }
        }
    }
}
