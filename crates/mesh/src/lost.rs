//! When an output is declared lost. A reader (a job needing its upstream's outputs, or the API
//! serving them) that could fetch a completion's outputs from no live peer asks; the output is
//! reported lost (a `Lost` fact: the completion stops counting and its job runs again) only
//! when that is still the completion the ledger counts, its runner is not alive (a live runner
//! holds its outputs; the failure is taken as passing), and this node sees at least one live
//! peer (a node cut off from everyone would otherwise declare the whole mesh's work lost).

use shoal_dag::Hash;

use crate::ledger::{JobState, Ledger, NodeId};

/// An output that could be fetched from no live peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfetchable {
    pub dag: Hash,
    pub job: String,
    /// The run record whose outputs are missing.
    pub record: Hash,
    /// The node that made it, when known.
    pub runner: Option<NodeId>,
}

/// What to do about an [`Unfetchable`] output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Report it lost (`NodeCore::report_lost`): the job runs again.
    Report,
    /// The ledger counts another completion of the job now (or none): nothing to report.
    NotCurrent,
    /// Its runner is alive, so it holds the outputs: the failure is taken as passing.
    RunnerAlive,
    /// This node sees no live peer: it is more likely cut off than the outputs lost.
    Alone,
}

/// Decides whether `u` is reported lost, by `me`, which sees `live` peers alive at `now_ms`.
pub fn judge(ledger: &Ledger, now_ms: u64, me: NodeId, live: &[NodeId], u: &Unfetchable) -> Verdict {
    let current = matches!(ledger.job_state(&u.dag, &u.job, now_ms),
        Some(JobState::Done { record, .. }) if record == u.record);
    if !current {
        Verdict::NotCurrent
    } else if u.runner.is_some_and(|r| r == me || live.contains(&r)) {
        Verdict::RunnerAlive
    } else if live.is_empty() {
        Verdict::Alone
    } else {
        Verdict::Report
    }
}

/// Whether a claimed job whose input could not be fetched, asked again after
/// `Settings::lost_recheck_ms`, gives its claim up (`Finished::Lost`: the output is reported lost
/// and its job runs again) on `verdict`. A reader needs the bytes now, so it gives up even while
/// the runner counts as live (a live runner whose copy is corrupted or collected serves nothing);
/// only a node that hears nobody waits and asks again, being more likely cut off than the output
/// lost. The daemon's job path and the simulator's nodes both decide with this.
pub fn reader_gives_up(verdict: Verdict) -> bool {
    verdict != Verdict::Alone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Body, Fact, Hlc};
    use ed25519_dalek::SigningKey;

    /// A ledger where `runner` finished job `a` with `record`.
    fn done(runner: &SigningKey, record: Hash) -> (Ledger, Hash) {
        let dag = Hash::of(b"dag");
        let mut l = Ledger::new();
        let hlc = |t| Hlc { wall_ms: t, counter: 0 };
        let submit = Fact::sign(
            runner,
            hlc(1),
            Body::Submit { dag, jobs: vec!["a".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
        );
        let claim = Fact::sign(runner, hlc(2), Body::Claim { dag, job: "a".into(), lease_until_ms: 1_000_000 });
        let done =
            Fact::sign(runner, hlc(3), Body::Done { claim: claim.id(), record, bytes: 0, action: None, result: None });
        for f in [submit, claim, done] {
            l.insert(f).expect("valid");
        }
        (l, dag)
    }

    #[test]
    fn each_verdict() {
        let runner = SigningKey::from_bytes(&[1; 32]);
        let runner_id = runner.verifying_key().to_bytes();
        let (me, other) = ([2; 32], [3; 32]);
        let record = Hash::of(b"record");
        let (l, dag) = done(&runner, record);
        let u = Unfetchable { dag, job: "a".into(), record, runner: Some(runner_id) };
        assert_eq!(judge(&l, 10, me, &[other], &u), Verdict::Report);
        assert_eq!(judge(&l, 10, me, &[other, runner_id], &u), Verdict::RunnerAlive);
        assert_eq!(judge(&l, 10, runner_id, &[other], &u), Verdict::RunnerAlive);
        assert_eq!(judge(&l, 10, me, &[], &u), Verdict::Alone);
        let stale = Unfetchable { record: Hash::of(b"an older record"), ..u.clone() };
        assert_eq!(judge(&l, 10, me, &[other], &stale), Verdict::NotCurrent);
        let unknown_runner = Unfetchable { runner: None, ..u };
        assert_eq!(judge(&l, 10, me, &[other], &unknown_runner), Verdict::Report);
    }
}
