//! Blobs between nodes whose iroh endpoints cannot reach each other (issue 19, item 3): two real
//! `shoal node` processes in a network namespace of the test's own where every UDP packet is
//! dropped by nft, so iroh (QUIC, over UDP) has no path while the mesh (TCP) has one. A DAG's
//! image, inputs and outputs must still move between them: over `/shoal/blobs/1`, libp2p
//! streams on the mesh's connections (crates/node/src/mesh/blobs.rs).
//!
//! Needs root with `ip` and `nft`; skips without, unless `SHOAL_REQUIRE_NETLAB=1` makes that a
//! failure. The namespace (`shoal-fed-<pid>-<n>-blobs`) is deleted when the test ends, panics
//! included, after the nodes are killed.

use std::collections::BTreeMap;
use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::mesh::{MeshNode, mesh_key, wait_dag, wait_for_mesh};
use crate::support::*;

/// Namespaces of these tests are found by this prefix (the federation lab's).
const NETNS_PREFIX: &str = "shoal-fed-";

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The test thread inside a namespace of its own with loopback up and UDP dropped.
struct NoUdp {
    name: String,
    home_ns: File,
}

impl NoUdp {
    fn enter() -> Result<NoUdp, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            return Err("not root".into());
        }
        for tool in ["ip", "nft"] {
            run("sh", &["-c", &format!("command -v {tool}")])
                .map_err(|_| format!("no `{tool}` (iproute2, nftables)"))?;
        }
        remove_orphans();
        let name = format!("{NETNS_PREFIX}{}-{}-blobs", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let home_ns = File::open("/proc/thread-self/ns/net").map_err(|e| format!("/proc/thread-self/ns/net: {e}"))?;
        run("ip", &["netns", "add", &name])?;
        let guard = NoUdp { name, home_ns };
        let ns = File::open(format!("/var/run/netns/{}", guard.name)).map_err(|e| format!("the namespace: {e}"))?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering the namespace: {e}"))?;
        run("ip", &["link", "set", "lo", "up"])?;
        run(
            "nft",
            &[
                "add table inet noudp; add chain inet noudp out { type filter hook output priority 0; }; add rule inet noudp out meta l4proto udp drop",
            ],
        )?;
        Ok(guard)
    }
}

impl Drop for NoUdp {
    fn drop(&mut self) {
        let _ = setns(&self.home_ns, CloneFlags::CLONE_NEWNET);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Deletes the namespaces of test processes that are gone (killed: no Drop ran).
fn remove_orphans() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

fn no_udp_or_skip() -> Option<NoUdp> {
    match NoUdp::enter() {
        Ok(ns) => Some(ns),
        Err(why) => {
            let why = format!("blobs without iroh need a namespace of the test's own with UDP dropped: {why}");
            if std::env::var("SHOAL_REQUIRE_NETLAB").as_deref() == Ok("1") {
                panic!("SHOAL_REQUIRE_NETLAB=1 and {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

#[test]
fn a_dag_moves_its_image_inputs_and_outputs_between_nodes_whose_iroh_has_no_path() {
    // Dropped last: the nodes (declared after) are killed before the namespace goes.
    let Some(_ns) = no_udp_or_skip() else { return };
    let first = Home::with_busybox();
    let key = mesh_key(first.path());
    let n0 = MeshNode::start(first, &key, &[], &[]);
    let n1 = MeshNode::start(Home::empty(), &key, &[&n0.listen], &[]);
    wait_for_mesh(&[&n0, &n1]);

    // 4 generators of 300 KiB each, 12 readers of them: with two nodes, each reads some of
    // what the other made, and runs on an image only the first node had.
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(serde_json::json!({"id": format!("gen{i}"), "image": "busybox:latest",
            "command": ["sh", "-c", format!("head -c 307200 /dev/zero | tr '\\0' '{i}'")],
            "outputs": {"out": "stdout"}}));
    }
    for k in 0..12 {
        jobs.push(serde_json::json!({"id": format!("use{k}"), "image": "busybox:latest",
            "command": ["sh", "-c", "wc -c < /input/d"], "inputs": {"d": format!("jobs:gen{}/out", k % 4)},
            "outputs": {"out": "stdout"}}));
    }
    let text = serde_json::to_string(&serde_json::json!({"version": 1, "jobs": jobs})).unwrap();
    let out = n0.cli(&["submit", n0.home.write("dag.json", &text).to_str().unwrap()]);
    assert_success(&out, "shoal submit");
    let dag = stdout(&out).trim().to_string();
    let view = wait_dag(&n1, &dag, Duration::from_secs(180), "all 16 jobs done", |v| {
        v["jobs"].as_object().is_some_and(|j| j.len() == 16 && j.values().all(|j| j["state"] == "done"))
    });
    let runners: BTreeMap<String, usize> =
        view["jobs"].as_object().unwrap().values().fold(BTreeMap::new(), |mut m, j| {
            *m.entry(j["node"].as_str().unwrap().to_string()).or_default() += 1;
            m
        });
    assert!(runners.contains_key(&n1.node), "the second node ran jobs (on the image it fetched): {runners:?}");

    // Every output from both nodes: each fetches what the other made.
    for k in 0..12 {
        for n in [&n0, &n1] {
            let (status, body) = n.get(&format!("/v1/dags/{dag}/jobs/use{k}/outputs/out"));
            assert_eq!(
                (status, String::from_utf8_lossy(&body).trim()),
                (200, "307200"),
                "use{k} from {}",
                &n.node[..12]
            );
        }
    }
    for i in 0..4 {
        for n in [&n0, &n1] {
            let (status, body) = n.get(&format!("/v1/dags/{dag}/jobs/gen{i}/outputs/out"));
            assert_eq!(status, 200);
            assert_eq!(body.len(), 307_200, "gen{i} from {}", &n.node[..12]);
            assert!(body.iter().all(|&b| b == b'0' + i as u8), "gen{i}'s bytes from {}", &n.node[..12]);
        }
    }
    // The blobs went over the mesh (iroh had no path), and nothing was refused or dropped.
    let logs = format!("{}{}", n0.log(), n1.log());
    assert!(logs.contains("fetching over the mesh"), "no fetch took the mesh path");
    assert!(!logs.contains("do not match the hash"), "a stream's bytes were refused");
}
