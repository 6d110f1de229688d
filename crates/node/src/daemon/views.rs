//! What the loop shows of its state: the ledger's view of DAGs and jobs, the peers, the facts
//! about a DAG's jobs, the events for `shoal watch`, the counters of `/v1/metrics`.

use std::collections::{BTreeMap, BTreeSet};

use shoal_dag::Hash;
use shoal_mesh::capabilities::Capabilities;
use shoal_mesh::ledger::{Body, Fact, JobState};

use super::{Node, peer_id_of_node};
use crate::api::{
    ClockView, DagSummary, DoneRun, Event, EventKind, FactView, JobStatus, JobView, Metrics, NatView, PeerView, Peers,
    QuarantinedNode, RefusedPeer,
};
use crate::mesh::net::Path;

/// The ledger's view, from which the API builds its answers (`api::DagList`, `api::DagStatus`).
#[derive(Clone, Debug)]
pub(crate) struct StatusView {
    pub node: String,
    pub dags: BTreeMap<Hash, DagView>,
}

#[derive(Clone, Debug)]
pub(crate) struct DagView {
    pub jobs: BTreeMap<String, JobView>,
    /// Whether this node has the DAG's content (it fetches it by hash).
    pub known: bool,
    /// See `api::DagStatus::group`.
    pub group: Option<crate::api::DagGroup>,
}

impl DagView {
    /// A DAG compacted out of the ledger, as its summary says (see `shoal_mesh::ledger::DagSummary`).
    pub(crate) fn of_summary(summary: &shoal_mesh::ledger::DagSummary) -> DagView {
        let jobs = summary.jobs.iter().map(|(id, j)| (id.clone(), job_view(j.state.clone(), None, vec![]))).collect();
        DagView { jobs, known: false, group: None }
    }

    /// The DAG as `GET /v1/dags` lists it: how many of its jobs are in each state.
    pub(crate) fn summary(&self, dag: Hash) -> DagSummary {
        let mut states = BTreeMap::new();
        for j in self.jobs.values() {
            *states.entry(j.state).or_default() += 1;
        }
        DagSummary { dag, jobs: self.jobs.len(), states }
    }
}

/// A job as the API shows it, from its state in the ledger: `unschedulable` when it is open and
/// `reason` says why no node of the mesh can run it.
fn job_view(state: JobState, reason: Option<String>, runs: Vec<DoneRun>) -> JobView {
    let (state, node, record, failures) = match state {
        JobState::Open { failures } => (JobStatus::Open, None, None, failures),
        JobState::Claimed { node, failures, .. } => (JobStatus::Claimed, Some(hex::encode(node)), None, failures),
        JobState::Done { node, record, .. } => (JobStatus::Done, Some(hex::encode(node)), Some(record), vec![]),
        JobState::Failed { failures } => (JobStatus::Failed, None, None, failures),
        JobState::Cancelled => (JobStatus::Cancelled, None, None, vec![]),
    };
    let reason = reason.filter(|_| state == JobStatus::Open);
    let state = if reason.is_some() { JobStatus::Unschedulable } else { state };
    JobView { state, node, record, failures, runs, nondeterministic: None, reason, cached_from: None }
}

/// A fact as `/v1/dags/{dag}/facts` shows it.
pub(super) fn fact_view(f: &Fact) -> FactView {
    FactView {
        kind: f.body.kind().to_string(),
        node: hex::encode(f.author),
        at_unix_ms: f.hlc.wall_ms,
        counter: f.hlc.counter,
    }
}

/// The event `shoal watch` shows for a fact, if any: a renewal or an `Alive` is none, nor is a fact
/// about a claim `claim_job` (the claim's DAG and job) does not know.
fn event_of(fact: &Fact, claim_job: impl Fn(&Hash) -> Option<(Hash, String)>) -> Option<Event> {
    let node = hex::encode(fact.author);
    let at = fact.hlc.wall_ms;
    let event = match &fact.body {
        Body::Submit { dag, jobs, .. } => Event {
            kind: EventKind::Submitted,
            dag: *dag,
            job: None,
            node,
            detail: Some(format!("{} jobs", jobs.len())),
            at_unix_ms: at,
        },
        Body::Claim { dag, job, .. } => {
            Event { kind: EventKind::Claimed, dag: *dag, job: Some(job.clone()), node, detail: None, at_unix_ms: at }
        }
        Body::Done { claim, record, .. } => {
            let (dag, job) = claim_job(claim)?;
            Event { kind: EventKind::Done, dag, job: Some(job), node, detail: Some(record.to_string()), at_unix_ms: at }
        }
        Body::Fail { claim, reason } => {
            let (dag, job) = claim_job(claim)?;
            Event { kind: EventKind::Failed, dag, job: Some(job), node, detail: Some(reason.clone()), at_unix_ms: at }
        }
        Body::Cancel { dag } => {
            Event { kind: EventKind::Cancelled, dag: *dag, job: None, node, detail: None, at_unix_ms: at }
        }
        Body::Lost { dag, job, record } => Event {
            kind: EventKind::Lost,
            dag: *dag,
            job: Some(job.clone()),
            node,
            detail: Some(format!("no node holds the outputs of {record}: the job runs again")),
            at_unix_ms: at,
        },
        Body::Release { claim } => {
            let (dag, job) = claim_job(claim)?;
            Event { kind: EventKind::Released, dag, job: Some(job), node, detail: None, at_unix_ms: at }
        }
        // A quarantine is of no DAG: `shoal peers` shows it (and the `Lost` it comes with, here).
        Body::Renew { .. } | Body::Alive { .. } | Body::Quarantine { .. } => return None,
    };
    Some(event)
}

/// CPU this process has used: (user, system) ms.
fn cpu_ms() -> (u64, u64) {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    // RUSAGE_SELF cannot fail; zeros if it somehow did.
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|ru| (ru.user_time().num_milliseconds() as u64, ru.system_time().num_milliseconds() as u64))
        .unwrap_or_default()
}

impl Node {
    pub(super) fn note_event(&self, fact: &Fact) {
        let claim_job = |claim: &Hash| match self.core.ledger().get(claim).map(|f| &f.body) {
            Some(Body::Claim { dag, job, .. }) => Some((*dag, job.clone())),
            _ => None,
        };
        if let Some(event) = event_of(fact, claim_job) {
            let _ = self.shared.events.send(event);
        }
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
                let reason = matches!(js, JobState::Open { .. })
                    .then(|| dag.and_then(|d| d.jobs.iter().find(|j| j.id == id)))
                    .flatten()
                    .and_then(|j| shoal_mesh::capabilities::unschedulable(&j.requirements, &mesh));
                // Open, under a quorum, with runs that do not agree yet: why it waits.
                let confirming = ledger.quorum(&hash).filter(|_| matches!(js, JobState::Open { .. })).and_then(|q| {
                    let made = ledger.completions(&hash, &id).len();
                    (made > 0).then(|| {
                        format!(
                            "{made} run(s) made, {} must agree (the DAG's quorum): waiting for a node that has not \
                             run it to run it again",
                            q.agree
                        )
                    })
                });
                let mut runs = done_runs.remove(&(hash, id.clone())).unwrap_or_default();
                runs.retain(|r| !lost.contains(&r.record));
                let runs = if runs.len() > 1 { runs } else { Vec::new() };
                // Done with a record another node made first: a hit of the mesh-wide cache.
                let cached_from = match &js {
                    JobState::Done { node, record, .. } => ledger.made_by(record).filter(|m| m != node),
                    _ => None,
                };
                let mut view = job_view(js, reason, runs);
                view.cached_from = cached_from.map(hex::encode);
                if view.state == JobStatus::Open {
                    view.reason = view.reason.or(confirming);
                }
                jobs.insert(id, view);
            }
            dags.insert(hash, DagView { jobs, known: dag.is_some(), group: self.group_view(&hash) });
        }
        StatusView { node: hex::encode(self.core.id()), dags }
    }

    /// Every fact about each job of `dag`, in clock order; None if the ledger has no such DAG.
    pub(super) fn facts_view(&self, dag: &Hash) -> Option<BTreeMap<String, Vec<FactView>>> {
        let ledger = self.core.ledger();
        ledger.has_dag(dag).then(|| {
            ledger
                .history(dag)
                .into_iter()
                .map(|(job, facts)| (job, facts.into_iter().map(fact_view).collect()))
                .collect()
        })
    }

    pub(super) fn metrics(&self) -> Metrics {
        let (libp2p_bytes_in, libp2p_bytes_out) = self.net.traffic();
        let (cpu_user_ms, cpu_sys_ms) = cpu_ms();
        Metrics {
            connected: self.connected.len(),
            cpu_sys_ms,
            cpu_user_ms,
            facts: self.core.ledger().len(),
            compacted_dags: self.core.ledger().compacted_count(),
            ledger_bytes: self.shared.store.ledger_bytes(),
            ledger_digest: self.core.ledger().digest().to_string(),
            libp2p_bytes_in,
            libp2p_bytes_out,
            node: hex::encode(self.core.id()),
            peers_live: self.live_peers().len(),
            prepared_dags: self.ctxs.len(),
            running: self.core.running_count(),
            runs_live: self.shared.runner.runs_live(),
            hole_punches: self.net.hole_punches().upgraded,
            hole_punches_failed: self.net.hole_punches().failed,
            relays_reserved: self.net.reachability().1.len(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    /// `GET /v1/peers`: the peers, the refused ones, the clock.
    pub(super) fn peers_view(&self) -> Peers {
        let now = super::now_unix_ms();
        let refused = self
            .refused
            .values()
            .rev()
            .map(|(r, at)| RefusedPeer {
                peer_id: r.peer.to_string(),
                addr: r.addr.as_ref().map(ToString::to_string),
                agent: r.agent.clone(),
                protocol: r.error.theirs,
                reason: r.error.to_string(),
                refused_ms_ago: now.saturating_sub(*at),
            })
            .collect();
        let offset_ms = crate::clock::mesh_offset_ms();
        let claiming = self.core.claiming();
        let summary = match (self.opts.clock_from_mesh, claiming) {
            (false, _) => "own clock".to_string(),
            (true, false) => "taking the mesh's time: waiting to hear a peer's; no job is claimed until then".into(),
            (true, true) => {
                format!("taking the mesh's time, offset {}", shoal_mesh::clock::describe_offset(offset_ms))
            }
        };
        let clock = ClockView {
            from_mesh: self.opts.clock_from_mesh,
            offset_ms,
            mesh_offset_ms: self.mesh_clock.median_offset_ms(),
            peers_timed: self.mesh_clock.heard(),
            claiming,
            summary,
        };
        let (reachability, relays) = self.net.reachability();
        let nat = NatView {
            reachability: reachability.as_str().to_string(),
            relays: relays.iter().map(ToString::to_string).collect(),
        };
        let quarantined = self
            .core
            .ledger()
            .quarantined()
            .filter_map(|(node, f)| match &f.body {
                Body::Quarantine { record, rerun, reason, .. } => Some(QuarantinedNode {
                    node: hex::encode(node),
                    by: hex::encode(f.author),
                    record: *record,
                    rerun: *rerun,
                    reason: reason.clone(),
                    at_unix_ms: f.hlc.wall_ms,
                }),
                _ => None,
            })
            .collect();
        Peers { peers: self.peer_views(), refused, clock, nat: Some(nat), quarantined }
    }

    pub(super) fn peer_views(&self) -> Vec<PeerView> {
        let ledger = self.core.ledger();
        let me = PeerView {
            node: hex::encode(self.core.id()),
            peer_id: self.net.peer_id().to_string(),
            hostname: self.hostname.clone(),
            me: true,
            connected: true,
            version: env!("CARGO_PKG_VERSION").to_string(),
            caps: Some(self.core.caps().clone()),
            http: Some(format!("http://{}", self.http_addr)),
            running: self.core.running_count() as u32,
            free_cores: self.core.free_cores(),
            facts: ledger.len() as u64,
            last_seen_ms_ago: 0,
            via: None,
            relay: None,
            hole_punched: false,
        };
        let others = self.peers.iter().map(|(id, p)| {
            let peer_id = peer_id_of_node(id);
            let path = peer_id.and_then(|p| self.net.path(&p));
            let (via, relay, hole_punched) = match path {
                Some(Path::Direct { hole_punched }) => (Some("direct".to_string()), None, hole_punched),
                Some(Path::Relayed { relay }) => (Some("relay".to_string()), Some(relay.to_string()), false),
                None => (None, None, false),
            };
            PeerView {
                via,
                relay,
                hole_punched,
                node: hex::encode(id),
                peer_id: peer_id.map(|p| p.to_string()).unwrap_or_default(),
                hostname: p.announce.hostname.clone(),
                me: false,
                connected: peer_id.is_some_and(|p| self.connected.contains(&p)),
                version: p.announce.version.clone(),
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

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use shoal_mesh::ledger::Hlc;

    use super::*;

    const KEY: [u8; 32] = [3; 32];

    fn fact(body: Body) -> Fact {
        Fact::sign(&SigningKey::from_bytes(&KEY), Hlc { wall_ms: 1_000, counter: 4 }, body)
    }

    fn author() -> String {
        hex::encode(SigningKey::from_bytes(&KEY).verifying_key().to_bytes())
    }

    fn hash(n: u8) -> Hash {
        Hash::of(&[n])
    }

    #[test]
    fn each_ledger_state_shows_as_its_api_state() {
        let node = [7u8; 32];
        let record = hash(1);
        let cases = [
            (JobState::Open { failures: vec!["oom".into()] }, JobStatus::Open, None, None, 1),
            (
                JobState::Claimed { claim: hash(2), node, lease_until_ms: 5, failures: vec![] },
                JobStatus::Claimed,
                Some(hex::encode(node)),
                None,
                0,
            ),
            (
                JobState::Done { claim: hash(2), node, record, bytes: 9 },
                JobStatus::Done,
                Some(hex::encode(node)),
                Some(record),
                0,
            ),
            (JobState::Failed { failures: vec!["a".into(), "b".into()] }, JobStatus::Failed, None, None, 2),
            (JobState::Cancelled, JobStatus::Cancelled, None, None, 0),
        ];
        for (ledger, state, on, rec, failures) in cases {
            let v = job_view(ledger, None, vec![]);
            assert_eq!((v.state, v.node, v.record, v.failures.len()), (state, on, rec, failures));
            assert_eq!((v.reason, v.nondeterministic), (None, None));
        }
    }

    #[test]
    fn an_open_job_no_node_can_run_is_unschedulable_and_says_why() {
        let v = job_view(JobState::Open { failures: vec![] }, Some("no node has a GPU".into()), vec![]);
        assert_eq!(v.state, JobStatus::Unschedulable);
        assert_eq!(v.reason.as_deref(), Some("no node has a GPU"));
        // Only an open job: one that runs or ran is shown as it is.
        let running = JobState::Claimed { claim: hash(2), node: [7; 32], lease_until_ms: 5, failures: vec![] };
        let v = job_view(running, Some("no node has a GPU".into()), vec![]);
        assert_eq!((v.state, v.reason), (JobStatus::Claimed, None));
    }

    #[test]
    fn a_summary_counts_jobs_per_state() {
        let view = |state| job_view(state, None, vec![]);
        let dag = DagView {
            jobs: BTreeMap::from([
                ("a".into(), view(JobState::Open { failures: vec![] })),
                ("b".into(), view(JobState::Cancelled)),
                ("c".into(), view(JobState::Open { failures: vec![] })),
            ]),
            known: true,
            group: None,
        };
        let s = dag.summary(hash(9));
        assert_eq!((s.dag, s.jobs), (hash(9), 3));
        assert_eq!(s.states, BTreeMap::from([(JobStatus::Cancelled, 1), (JobStatus::Open, 2)]));
    }

    #[test]
    fn facts_show_their_kind_author_and_clock() {
        let f = fact(Body::Claim { dag: hash(1), job: "a".into(), lease_until_ms: 9 });
        let v = fact_view(&f);
        assert_eq!((v.kind.as_str(), v.node, v.at_unix_ms, v.counter), ("claim", author(), 1_000, 4));
    }

    #[test]
    fn events_name_the_job_of_the_claim_a_fact_is_about() {
        let (dag, claim, record) = (hash(1), hash(2), hash(3));
        let known = |c: &Hash| (*c == claim).then(|| (dag, "build".to_string()));
        let check = |body: Body, kind: EventKind, job: Option<&str>, detail: Option<&str>| {
            let ev = event_of(&fact(body), known).expect("an event");
            assert_eq!((ev.kind, ev.dag, ev.job.as_deref(), ev.detail.as_deref()), (kind, dag, job, detail));
            assert_eq!((ev.node, ev.at_unix_ms), (author(), 1_000));
        };
        check(
            Body::Submit {
                dag,
                jobs: vec!["build".into(), "test".into()],
                max_attempts: 3,
                topic_nodes: 0,
                quorum: None,
            },
            EventKind::Submitted,
            None,
            Some("2 jobs"),
        );
        check(Body::Claim { dag, job: "build".into(), lease_until_ms: 5 }, EventKind::Claimed, Some("build"), None);
        let done = record.to_string();
        check(
            Body::Done { claim, record, bytes: 1, action: None, result: None },
            EventKind::Done,
            Some("build"),
            Some(&done),
        );
        check(Body::Fail { claim, reason: "exit 1".into() }, EventKind::Failed, Some("build"), Some("exit 1"));
        check(Body::Cancel { dag }, EventKind::Cancelled, None, None);
        let lost = format!("no node holds the outputs of {record}: the job runs again");
        check(Body::Lost { dag, job: "build".into(), record }, EventKind::Lost, Some("build"), Some(&lost));
        check(Body::Release { claim }, EventKind::Released, Some("build"), None);
    }

    #[test]
    fn renewals_and_facts_about_unknown_claims_are_no_events() {
        let known = |_: &Hash| None;
        assert_eq!(event_of(&fact(Body::Renew { claim: hash(2), lease_until_ms: 5 }), known), None);
        for body in [
            Body::Done { claim: hash(2), record: hash(3), bytes: 0, action: None, result: None },
            Body::Fail { claim: hash(2), reason: "x".into() },
            Body::Release { claim: hash(2) },
        ] {
            assert_eq!(event_of(&fact(body), known), None);
        }
    }
}
