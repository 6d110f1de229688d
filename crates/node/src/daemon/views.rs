//! What the loop shows of its state: the ledger's view of DAGs and jobs, the peers, the facts
//! about a DAG's jobs, the events for `shoal watch`, the counters of `/v1/metrics`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use shoal_dag::Hash;
use shoal_mesh::capabilities::Capabilities;
use shoal_mesh::ledger::{Body, Fact, JobState};

use super::{Node, peer_id_of_node};

/// The ledger's view as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StatusView {
    pub node: String,
    pub dags: BTreeMap<String, DagView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DagView {
    pub jobs: BTreeMap<String, JobView>,
    /// Whether this node has the DAG's content (it fetches it by hash).
    pub known: bool,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct JobView {
    /// open, claimed, done, failed, cancelled, or unschedulable.
    pub state: &'static str,
    pub node: Option<String>,
    pub record: Option<Hash>,
    pub failures: Vec<String>,
    /// Every run record reported done for the job, when more than one run finished (a race or
    /// a partition): equal outputs are one result, unequal ones a non-deterministic job.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<DoneRun>,
    /// Set by the API once it compared the runs' outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nondeterministic: Option<bool>,
    /// Why no node of the mesh can run it, when none can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One fact about a job, as `/v1/dags/{dag}/facts` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FactView {
    /// claim, renew, done, fail, lost or release.
    pub kind: &'static str,
    /// Its author.
    pub node: String,
    /// Its hybrid logical clock: its author's wall clock (Unix ms) and a counter.
    pub at_unix_ms: u64,
    pub counter: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DoneRun {
    pub node: String,
    pub record: Hash,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PeerView {
    pub node: String,
    pub peer_id: String,
    pub hostname: String,
    pub me: bool,
    pub connected: bool,
    /// None until an announcement with capabilities arrived.
    pub caps: Option<Capabilities>,
    pub http: Option<String>,
    pub running: u32,
    pub free_cores: u32,
    pub facts: u64,
    pub last_seen_ms_ago: u64,
}

/// A change the ledger saw, for `shoal watch` (SSE).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    pub kind: &'static str,
    pub dag: Hash,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the fact was made, by its author's clock (its HLC's wall time, Unix ms).
    pub at_unix_ms: u64,
}

/// CPU this process has used: (user, system) ms.
pub(super) fn cpu_ms() -> (u64, u64) {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    // RUSAGE_SELF cannot fail; zeros if it somehow did.
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|ru| (ru.user_time().num_milliseconds() as u64, ru.system_time().num_milliseconds() as u64))
        .unwrap_or_default()
}

impl Node {
    pub(super) fn note_event(&self, fact: &Fact) {
        let node = hex::encode(fact.author);
        let at = fact.hlc.wall_ms;
        let claim_job = |claim: &Hash| match self.core.ledger().get(claim).map(|f| &f.body) {
            Some(Body::Claim { dag, job, .. }) => Some((*dag, job.clone())),
            _ => None,
        };
        let event = match &fact.body {
            Body::Submit { dag, jobs, .. } => Event {
                kind: "submitted",
                dag: *dag,
                job: None,
                node,
                detail: Some(format!("{} jobs", jobs.len())),
                at_unix_ms: at,
            },
            Body::Claim { dag, job, .. } => {
                Event { kind: "claimed", dag: *dag, job: Some(job.clone()), node, detail: None, at_unix_ms: at }
            }
            Body::Done { claim, record, .. } => match claim_job(claim) {
                Some((dag, job)) => {
                    Event { kind: "done", dag, job: Some(job), node, detail: Some(record.to_string()), at_unix_ms: at }
                }
                None => return,
            },
            Body::Fail { claim, reason } => match claim_job(claim) {
                Some((dag, job)) => {
                    Event { kind: "failed", dag, job: Some(job), node, detail: Some(reason.clone()), at_unix_ms: at }
                }
                None => return,
            },
            Body::Cancel { dag } => {
                Event { kind: "cancelled", dag: *dag, job: None, node, detail: None, at_unix_ms: at }
            }
            Body::Lost { dag, job, record } => Event {
                kind: "lost",
                dag: *dag,
                job: Some(job.clone()),
                node,
                detail: Some(format!("no node holds the outputs of {record}: the job runs again")),
                at_unix_ms: at,
            },
            Body::Release { claim } => match claim_job(claim) {
                Some((dag, job)) => Event { kind: "released", dag, job: Some(job), node, detail: None, at_unix_ms: at },
                None => return,
            },
            Body::Renew { .. } => return,
        };
        let _ = self.shared.events.send(event);
    }

    /// Every DAG's jobs, or one DAG's with every run of each job (which costs a pass over the facts).
    pub(super) fn status_view(&self, now: u64, only: Option<Hash>) -> StatusView {
        let ledger = self.core.ledger();
        let dag_states: BTreeMap<Hash, shoal_mesh::ledger::DagState> = match only {
            Some(d) => ledger.dag_state(&d, now).map(|s| (d, s)).into_iter().collect(),
            None => ledger.state(now).dags,
        };
        let mesh: Vec<(String, Capabilities)> =
            std::iter::once((hex::encode(self.core.id()), self.core.caps().clone()))
                .chain(
                    self.live_peers()
                        .iter()
                        .filter_map(|n| self.peers.get(n).and_then(|p| Some((hex::encode(n), p.caps.clone()?)))),
                )
                .collect();
        // Every Done of every job of the one DAG asked for (the fold keeps only the winner).
        let none = BTreeSet::new();
        let mut done_runs: BTreeMap<(Hash, String), Vec<DoneRun>> = BTreeMap::new();
        let mut lost: BTreeSet<Hash> = BTreeSet::new();
        for f in ledger.missing_from(&none).filter(|_| only.is_some()) {
            if let Body::Lost { dag, record, .. } = &f.body
                && Some(*dag) == only
            {
                lost.insert(*record);
            }
            if let Body::Done { claim, record, .. } = &f.body
                && let Some(c) = ledger.get(claim)
                && c.author == f.author
                && let Body::Claim { dag, job, .. } = &c.body
                && Some(*dag) == only
            {
                let runs = done_runs.entry((*dag, job.clone())).or_default();
                if !runs.iter().any(|r| r.record == *record) {
                    runs.push(DoneRun { node: hex::encode(f.author), record: *record });
                }
            }
        }
        let mut dags = BTreeMap::new();
        for (hash, ds) in dag_states {
            let dag = self.core.dag(&hash);
            let mut jobs = BTreeMap::new();
            for (id, js) in ds.jobs {
                let (state, node, record, failures) = match js {
                    JobState::Open { failures } => ("open", None, None, failures),
                    JobState::Claimed { node, failures, .. } => ("claimed", Some(hex::encode(node)), None, failures),
                    JobState::Done { node, record, .. } => ("done", Some(hex::encode(node)), Some(record), vec![]),
                    JobState::Failed { failures } => ("failed", None, None, failures),
                    JobState::Cancelled => ("cancelled", None, None, vec![]),
                };
                let reason = if state == "open" {
                    dag.and_then(|d| d.jobs.iter().find(|j| j.id == id))
                        .and_then(|j| shoal_mesh::capabilities::unschedulable(&j.requirements, &mesh))
                } else {
                    None
                };
                let state = if reason.is_some() { "unschedulable" } else { state };
                let mut runs = done_runs.remove(&(hash, id.clone())).unwrap_or_default();
                runs.retain(|r| !lost.contains(&r.record));
                let runs = if runs.len() > 1 { runs } else { Vec::new() };
                jobs.insert(id, JobView { state, node, record, failures, runs, nondeterministic: None, reason });
            }
            dags.insert(hash.to_string(), DagView { jobs, known: dag.is_some() });
        }
        StatusView { node: hex::encode(self.core.id()), dags }
    }

    pub(super) fn peer_views(&self) -> Vec<PeerView> {
        let ledger = self.core.ledger();
        let me = PeerView {
            node: hex::encode(self.core.id()),
            peer_id: self.net.peer_id().to_string(),
            hostname: self.hostname.clone(),
            me: true,
            connected: true,
            caps: Some(self.core.caps().clone()),
            http: Some(format!("http://{}", self.http_addr)),
            running: self.core.running_count() as u32,
            free_cores: self.core.free_cores(),
            facts: ledger.len() as u64,
            last_seen_ms_ago: 0,
        };
        let others = self.peers.iter().map(|(id, p)| {
            let peer_id = peer_id_of_node(id);
            PeerView {
                node: hex::encode(id),
                peer_id: peer_id.map(|p| p.to_string()).unwrap_or_default(),
                hostname: p.announce.hostname.clone(),
                me: false,
                connected: peer_id.is_some_and(|p| self.connected.contains(&p)),
                caps: p.caps.clone(),
                http: p.announce.http.clone(),
                running: p.announce.running,
                free_cores: p.announce.free_cores,
                facts: p.announce.facts,
                last_seen_ms_ago: self.liveness.last_heard(id).map_or(0, |t| self.mono_ms().saturating_sub(t)),
            }
        });
        std::iter::once(me).chain(others).collect()
    }
}
