//! Nodes behind NAT find their own way into the mesh (issue 19, item 2): in the federation lab
//! (`fedlab.rs`), nodes at two endpoint-independent NATs and a symmetric one (20-30 ms one way,
//! 1 % loss on each WAN link) start with only
//! `--join <relay>` and `--autonat-private-ips` (no circuit named). AutoNAT finds them private,
//! they reserve on the relays they hear of, reach each other through them, DCUtR punches a hole
//! between the two easy NATs and not to the symmetric one, and a relay killed -9 leaves the mesh
//! whole through the other. Real `shoal node` processes, namespace backend; every wait has a
//! deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::federation::{FedNode, wait_for_mesh};
use crate::fedlab::*;
use crate::mesh::mesh_key;
use crate::support::*;

/// Longest the nodes may take to find they are private and hold a reservation on both relays.
const RESERVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the nodes may take to all hear of each other (and the hole punch to be made).
const MESH_TIMEOUT: Duration = Duration::from_secs(90);
/// How long something that must not happen is watched for.
const QUIET: Duration = Duration::from_secs(5);
/// How long `FedNode::live_peers` counts a peer live after it was last heard.
const LIVE_WINDOW: Duration = Duration::from_secs(16);
/// Relays a private node holds (`RELAYS_WANTED` in crates/node/src/mesh/relays.rs).
const RELAYS_WANTED: usize = 2;

/// A peer's path as `/v1/peers` gives it: `(via, relay, hole_punched)`.
type PeerPath = (String, String, bool);
/// A node's reachability, its relays, and each peer's path by peer id.
type Paths = (String, Vec<String>, BTreeMap<String, PeerPath>);

/// `/v1/peers` of `node`.
fn paths(node: &FedNode) -> Paths {
    let v = node.get_json("/v1/peers");
    let nat = &v["nat"];
    let relays = nat["relays"]
        .as_array()
        .map_or(Vec::new(), |r| r.iter().filter_map(|r| r.as_str().map(String::from)).collect());
    let peers = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["me"] == false)
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
            (s("peer_id"), (s("via"), s("relay"), p["hole_punched"] == true))
        })
        .collect();
    (nat["reachability"].as_str().unwrap_or("").to_string(), relays, peers)
}

fn peer_id(node: &FedNode) -> String {
    node.listen.rsplit("/p2p/").next().unwrap().to_string()
}

/// Waits until `pred` holds of `node`'s paths, returning them.
fn wait_paths(node: &FedNode, within: Duration, what: &str, pred: impl Fn(&Paths) -> bool) -> Paths {
    let start = Instant::now();
    loop {
        let p = paths(node);
        if pred(&p) {
            return p;
        }
        assert!(start.elapsed() < within, "{what} on {}: not within {within:?}; last: {p:?}", node.host.name);
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn nodes_behind_nat_reserve_on_relays_by_themselves_punch_holes_where_they_can_and_outlive_a_relay() {
    let Some(fed) = fed_or_skip("the NAT traversal test") else { return };
    let key_dir = tempfile::Builder::new().prefix("shoal-fed-key-").tempdir().unwrap();
    let key = mesh_key(key_dir.path());
    let private = ["--autonat-private-ips"];
    let relay_flags = ["--relay-server", "--autonat-private-ips"];
    let r1 = FedNode::start(&fed, &fed.public_host("relay1").unwrap(), Home::empty(), &key, &[], &[], &relay_flags);
    let mut r2 = Some(FedNode::start(
        &fed,
        &fed.public_host("relay2").unwrap(),
        Home::empty(),
        &key,
        &[&r1.listen],
        &[],
        &relay_flags,
    ));
    // 40-100 ms round trips between sites, 1 % loss each way on every WAN link.
    let link = |delay_ms| Link { delay_ms, jitter_ms: 2, loss_pct: 1.0, rate_mbit: 0 };
    let sites = [
        fed.site("east", Nat::Eim, link(20)).unwrap(),
        fed.site("west", Nat::Eim, link(30)).unwrap(),
        fed.site("far", Nat::Symmetric, link(25)).unwrap(),
    ];
    let started = Instant::now();
    // Each joins the first relay only: the second is learnt from the mesh.
    let nodes: Vec<FedNode> = sites
        .iter()
        .map(|s| {
            let host = s.host(&format!("{}0", s.name)).unwrap();
            FedNode::start(&fed, &host, Home::empty(), &key, &[&r1.listen], &[], &private)
        })
        .collect();
    let up = Instant::now();
    let (east, west, far) = (&nodes[0], &nodes[1], &nodes[2]);
    let relay_ids = [peer_id(&r1), peer_id(r2.as_ref().unwrap())];
    for n in &nodes {
        wait_paths(n, RESERVE_TIMEOUT, "private, through both relays", |(reach, relays, _)| {
            reach == "private" && relays.len() == RELAYS_WANTED && relays.iter().all(|r| relay_ids.contains(r))
        });
    }
    let reserved = started.elapsed();
    let reserved_after_up = up.elapsed();
    // The relays themselves are public and reserve nowhere.
    for r in [&r1, r2.as_ref().unwrap()] {
        wait_paths(r, RESERVE_TIMEOUT, "public", |(reach, relays, _)| reach == "public" && relays.is_empty());
    }
    let all: Vec<&FedNode> = [&r1, r2.as_ref().unwrap()].into_iter().chain(&nodes).collect();
    wait_for_mesh(&all, MESH_TIMEOUT);
    let formed = started.elapsed();

    // East and west: a hole punch made their connection direct. Far (symmetric): relayed.
    let (e, w, f) = (peer_id(east), peer_id(west), peer_id(far));
    let direct = |v: &PeerPath| v.0 == "direct";
    let relayed = |v: &PeerPath| v.0 == "relay" && relay_ids.contains(&v.1);
    wait_paths(east, MESH_TIMEOUT, "west direct, far relayed", |(_, _, p)| {
        p.get(&w).is_some_and(direct) && p.get(&f).is_some_and(relayed)
    });
    wait_paths(west, MESH_TIMEOUT, "east direct, far relayed", |(_, _, p)| {
        p.get(&e).is_some_and(direct) && p.get(&f).is_some_and(relayed)
    });
    let (_, _, from_far) = wait_paths(far, MESH_TIMEOUT, "east and west relayed", |(_, _, p)| {
        p.get(&e).is_some_and(relayed) && p.get(&w).is_some_and(relayed)
    });
    let punched = started.elapsed();
    let metrics: Vec<(String, u64, u64)> = nodes
        .iter()
        .map(|n| {
            let m = n.get_json("/v1/metrics");
            (n.host.name.clone(), m["hole_punches"].as_u64().unwrap(), m["hole_punches_failed"].as_u64().unwrap())
        })
        .collect();
    let ew_punches: u64 = metrics[..2].iter().map(|m| m.1).sum();
    assert!(ew_punches >= 1, "a hole punch between east and west is counted: {metrics:?}");
    assert_eq!(metrics[2].1, 0, "nothing is punched through the symmetric NAT: {metrics:?}");

    // A node without the mesh key, at east, joining the first relay and west through it: no
    // connection, so no reservation and nobody reached through it; nobody hears of it.
    let other_dir = key_dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let outsider_key = mesh_key(&other_dir);
    let outsider_host = sites[0].host("outsider").unwrap();
    let w_circuit = format!("{}/p2p-circuit/p2p/{w}", r1.listen);
    let outsider =
        FedNode::start(&fed, &outsider_host, Home::empty(), &outsider_key, &[&r1.listen, &w_circuit], &[], &private);
    std::thread::sleep(QUIET);
    let (reach, relays, seen) = paths(&outsider);
    assert!(
        relays.is_empty() && seen.values().all(|v| v.0.is_empty()),
        "the outsider got in: {reach} {relays:?} {seen:?}"
    );
    let connected = outsider.get_json("/v1/metrics")["connected"].as_u64().unwrap();
    assert_eq!(connected, 0, "the outsider holds a connection (it joined {w_circuit})");
    for n in [east, west, far] {
        assert!(!n.live_peers().contains(&outsider.node), "{} heard of the outsider", n.host.name);
    }
    drop(outsider);

    // The relay far is reached through dies (kill -9): everyone stays reachable through the other.
    let dead = from_far[&e].1.clone();
    let killed = Instant::now();
    let survivor = if dead == relay_ids[0] {
        // Dropping the first relay: everything was joined through it.
        drop(r1);
        r2.take().unwrap()
    } else {
        r2.take();
        r1
    };
    let alive = peer_id(&survivor);
    for n in &nodes {
        wait_paths(n, MESH_TIMEOUT, "through the surviving relay only", |(reach, relays, _)| {
            reach == "private" && relays == &vec![alive.clone()]
        });
    }
    // Heard again after the kill, not only before it: a peer counts as live this long after it
    // was last heard (`FedNode::live_peers`).
    std::thread::sleep(LIVE_WINDOW);
    let all: Vec<&FedNode> = std::iter::once(&survivor).chain(&nodes).collect();
    wait_for_mesh(&all, MESH_TIMEOUT);
    wait_paths(far, MESH_TIMEOUT, "east and west through the surviving relay", |(_, _, p)| {
        [&e, &w].iter().all(|x| p.get(*x).is_some_and(|v| v.0 == "relay" && v.1 == alive))
    });
    let healed = killed.elapsed();
    // DCUtR's attempts towards the symmetric NAT end (after their retries) and are counted.
    let start = Instant::now();
    let failed = loop {
        let failed: u64 =
            nodes.iter().map(|n| n.get_json("/v1/metrics")["hole_punches_failed"].as_u64().unwrap()).sum();
        if failed > 0 {
            break failed;
        }
        assert!(start.elapsed() < MESH_TIMEOUT, "no failed hole punch counted towards the symmetric NAT");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "NAT traversal: 3 nodes started and private and reserved on {RELAYS_WANTED} relays in {reserved:?} \
         ({reserved_after_up:?} after the last one was up), one mesh in {formed:?}, \
         hole punched east-west (far relayed) by {punched:?}; relay killed -9: whole again in {healed:?}; \
         punches (node, ok, failed): {metrics:?}, {failed} failed in all"
    );
    drop(nodes);
    drop(survivor);
    drop(sites);
}

#[test]
fn two_machines_behind_one_nat_on_the_same_port_both_get_a_hole_punched() {
    let Some(fed) = fed_or_skip("the shared-NAT hole punch test") else { return };
    let key_dir = tempfile::Builder::new().prefix("shoal-fed-key-").tempdir().unwrap();
    let key = mesh_key(key_dir.path());
    let private = ["--autonat-private-ips"];
    let relay = FedNode::start(
        &fed,
        &fed.public_host("relay1").unwrap(),
        Home::empty(),
        &key,
        &[],
        &[],
        &["--relay-server", "--autonat-private-ips"],
    );
    let link = |delay_ms| Link { delay_ms, jitter_ms: 0, loss_pct: 0.0, rate_mbit: 0 };
    let east = fed.site("east", Nat::Eim, link(10)).unwrap();
    let west = fed.site("west", Nat::Eim, link(10)).unwrap();
    // Both east machines listen on the same port (FedNode's 7171): the NAT can keep it for one.
    let start = |site: &Site, name: &str| {
        FedNode::start(&fed, &site.host(name).unwrap(), Home::empty(), &key, &[&relay.listen], &[], &private)
    };
    let (e0, e1, w0) = (start(&east, "east0"), start(&east, "east1"), start(&west, "west0"));
    wait_for_mesh(&[&relay, &e0, &e1, &w0], MESH_TIMEOUT);
    let (id0, id1) = (peer_id(&e0), peer_id(&e1));
    let direct = |v: &PeerPath| v.0 == "direct";
    // West reaches each east machine directly: the second one too, whose NAT mapping is not its
    // listen port (libp2p's translation used to send every punch to the first one's).
    wait_paths(&w0, MESH_TIMEOUT, "both east machines direct", |(_, _, p)| {
        p.get(&id0).is_some_and(direct) && p.get(&id1).is_some_and(direct)
    });
}
