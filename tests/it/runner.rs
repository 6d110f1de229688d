//! One runner per process: a node's mesh jobs, explorer runs and local runs (`shoal run` on a
//! held home) share one core budget and one pool of work directories, and a run's state ends
//! with it. Real `shoal node` processes, the namespace backend.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::explorer::{Part, multipart};
use crate::mesh::{MeshNode, mesh_key, wait_dag};
use crate::support::*;

/// Longest the runs of a test may take to end.
const RUNS_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a node may take to drop what its ended runs held.
const DROP_TIMEOUT: Duration = Duration::from_secs(30);

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(90))).build(),
    )
}

/// Submits a DAG over the API: its hash.
fn submit(node: &MeshNode, dag: &Value) -> String {
    let mut resp = agent()
        .post(format!("{}/v1/dags", node.http))
        .header("content-type", "application/json")
        .send(dag.to_string())
        .expect("POST /v1/dags");
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(resp.status().as_u16(), 201, "submit: {text}");
    serde_json::from_str::<Value>(&text).unwrap()["dag"].as_str().unwrap().to_string()
}

/// An explorer run of `entry` with `script` as its main file: the reply.
fn explore(node: &MeshNode, entry: &str, script: &str) -> Value {
    let request = json!({"entry": entry, "main": "script.sh"}).to_string();
    let (content_type, body) =
        multipart(&[Part("request", None, request.as_bytes()), Part("file", Some("script.sh"), script.as_bytes())]);
    let mut resp = agent()
        .post(format!("{}/v1/explorer/runs", node.http))
        .header("content-type", &content_type)
        .send(&body[..])
        .expect("POST /v1/explorer/runs");
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "explorer run: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    v
}

fn all_done(v: &Value) -> bool {
    v["jobs"].as_object().is_some_and(|j| !j.is_empty() && j.values().all(|j| j["state"] == "done"))
}

/// What the node's home holds under tmp/ (work directories are made there), by name.
fn tmp_entries(home: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(home.join("tmp")) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Waits until the node keeps no run: no prepared DAG, no run alive on its runner.
fn wait_no_runs(node: &MeshNode) {
    let start = Instant::now();
    loop {
        let m = node.get_json("/v1/metrics");
        if m["prepared_dags"] == 0 && m["runs_live"] == 0 {
            return;
        }
        assert!(start.elapsed() < DROP_TIMEOUT, "the node keeps ended runs: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `count` one-job mesh DAGs, explorer runs and local runs (`shoal run` on the node's held home),
/// each a job of its own (numbered from `first`), all at once; returns when every one has ended.
fn run_many(node: &MeshNode, first: usize, mesh: usize, explorer: usize, local: usize) {
    std::thread::scope(|s| {
        for i in first..first + explorer {
            s.spawn(move || explore(node, "sh", &format!("echo explorer {i}\n")));
        }
        for i in first..first + local {
            s.spawn(move || {
                let dag = node.home.write(
                    &format!("local{i}.json"),
                    &json!({"version": 1, "jobs": [{"id": "j", "image": "busybox:latest",
                        "command": ["sh", "-c", format!("echo local {i}")]}]})
                    .to_string(),
                );
                let out = node.cli(&["run", "--backend", "namespace", dag.to_str().unwrap()]);
                assert_success(&out, "shoal run on a held home");
            });
        }
        let dags: Vec<String> = (first..first + mesh)
            .map(|i| {
                submit(
                    node,
                    &json!({"version": 1, "jobs": [{"id": "j", "image": "busybox:latest",
                    "command": ["sh", "-c", format!("echo dag {i}")], "outputs": {"out": "stdout"}}]}),
                )
            })
            .collect();
        for dag in &dags {
            wait_dag(node, dag, RUNS_TIMEOUT, "a mesh DAG done", all_done);
        }
    });
}

#[test]
fn a_node_that_ran_200_dags_holds_no_more_runs_or_directories_than_one_that_ran_2() {
    let home = crate::explorer::home();
    let key = mesh_key(home.path());
    let n = MeshNode::start(home, &key, &[], &[]);

    run_many(&n, 0, 2, 1, 1);
    wait_no_runs(&n);
    let after_2 = tmp_entries(&n.home.store());

    run_many(&n, 2, 200, 10, 10);
    wait_no_runs(&n);
    let after_200 = tmp_entries(&n.home.store());
    assert_eq!(after_200, after_2, "what tmp/ holds after 200 DAGs, against after 2");
    assert!(
        after_200.iter().all(|name| !name.starts_with("job-") && !name.starts_with("image-")),
        "no work directory of an ended job is left: {after_200:?}"
    );
}

/// An entry whose main file the test writes.
const CLOCK_CATALOGUE: &str = r#"
version = 1
[types]
"text/x-shellscript" = ["sh"]

[[image]]
id = "clock"
title = "says when it ran"
image = "busybox:latest"
inputs = ["text/x-shellscript"]
command = ["sh", "{main}"]
timeout = "60s"
"#;

/// Prints the machine's uptime (centiseconds, truncated, so a later moment never prints less)
/// at the job's start and end, one second apart; `tag` makes each job a job of its own.
fn clock_script(tag: &str) -> String {
    format!("# {tag}\nread s _ < /proc/uptime; sleep 1; read e _ < /proc/uptime; echo \"$s $e\"\n")
}

/// `start end` as the clock script prints them, in centiseconds.
fn interval(text: &str) -> (u64, u64) {
    let cs = |v: &str| -> u64 {
        let (whole, frac) = v.split_once('.').unwrap_or_else(|| panic!("not an uptime: {text:?}"));
        whole.parse::<u64>().unwrap() * 100 + frac.parse::<u64>().unwrap()
    };
    let (s, e) = text.trim().split_once(' ').unwrap_or_else(|| panic!("not `start end`: {text:?}"));
    (cs(s), cs(e))
}

#[test]
fn explorer_local_and_mesh_jobs_together_never_run_on_more_than_the_nodes_cores() {
    let home = Home::with_busybox();
    let dir = home.store().join("explorer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("catalogue.toml"), CLOCK_CATALOGUE).unwrap();
    let key = mesh_key(home.path());
    let n = MeshNode::start(home, &key, &[], &["--cores", "1"]);

    const MESH_JOBS: usize = 3;
    const EXPLORER_RUNS: usize = 3;
    let jobs: Vec<Value> = (0..MESH_JOBS)
        .map(|i| {
            json!({"id": format!("clock{i}"), "image": "busybox:latest",
                "command": ["sh", "-c", clock_script(&format!("mesh {i}"))], "outputs": {"out": "stdout"}})
        })
        .collect();
    let dag = submit(&n, &json!({"version": 1, "jobs": jobs}));
    // The explorer's requests come while the mesh's jobs hold or wait for the one core.
    wait_dag(&n, &dag, RUNS_TIMEOUT, "a mesh job claimed", |v| {
        v["jobs"].as_object().is_some_and(|j| j.values().any(|j| j["state"] == "claimed"))
    });
    let node = &n;
    let (explored, local): (Vec<(u64, u64)>, (u64, u64)) = std::thread::scope(|s| {
        let runs: Vec<_> = (0..EXPLORER_RUNS)
            .map(|i| s.spawn(move || explore(node, "clock", &clock_script(&format!("explorer {i}")))))
            .collect();
        // And a local run: `shoal run` on the node's held home.
        let dag = node.home.write(
            "local.json",
            &json!({"version": 1, "jobs": [{"id": "clock", "image": "busybox:latest",
                "command": ["sh", "-c", clock_script("local")], "outputs": {"out": "stdout"}}]})
            .to_string(),
        );
        let out = node.cli(&["run", "--backend", "namespace", "--json", dag.to_str().unwrap()]);
        assert_success(&out, "shoal run on a held home");
        let hash = json(&out)["jobs"][0]["outputs"]["out"]["hash"].as_str().unwrap().to_string();
        let (status, body) = node.get(&format!("/v1/blobs/{hash}"));
        assert_eq!(status, 200);
        let explored =
            runs.into_iter().map(|r| interval(r.join().unwrap()["stdout"]["text"].as_str().unwrap())).collect();
        (explored, interval(&String::from_utf8_lossy(&body)))
    });
    wait_dag(&n, &dag, RUNS_TIMEOUT, "the mesh DAG done", all_done);
    let meshed: Vec<(u64, u64)> = (0..MESH_JOBS)
        .map(|i| {
            let (status, body) = n.get(&format!("/v1/dags/{dag}/jobs/clock{i}/outputs/out"));
            assert_eq!(status, 200);
            interval(&String::from_utf8_lossy(&body))
        })
        .collect();

    // They competed: an explorer run started before the mesh's last job ended.
    let mesh_end = meshed.iter().map(|&(_, e)| e).max().unwrap();
    assert!(explored.iter().any(|&(s, _)| s < mesh_end), "mesh {meshed:?}, explorer {explored:?}");
    // And no two of them ran at once on the node's one core.
    let mut all: Vec<(u64, u64, &str)> = meshed.iter().map(|&(s, e)| (s, e, "mesh")).collect();
    all.extend(explored.iter().map(|&(s, e)| (s, e, "explorer")));
    all.push((local.0, local.1, "local"));
    all.sort();
    for w in all.windows(2) {
        assert!(w[1].0 >= w[0].1, "two jobs ran at once on one core: {:?} and {:?} (all: {all:?})", w[0], w[1]);
    }
}

#[test]
fn a_local_run_on_a_node_gets_no_more_than_the_nodes_cores() {
    let home = Home::with_busybox();
    let dag = home.write(
        "two.json",
        r#"{"version": 1, "jobs": [{"id": "two", "image": "busybox:latest", "command": ["true"],
            "requirements": {"cores": 2}}]}"#,
    );
    // Alone, `shoal run --cores 2` gives it its two cores.
    let out = home.shoal(&["run", "--backend", "namespace", "--cores", "2", dag.to_str().unwrap()]);
    assert_success(&out, "shoal run --cores 2");

    // Through a node of one core, asking for more gets the node's one.
    let key = mesh_key(home.path());
    let n = MeshNode::start(home, &key, &[], &["--cores", "1"]);
    let out = n.cli(&["run", "--backend", "namespace", "--cores", "4", "--no-cache", dag.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("it needs 2 cores and this run may use 1"), "{err}");
}
