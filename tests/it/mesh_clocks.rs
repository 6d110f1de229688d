//! Sticks written months apart and clocks that lie: two real `shoal node`s on loopback, one of
//! them claiming an older protocol (`--test-protocol-version`) or reading a clock a year behind
//! (`--test-clock-offset-ms`). Every wait has a deadline.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mesh::{MeshNode, mesh_key, wait_dag, wait_for_mesh};
use crate::support::*;

/// A year, in ms: how far off a PC with a dead CMOS battery may boot.
const YEAR_MS: i64 = 365 * 86_400_000;
/// Longest a refusal, a clock step or a job of these tests may take.
const WAIT: Duration = Duration::from_secs(60);

fn peer_id(node: &MeshNode) -> String {
    node.listen.rsplit("/p2p/").next().unwrap().to_string()
}

/// Polls `GET /v1/peers` on `node` until `pred` holds, returning that view.
fn wait_peers(node: &MeshNode, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = node.get_json("/v1/peers");
        if pred(&v) {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{what}: not reached in {WAIT:?}; last view: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused<'a>(peers: &'a Value, peer: &str) -> Option<&'a Value> {
    peers["refused"].as_array()?.iter().find(|r| r["peer_id"] == peer)
}

fn submit(node: &MeshNode, dag: &str) -> String {
    let file = node.home.write("dag.json", dag);
    let out = node.cli(&["submit", file.to_str().unwrap()]);
    assert_success(&out, "shoal submit");
    stdout(&out).trim().to_string()
}

fn done(v: &Value) -> bool {
    v["jobs"].as_object().is_some_and(|j| !j.is_empty() && j.values().all(|j| j["state"] == "done"))
}

/// The facts of each job of `dag` as `node` holds them.
fn facts(node: &MeshNode, dag: &str) -> Value {
    node.get_json(&format!("/v1/dags/{dag}/facts"))["jobs"].clone()
}

fn of_kind<'a>(facts: &'a Value, job: &str, kind: &str) -> Vec<&'a Value> {
    facts[job].as_array().unwrap().iter().filter(|f| f["kind"] == kind).collect()
}

/// A node of this build and one claiming the previous protocol do not form a mesh: each refuses
/// the other at connection time with one ERROR line naming it, and `shoal peers` says why.
#[test]
fn a_node_of_the_previous_protocol_is_refused_once_and_shown_in_peers() {
    // This build's `shoal_mesh::wire::PROTOCOL_VERSION` (4 since a `Submit` may carry a quorum).
    const PROTOCOL: u32 = 4;
    let home = Home::empty();
    let key = mesh_key(home.path());
    let new = MeshNode::start(home, &key, &[], &[]);
    let old = MeshNode::start(Home::empty(), &key, &[&new.listen], &["--test-protocol-version", "0"]);
    let (new_id, old_id) = (peer_id(&new), peer_id(&old));

    let seen = wait_peers(&new, "the old node refused", |v| refused(v, &old_id).is_some());
    let r = refused(&seen, &old_id).unwrap();
    assert_eq!(r["protocol"], 0, "{r}");
    assert!(r["agent"].as_str().unwrap().starts_with("shoal/"), "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("this node speaks protocol {PROTOCOL}, the peer speaks protocol 0")), "{reason}");
    assert!(reason.contains("write the newer image to the older stick"), "{reason}");
    let seen = wait_peers(&old, "the new node refused by the old", |v| refused(v, &new_id).is_some());
    assert_eq!(refused(&seen, &new_id).unwrap()["protocol"], PROTOCOL);

    // No mesh: neither lists the other as a peer.
    for (node, other) in [(&new, &old), (&old, &new)] {
        let peers = node.get_json("/v1/peers");
        let listed: Vec<&Value> = peers["peers"].as_array().unwrap().iter().filter(|p| p["me"] != true).collect();
        assert!(listed.iter().all(|p| p["node"] != other.node.as_str()), "{peers:#}");
    }
    // One line, at ERROR, naming the peer, its address and its protocol, even after the old node's
    // rejoin period (10 s) passed: it does not redial a node that refused it, nor is it logged again.
    std::thread::sleep(Duration::from_secs(12));
    let log = new.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") && l.contains("refused peer")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(&old_id) && lines[0].contains("/ip4/127.0.0.1/tcp/"), "{}", lines[0]);
    assert!(lines[0].contains("the peer speaks protocol 0"), "{}", lines[0]);
    let old_log = old.log();
    assert_eq!(old_log.lines().filter(|l| l.contains("ERROR") && l.contains("refused peer")).count(), 1, "{old_log}");

    // `shoal peers` prints it for people too, and each node's release.
    let out = new.cli(&["peers"]);
    assert_success(&out, "shoal peers");
    let text = stdout(&out);
    assert!(text.contains(&format!("refused: {old_id}")) && text.contains("protocol 0"), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    let out = new.cli(&["peers", "--json"]);
    assert_success(&out, "shoal peers --json");
    let v = json(&out);
    assert_eq!(v["peers"][0]["version"], env!("CARGO_PKG_VERSION"));
    assert!(refused(&v, &old_id).is_some(), "{v:#}");
}

/// A job that only the node whose clock reads a year behind may run (a label), submitted to the
/// honest node: with `--clock-from-mesh` that node takes the mesh's time, runs it exactly once,
/// and its facts carry the mesh's time, not last year's.
#[test]
fn a_node_a_year_behind_takes_the_mesh_time_and_runs_a_job_once() {
    let home = Home::with_busybox();
    let key = mesh_key(home.path());
    let honest = MeshNode::start(home, &key, &[], &[]);
    let offset = (-YEAR_MS).to_string();
    let behind = MeshNode::start(
        Home::empty(),
        &key,
        &[&honest.listen],
        &["--test-clock-offset-ms", &offset, "--clock-from-mesh", "--label", "clock=wrong"],
    );
    wait_for_mesh(&[&honest, &behind]);
    let v = wait_peers(&behind, "the mesh's time taken", |v| v["clock"]["claiming"] == true);
    let clock = &v["clock"];
    assert_eq!(clock["from_mesh"], true, "{clock}");
    let taken = clock["offset_ms"].as_i64().unwrap();
    assert!((taken - YEAR_MS).abs() < 60_000, "a year ahead of its own clock: {clock}");
    assert!(clock["summary"].as_str().unwrap().contains("taking the mesh's time, offset +365 d"), "{clock}");
    assert!(behind.log().contains("clock: taking the mesh's time, offset +365 d"), "{}", behind.log());

    let dag = submit(
        &honest,
        r#"{"version": 1, "jobs": [{"id": "j", "image": "busybox:latest", "command": ["echo", "on time"],
            "requirements": {"labels": {"clock": "wrong"}}, "outputs": {"o": "stdout"}}]}"#,
    );
    wait_dag(&honest, &dag, WAIT, "the job done on the node that took the mesh's time", done);
    let f = facts(&honest, &dag);
    let (claims, dones) = (of_kind(&f, "j", "claim"), of_kind(&f, "j", "done"));
    assert_eq!((claims.len(), dones.len()), (1, 1), "run exactly once: {f:#}");
    assert_eq!(dones[0]["node"], behind.node.as_str(), "{f:#}");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let at = dones[0]["at_unix_ms"].as_i64().unwrap();
    assert!((now_ms - at).abs() < 10 * 60_000, "the Done fact carries the mesh's time, not last year's: {f:#}");
    let out = honest.cli(&["get", "j", "o", "--dag", &dag, "--node", &honest.http]);
    assert_success(&out, "shoal get");
    assert_eq!(stdout(&out), "on time\n");
}

/// The same clock without `--clock-from-mesh`: it trusts its clock, says once that it is behind
/// the mesh and refuses the mesh's facts (a year ahead of it), so it never sees a job offered on
/// the honest node; a DAG submitted to it does run, by the honest node, whose view holds the
/// behind node's claim expired a year ago (a lease is believed for `lease_ms` past its fact).
#[test]
fn a_node_a_year_behind_without_the_flag_is_told_and_its_claims_hold_no_job() {
    let home = Home::with_busybox();
    let key = mesh_key(home.path());
    let honest = MeshNode::start(home, &key, &[], &[]);
    let offset = (-YEAR_MS).to_string();
    let behind = MeshNode::start(Home::with_busybox(), &key, &[&honest.listen], &["--test-clock-offset-ms", &offset]);
    wait_for_mesh(&[&honest, &behind]);
    let v = wait_peers(&behind, "the mesh's clock heard", |v| v["clock"]["mesh_offset_ms"].is_i64());
    assert_eq!((v["clock"]["from_mesh"].as_bool(), v["clock"]["offset_ms"].as_i64()), (Some(false), Some(0)));
    assert_eq!(v["clock"]["summary"], "own clock");

    // A DAG on the honest node runs there; the behind node refuses its facts and names the author once.
    let dag = submit(
        &honest,
        r#"{"version": 1, "jobs": [{"id": "a", "image": "busybox:latest", "command": ["echo", "a"],
            "outputs": {"o": "stdout"}}]}"#,
    );
    wait_dag(&honest, &dag, WAIT, "the honest node's DAG done", done);
    let f = facts(&honest, &dag);
    assert!(of_kind(&f, "a", "claim").iter().all(|c| c["node"] == honest.node.as_str()), "{f:#}");
    let start = Instant::now();
    while !behind.log().contains("this node's clock is behind") {
        assert!(start.elapsed() < WAIT, "no line about the refused facts: {}", behind.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = behind.log();
    let named = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(&format!("facts of node {} read 365 d ahead", honest.node)));
    assert_eq!(named.count(), 1, "{log}");
    let warned =
        log.lines().filter(|l| l.contains("ERROR") && l.contains("this node's clock is 365 d behind the mesh"));
    assert_eq!(warned.count(), 1, "{log}");
    assert_eq!(behind.get(&format!("/v1/dags/{dag}")).0, 404, "the behind node never admitted the DAG");

    // A DAG submitted to the behind node: its claims carry leases that ended a year ago in the
    // honest node's view, so while the behind node still runs the job (3 s) the honest node takes
    // it too, and it completes.
    let dag = submit(
        &behind,
        r#"{"version": 1, "jobs": [{"id": "b", "image": "busybox:latest", "command": ["sh", "-c", "sleep 3; echo b"],
            "outputs": {"o": "stdout"}}]}"#,
    );
    wait_dag(&honest, &dag, WAIT, "the behind node's DAG done in the honest node's view", |v| {
        done(v) && {
            let f = facts(&honest, &dag);
            !of_kind(&f, "b", "claim").is_empty()
        }
    });
    let f = facts(&honest, &dag);
    let claims = of_kind(&f, "b", "claim");
    assert!(claims.iter().any(|c| c["node"] == honest.node.as_str()), "the honest node took the job: {f:#}");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for c in claims.iter().filter(|c| c["node"] == behind.node.as_str()) {
        let at = c["at_unix_ms"].as_i64().unwrap();
        assert!(now_ms - at > YEAR_MS - 86_400_000, "the behind node's claim is stamped last year: {f:#}");
    }
}

/// A node whose clock reads a year ahead, among two honest ones (so the median tells who is
/// wrong): the honest nodes refuse every fact it makes and name it once in their logs, so its
/// claims hold nothing and its HLC drags nobody along; a job submitted to an honest node runs
/// among the honest ones; a DAG submitted to the node ahead runs there alone, never admitted by
/// the others.
#[test]
fn a_node_a_year_ahead_has_its_facts_refused_and_the_mesh_runs_without_it() {
    let home = Home::with_busybox();
    let key = mesh_key(home.path());
    let h1 = MeshNode::start(home, &key, &[], &[]);
    let h2 = MeshNode::start(Home::empty(), &key, &[&h1.listen], &[]);
    let offset = YEAR_MS.to_string();
    let ahead = MeshNode::start(Home::with_busybox(), &key, &[&h1.listen], &["--test-clock-offset-ms", &offset]);
    wait_for_mesh(&[&h1, &h2, &ahead]);
    let dag = submit(
        &h1,
        r#"{"version": 1, "jobs": [{"id": "a", "image": "busybox:latest", "command": ["echo", "a"],
            "outputs": {"o": "stdout"}}]}"#,
    );
    wait_dag(&h1, &dag, WAIT, "the DAG done among the honest nodes", done);
    let f = facts(&h1, &dag);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for x in f["a"].as_array().unwrap() {
        assert_ne!(x["node"], ahead.node.as_str(), "no fact of the node ahead is admitted: {f:#}");
        assert!(x["at_unix_ms"].as_i64().unwrap() < now_ms + 60_000, "no HLC dragged ahead: {f:#}");
    }

    let mine = submit(
        &ahead,
        r#"{"version": 1, "jobs": [{"id": "b", "image": "busybox:latest", "command": ["echo", "b"],
            "outputs": {"o": "stdout"}}]}"#,
    );
    wait_dag(&ahead, &mine, WAIT, "the node ahead runs its own DAG", done);
    assert_eq!(h1.get(&format!("/v1/dags/{mine}")).0, 404, "its submit is not admitted");

    let line = format!("peer {}'s clock is 365 d ahead of ours", ahead.node);
    for node in [&h1, &h2] {
        let start = Instant::now();
        while !node.log().contains(&line) {
            assert!(start.elapsed() < WAIT, "no line naming the node ahead: {}", node.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let log = h1.log();
    assert_eq!(log.lines().filter(|l| l.contains("ERROR") && l.contains(&line)).count(), 1, "{log}");
    assert!(!log.contains("this node's clock is"), "the median of two peers clears this node: {log}");
    assert!(ahead.log().contains("this node's clock is 365 d ahead of the mesh"), "{}", ahead.log());
}
