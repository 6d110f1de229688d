//! A real `shoal node` process refuses forged and altered facts that reach it over the mesh, by
//! anti-entropy push and by gossip, and keeps the genuine one sent beside them. The test speaks
//! the protocol itself: a libp2p peer holding the mesh key, built from `shoal_node::mesh::net`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use shoal_dag::Hash;
use shoal_mesh::ledger::{Body, Fact, Hlc};
use shoal_mesh::wire::{self, FactBatch, SyncReq, SyncResp, WIRE_VERSION};
use shoal_node::mesh::net::{Net, NetConfig, NetEvent, SyncRequest, Topic, parse_psk};

const WAIT: Duration = Duration::from_secs(20);

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(url: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    agent.get(url).call().unwrap().body_mut().read_json().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_altered_facts_are_refused_by_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let shoal = env!("CARGO_BIN_EXE_shoal");
    let key_path = dir.path().join("mesh.key");
    let ok = Command::new(shoal).args(["mesh", "init", "--out", key_path.to_str().unwrap()]).output().unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let ready = dir.path().join("ready.json");
    let _node = Proc(
        Command::new(shoal)
            .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0", "--blobs", "127.0.0.1:0"])
            .args(["--backend", "namespace", "--mesh-key", key_path.to_str().unwrap()])
            .args(["--ready-file", ready.to_str().unwrap()])
            .env("SHOAL_HOME", dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let info: serde_json::Value = loop {
        if let Ok(t) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
        {
            break v;
        }
        assert!(start.elapsed() < WAIT, "the node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listen: libp2p::Multiaddr = info["listen"][0].as_str().unwrap().parse().unwrap();
    let node_peer = info["peer_id"].as_str().unwrap().parse().unwrap();
    let http = info["http"].as_str().unwrap().to_string();

    let psk = parse_psk(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let mut net = Net::new(NetConfig {
        secret: [42; 32],
        psk,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        join: vec![listen],
        allow: None,
        mdns: false,
        relay_server: false,
        protocol: shoal_mesh::wire::PROTOCOL_VERSION,
        autonat_private_ips: false,
        force_private: false,
    })
    .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let NetEvent::Connected(p) = net.next_event().await
                && p == node_peer
            {
                break;
            }
        }
    })
    .await
    .expect("connected to the node");

    let me = SigningKey::from_bytes(&[42; 32]);
    let victim = SigningKey::from_bytes(&[7; 32]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let hlc = Hlc { wall_ms: now, counter: 0 };
    let dag = Hash::of(b"a DAG nobody submitted");
    // Signed by us, claiming to be the victim.
    let mut forged = Fact::sign(&me, hlc, Body::Cancel { dag });
    forged.author = victim.verifying_key().to_bytes();
    // Genuinely the victim's, then altered on the way.
    let mut altered = Fact::sign(&victim, hlc, Body::Cancel { dag });
    altered.body = Body::Cancel { dag: Hash::of(b"another DAG") };
    let genuine = Fact::sign(&me, hlc, Body::Cancel { dag });

    let req = SyncReq::Put { facts: vec![forged.clone(), altered.clone(), genuine.clone()] };
    net.request(&node_peer, SyncRequest(wire::encode(&req)));
    let resp = tokio::time::timeout(WAIT, async {
        loop {
            if let NetEvent::Response { response, .. } = net.next_event().await {
                break wire::decode::<SyncResp>(&response.0).unwrap();
            }
        }
    })
    .await
    .expect("the node answered the push");
    assert_eq!(resp, SyncResp::Stored { added: 1, refused: 2, compacted: vec![] }, "only the genuine fact is kept");

    // The same forgeries by gossip change nothing either; the node's ledger holds one fact.
    let batch = FactBatch { v: WIRE_VERSION, facts: vec![forged, altered], dags: vec![] };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let _ = net.publish(Topic::Facts, wire::encode(&batch));
        let _ = tokio::time::timeout(Duration::from_millis(200), net.next_event()).await;
    }
    let metrics = tokio::task::spawn_blocking(move || http_get(&format!("{http}/v1/metrics"))).await.unwrap();
    assert_eq!(metrics["facts"], 1, "{metrics}");
}
