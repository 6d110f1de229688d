//! The libp2p layer (`shoal_node::mesh::net`) over loopback: connection, gossip, sync
//! request-response, the mesh key, block and allow lists, the key file format, relayed connections.
//! Every node listens on 127.0.0.1 (or only through a relay on it) with mDNS off, so nothing leaves
//! the machine. Every wait is bounded.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use shoal_node::mesh::net::{
    HolePunches, Net, NetConfig, NetError, NetEvent, Path, RELAYS_WANTED, Reachability, SyncRequest, SyncResponse,
    Topic, format_psk, parse_psk, peer_id_of,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// Bound on anything that should happen (connections, delivery) on an idle loopback.
const WAIT: Duration = Duration::from_secs(10);
/// How long something that must not happen is watched for.
const QUIET: Duration = Duration::from_secs(5);

type Cmd = Box<dyn FnOnce(&mut Net) + Send>;

/// One node: a task owns its `Net` and drives it; the test talks to it over channels.
struct Node {
    id: PeerId,
    addr: Multiaddr,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<NetEvent>,
    /// Events received but not yet matched by a wait, in order.
    pending: VecDeque<NetEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn secret(n: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = n;
    s[31] = 0x5e;
    s
}

const PSK: [u8; 32] = [7u8; 32];

fn config(n: u8, psk: [u8; 32], join: &[&Node]) -> NetConfig {
    NetConfig {
        secret: secret(n),
        psk,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        join: join.iter().map(|n| n.addr.clone()).collect(),
        allow: None,
        mdns: false,
        relay_server: false,
        protocol: shoal_mesh::wire::PROTOCOL_VERSION,
        autonat_private_ips: false,
        force_private: false,
    }
}

impl Node {
    /// Starts a node and waits until it listens (its first address is `addr`).
    async fn start(cfg: NetConfig) -> Node {
        let mut node = Node::spawn(cfg);
        node.addr = node
            .wait_for(WAIT, |e| match e {
                Some(NetEvent::Listening(addr)) => Some(addr.clone()),
                _ => None,
            })
            .await
            .expect("listening within the bound");
        node
    }

    /// Starts a node without waiting for anything (`addr` stays empty).
    fn spawn(cfg: NetConfig) -> Node {
        init_tracing();
        let mut net = Net::new(cfg).expect("net starts");
        let id = net.peer_id();
        let (cmds, mut cmd_rx) = mpsc::unbounded_channel::<Cmd>();
        let (event_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => match cmd {
                        Some(cmd) => cmd(&mut net),
                        None => break,
                    },
                    event = net.next_event() => {
                        if event_tx.send(event).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Node { id, addr: Multiaddr::empty(), cmds, events, pending: VecDeque::new(), task }
    }

    /// Its address with its peer id, as others dial it.
    fn p2p_addr(&self) -> Multiaddr {
        self.addr.clone().with_p2p(self.id).expect("a direct address without a peer id")
    }

    /// Runs `f` on the node's `Net` inside its task.
    async fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Net) -> R + Send + 'static) -> R {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Box::new(move |net: &mut Net| {
                let _ = tx.send(f(net));
            }))
            .expect("node task alive");
        timeout(WAIT, rx).await.expect("node answers within the bound").expect("node task alive")
    }

    /// The first event (kept or new) `pick` accepts, within `within`; others stay pending.
    async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&mut Option<NetEvent>) -> Option<T>,
    ) -> Option<T> {
        let mut i = 0;
        while i < self.pending.len() {
            let mut slot = self.pending.remove(i);
            if let Some(t) = pick(&mut slot) {
                return Some(t);
            }
            self.pending.insert(i, slot.expect("an event not taken is given back"));
            i += 1;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv()).await.ok()??;
            let mut slot = Some(event);
            if let Some(t) = pick(&mut slot) {
                return Some(t);
            }
            self.pending.push_back(slot.expect("an event not taken is given back"));
        }
    }

    async fn connected_to(&mut self, peer: PeerId, within: Duration) -> bool {
        self.wait_for(within, |e| matches!(e, Some(NetEvent::Connected(p)) if *p == peer).then_some(())).await.is_some()
    }

    async fn disconnected_from(&mut self, peer: PeerId, within: Duration) -> bool {
        self.wait_for(within, |e| matches!(e, Some(NetEvent::Disconnected(p)) if *p == peer).then_some(()))
            .await
            .is_some()
    }

    /// Drops every event kept so far (to watch only what comes next).
    fn forget(&mut self) {
        self.pending.clear();
        while self.events.try_recv().is_ok() {}
    }
}

/// Polls `cond` until it holds or `within` passes.
async fn eventually<F: Future<Output = bool>>(within: Duration, mut cond: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_connect_and_gossip_crosses() {
    let started = Instant::now();
    let mut n1 = Node::start(config(1, PSK, &[])).await;
    let mut n2 = Node::start(config(2, PSK, &[&n1])).await;
    let mut n3 = Node::start(config(3, PSK, &[&n1])).await;
    assert_eq!(n1.id, peer_id_of(&secret(1)));

    assert!(n2.connected_to(n1.id, WAIT).await, "node 2 connects to node 1");
    assert!(n3.connected_to(n1.id, WAIT).await, "node 3 connects to node 1");
    assert!(n1.connected_to(n2.id, WAIT).await, "node 1 sees node 2");
    assert!(n1.connected_to(n3.id, WAIT).await, "node 1 sees node 3");
    let connected = started.elapsed();

    // Published until node 2 has it: right after connecting, subscriptions may not have crossed.
    let gossip_started = Instant::now();
    let payload = b"fact from node 3".to_vec();
    let from3 = n3.id;
    let got = timeout(WAIT, async {
        loop {
            let data = payload.clone();
            n3.call(move |net| net.publish(Topic::Facts, data)).await.expect("publish");
            let hit = n2
                .wait_for(Duration::from_millis(200), |e| match e {
                    Some(NetEvent::Gossip { topic: Topic::Facts, from, data }) if *from == from3 => Some(data.clone()),
                    _ => None,
                })
                .await;
            if let Some(data) = hit {
                break data;
            }
        }
    })
    .await
    .expect("gossip from node 3 reaches node 2 within the bound");
    assert_eq!(got, payload);
    let first_delivery = gossip_started.elapsed();

    // Now that the mesh stands, one publication is delivered once, promptly.
    let sent = Instant::now();
    n3.call(|net| net.publish(Topic::Facts, b"second fact".to_vec())).await.expect("publish");
    let hit = n2
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::Gossip { topic: Topic::Facts, from, data }) if *from == from3 && data == b"second fact" => {
                Some(())
            }
            _ => None,
        })
        .await;
    assert!(hit.is_some(), "the second fact reaches node 2");
    let latency = sent.elapsed();
    // The Caps topic is separate: node 2 got nothing on it.
    assert!(n2.pending.iter().all(|e| !matches!(e, NetEvent::Gossip { topic: Topic::Caps, .. })));
    eprintln!(
        "three nodes: connected in {connected:?}, first gossip delivered {first_delivery:?} after, \
         then one publication in {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_round_trip() {
    let started = Instant::now();
    let mut a = Node::start(config(11, PSK, &[])).await;
    let mut b = Node::start(config(12, PSK, &[&a])).await;
    assert!(a.connected_to(b.id, WAIT).await);
    assert!(b.connected_to(a.id, WAIT).await);

    let b_id = b.id;
    let id = a.call(move |net| net.request(&b_id, SyncRequest(b"ping".to_vec()))).await;
    let a_id = a.id;
    let channel = b
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::Request { peer, request, .. }) if *peer == a_id && request.0 == b"ping" => match e.take() {
                Some(NetEvent::Request { channel, .. }) => Some(channel),
                _ => unreachable!(),
            },
            _ => None,
        })
        .await
        .expect("B receives the request");
    b.call(move |net| net.respond(channel, SyncResponse(b"pong".to_vec()))).await;
    let response = a
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::Response { peer, id: got, response }) if *peer == b_id && *got == id => {
                Some(response.clone())
            }
            Some(NetEvent::RequestFailed { id: got, error, .. }) if *got == id => panic!("request failed: {error}"),
            _ => None,
        })
        .await
        .expect("A receives the response");
    assert_eq!(response, SyncResponse(b"pong".to_vec()));

    // A request the other side drops without answering fails instead of hanging.
    let id = a.call(move |net| net.request(&b_id, SyncRequest(b"no answer".to_vec()))).await;
    let channel = b
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::Request { .. }) => match e.take() {
                Some(NetEvent::Request { channel, .. }) => Some(channel),
                _ => unreachable!(),
            },
            _ => None,
        })
        .await
        .expect("B receives the second request");
    drop(channel);
    let failed = a
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::RequestFailed { id: got, .. }) if *got == id => Some(()),
            _ => None,
        })
        .await;
    assert!(failed.is_some(), "an unanswered request is reported failed");
    eprintln!("request/response: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mesh_key_cannot_connect() {
    let started = Instant::now();
    let mut a = Node::start(config(21, PSK, &[])).await;
    let mut b = Node::start(config(22, [8u8; 32], &[&a])).await;
    // And a dial from the other side too.
    let b_addr = b.addr.clone();
    a.call(move |net| net.dial(b_addr)).await.expect("dial starts");

    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        b.call(|net| net.publish(Topic::Facts, b"should not cross".to_vec())).await.expect("publish");
        let seen = a
            .wait_for(Duration::from_millis(250), |e| match e {
                Some(NetEvent::Connected(_) | NetEvent::Gossip { .. }) => Some(format!("{e:?}")),
                _ => None,
            })
            .await;
        assert_eq!(seen, None, "node with the right key saw the other one");
    }
    let seen =
        b.wait_for(Duration::ZERO, |e| matches!(e, Some(NetEvent::Connected(_))).then(|| format!("{e:?}"))).await;
    assert_eq!(seen, None, "node with the wrong key connected");
    assert!(a.call(|net| net.connected_peers()).await.is_empty());
    assert!(b.call(|net| net.connected_peers()).await.is_empty());
    eprintln!("wrong key: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_disconnects_and_refuses_until_unblocked() {
    let started = Instant::now();
    let mut a = Node::start(config(31, PSK, &[])).await;
    let mut b = Node::start(config(32, PSK, &[&a])).await;
    assert!(a.connected_to(b.id, WAIT).await);
    assert!(b.connected_to(a.id, WAIT).await);

    let b_id = b.id;
    a.call(move |net| net.block(b_id)).await;
    assert!(a.disconnected_from(b.id, WAIT).await, "A drops B");
    assert!(b.disconnected_from(a.id, WAIT).await, "B sees A go");
    a.forget();

    // B dials A again, and A dials B: A refuses both ways.
    let a_addr = a.addr.clone();
    b.call(move |net| net.dial(a_addr)).await.expect("dial starts");
    let b_addr = b.addr.clone();
    a.call(move |net| net.dial(b_addr)).await.expect("dial starts");
    assert!(!a.connected_to(b.id, Duration::from_secs(3)).await, "A refuses B while blocked");
    assert!(!a.call(|net| net.connected_peers()).await.contains(&b.id));
    assert!(
        eventually(WAIT, || async { !b.call(|net| net.connected_peers()).await.contains(&a.id) }).await,
        "B holds no connection to A"
    );

    a.call(move |net| net.unblock(b_id)).await;
    let b_addr = b.addr.clone();
    a.call(move |net| net.dial(b_addr)).await.expect("dial starts");
    assert!(a.connected_to(b.id, WAIT).await, "A reconnects to B once unblocked");
    assert!(eventually(WAIT, || async { b.call(|net| net.connected_peers()).await.contains(&a.id) }).await);
    eprintln!("block/unblock: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_others() {
    let started = Instant::now();
    let allowed = peer_id_of(&secret(42));
    let mut a = Node::start(NetConfig { allow: Some(BTreeSet::from([allowed])), ..config(41, PSK, &[]) }).await;
    let mut b = Node::start(config(42, PSK, &[&a])).await;
    assert_eq!(b.id, allowed);
    assert!(a.connected_to(b.id, WAIT).await, "a peer on the list connects");

    let c = Node::start(config(43, PSK, &[&a])).await;
    let c_addr = c.addr.clone();
    a.call(move |net| net.dial(c_addr)).await.expect("dial starts");
    assert!(!a.connected_to(c.id, Duration::from_secs(3)).await, "a peer not on the list is refused");
    assert_eq!(a.call(|net| net.connected_peers()).await, vec![b.id]);
    assert!(
        eventually(WAIT, || async { !c.call(|net| net.connected_peers()).await.contains(&a.id) }).await,
        "the refused peer holds no connection"
    );
    // B was never disturbed.
    assert!(!b.disconnected_from(a.id, Duration::ZERO).await);
    eprintln!("allow list: {:?}", started.elapsed());
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// C asks B over whatever connection C has to B; B answers `answer`; returns what C got.
async fn sync_round_trip(c: &mut Node, b: &mut Node, ask: &[u8], answer: Vec<u8>) -> SyncResponse {
    let (b_id, c_id) = (b.id, c.id);
    let req = ask.to_vec();
    let id = c.call(move |net| net.request(&b_id, SyncRequest(req))).await;
    let channel = b
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::Request { peer, request, .. }) if *peer == c_id && request.0 == ask => match e.take() {
                Some(NetEvent::Request { channel, .. }) => Some(channel),
                _ => unreachable!(),
            },
            _ => None,
        })
        .await
        .expect("B receives the request");
    b.call(move |net| net.respond(channel, SyncResponse(answer))).await;
    c.wait_for(WAIT, |e| match e {
        Some(NetEvent::Response { peer, id: got, response }) if *peer == b_id && *got == id => Some(response.clone()),
        Some(NetEvent::RequestFailed { id: got, error, .. }) if *got == id => panic!("request failed: {error}"),
        _ => None,
    })
    .await
    .expect("C receives the response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_carries_a_connection_between_nodes_behind_nat() {
    let started = Instant::now();
    let r = Node::start(NetConfig { relay_server: true, ..config(51, PSK, &[]) }).await;
    let relay = r.p2p_addr();
    // B and C stand for nodes behind NAT: no listener at all, only a connection out to R.
    let mut b = Node::spawn(NetConfig { listen: vec![], ..config(52, PSK, &[&r]) });
    let mut c = Node::spawn(NetConfig { listen: vec![], ..config(53, PSK, &[&r]) });
    assert!(b.connected_to(r.id, WAIT).await, "B connects to the relay");
    let via = relay.clone();
    b.call(move |net| net.listen_via_relay(via)).await.expect("B listens through R");
    let circuit = b
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::Listening(addr)) => Some(addr.clone()),
            _ => None,
        })
        .await
        .expect("R accepts B's reservation");
    assert_eq!(circuit, relay.clone().with(Protocol::P2pCircuit), "B listens on R's circuit, named without B's id");
    let reserved = started.elapsed();

    // C knows R only: it dials B by the relayed address, never by a direct one (B has none).
    assert!(c.connected_to(r.id, WAIT).await, "C connects to the relay");
    let to_b: Multiaddr = format!("{}/p2p/{}/p2p-circuit/p2p/{}", r.addr, r.id, b.id).parse().unwrap();
    assert!(r.addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"));
    let dialed = Instant::now();
    let dial = to_b.clone();
    c.call(move |net| net.dial(dial)).await.expect("dial starts");
    assert!(c.connected_to(b.id, WAIT).await, "C reaches B through R");
    assert!(b.connected_to(c.id, WAIT).await, "B sees C");
    let connected = dialed.elapsed();
    let (b_id, c_id) = (b.id, c.id);
    let paths = c.call(move |net| net.connection_addrs(&b_id)).await;
    assert!(!paths.is_empty() && paths.iter().all(is_relayed), "C's connections to B are relayed: {paths:?}");
    let paths = b.call(move |net| net.connection_addrs(&c_id)).await;
    assert!(!paths.is_empty() && paths.iter().all(is_relayed), "B's connections to C are relayed: {paths:?}");

    // A round trip over the circuit, with a response larger than libp2p's default circuit limit
    // (128 KiB), which a mesh relay does not apply.
    let asked = Instant::now();
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let response = sync_round_trip(&mut c, &mut b, b"digest", big.clone()).await;
    assert_eq!(response.0, big);
    let round_trip = asked.elapsed();
    let paths = c.call(move |net| net.connection_addrs(&b_id)).await;
    assert!(paths.iter().all(is_relayed), "still only relayed: {paths:?}");

    // B's block list judges relayed connections too.
    b.call(move |net| net.block(c_id)).await;
    assert!(c.disconnected_from(b.id, WAIT).await, "B's block cuts the relayed connection");
    b.forget();
    c.call(move |net| net.dial(to_b)).await.expect("dial starts");
    assert!(!b.connected_to(c.id, Duration::from_secs(3)).await, "B refuses C through the relay while blocked");
    assert!(
        eventually(WAIT, || async { !c.call(move |net| net.connected_peers()).await.contains(&b_id) }).await,
        "C holds no connection to B"
    );
    eprintln!(
        "relay: reservation in {reserved:?}, relayed connection in {connected:?}, 1 MiB round trip in \
         {round_trip:?}, all {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mesh_key_cannot_use_the_relay() {
    let started = Instant::now();
    let mut r = Node::start(NetConfig { relay_server: true, ..config(61, PSK, &[]) }).await;
    let circuit = r.p2p_addr().with(Protocol::P2pCircuit);
    // With the key, a node that names the circuit in `listen` and joins the relay too (as `shoal node
    // --listen R/p2p-circuit --join R` does) gets a reservation at once: the join dial under way
    // makes the reservation's own dial fail, and reserving is tried again on the join connection.
    let reserving = Instant::now();
    let mut b =
        Node::start(NetConfig { listen: vec![circuit.clone()], join: vec![r.p2p_addr()], ..config(62, PSK, &[]) })
            .await;
    assert_eq!(b.addr, circuit);
    let reserved = reserving.elapsed();
    let tick = Duration::from_secs(shoal_node::mesh::net::REJOIN_INTERVAL_S);
    assert!(reserved < tick / 2, "the reservation waited for a rejoin tick: {reserved:?}");

    // Without it: neither a reservation on R (X) nor a circuit through R to B (Y). Two nodes, so
    // that Y's dial is not merged into the dial to R that X's reservation makes.
    let mut x = Node::spawn(NetConfig { listen: vec![circuit.clone()], ..config(63, [8u8; 32], &[]) });
    let mut y = Node::spawn(NetConfig { listen: vec![], ..config(64, [8u8; 32], &[]) });
    let to_b = circuit.clone().with(Protocol::P2p(b.id));
    y.call(move |net| net.dial(to_b)).await.expect("dial starts");
    let seen = x
        .wait_for(QUIET, |e| match e {
            Some(NetEvent::Connected(_) | NetEvent::Listening(_)) => Some(format!("{e:?}")),
            _ => None,
        })
        .await;
    assert_eq!(seen, None, "the node with the wrong key got a reservation or a connection");
    let seen = y
        .wait_for(Duration::ZERO, |e| match e {
            Some(NetEvent::Connected(_) | NetEvent::Listening(_)) => Some(format!("{e:?}")),
            _ => None,
        })
        .await;
    assert_eq!(seen, None, "the node with the wrong key got a connection");
    let outsiders = [x.id, y.id];
    for (who, node) in [("R", &mut r), ("B", &mut b)] {
        let seen = node
            .wait_for(Duration::ZERO, |e| match e {
                Some(NetEvent::Connected(p)) if outsiders.contains(p) => Some(*p),
                _ => None,
            })
            .await;
        assert_eq!(seen, None, "{who} saw a node with the wrong key");
    }
    assert!(x.call(|net| net.connected_peers()).await.is_empty());
    assert!(y.call(|net| net.connected_peers()).await.is_empty());
    assert_eq!(r.call(|net| net.connected_peers()).await, vec![b.id]);

    // A relay address must name the relay.
    let err = x.call(|net| net.listen_via_relay("/ip4/127.0.0.1/tcp/9/p2p-circuit".parse().unwrap())).await;
    assert!(matches!(err, Err(NetError::Listen { .. })), "{err:?}");
    eprintln!("wrong key at a relay: {:?} (the control's reservation in {reserved:?})", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reservation_is_made_again_until_the_relay_is_up() {
    let started = Instant::now();
    // A port free a moment ago, for a relay that is not up yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r_id = peer_id_of(&secret(71));
    let circuit: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{r_id}/p2p-circuit").parse().unwrap();
    let mut b = Node::spawn(NetConfig { listen: vec![circuit.clone()], ..config(72, PSK, &[]) });
    // The first attempt fails (nothing listens there yet); the next one, a rejoin tick later, not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = Node::start(NetConfig {
        relay_server: true,
        listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()],
        ..config(71, PSK, &[])
    })
    .await;
    assert_eq!(r.id, r_id);
    let within = Duration::from_secs(shoal_node::mesh::net::REJOIN_INTERVAL_S) + WAIT;
    let got = b
        .wait_for(within, |e| match e {
            Some(NetEvent::Listening(addr)) => Some(addr.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got, Some(circuit), "B reserves on the relay once it is up");
    eprintln!("relay retried: {:?}", started.elapsed());
}

#[test]
fn psk_file_round_trip() {
    let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(1));
    let text = format_psk(&key);
    assert_eq!(
        text,
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", key.iter().map(|b| format!("{b:02x}")).collect::<String>())
    );
    assert_eq!(parse_psk(&text).unwrap(), key);
    // What libp2p itself reads (and go-libp2p writes) is the same key.
    let theirs = libp2p::pnet::PreSharedKey::from_str(&text).expect("libp2p reads our file");
    assert_eq!(theirs.fingerprint().to_string(), libp2p::pnet::PreSharedKey::new(key).fingerprint().to_string());
    // Tolerated: CRLF line ends, surrounding whitespace, upper-case hex.
    let hex_upper: String = key.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(parse_psk(&format!("  /key/swarm/psk/1.0.0/\r\n/base16/\r\n{hex_upper}\r\n\n")).unwrap(), key);

    for (bad, says) in [
        ("", "three lines"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n", "three lines"),
        ("/key/swarm/psk/2.0.0/\n/base16/\n00\n", "first line"),
        ("/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n", "encoding"),
        ("/key/swarm/psk/1.0.0/\n/base16/\nzz\n", "not hex"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n0011\n", "2 bytes, not 32"),
    ] {
        let err = parse_psk(bad).unwrap_err();
        assert!(matches!(err, NetError::Psk(_)));
        let msg = err.to_string();
        assert!(msg.contains(says), "{bad:?}: {msg}");
        assert!(msg.contains("shoal mesh init"), "the message says where a key comes from: {msg}");
    }
}

/// A node speaking another protocol (identify's `/shoal/<version>`) is refused by both ends at
/// connection time: each reports a `Refused` naming the other's protocol and release, the
/// connection closes, and the node that joined does not dial again (its join address waits out
/// the refusal) nor can the other reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_protocol_is_refused_by_both_ends() {
    let ours = shoal_mesh::wire::PROTOCOL_VERSION;
    let mut new = Node::start(config(81, PSK, &[])).await;
    let mut old = Node::start(NetConfig { protocol: ours - 1, ..config(82, PSK, &[&new]) }).await;
    let refused = |e: &mut Option<NetEvent>| match e.take() {
        Some(NetEvent::Refused(r)) => Some(r),
        other => {
            *e = other;
            None
        }
    };
    let r = new.wait_for(WAIT, refused).await.expect("the new node refuses the old one");
    assert_eq!((r.peer, r.error.ours, r.error.theirs), (old.id, ours, Some(ours - 1)));
    assert!(r.agent.starts_with("shoal/"), "{}", r.agent);
    assert!(r.addr.is_some());
    let r = old.wait_for(WAIT, refused).await.expect("the old node refuses the new one");
    assert_eq!((r.peer, r.error.ours, r.error.theirs), (new.id, ours - 1, Some(ours)));
    assert!(new.disconnected_from(old.id, WAIT).await, "the connection closes");
    // Past the rejoin period (10 s) the old node, alone, would redial its join address: it does
    // not, and the new node cannot dial it either.
    new.forget();
    let target = old.p2p_addr();
    let _ = new.call(move |net| net.dial(target)).await;
    let again = new.wait_for(Duration::from_secs(12), |e| {
        matches!(e, Some(NetEvent::Connected(_) | NetEvent::Refused(_))).then_some(())
    });
    assert!(again.await.is_none(), "no new connection while refused");
}

/// The next relayed address `node` listens on (its reservation accepted), or None within `within`.
async fn next_circuit(node: &mut Node, within: Duration) -> Option<Multiaddr> {
    node.wait_for(within, |e| match e {
        Some(NetEvent::Listening(addr)) if is_relayed(addr) => Some(addr.clone()),
        _ => None,
    })
    .await
}

/// The relay a circuit address goes through.
fn relay_in(circuit: &Multiaddr) -> PeerId {
    circuit
        .iter()
        .find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .expect("a circuit address names its relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_node_reserves_on_relays_by_itself_and_replaces_a_dead_one() {
    let started = Instant::now();
    let mut relays = Vec::new();
    for n in 91..94 {
        relays.push(Some(Node::start(NetConfig { relay_server: true, ..config(n, PSK, &[]) }).await));
    }
    let plain = Node::start(config(94, PSK, &[])).await;
    // B is private (forced: on loopback every address answers) and only joins: no circuit named.
    // The plain node speaks no hop protocol and is never picked.
    let joined: Vec<&Node> = relays.iter().flatten().chain([&plain]).collect();
    let mut b = Node::spawn(NetConfig { listen: vec![], force_private: true, ..config(95, PSK, &joined) });
    let mut held = Vec::new();
    for _ in 0..RELAYS_WANTED {
        let circuit = next_circuit(&mut b, WAIT).await.expect("B reserves on a relay it joined");
        held.push(relay_in(&circuit));
    }
    let reserved = started.elapsed();
    assert!(next_circuit(&mut b, QUIET).await.is_none(), "no more than {RELAYS_WANTED} relays");
    let (reach, reported) = b.call(|net| net.reachability()).await;
    assert_eq!(reach, Reachability::Private);
    held.sort();
    assert_eq!(reported, held);
    assert!(!held.contains(&plain.id));

    // C reaches B through one of them, knowing only B's relayed address.
    let first = relays.iter().flatten().find(|r| r.id == held[0]).unwrap();
    let mut c = Node::spawn(NetConfig { listen: vec![], ..config(96, PSK, &[first]) });
    let to_b = first.p2p_addr().with(Protocol::P2pCircuit).with(Protocol::P2p(b.id));
    assert!(c.connected_to(first.id, WAIT).await);
    c.call(move |net| net.dial(to_b)).await.expect("dial starts");
    assert!(c.connected_to(b.id, WAIT).await, "C reaches B through its relay");
    let b_id = b.id;
    assert_eq!(c.call(move |net| net.path(&b_id)).await, Some(Path::Relayed { relay: held[0] }));
    drop(c);

    // The first relay dies: B stops announcing it and reserves on the third, without restarting.
    let dead = held[0];
    let i = relays.iter().position(|r| r.as_ref().is_some_and(|r| r.id == dead)).unwrap();
    let killed = Instant::now();
    relays[i] = None;
    let gone = b
        .wait_for(WAIT, |e| match e {
            Some(NetEvent::NotListening(addr)) => Some(addr.clone()),
            _ => None,
        })
        .await
        .expect("B stops listening through the dead relay");
    assert_eq!(relay_in(&gone), dead);
    let circuit = next_circuit(&mut b, WAIT).await.expect("B reserves on another relay");
    let replaced = killed.elapsed();
    let third = relay_in(&circuit);
    assert!(third != dead && !held.contains(&third), "a relay it did not hold: {third}");
    let (_, now_held) = b.call(|net| net.reachability()).await;
    assert_eq!(now_held.len(), RELAYS_WANTED);
    assert!(!now_held.contains(&dead));
    eprintln!("auto relays: {RELAYS_WANTED} reserved in {reserved:?}, a dead one replaced in {replaced:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_autonat_finds_public_reserves_on_no_relay() {
    let started = Instant::now();
    // With private IPs allowed, the relay (an AutoNAT server because it is a relay) dials B back on
    // loopback: B is public and never reserves.
    let r = Node::start(NetConfig { relay_server: true, autonat_private_ips: true, ..config(101, PSK, &[]) }).await;
    let b = Node::start(NetConfig { autonat_private_ips: true, ..config(102, PSK, &[&r]) }).await;
    let public =
        eventually(WAIT + WAIT, || async { b.call(|net| net.reachability()).await.0 == Reachability::Public }).await;
    assert!(public, "AutoNAT finds B reachable");
    let found = started.elapsed();
    let mut b = b;
    assert!(next_circuit(&mut b, QUIET).await.is_none(), "a public node reserves on no relay");
    assert!(b.call(|net| net.reachability()).await.1.is_empty());
    // Without private IPs (at both ends), no loopback address is confirmed: C never learns.
    let r2 = Node::start(NetConfig { relay_server: true, ..config(104, PSK, &[]) }).await;
    let c = Node::start(config(103, PSK, &[&r2])).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(c.call(|net| net.reachability()).await.0, Reachability::Unknown);
    eprintln!("autonat: public in {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_is_upgraded_by_a_hole_punch_where_the_network_allows() {
    // On loopback nothing stands in the way of a direct connection: DCUtR must replace the
    // relayed one, and the relayed one is closed.
    let r = Node::start(NetConfig { relay_server: true, ..config(111, PSK, &[]) }).await;
    let mut b = Node::start(NetConfig { force_private: true, ..config(112, PSK, &[&r]) }).await;
    let circuit = next_circuit(&mut b, WAIT).await.expect("B reserves on R");
    let mut c = Node::start(config(113, PSK, &[&r])).await;
    let to_b = circuit.with(Protocol::P2p(b.id));
    let dialed = Instant::now();
    c.call(move |net| net.dial(to_b)).await.expect("dial starts");
    assert!(c.connected_to(b.id, WAIT).await, "C reaches B");
    let b_id = b.id;
    let upgraded = eventually(WAIT, || async {
        c.call(move |net| net.path(&b_id)).await == Some(Path::Direct { hole_punched: true })
    })
    .await;
    let punched = dialed.elapsed();
    let (b_path, b_punches) = {
        let c_id = c.id;
        b.call(move |net| (net.path(&c_id), net.hole_punches())).await
    };
    let c_punches = c.call(|net| net.hole_punches()).await;
    assert!(upgraded, "C's connection to B is a hole punch: B sees {b_path:?}, punches {b_punches:?} {c_punches:?}");
    // DCUtR always reports to the side that dialed the relayed connection; whether the other end
    // hears of it too depends on which direct connection wins the race (both ways were seen).
    assert_eq!(c_punches, HolePunches { upgraded: 1, failed: 0 });
    assert!(matches!(b_path, Some(Path::Direct { .. })), "B sees a direct connection: {b_path:?}");
    assert_eq!(b_punches.failed, 0, "B saw no failed punch: {b_punches:?}");
    let relayed_left = eventually(WAIT, || async {
        c.call(move |net| net.connection_addrs(&b_id)).await.iter().all(|a| !is_relayed(a))
    })
    .await;
    assert!(relayed_left, "the relayed connection is closed");
    // And it still carries the mesh's requests.
    let response = sync_round_trip(&mut c, &mut b, b"digest", b"facts".to_vec()).await;
    assert_eq!(response.0, b"facts");
    eprintln!("hole punch: direct {punched:?} after the relayed dial");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_stream_reaches_a_peer_known_only_by_its_announced_addresses() {
    // A and B joined nobody; A knows B's address only as B's announcement would give it.
    let a = Node::start(config(121, PSK, &[])).await;
    let mut b = Node::start(config(122, PSK, &[])).await;
    let (b_id, b_addr) = (b.id, b.addr.clone());
    let mut control = a.call(|net| net.blob_streams()).await;
    let no_address = control.open_stream(b_id, shoal_node::mesh::blobs::BLOB_PROTOCOL).await;
    assert!(no_address.is_err(), "nothing says where B is yet");
    a.call(move |net| net.add_peer_addresses(b_id, [b_addr])).await;
    // The stream dials B: whether B serves the protocol or not, the connection is made.
    let _ = timeout(WAIT, control.open_stream(b_id, shoal_node::mesh::blobs::BLOB_PROTOCOL)).await;
    let a_id = a.id;
    assert!(b.connected_to(a_id, WAIT).await, "A dialed B at the address it announced");
}
