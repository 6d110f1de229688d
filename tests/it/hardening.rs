//! Issue 16's defects, each as a user met it: the real binary, the namespace backend, a fresh store.

use crate::support::*;

fn run_ns(home: &Home, dag: &std::path::Path) -> std::process::Output {
    home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap(), "--json"])
}

/// Run records over ciborium's 4 KiB scratch buffer were stored, then unreadable: `get`, `log`,
/// `show`, a rerun and `gc` of the whole store failed ("invalid type: bytes, expected bytes").
#[test]
fn big_run_records_stay_readable_and_gc_works() {
    let home = Home::with_busybox();
    let long_arg = "a".repeat(5000);
    let long_env = "e".repeat(4100);
    let outputs: serde_json::Map<String, serde_json::Value> =
        (0..60).map(|i| (format!("f{i}"), format!("file:/output/f{i}").into())).collect();
    let dag = serde_json::json!({"version": 1, "jobs": [
        {"id": "arg", "image": "busybox:latest", "command": ["sh", "-c", "echo ${#1}", "sh", long_arg],
         "outputs": {"o": "stdout"}},
        {"id": "env", "image": "busybox:latest", "command": ["sh", "-c", "echo ${#LONG}"],
         "env": {"LONG": long_env}, "outputs": {"o": "stdout"}},
        {"id": "many", "image": "busybox:latest",
         "command": ["sh", "-c", "for i in $(seq 0 59); do echo $i > /output/f$i; done; echo many"],
         "outputs": outputs},
        {"id": "fails", "image": "busybox:latest",
         "command": ["sh", "-c", "head -c 6000 /dev/zero | tr '\\0' x >&2; exit 3"], "outputs": {"o": "stdout"}}
    ]});
    let path = home.write("big.json", &dag.to_string());
    let first = run_ns(&home, &path);
    let report = json(&first);
    assert_eq!(report["jobs"].as_array().unwrap().len(), 4, "{report}");

    assert_eq!(stdout(&home.shoal(&["get", "arg", "o"])), "5000\n");
    assert_eq!(stdout(&home.shoal(&["get", "env", "o"])), "4100\n");
    assert_eq!(stdout(&home.shoal(&["get", "many", "f59"])), "59\n");
    for job in ["arg", "env", "many", "fails"] {
        let show = home.shoal(&["show", job]);
        assert_success(&show, &format!("shoal show {job}"));
        assert_eq!(json(&show)["job_id"], job);
        let log = home.shoal(&["log", job]);
        assert!(log.status.success() || job == "fails", "shoal log {job}: {}", stderr(&log));
    }
    assert_eq!(stderr(&home.shoal(&["log", "fails"])).len(), 6000);

    // A rerun answers the three good jobs from the cache; gc keeps them.
    let again = json(&run_ns(&home, &path));
    for j in again["jobs"].as_array().unwrap() {
        assert_eq!(j["cached"], j["job"] != "fails", "{j}");
    }
    assert_success(&home.shoal(&["gc"]), "gc");
    assert_eq!(stdout(&home.shoal(&["get", "many", "f0"])), "0\n");
}

/// Flips one byte of a blob's data file in a store (blobs over 16 KiB have one).
fn corrupt_blob(home: &Home, hash: &str) {
    let hex = hash.trim().strip_prefix("blake3:").unwrap_or(hash.trim());
    let path = home.store().join("blobs/data").join(format!("{hex}.data"));
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes[100] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
}

/// A corrupted blob was served as if it were fine by `shoal get`, `shoal blob get` and as a job's
/// input, and the job's different output was recorded under the same action key.
#[test]
fn a_corrupted_blob_is_never_served() {
    let home = Home::with_busybox();
    let data: String = (0..5000).map(|i| format!("{i}\n")).collect();
    let file = home.write("data.txt", &data);
    let put = home.shoal(&["blob", "put", file.to_str().unwrap()]);
    assert_success(&put, "blob put");
    let hash = stdout(&put).trim().to_string();
    let dag = home.write(
        "count.json",
        &format!(
            r#"{{"version": 1, "jobs": [{{"id": "copy", "image": "busybox:latest",
            "command": ["sh", "-c", "cat /input/data; echo end"], "inputs": {{"data": "{hash}"}}, "outputs": {{"o": "stdout"}}}}]}}"#
        ),
    );
    assert_success(&run_ns(&home, &dag), "first run");
    let out_hash = json(&home.shoal(&["show", "copy"]))["outputs"]["o"]["hash"].as_str().unwrap().to_string();
    corrupt_blob(&home, &hash);
    corrupt_blob(&home, &out_hash);

    for args in [vec!["blob", "get", hash.as_str()], vec!["get", "copy", "o"]] {
        let out = home.shoal(&args);
        assert!(!out.status.success(), "shoal {args:?} served a corrupted blob");
        assert!(stderr(&out).contains("corrupted"), "shoal {args:?}: {}", stderr(&out));
    }
    let dest = home.path().join("o.txt");
    let out = home.shoal(&["get", "copy", "o", "-o", dest.to_str().unwrap()]);
    assert!(!out.status.success() && !dest.exists(), "get -o wrote a corrupted blob");

    // A job reading the corrupted input fails and names it; nothing enters the cache.
    let dag2 = home.write(
        "count2.json",
        &format!(
            r#"{{"version": 1, "jobs": [{{"id": "wc", "image": "busybox:latest",
            "command": ["wc", "-c", "/input/data"], "inputs": {{"data": "{hash}"}}, "outputs": {{"o": "stdout"}}}}]}}"#
        ),
    );
    let run = run_ns(&home, &dag2);
    assert!(!run.status.success(), "a job ran on a corrupted input");
    let text = format!("{}{}", stdout(&run), stderr(&run));
    assert!(text.contains("corrupted") && text.contains(hash.trim_start_matches("blake3:")), "{text}");

    // Stored again, it is whole and in use; the job runs and is cached.
    assert_success(&home.shoal(&["blob", "put", file.to_str().unwrap()]), "blob put again");
    assert_eq!(stdout(&home.shoal(&["blob", "get", &hash])), data);
    let again = json(&run_ns(&home, &dag2));
    assert_eq!(again["jobs"][0]["status"], "done", "{again}");
}
