//! The README's "Nodes at several sites", run as written in the federation lab: its relay block on a
//! public host, its NAT block on a host at an endpoint-independent site and one at a symmetric site
//! (the relay's address and id, and each node's home, filled in; `--autonat-private-ips`, which the
//! README names for networks like the lab's, added). The two sites' nodes then see each other and the
//! relay, each over the path its NAT allows.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fedlab::{Host, Link, Nat, fed_or_skip};
use crate::held_home::{readme_block, replace};
use crate::support::shoal_bin;

/// How long the three nodes may take to hear each other across the lab's NATs.
const MESH_WITHIN: Duration = Duration::from_secs(90);
/// How long one of the README's blocks may take (it starts a node and waits for its `node.json`).
const BLOCK_WITHIN: Duration = Duration::from_secs(60);

/// Runs `script` with `sh` on `host`, in `dir` (where `mesh.key` lives), with the test's `shoal`
/// first on PATH; returns what it printed. The node it starts in the background keeps running
/// until the lab drops.
fn run_block(host: &Host, dir: &Path, name: &str, script: &str) -> String {
    let out = dir.join(format!("{name}.out"));
    let bin = shoal_bin();
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut child = host
        .command("sh")
        .args(["-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < BLOCK_WITHIN, "the README's {name} block did not end in {BLOCK_WITHIN:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(status.success(), "the README's {name} block failed ({status}):\n{text}\n{err}");
    text
}

/// `shoal peers --json` on `host`'s own node.
fn peers(host: &Host, dir: &Path, home: &Path) -> Value {
    let out =
        host.command(shoal_bin()).args(["peers", "--json"]).current_dir(dir).env("SHOAL_HOME", home).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The peers `v` lists as connected (itself excluded), with the path each goes by.
fn connected(v: &Value) -> Vec<(String, String)> {
    v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["connected"] == true && p["me"] != true)
        .map(|p| {
            (p["node"].as_str().unwrap_or_default().to_string(), p["via"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn the_readmes_nodes_at_several_sites_run_as_written_across_nats() {
    let Some(fed) = fed_or_skip("the README's nodes at several sites") else { return };
    let link = Link { delay_ms: 15, jitter_ms: 1, loss_pct: 0.0, rate_mbit: 0 };
    let relay = fed.public_host("relay").unwrap();
    let east = fed.site("east", Nat::Eim, link).unwrap();
    let far = fed.site("far", Nat::Symmetric, link).unwrap();
    let hosts = [east.host("e1").unwrap(), far.host("f1").unwrap()];
    let dir = tempfile::tempdir().unwrap();

    let block = readme_block("### Nodes at several sites");
    let (relay_block, nat_block) =
        block.split_at(block.find("# every machine behind NAT").expect("the README's block names the NAT side"));
    let flag = |b: &str| replace(b, "shoal node --mesh-key", "shoal node --autonat-private-ips --mesh-key");

    let relay_home = dir.path().join("relay-home");
    let script = flag(&replace(relay_block, "/var/lib/shoal", relay_home.to_str().unwrap()));
    let out = run_block(&relay, dir.path(), "relay", &script);
    let relay_id = out.lines().last().expect("the relay block prints its peer id").trim().to_string();
    assert!(relay_id.starts_with("12D3Koo"), "{out}");

    let mut homes = Vec::new();
    for host in &hosts {
        let home = dir.path().join(format!("{}-home", host.name));
        let script = replace(nat_block, "/var/lib/shoal", home.to_str().unwrap());
        let script = replace(&script, "203.0.113.5", &relay.ip().to_string());
        let script = flag(&replace(&script, "RELAY_ID", &relay_id));
        // The block ends in `shoal peers`, as a user would type it once the node is up.
        let script =
            replace(&script, "shoal peers ", "until [ -s $SHOAL_HOME/node.json ]; do sleep 0.1; done; shoal peers ");
        run_block(host, dir.path(), &host.name, &script);
        homes.push(home);
    }

    // Each NATed node sees the relay and the other site's node, through the relay or directly.
    let start = Instant::now();
    loop {
        let views: Vec<Value> = hosts.iter().zip(&homes).map(|(h, home)| peers(h, dir.path(), home)).collect();
        let ok = views.iter().all(|v| connected(v).len() == 2);
        if ok {
            for (host, v) in hosts.iter().zip(&views) {
                for (node, via) in connected(v) {
                    assert!(via == "direct" || via == "relay", "{}: peer {node} via {via:?}: {v:#}", host.name);
                }
            }
            // Between an endpoint-independent NAT and a symmetric one no hole can be punched: the
            // two NATed nodes talk through the relay.
            let other = |v: &Value| connected(v).into_iter().filter(|(_, via)| via == "relay").count();
            assert!(views.iter().all(|v| other(v) == 1), "{views:#?}");
            break;
        }
        assert!(
            start.elapsed() < MESH_WITHIN,
            "the README's nodes did not form one mesh in {MESH_WITHIN:?}: {views:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
