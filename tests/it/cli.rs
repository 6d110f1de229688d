//! `shoal run`, `get`, `log`, `show`, `gc` through the real binary and the namespace backend.

use crate::support::*;

fn example_text() -> String {
    (1..=200).map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n")).collect()
}

fn run_json(home: &Home, dag: &std::path::Path) -> (std::process::Output, serde_json::Value) {
    let out = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap(), "--json"]);
    let value = json(&out);
    (out, value)
}

fn job<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["jobs"].as_array().unwrap().iter().find(|j| j["job"] == id).unwrap_or_else(|| panic!("no job {id}"))
}

#[test]
fn sample_dag_runs_then_is_all_cache_hits() {
    let home = Home::with_busybox();
    let dag = repo_root().join("examples/pipeline.json");
    let (out, first) = run_json(&home, &dag);
    assert_success(&out, "first run");
    assert_eq!(first["ok"], true);
    for j in first["jobs"].as_array().unwrap() {
        assert_eq!(j["status"], "done", "{j}");
        assert_eq!(j["cached"], false, "{j}");
    }

    // The fan-in job saw every upstream output.
    let text = example_text();
    let vowel = |c: char| text.chars().filter(|&x| x == c).count();
    let report = home.shoal(&["get", "report", "report"]);
    assert_success(&report, "shoal get report report");
    let report = stdout(&report);
    assert!(report.contains("lines and words: 200 2200"), "{report}");
    assert!(report.contains("parts: part-1 part-2 part-3 part-4"), "{report}");
    for c in ['a', 'e', 'i', 'o', 'u'] {
        assert!(report.contains(&format!("vowel {c}: {}", vowel(c))), "vowel {c} in {report}");
    }

    // The generated text is byte-for-byte what the job wrote.
    let text_file = home.path().join("text");
    assert_success(&home.shoal(&["get", "generate", "text", "-o", text_file.to_str().unwrap()]), "get text");
    assert_eq!(std::fs::read_to_string(&text_file).unwrap(), text);

    let (out, second) = run_json(&home, &dag);
    assert_success(&out, "second run");
    for j in second["jobs"].as_array().unwrap() {
        assert_eq!(j["cached"], true, "second run must be all cache hits: {j}");
        let id = j["job"].as_str().unwrap();
        assert_eq!(j["outputs"], job(&first, id)["outputs"], "{id} outputs differ between runs");
        assert_eq!(j["record"], job(&first, id)["record"]);
    }

    // The human table names every job and says they came from the cache.
    let table = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap()]);
    assert_success(&table, "table run");
    let table = stdout(&table);
    for id in ["generate", "count", "split", "letters", "report"] {
        assert!(table.contains(id), "{table}");
    }
    assert!(table.contains("yes"), "{table}");
}

#[test]
fn dir_and_glob_outputs_become_trees() {
    let home = Home::with_busybox();
    let dag = repo_root().join("examples/pipeline.json");
    let (out, _) = run_json(&home, &dag);
    assert_success(&out, "run");
    let parts = home.path().join("parts");
    assert_success(&home.shoal(&["get", "split", "parts", "-o", parts.to_str().unwrap()]), "get parts");
    let mut names: Vec<String> =
        std::fs::read_dir(&parts).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["part-1", "part-2", "part-3", "part-4"]);
    assert_eq!(std::fs::read_to_string(parts.join("part-4")).unwrap().lines().count(), 50);

    let vowels = home.path().join("vowels");
    assert_success(&home.shoal(&["get", "letters", "vowels", "-o", vowels.to_str().unwrap()]), "get vowels");
    let mut names: Vec<String> =
        std::fs::read_dir(&vowels).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a.txt", "e.txt", "i.txt", "o.txt", "u.txt"], "the glob must not match ignored.tmp");

    // A tree output without -o is refused with advice.
    let out = home.shoal(&["get", "split", "parts"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("-o DIR"), "{}", stderr(&out));
}

#[test]
fn failed_job_reports_stderr_and_skips_dependants() {
    let home = Home::with_busybox();
    let dag = home.write(
        "fail.json",
        r#"{"version": 1, "jobs": [
          {"id": "ok", "image": "busybox:latest", "command": ["echo", "fine"], "outputs": {"o": "stdout"}},
          {"id": "bad", "image": "busybox:latest", "command": ["sh", "-c", "echo step one >&2; echo it broke >&2; exit 3"],
           "inputs": {"x": "jobs:ok/o"}, "outputs": {"o": "stdout"}},
          {"id": "after", "image": "busybox:latest", "command": ["cat", "/input/x"], "inputs": {"x": "jobs:bad/o"},
           "outputs": {"o": "stdout"}},
          {"id": "after2", "image": "busybox:latest", "command": ["cat", "/input/x"], "inputs": {"x": "jobs:after/o"},
           "outputs": {"o": "stdout"}}
        ]}"#,
    );
    let out = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a failed job makes the exit code 1");
    let err = stderr(&out);
    assert!(err.contains("job `bad` failed: exited with code 3"), "{err}");
    assert!(err.contains("it broke"), "stderr tail shown: {err}");
    let table = stdout(&out);
    assert!(table.contains("FAILED") && table.contains("skipped"), "{table}");

    let (_, report) = run_json(&home, &dag);
    assert_eq!(job(&report, "ok")["status"], "done");
    assert_eq!(job(&report, "bad")["status"], "failed");
    assert_eq!(job(&report, "bad")["exit"]["code"], 3);
    for id in ["after", "after2"] {
        assert_eq!(job(&report, id)["status"], "skipped");
        assert!(job(&report, id)["error"].as_str().unwrap().contains("`bad`"));
    }
    // A failure is not cached: the second run ran it again.
    assert_eq!(job(&report, "bad")["cached"], false);
    // Its log is kept.
    let log = home.shoal(&["log", "bad"]);
    assert!(stderr(&log).contains("step one\nit broke"), "{}", stderr(&log));
}

/// `shoal run` checks what the mesh checks of a node: a job needing a CPU flag, memory or a GPU
/// this machine lacks is refused with what it lacks, and runs nowhere (it used to run, and a
/// result keyed for that CPU flag could be cached from a machine without it).
#[test]
fn a_job_this_machine_cannot_run_is_refused_and_says_what_it_lacks() {
    let home = Home::with_busybox();
    let dag = home.write(
        "needs.json",
        r#"{"version": 1, "jobs": [
          {"id": "flag", "image": "busybox:latest", "command": ["echo", "ran"], "outputs": {"o": "stdout"},
           "requirements": {"cpu_flags": ["no_such_cpu_flag"]}},
          {"id": "gpu", "image": "busybox:latest", "command": ["echo", "ran"], "outputs": {"o": "stdout"},
           "requirements": {"gpu": 1}},
          {"id": "fine", "image": "busybox:latest", "command": ["echo", "ran"], "outputs": {"o": "stdout"}}
        ]}"#,
    );
    let (out, report) = run_json(&home, &dag);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(job(&report, "fine")["status"], "done");
    for (id, lacks) in [("flag", "lacks CPU flags no_such_cpu_flag"), ("gpu", "needs 1 GPU(s), has 0")] {
        assert_eq!(job(&report, id)["status"], "failed", "{report:#}");
        let why = job(&report, id)["error"].as_str().unwrap_or_default().to_string();
        assert!(why.contains("this machine cannot run it") && why.contains(lacks), "{id}: {why}");
    }
}

#[test]
fn bad_dag_reports_every_problem_with_its_location() {
    let home = Home::with_busybox();
    let dag = home.write(
        "bad.json",
        "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"comand\": [\"true\"]},\n  {\"id\": \"b\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"inputs\": {\"x\": \"jobs:nope/out\"}}\n]}\n",
    );
    let out = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.json:2:"), "{err}");
    assert!(err.contains("comand"), "{err}");
    assert!(err.contains("bad.json:3:"), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn show_prints_a_signed_record_and_log_prints_streams() {
    let home = Home::with_busybox();
    let dag = home.write(
        "one.json",
        r#"{"version": 1, "jobs": [{"id": "hello", "image": "busybox:latest",
            "command": ["sh", "-c", "echo out-text; echo err-text >&2"], "outputs": {"o": "stdout"}}]}"#,
    );
    assert_success(&home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap()]), "run");
    let show = home.shoal(&["show", "hello"]);
    assert_success(&show, "show");
    let record = json(&show);
    assert_eq!(record["job_id"], "hello");
    assert_eq!(record["exit"]["code"], 0);
    assert_eq!(record["machine"]["backend"], "namespace");
    assert!(record["machine"]["kernel"].as_str().unwrap().len() > 3);
    assert!(record["action_key"].as_str().unwrap().starts_with("blake3:"));
    let log = home.shoal(&["log", "hello"]);
    assert_eq!(stdout(&log), "out-text\n");
    assert_eq!(stderr(&log), "err-text\n");
}

#[test]
fn a_job_runs_an_image_that_another_job_built() {
    let home = Home::with_busybox();
    // The first job writes an OCI layout with busybox's own tools: one layer holding /greeting and
    // a hard link to busybox, a config, a manifest and index.json, every blob named by its sha256.
    let build = r#"set -e
mkdir -p /scratch/root/bin /output/img/blobs/sha256
cp /bin/busybox /scratch/root/bin/busybox
ln -s busybox /scratch/root/bin/sh
ln -s busybox /scratch/root/bin/cat
echo 'built by a job' > /scratch/root/greeting
cd /scratch/root && tar -cf /scratch/layer.tar bin greeting
put() { d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" /output/img/blobs/sha256/$d; echo $d; }
layer=$(put /scratch/layer.tar); lsize=$(wc -c < /scratch/layer.tar)
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' $layer > /scratch/config.json
config=$(put /scratch/config.json); csize=$(wc -c < /scratch/config.json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' $config $csize $layer $lsize > /scratch/manifest.json
manifest=$(put /scratch/manifest.json); msize=$(wc -c < /scratch/manifest.json)
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' $manifest $msize > /output/img/index.json
echo '{"imageLayoutVersion":"1.0.0"}' > /output/img/oci-layout
"#;
    let dag = serde_json::json!({"version": 1, "jobs": [
        {"id": "build", "image": "busybox:latest", "command": ["sh", "-c", build], "outputs": {"image": "dir:/output/img"}},
        {"id": "use", "image": "jobs:build/image", "command": ["cat", "/greeting"], "outputs": {"o": "stdout"}}
    ]});
    let path = home.write("image.json", &dag.to_string());
    let out = home.shoal(&["run", "--backend", "namespace", path.to_str().unwrap()]);
    assert_success(&out, "run");
    assert_eq!(stdout(&home.shoal(&["get", "use", "o"])), "built by a job\n");
}

#[test]
fn file_inputs_are_hashed_and_gc_keeps_what_records_reference() {
    let home = Home::with_busybox();
    home.write("data.txt", "3\n1\n2\n");
    let dag = home.write(
        "sort.json",
        r#"{"version": 1, "jobs": [{"id": "sort", "image": "busybox:latest", "command": ["sort", "/input/data"],
            "inputs": {"data": "file:data.txt"}, "outputs": {"sorted": "stdout"}}]}"#,
    );
    assert_success(&home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap()]), "run");
    assert_eq!(stdout(&home.shoal(&["get", "sort", "sorted"])), "1\n2\n3\n");

    // An unreferenced blob goes; the run's outputs and the image stay.
    let junk = home.write("junk.bin", "nobody refers to me");
    let put = home.shoal(&["blob", "put", junk.to_str().unwrap()]);
    assert_success(&put, "blob put");
    let junk_hash = stdout(&put).trim().to_string();
    assert_eq!(stdout(&home.shoal(&["blob", "get", &junk_hash])), "nobody refers to me");
    assert_success(&home.shoal(&["gc"]), "gc");
    assert!(!home.shoal(&["blob", "get", &junk_hash]).status.success(), "unreferenced blob survived gc");
    assert_eq!(stdout(&home.shoal(&["get", "sort", "sorted"])), "1\n2\n3\n");
    let again = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap(), "--json"]);
    assert_eq!(json(&again)["jobs"][0]["cached"], true, "gc dropped the cached result");

    // A changed input file changes the action key: the job runs again.
    home.write("data.txt", "9\n8\n");
    let third = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap(), "--json"]);
    assert_eq!(json(&third)["jobs"][0]["cached"], false);
    assert_eq!(stdout(&home.shoal(&["get", "sort", "sorted"])), "8\n9\n");
}
