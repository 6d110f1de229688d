//! Anti-entropy: the exchange that repairs what gossip lost. Every [`Settings::sync_period_ms`]
//! a node sends one peer, in turn, a digest (`SyncReq::Digest`) of one scope: the mesh's facts
//! ([`Ledger::mesh_digest`]: the whole ledger but the facts DAGs with a topic of their own keep
//! there) with the peers it is connected to, or one DAG's facts ([`Ledger::dag_ids`]) with the
//! peers of that DAG's topic, scopes taking turns too. A peer whose digest of the scope differs answers with every fact id it holds in it
//! (`SyncResp::Ids`); the asker then fetches what it lacks (`SyncReq::Get`) and pushes what the
//! peer lacks (`SyncReq::Put`). Equal digests cost one round trip of ~100 bytes, which is all an
//! idle mesh sends, and with a topic per DAG what an exchange carries grows with the DAG, not the
//! mesh.
//!
//! Sans-IO: the driver says which peers are connected and which peers share each DAG topic, hands
//! in the requests and responses that arrive (with the ledger, which the scheduler core owns),
//! sends what [`Sync::poll_request`] gives, and stores the facts [`Sync::handle_request`] and
//! [`Sync::handle_response`] return through the core. `shoal node` and the simulator drive this
//! same machine. A `Hold` is not anti-entropy: the driver answers it elsewhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use shoal_dag::Hash;

use crate::Settings;
use crate::ledger::{Compacted, Fact, Ledger, NodeId};
use crate::wire::{self, SyncReq, SyncResp};

/// A restarted node's wait before it claims jobs: its stored view has every other node's lease
/// run out, so it would claim jobs their runners still hold. It claims once an anti-entropy
/// exchange ended ([`Sync::caught_up`]), or [`Settings::catch_up_max_ms`] after it first heard a
/// peer (peers that answer nothing), or [`Settings::catch_up_alone_max_ms`] after its start
/// without hearing any (alone). A node whose stored facts are all its own has nobody to catch
/// up with and does not wait. `shoal node` and the simulator both decide with this.
#[derive(Clone, Copy, Debug)]
pub struct CatchUp {
    since_ms: u64,
    first_peer_ms: Option<u64>,
    max_ms: u64,
    alone_max_ms: u64,
}

/// Why a [`CatchUp`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUpEnd {
    /// An exchange with a peer ended: the view is the mesh's.
    CaughtUp,
    /// Peers were heard, none answered within [`Settings::catch_up_max_ms`].
    PeersSilent,
    /// No peer heard within [`Settings::catch_up_alone_max_ms`] of the start.
    Alone,
}

impl CatchUp {
    /// A node started at `now_ms` from stored facts, `others` whether any is another node's:
    /// the wait, or `None` when there is none.
    pub fn after_restart(now_ms: u64, others: bool, settings: &Settings) -> Option<CatchUp> {
        others.then_some(CatchUp {
            since_ms: now_ms,
            first_peer_ms: None,
            max_ms: settings.catch_up_max_ms,
            alone_max_ms: settings.catch_up_alone_max_ms,
        })
    }

    /// A peer was heard (a connection, a heartbeat).
    pub fn handle_peer(&mut self, now_ms: u64) {
        self.first_peer_ms.get_or_insert(now_ms);
    }

    /// When the wait ends at the latest unless a peer is heard first (the driver wakes then).
    pub fn poll_timeout(&self) -> u64 {
        match self.first_peer_ms {
            Some(first) => first.saturating_add(self.max_ms),
            None => self.since_ms.saturating_add(self.alone_max_ms),
        }
    }

    /// Whether the wait is over at `now_ms`, and why.
    pub fn poll(&self, now_ms: u64, caught_up: bool) -> Option<CatchUpEnd> {
        if caught_up {
            Some(CatchUpEnd::CaughtUp)
        } else if now_ms < self.poll_timeout() {
            None
        } else if self.first_peer_ms.is_some() {
            Some(CatchUpEnd::PeersSilent)
        } else {
            Some(CatchUpEnd::Alone)
        }
    }
}

/// What to do with a peer's request.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Answer with this.
    Answer(SyncResp),
    /// Store these facts (through the core), then answer `SyncResp::Stored` with the counts and
    /// `compacted`: the DAGs some of them were about that this node compacted, so the sender,
    /// which still holds facts of theirs, drops them too.
    Store { facts: Vec<Fact>, compacted: Vec<(Hash, Compacted)> },
}

/// What one exchange compares: the whole ledger (`None`) or one DAG's facts.
pub type Scope = Option<Hash>;

/// One node's side of anti-entropy.
#[derive(Debug)]
pub struct Sync {
    period_ms: u64,
    /// When the next exchange starts; 0 at first, so a node starts one as soon as it runs.
    next_ms: u64,
    /// Per scope, the peers to compare it with, in the order turns go round: the connected
    /// peers for the whole ledger, a topic's peers for a DAG.
    scopes: BTreeMap<Scope, BTreeSet<NodeId>>,
    /// Per scope, the peer asked last, as an index into its peers.
    turn: BTreeMap<Scope, usize>,
    /// The scope compared last, so scopes take turns.
    last_scope: Scope,
    /// DAG scopes new to this node (it just joined the DAG's topic): compared at the next tick,
    /// out of turn, so a new member holds the DAG's facts within a round trip, not a round of
    /// every scope.
    new_scopes: VecDeque<Hash>,
    out: VecDeque<(NodeId, SyncReq)>,
    /// An exchange with a peer has ended since this machine started (see [`Sync::caught_up`]).
    caught_up: bool,
    /// DAGs a peer said it compacted, for the driver to compact here too
    /// ([`Sync::poll_compacted`]), with the peer that said so (it holds the summary).
    compacted: VecDeque<(Hash, Compacted, NodeId)>,
    /// Exchanges of the mesh's scope so far: every [`TOMBSTONES_EVERY`]th also compares the
    /// tombstones of compacted DAGs.
    mesh_turns: u64,
}

/// One exchange of the mesh's scope in this many also compares tombstones of compacted DAGs
/// (`SyncReq::Tombstones`): a node that joined after a compaction learns of it within a few
/// periods, and an idle mesh sends one more small request every few periods.
pub const TOMBSTONES_EVERY: u64 = 4;

impl Sync {
    pub fn new(settings: &Settings) -> Sync {
        Sync {
            period_ms: settings.sync_period_ms.max(1),
            next_ms: 0,
            scopes: BTreeMap::new(),
            turn: BTreeMap::new(),
            last_scope: None,
            new_scopes: VecDeque::new(),
            out: VecDeque::new(),
            caught_up: false,
            compacted: VecDeque::new(),
            mesh_turns: 0,
        }
    }

    /// Whether an exchange with a peer has ended since this machine started: a digest answered
    /// `Same`, the ids of a scope showed nothing missing here, or facts asked for arrived. A node
    /// restarted from its stored facts claims nothing until then (or until
    /// [`Settings::catch_up_max_ms`] passed): its stored view has every other node's lease
    /// expired, and it would claim jobs their runners still hold.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// A connection to `peer` opened: the whole ledger is compared with it in turn.
    pub fn handle_connected(&mut self, _now_ms: u64, peer: NodeId) {
        self.scopes.entry(None).or_default().insert(peer);
    }

    /// The connection to `peer` closed.
    pub fn handle_disconnected(&mut self, _now_ms: u64, peer: NodeId) {
        for peers in self.scopes.values_mut() {
            peers.remove(&peer);
        }
        self.scopes.retain(|_, p| !p.is_empty());
    }

    /// The peers `dag`'s facts are compared with (its topic's peers, this node not among them);
    /// none stops comparing them (the node left the topic). A DAG new to this machine is
    /// compared at the next tick, out of turn.
    pub fn handle_dag_peers(&mut self, _now_ms: u64, dag: Hash, peers: impl IntoIterator<Item = NodeId>) {
        let peers: BTreeSet<NodeId> = peers.into_iter().collect();
        if peers.is_empty() {
            self.scopes.remove(&Some(dag));
            self.turn.remove(&Some(dag));
            self.new_scopes.retain(|d| *d != dag);
        } else if self.scopes.insert(Some(dag), peers).is_none() {
            self.new_scopes.push_back(dag);
        }
    }

    /// The DAGs whose facts this node compares (see [`Sync::handle_dag_peers`]).
    pub fn dags(&self) -> impl Iterator<Item = Hash> + '_ {
        self.scopes.keys().filter_map(|s| *s)
    }

    /// Starts an exchange with the next peer of the next scope when one is due.
    pub fn handle_tick(&mut self, now_ms: u64, ledger: &Ledger) {
        while let Some(dag) = self.new_scopes.pop_front() {
            let Some(peer) = self.scopes.get(&Some(dag)).and_then(|p| p.first()) else { continue };
            let req =
                SyncReq::Digest { digest: ledger.dag_digest(&dag), count: ledger.dag_len(&dag) as u64, dag: Some(dag) };
            self.out.push_back((*peer, req));
        }
        if now_ms < self.next_ms {
            return;
        }
        self.next_ms = now_ms + self.period_ms;
        // The first scope after the last one compared, wrapping round.
        let next = self
            .scopes
            .range((std::ops::Bound::Excluded(self.last_scope), std::ops::Bound::Unbounded))
            .next()
            .or_else(|| self.scopes.iter().next());
        let Some((scope, peers)) = next else { return };
        let scope = *scope;
        let turn = self.turn.entry(scope).or_insert(0);
        *turn = (*turn + 1) % peers.len();
        let peer = *peers.iter().nth(*turn).expect("turn < peers");
        self.last_scope = scope;
        let req = match scope {
            None => {
                if self.mesh_turns.is_multiple_of(TOMBSTONES_EVERY) {
                    let (digest, count) = ledger.compacted_digest();
                    self.out.push_back((peer, SyncReq::Tombstones { digest, count: count as u64, after: None }));
                }
                self.mesh_turns += 1;
                let (digest, count) = ledger.mesh_digest();
                SyncReq::Digest { digest, count: count as u64, dag: None }
            }
            Some(dag) => {
                SyncReq::Digest { digest: ledger.dag_digest(&dag), count: ledger.dag_len(&dag) as u64, dag: Some(dag) }
            }
        };
        self.out.push_back((peer, req));
    }

    /// When [`Sync::handle_tick`] has something to do next (0: at once, a new DAG scope).
    pub fn poll_timeout(&self) -> Option<u64> {
        Some(if self.new_scopes.is_empty() { self.next_ms } else { 0 })
    }

    /// A request to send.
    pub fn poll_request(&mut self) -> Option<(NodeId, SyncReq)> {
        self.out.pop_front()
    }

    /// A DAG a peer compacted and this node still holds facts of: the driver compacts it here
    /// too (`NodeCore::adopt_compacted`) and fetches its summary from that peer.
    pub fn poll_compacted(&mut self) -> Option<(Hash, Compacted, NodeId)> {
        self.compacted.pop_front()
    }

    /// A peer's request, answered from `ledger`.
    pub fn handle_request(&mut self, _now_ms: u64, ledger: &Ledger, req: SyncReq) -> Inbound {
        match req {
            SyncReq::Digest { digest, dag: None, .. } => {
                if digest == ledger.mesh_digest().0 {
                    Inbound::Answer(SyncResp::Same)
                } else {
                    let ids = ledger.mesh_ids_sorted().take(wire::IDS_PER_MESSAGE_MAX).copied().collect();
                    Inbound::Answer(SyncResp::Ids { ids, dag: None })
                }
            }
            SyncReq::Digest { digest, dag: Some(dag), .. } => {
                if digest == ledger.dag_digest(&dag) {
                    Inbound::Answer(SyncResp::Same)
                } else {
                    let ids = ledger.dag_ids(&dag).take(wire::IDS_PER_MESSAGE_MAX).copied().collect();
                    Inbound::Answer(SyncResp::Ids { ids, dag: Some(dag) })
                }
            }
            SyncReq::Get { ids } => Inbound::Answer(SyncResp::Facts {
                facts: ids.iter().take(wire::FACTS_PER_MESSAGE_MAX).filter_map(|id| ledger.get(id).cloned()).collect(),
            }),
            SyncReq::Put { facts } => {
                let facts: Vec<Fact> = facts.into_iter().take(wire::FACTS_PER_MESSAGE_MAX).collect();
                let compacted: BTreeMap<Hash, Compacted> =
                    facts.iter().filter_map(|f| ledger.compacted_of(f)).collect();
                Inbound::Store { facts, compacted: compacted.into_iter().collect() }
            }
            SyncReq::Tombstones { digest, after, .. } => {
                // Never `Same`: that says the facts are equal, which ends a restarted node's
                // catch-up (`Sync::caught_up`); the tombstones' being equal says nothing of them.
                if after.is_none() && digest == ledger.compacted_digest().0 {
                    Inbound::Answer(SyncResp::Tombstones { list: Vec::new(), more: false })
                } else {
                    let (list, more) = ledger.compacted_page(after, wire::TOMBSTONES_PER_MESSAGE_MAX);
                    Inbound::Answer(SyncResp::Tombstones { list, more })
                }
            }
            SyncReq::Hold { dag } => {
                Inbound::Answer(SyncResp::Refused { reason: format!("a Hold of {dag} is answered apart") })
            }
            SyncReq::Announce { .. } => {
                Inbound::Answer(SyncResp::Refused { reason: "an announcement is answered apart".into() })
            }
        }
    }

    /// A peer's answer to one of our requests: queues the `Get` of what we lack and the `Put` of
    /// what it lacks (in the answer's scope) after its ids; returns the facts it sent, to store
    /// (through the core).
    pub fn handle_response(&mut self, _now_ms: u64, ledger: &Ledger, from: NodeId, resp: SyncResp) -> Vec<Fact> {
        match resp {
            SyncResp::Ids { mut ids, dag } => {
                // Both sides in ascending order, compared in one walk: no set of either is built
                // (an exchange of a busy DAG or ledger lists thousands of ids, every period).
                ids.sort_unstable();
                ids.dedup();
                let (want, give) = match dag {
                    None => diff_sorted(&ids, ledger.mesh_ids_sorted()),
                    Some(dag) => diff_sorted(&ids, ledger.dag_ids(&dag)),
                };
                self.caught_up |= want.is_empty();
                if !want.is_empty() {
                    self.out.push_back((from, SyncReq::Get { ids: want }));
                }
                let give: Vec<Fact> = give.iter().filter_map(|id| ledger.get(id).cloned()).collect();
                if !give.is_empty() {
                    self.out.push_back((from, SyncReq::Put { facts: give }));
                }
                Vec::new()
            }
            SyncResp::Facts { facts } => {
                self.caught_up = true;
                facts
            }
            SyncResp::Same => {
                self.caught_up = true;
                Vec::new()
            }
            SyncResp::Stored { compacted, .. } => {
                for (dag, c) in compacted {
                    if ledger.compacted(&dag).is_none() && !self.compacted.iter().any(|(d, ..)| *d == dag) {
                        self.compacted.push_back((dag, c, from));
                    }
                }
                Vec::new()
            }
            SyncResp::Tombstones { list, more } => {
                let last = list.last().map(|(d, _)| *d);
                for (dag, c) in list {
                    if ledger.compacted(&dag).is_none() && !self.compacted.iter().any(|(d, ..)| *d == dag) {
                        self.compacted.push_back((dag, c, from));
                    }
                }
                if more && let Some(after) = last {
                    let (digest, count) = ledger.compacted_digest();
                    self.out.push_back((from, SyncReq::Tombstones { digest, count: count as u64, after: Some(after) }));
                }
                Vec::new()
            }
            SyncResp::Holding { .. } | SyncResp::Refused { .. } | SyncResp::Heard => Vec::new(),
        }
    }
}

/// What `theirs` has that `mine` lacks, and what `mine` has that `theirs` lacks, at most
/// [`wire::FACTS_PER_MESSAGE_MAX`] of each; both ascending.
fn diff_sorted<'a>(theirs: &[Hash], mine: impl Iterator<Item = &'a Hash>) -> (Vec<Hash>, Vec<Hash>) {
    let (mut want, mut give) = (Vec::new(), Vec::new());
    let mut theirs = theirs.iter().peekable();
    let mut mine = mine.peekable();
    while want.len() < wire::FACTS_PER_MESSAGE_MAX || give.len() < wire::FACTS_PER_MESSAGE_MAX {
        let order = match (theirs.peek(), mine.peek()) {
            (None, None) => break,
            (Some(t), Some(m)) => t.cmp(m),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Equal => {
                theirs.next();
                mine.next();
            }
            std::cmp::Ordering::Less => {
                let t = theirs.next().expect("peeked");
                if want.len() < wire::FACTS_PER_MESSAGE_MAX {
                    want.push(*t);
                }
            }
            std::cmp::Ordering::Greater => {
                let m = mine.next().expect("peeked");
                if give.len() < wire::FACTS_PER_MESSAGE_MAX {
                    give.push(*m);
                }
            }
        }
    }
    (want, give)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Body, Hlc};
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_restarted_node_waits_for_a_peer_then_for_its_answer() {
        let s = Settings::default();
        assert!(CatchUp::after_restart(0, false, &s).is_none(), "only its own facts: nothing to wait for");
        let mut c = CatchUp::after_restart(1_000, true, &s).unwrap();
        // Alone: past the wait for a silent peer, it still waits for one to be heard.
        assert_eq!(c.poll(1_000 + s.catch_up_max_ms + 1, false), None);
        assert_eq!(c.poll(1_000 + s.catch_up_alone_max_ms, false), Some(CatchUpEnd::Alone));
        assert_eq!(c.poll_timeout(), 1_000 + s.catch_up_alone_max_ms);
        // A peer heard at 60 s: the wait for its answer counts from then.
        c.handle_peer(60_000);
        c.handle_peer(70_000);
        assert_eq!(c.poll(60_000 + s.catch_up_max_ms - 1, false), None);
        assert_eq!(c.poll(60_000 + s.catch_up_max_ms, false), Some(CatchUpEnd::PeersSilent));
        assert_eq!(c.poll_timeout(), 60_000 + s.catch_up_max_ms);
        assert_eq!(c.poll(60_001, true), Some(CatchUpEnd::CaughtUp));
    }

    fn ledger_with(n: u64) -> Ledger {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut l = Ledger::new();
        for i in 0..n {
            let body = Body::Submit {
                dag: Hash::of(&i.to_le_bytes()),
                jobs: vec!["a".into()],
                max_attempts: 1,
                topic_nodes: 0,
                quorum: None,
            };
            l.insert(Fact::sign(&key, Hlc { wall_ms: i, counter: 0 }, body)).expect("valid");
        }
        l
    }

    /// A DAG of one job that ended: its submit, claim and completion.
    fn ended_dag(dag: Hash) -> [Fact; 3] {
        let key = SigningKey::from_bytes(&[7; 32]);
        let at = |ms| Hlc { wall_ms: ms, counter: 0 };
        let submit = Fact::sign(
            &key,
            at(1),
            Body::Submit { dag, jobs: vec!["a".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
        );
        let claim = Fact::sign(&key, at(2), Body::Claim { dag, job: "a".into(), lease_until_ms: 10_000 });
        let record = Hash::of(&[dag.0.as_slice(), b"r"].concat());
        let done =
            Fact::sign(&key, at(3), Body::Done { claim: claim.id(), record, bytes: 1, action: None, result: None });
        [submit, claim, done]
    }

    /// Sends every request `me` has to `peer` and takes the answers; whether there was any.
    /// `from` is `peer`'s id as `me` knows it.
    fn drain(me: &mut (Sync, Ledger), peer: &mut (Sync, Ledger), from: NodeId) -> bool {
        let mut any = false;
        while let Some((_, req)) = me.0.poll_request() {
            any = true;
            let resp = match peer.0.handle_request(0, &peer.1, req) {
                Inbound::Answer(r) => r,
                Inbound::Store { facts, compacted } => {
                    let mut added = 0;
                    for f in facts {
                        added += u64::from(peer.1.insert(f).expect("valid"));
                    }
                    SyncResp::Stored { added, refused: 0, compacted }
                }
            };
            for f in me.0.handle_response(0, &me.1, from, resp) {
                me.1.insert(f).expect("valid");
            }
            while let Some((dag, c, _)) = me.0.poll_compacted() {
                me.1.adopt_compacted(dag, c);
            }
        }
        any
    }

    /// Two nodes' sync machines wired to each other until neither has anything to send.
    fn exchange(a: &mut (Sync, Ledger), b: &mut (Sync, Ledger), ids: (NodeId, NodeId)) {
        for _ in 0..8 {
            let a_sent = drain(a, b, ids.0);
            let b_sent = drain(b, a, ids.1);
            if !a_sent && !b_sent {
                return;
            }
        }
        panic!("the exchange did not end");
    }

    /// A node that missed the end of a DAG (here its completion) still holds its facts after
    /// the others compacted it: pushing them to a peer that compacted it brings back the word,
    /// and it compacts the DAG too; the ledgers end equal.
    #[test]
    fn a_node_that_missed_a_compaction_learns_it_from_the_peer_it_pushes_to() {
        let settings = Settings::default();
        let (ida, idb) = ([1; 32], [2; 32]);
        let dag = Hash::of(b"x");
        let [submit, claim, done] = ended_dag(dag);
        let mut a = (Sync::new(&settings), Ledger::new());
        let mut b = (Sync::new(&settings), Ledger::new());
        for f in [&submit, &claim, &done] {
            a.1.insert(f.clone()).expect("valid");
        }
        for f in [&submit, &claim] {
            b.1.insert(f.clone()).expect("valid");
        }
        assert_eq!(a.1.compact(100_000, 1_000).len(), 1);
        assert!(b.1.compact(100_000, 1_000).is_empty(), "b does not know the DAG ended");
        a.0.handle_connected(0, idb);
        b.0.handle_connected(0, ida);
        b.0.handle_tick(0, &b.1);
        exchange(&mut b, &mut a, (ida, idb));
        assert_eq!(b.1.compacted(&dag), a.1.compacted(&dag));
        assert!(b.1.is_empty() && a.1.is_empty());
        assert_eq!(a.1.digest(), b.1.digest());
    }

    #[test]
    fn one_exchange_makes_two_ledgers_equal() {
        let settings = Settings::default();
        let (ida, idb) = ([1; 32], [2; 32]);
        let mut a = (Sync::new(&settings), ledger_with(5));
        let mut b = (Sync::new(&settings), ledger_with(2));
        // b also holds a fact a lacks.
        let extra = Fact::sign(
            &SigningKey::from_bytes(&[9; 32]),
            Hlc { wall_ms: 99, counter: 0 },
            Body::Cancel { dag: Hash::of(b"x") },
        );
        b.1.insert(extra).expect("valid");
        a.0.handle_connected(0, idb);
        b.0.handle_connected(0, ida);
        a.0.handle_tick(0, &a.1);
        exchange(&mut a, &mut b, (idb, ida));
        assert_eq!(a.1.digest(), b.1.digest());
        assert_eq!(a.1.len(), 6);
    }

    /// Equal ledgers cost a digest and a `Same`; one period in [`TOMBSTONES_EVERY`] the digest
    /// of compacted DAGs' tombstones too.
    #[test]
    fn equal_ledgers_cost_one_digest_and_a_same() {
        let mut s = Sync::new(&Settings::default());
        let l = ledger_with(3);
        s.handle_connected(0, [2; 32]);
        s.handle_tick(0, &l);
        let mut peer = Sync::new(&Settings::default());
        let mut kinds = Vec::new();
        while let Some((to, req)) = s.poll_request() {
            assert_eq!(to, [2; 32]);
            let tombstones = matches!(req, SyncReq::Tombstones { .. });
            kinds.push(tombstones);
            let Inbound::Answer(resp) = peer.handle_request(0, &ledger_with(3), req) else { panic!("not an answer") };
            if tombstones {
                // Equal tombstones are an empty page, not `Same`: they say nothing of the facts.
                assert_eq!(resp, SyncResp::Tombstones { list: vec![], more: false });
                assert!(s.handle_response(0, &l, to, resp).is_empty());
                assert!(!s.caught_up(), "equal tombstones ended a catch-up");
            } else {
                assert_eq!(resp, SyncResp::Same);
                assert!(s.handle_response(0, &l, to, resp).is_empty());
                assert!(s.caught_up());
            }
        }
        assert_eq!(kinds, [true, false], "the tombstones' digest, then the facts'");
        s.handle_tick(5_000, &l);
        assert!(matches!(s.poll_request(), Some((_, SyncReq::Digest { .. }))));
        assert!(s.poll_request().is_none());
    }

    /// A node that joins after a DAG was compacted learns its tombstone from a peer, page by page.
    #[test]
    fn a_node_that_joins_after_a_compaction_learns_its_tombstones() {
        let settings = Settings::default();
        let (ida, idb) = ([1; 32], [2; 32]);
        let mut a = (Sync::new(&settings), Ledger::new());
        for i in 0..3u8 {
            for f in ended_dag(Hash::of(&[i])) {
                a.1.insert(f).expect("valid");
            }
        }
        assert_eq!(a.1.compact(100_000, 1_000).len(), 3);
        let mut b = (Sync::new(&settings), Ledger::new());
        b.0.handle_connected(0, ida);
        a.0.handle_connected(0, idb);
        b.0.handle_tick(0, &b.1);
        exchange(&mut b, &mut a, (ida, idb));
        assert_eq!(b.1.compacted_digest(), a.1.compacted_digest());
        assert_eq!(b.1.compacted_count(), 3);
    }

    #[test]
    fn exchanges_are_spaced_by_the_period_and_go_round_the_peers() {
        let settings = Settings { sync_period_ms: 1_000, ..Settings::default() };
        let mut s = Sync::new(&settings);
        let l = ledger_with(1);
        for p in [[1; 32], [2; 32], [3; 32]] {
            s.handle_connected(0, p);
        }
        let mut asked = Vec::new();
        for now in (0..3_000).step_by(250) {
            s.handle_tick(now, &l);
            while let Some((p, req)) = s.poll_request() {
                if matches!(req, SyncReq::Digest { .. }) {
                    asked.push((now, p[0]));
                }
            }
        }
        assert_eq!(asked, vec![(0, 2), (1_000, 3), (2_000, 1)]);
        assert_eq!(s.poll_timeout(), Some(3_000));
    }

    #[test]
    fn no_peer_no_request() {
        let mut s = Sync::new(&Settings::default());
        s.handle_tick(0, &ledger_with(1));
        assert!(s.poll_request().is_none());
        s.handle_connected(0, [4; 32]);
        s.handle_disconnected(0, [4; 32]);
        s.handle_tick(10_000, &ledger_with(1));
        assert!(s.poll_request().is_none());
    }

    /// Facts of two DAGs (a submit and a claim each, and a completion of the claim of `b`) by
    /// node `key`, from the HLC `at` on.
    fn two_dags(key: u8, at: u64) -> (Hash, Hash, Vec<Fact>) {
        let k = SigningKey::from_bytes(&[key; 32]);
        let (a, b) = (Hash::of(b"dag a"), Hash::of(b"dag b"));
        let hlc = |i: u64| Hlc { wall_ms: at + i, counter: 0 };
        let mut facts = Vec::new();
        for (i, dag) in [a, b].into_iter().enumerate() {
            let i = i as u64 * 10;
            facts.push(Fact::sign(
                &k,
                hlc(i),
                Body::Submit { dag, jobs: vec!["j".into()], max_attempts: 1, topic_nodes: 0, quorum: None },
            ));
            let claim = Fact::sign(&k, hlc(i + 1), Body::Claim { dag, job: "j".into(), lease_until_ms: at + 99 });
            facts.push(claim.clone());
            if dag == b {
                let done =
                    Body::Done { claim: claim.id(), record: Hash::of(b"r"), bytes: 1, action: None, result: None };
                facts.push(Fact::sign(&k, hlc(i + 2), done));
            }
        }
        (a, b, facts)
    }

    #[test]
    fn a_dag_scope_exchange_carries_that_dags_facts_only() {
        let settings = Settings::default();
        let (ida, idb) = ([1; 32], [2; 32]);
        let (dag_a, dag_b, facts) = two_dags(5, 100);
        let mut a = (Sync::new(&settings), Ledger::new());
        let mut b = (Sync::new(&settings), Ledger::new());
        for f in &facts {
            a.1.insert(f.clone()).expect("valid");
        }
        // b holds dag b's completion only: arriving before its claim, it is in no DAG yet.
        b.1.insert(facts[4].clone()).expect("valid");
        assert_eq!(b.1.dag_len(&dag_b), 0);
        a.0.handle_dag_peers(0, dag_b, [idb]);
        b.0.handle_dag_peers(0, dag_b, [ida]);
        a.0.handle_tick(0, &a.1);
        exchange(&mut a, &mut b, (idb, ida));
        assert_eq!(a.1.dag_digest(&dag_b), b.1.dag_digest(&dag_b));
        assert_eq!(b.1.dag_len(&dag_b), 3, "the submit, the claim, and the completion filed under it");
        assert_eq!(b.1.dag_len(&dag_a), 0, "nothing of dag a");
        assert_eq!(b.1.len(), 3);
        assert_ne!(a.1.digest(), b.1.digest());
    }

    #[test]
    fn the_mesh_scope_leaves_a_grouped_dags_facts_to_its_group() {
        let settings = Settings::default();
        let (ida, idb) = ([1; 32], [2; 32]);
        let k = SigningKey::from_bytes(&[5; 32]);
        let hlc = |wall_ms| Hlc { wall_ms, counter: 0 };
        let (grouped, plain) = (Hash::of(b"grouped"), Hash::of(b"plain"));
        let submit = |dag, topic_nodes, at| {
            Fact::sign(
                &k,
                hlc(at),
                Body::Submit { dag, jobs: vec!["j".into()], max_attempts: 1, topic_nodes, quorum: None },
            )
        };
        let claim = |dag, at| Fact::sign(&k, hlc(at), Body::Claim { dag, job: "j".into(), lease_until_ms: 999 });
        let (g_claim, p_claim) = (claim(grouped, 2), claim(plain, 4));
        let g_done = Fact::sign(
            &k,
            hlc(5),
            Body::Done { claim: g_claim.id(), record: Hash::of(b"r"), bytes: 1, action: None, result: None },
        );
        // a is in the group: it holds everything. b is not: it has the grouped DAG's submit only.
        let mut a = (Sync::new(&settings), Ledger::new());
        let mut b = (Sync::new(&settings), Ledger::new());
        for f in [submit(grouped, 3, 1), g_claim.clone(), submit(plain, 0, 3), p_claim.clone(), g_done] {
            a.1.insert(f).expect("valid");
        }
        b.1.insert(submit(grouped, 3, 1)).expect("valid");
        assert_eq!(a.1.topic_nodes(&grouped), 3);
        assert!(a.1.in_dag_topic(&g_claim) && !a.1.in_dag_topic(&p_claim));
        assert_eq!(a.1.mesh_digest().1, 3, "both submits and the plain DAG's claim");
        a.0.handle_connected(0, idb);
        b.0.handle_connected(0, ida);
        a.0.handle_tick(0, &a.1);
        exchange(&mut a, &mut b, (idb, ida));
        assert_eq!(a.1.mesh_digest(), b.1.mesh_digest());
        assert_eq!(b.1.len(), 3, "the grouped DAG's claim and completion stayed with its group");
        assert!(b.1.get(&p_claim.id()).is_some() && b.1.get(&g_claim.id()).is_none());
        // Equal mesh scopes cost a digest and a `Same` (after the tombstones' digest, this turn).
        b.0.handle_tick(0, &b.1);
        let req =
            std::iter::from_fn(|| b.0.poll_request()).map(|(_, r)| r).find(|r| matches!(r, SyncReq::Digest { .. }));
        assert_eq!(a.0.handle_request(0, &a.1, req.expect("b's turn")), Inbound::Answer(SyncResp::Same));
    }

    #[test]
    fn scopes_take_turns_and_a_scope_left_is_not_compared() {
        let settings = Settings { sync_period_ms: 1_000, ..Settings::default() };
        let (dag_a, dag_b, facts) = two_dags(5, 100);
        let mut l = Ledger::new();
        for f in facts {
            l.insert(f).expect("valid");
        }
        let mut s = Sync::new(&settings);
        s.handle_connected(0, [1; 32]);
        s.handle_dag_peers(0, dag_a, [[2; 32]]);
        s.handle_dag_peers(0, dag_b, [[3; 32], [4; 32]]);
        // Each DAG scope is compared at once when it appears, out of turn, then the tick's own.
        assert_eq!(s.poll_timeout(), Some(0));
        s.handle_tick(0, &l);
        let digests = |s: &mut Sync| -> Vec<(u8, usize, u64)> {
            std::iter::from_fn(|| s.poll_request())
                .filter_map(|(p, r)| match r {
                    SyncReq::Digest { dag, count, .. } => {
                        Some((p[0], [None, Some(dag_a), Some(dag_b)].iter().position(|d| *d == dag).unwrap(), count))
                    }
                    // The mesh scope's turns compare tombstones too, now and then.
                    SyncReq::Tombstones { .. } => None,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let first = digests(&mut s);
        assert_eq!(first[..2], [(2, 1, 2), (3, 2, 3)], "{first:?}");
        assert_eq!(first.len(), 3);
        assert_eq!(s.poll_timeout(), Some(1_000));
        // Then one exchange a period, the scopes in turn (each of the three in any three ticks,
        // b's two peers alternating); a is left at 4 s and not compared after.
        let mut asked = vec![first[2]];
        for now in (1_000..8_000).step_by(1_000) {
            if now == 4_000 {
                s.handle_dag_peers(now, dag_a, []);
            }
            s.handle_tick(now, &l);
            asked.extend(digests(&mut s));
        }
        assert_eq!(asked.len(), 8);
        let scopes: Vec<usize> = asked.iter().map(|a| a.1).collect();
        for w in scopes[..4].windows(3) {
            assert_eq!(w.iter().copied().collect::<BTreeSet<_>>().len(), 3, "{asked:?}");
        }
        assert!(!scopes[4..].contains(&1), "{asked:?}");
        assert_eq!(scopes[4..].iter().filter(|s| **s == 2).count(), 2, "{asked:?}");
        let b_peers: Vec<u8> = asked.iter().filter(|a| a.1 == 2).map(|a| a.0).collect();
        assert!(b_peers.windows(2).all(|w| w[0] != w[1]), "{asked:?}");
        assert!(asked.iter().all(|a| a.2 == [5, 2, 3][a.1]));
    }

    #[test]
    fn the_sorted_walk_finds_what_each_side_lacks() {
        let h = |i: u8| Hash([i; 32]);
        let theirs = [h(1), h(3), h(4), h(9)];
        let mine = [h(2), h(3), h(5), h(9), h(10)];
        assert_eq!(diff_sorted(&theirs, mine.iter()), (vec![h(1), h(4)], vec![h(2), h(5), h(10)]));
        assert_eq!(diff_sorted(&[], mine.iter()).1.len(), 5);
        assert_eq!(diff_sorted(&theirs, [].iter()).0.len(), 4);
        // At most a message's worth of each.
        let many: Vec<Hash> = (0..3_000u32).map(|i| Hash::of(&i.to_le_bytes())).collect();
        let mut sorted = many.clone();
        sorted.sort_unstable();
        let (want, give) = diff_sorted(&sorted, [].iter());
        assert_eq!((want.len(), give.len()), (wire::FACTS_PER_MESSAGE_MAX, 0));
        assert_eq!(want[..], sorted[..wire::FACTS_PER_MESSAGE_MAX]);
    }
}
