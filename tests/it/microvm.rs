//! The microVM backend through the real binary: the sample DAG in microVMs (the default
//! backend), the same outputs as the namespace backend, `isolation` honoured, `shoal doctor`.
//! With `SHOAL_REQUIRE_VM=1` (CI) a host without QEMU or the guest kernel fails these tests.

use crate::support::*;

/// Whether `shoal doctor` finds a working microVM backend; without one the VM tests skip,
/// unless `SHOAL_REQUIRE_VM=1` makes that a failure.
pub(crate) fn vm_ready(home: &Home) -> bool {
    let out = home.shoal(&["doctor", "--json"]);
    assert_success(&out, "shoal doctor --json");
    let rows = json(&out);
    let row = rows.as_array().unwrap().iter().find(|r| r["check"] == "microvm backend").expect("a microvm row").clone();
    if row["ok"] == true {
        return true;
    }
    let why = format!("the microVM backend is unavailable: {}", row["detail"]);
    if std::env::var("SHOAL_REQUIRE_VM").as_deref() == Ok("1") {
        panic!("SHOAL_REQUIRE_VM=1 and {why}");
    }
    eprintln!("skipped: {why}");
    false
}

fn outputs_of(report: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job"].as_str().unwrap().to_string(), j["outputs"].clone()))
        .collect()
}

#[test]
fn the_sample_dag_runs_in_microvms_with_the_namespace_backends_results() {
    let home = Home::with_busybox();
    if !vm_ready(&home) {
        return;
    }
    let dag = repo_root().join("examples/pipeline.json");
    let out = home.shoal(&["run", dag.to_str().unwrap(), "--json"]);
    assert_success(&out, "shoal run (microvm, the default)");
    let vm_run = json(&out);
    assert_eq!(vm_run["ok"], true, "{vm_run}");
    let report = stdout(&home.shoal(&["get", "report", "report"]));
    assert!(report.contains("lines and words: 200 2200"), "{report}");

    // The record says where it ran.
    let show = home.shoal(&["show", "report"]);
    assert_success(&show, "shoal show report");
    let record = json(&show);
    let machine = &record["machine"];
    assert_eq!(machine["backend"], "microvm", "{machine}");
    assert!(matches!(machine["accelerator"].as_str(), Some("tcg" | "kvm")), "{machine}");
    assert!(machine["qemu"].as_str().is_some_and(|q| !q.is_empty()), "{machine}");
    assert!(machine["guest_kernel"].as_str().is_some_and(|k| k.contains("cloud")), "{machine}");

    // The namespace backend computes the same bytes for every output.
    let out = home.shoal(&["run", "--backend", "namespace", "--no-cache", dag.to_str().unwrap(), "--json"]);
    assert_success(&out, "shoal run --backend namespace --no-cache");
    assert_eq!(outputs_of(&json(&out)), outputs_of(&vm_run));
    assert_no_qemu_under(home.path());
}

#[test]
fn a_job_that_requires_a_vm_never_runs_in_the_namespace_backend() {
    let home = Home::with_busybox();
    let dag = home.write(
        "dag.json",
        r#"{"version": 1, "jobs": [
  {"id": "strict", "image": "busybox:latest", "command": ["echo", "hi"], "outputs": {"o": "stdout"},
   "requirements": {"isolation": "vm"}},
  {"id": "after", "image": "busybox:latest", "command": ["cat"], "stdin": "jobs:strict/o"}
]}"#,
    );
    let out = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("requires `isolation: vm`") && err.contains("--backend microvm"), "{err}");
    assert!(stdout(&out).contains("skipped"), "its dependant is skipped: {}", stdout(&out));
}

#[test]
fn too_many_warm_vms_is_refused_with_the_range() {
    let home = Home::empty();
    let dag = repo_root().join("examples/pipeline.json");
    let out = home.shoal(&["run", dag.to_str().unwrap(), "--warm-vms", "99"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("from 0 to 16"), "{}", stderr(&out));
}

/// One job that accepts the namespace sandbox.
const LIGHT_DAG: &str = r#"{"version": 1, "jobs": [
  {"id": "light", "image": "busybox:latest", "command": ["echo", "hi"], "outputs": {"o": "stdout"},
   "requirements": {"isolation": "namespace"}}
]}"#;

#[test]
fn a_job_that_accepts_namespaces_uses_them_under_the_default_backend() {
    let home = Home::with_busybox();
    let dag = home.write("dag.json", LIGHT_DAG);
    assert_success(&home.shoal(&["run", dag.to_str().unwrap()]), "shoal run");
    let record = json(&home.shoal(&["show", "light"]));
    assert_eq!(record["machine"]["backend"], "namespace");
    assert_eq!(record["machine"]["accelerator"], serde_json::Value::Null);
}

/// `--backend microvm-only` (a live stick whose owner did not allow namespaces): the same job runs
/// in a microVM, its record says so.
#[test]
fn under_microvm_only_a_job_that_accepts_namespaces_still_runs_in_a_microvm() {
    let home = Home::with_busybox();
    if !vm_ready(&home) {
        return;
    }
    let dag = home.write("dag.json", LIGHT_DAG);
    assert_success(&home.shoal(&["run", dag.to_str().unwrap(), "--backend", "microvm-only"]), "shoal run");
    let record = json(&home.shoal(&["show", "light"]));
    assert_eq!(record["machine"]["backend"], "microvm", "{record:#}");
    assert!(record["machine"]["accelerator"].is_string(), "{record:#}");
    assert_eq!(stdout(&home.shoal(&["get", "light", "o"])), "hi\n");
}

#[test]
fn doctor_reports_the_accelerator_and_how_to_fix_what_is_missing() {
    let home = Home::empty();
    let out = home.shoal(&["doctor", "--json"]);
    assert_success(&out, "shoal doctor --json");
    let rows = json(&out);
    let names: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["check"].as_str().unwrap()).collect();
    for expected in ["QEMU", "guest kernel", "guest-init", "microvm backend", "namespace backend"] {
        assert!(names.contains(&expected), "doctor lacks `{expected}`: {names:?}");
    }
    for r in rows.as_array().unwrap() {
        if r["ok"] == false {
            let detail = r["detail"].as_str().unwrap();
            assert!(
                detail.contains("install") || detail.contains("run ") || detail.contains("set "),
                "no fix given: {r}"
            );
        }
    }
    if vm_ready(&home) {
        let accel = rows.as_array().unwrap().iter().find(|r| r["check"] == "accelerator").expect("accelerator row");
        let detail = accel["detail"].as_str().unwrap();
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            assert!(detail.starts_with("tcg") && detail.contains("PVM"), "{detail}");
        }
    }
}

#[test]
fn killing_shoal_mid_job_takes_its_vms_with_it() {
    let home = Home::with_busybox();
    if !vm_ready(&home) {
        return;
    }
    let dag = home.write(
        "dag.json",
        r#"{"version": 1, "jobs": [
  {"id": "long", "image": "busybox:latest", "command": ["sleep", "600"], "outputs": {"o": "stdout"}}
]}"#,
    );
    let mut cmd = std::process::Command::new(shoal_bin());
    cmd.args(["run", dag.to_str().unwrap(), "--json", "--warm-vms", "1"])
        .env("SHOAL_HOME", home.store())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Wait until its VM (and the warm one it boots for the next job of this kind) run.
    let marker = home.path().to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    while qemus_under(&marker) < 2 {
        assert!(started.elapsed().as_secs() < 60, "shoal never started its VMs");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let killed = std::time::Instant::now();
    while qemus_under(&marker) > 0 {
        assert!(killed.elapsed().as_secs() < 5, "QEMU outlived the shoal that started it");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The next run clears what the killed one left (its warm VM's disks) and works.
    let again = home.write(
        "quick.json",
        r#"{"version": 1, "jobs": [{"id": "q", "image": "busybox:latest", "command": ["true"]}]}"#,
    );
    let warm_dir = home.store().join("vm/warm");
    assert!(std::fs::read_dir(&warm_dir).unwrap().next().is_some(), "the killed run left its warm VM's disks");
    assert_success(&home.shoal(&["run", again.to_str().unwrap(), "--warm-vms", "0"]), "a run after the kill");
    assert!(std::fs::read_dir(&warm_dir).unwrap().next().is_none(), "stale warm VM disks were not cleared");
}

/// How many QEMU processes mention `marker` on their command line.
fn qemus_under(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(marker))
        .count()
}

/// No QEMU process whose command line mentions `dir` (each test's store lives there).
fn assert_no_qemu_under(dir: &std::path::Path) {
    let marker = dir.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(!(cmd.contains("qemu-system") && cmd.contains(&marker)), "QEMU outlived its run: {cmd}");
        }
    }
}
