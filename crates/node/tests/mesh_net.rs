//! The libp2p layer (`shoal_node::mesh::net`) over loopback: connection, gossip, sync
//! request-response, the mesh key, block and allow lists, the key file format. Every node listens
//! on 127.0.0.1 with mDNS off, so nothing leaves the machine. Every wait is bounded.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use shoal_node::mesh::net::{
    Net, NetConfig, NetError, NetEvent, SyncRequest, SyncResponse, Topic, format_psk, parse_psk, peer_id_of,
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
    }
}

impl Node {
    async fn start(cfg: NetConfig) -> Node {
        init_tracing();
        let mut net = Net::new(cfg).expect("net starts");
        let id = net.peer_id();
        // Until the listener reports its port; events before it are kept for the test.
        let mut pending = VecDeque::new();
        let addr = timeout(WAIT, async {
            loop {
                match net.next_event().await {
                    NetEvent::Listening(addr) => break addr,
                    other => pending.push_back(other),
                }
            }
        })
        .await
        .expect("listening within the bound");
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
        Node { id, addr, cmds, events, pending, task }
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
