//! Well-formed specs: what they parse to, defaults, accepted spellings, order, and how problems print.

use shoal_dag::{Arch, ImageRef, InputRef, Isolation, OutputSpec, parse_dag};

#[test]
fn a_full_job_parses_to_its_typed_form() {
    let text = r#"{"version": 1, "jobs": [
  {"id": "gen", "image": "busybox:latest", "command": ["sh", "-c", "seq 3"],
   "outputs": {"nums": "stdout", "log": "stderr", "report": "file:/output/r.txt", "site": "dir:/output/site", "pngs": "glob:/output/**/*.png"}},
  {"id": "use", "container": "jobs:img/oci", "command": ["wc", "-l"], "stdin": "jobs:gen/nums",
   "env": ["A=1", "B=x=y"], "workdir": "/work", "user": "1000:1000",
   "inputs": {"data": "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
              "raw": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
              "local": "file:../data/in.csv"},
   "requirements": {"cores": 2, "memory": "2GiB", "arch": "arm64", "cpu_flags": ["neon"], "gpu": 1,
                    "network": true, "scratch": "4GiB", "output_size": "100MiB", "timeout": "1h30m",
                    "isolation": "namespace", "labels": {"pool": "night"}}},
  {"id": "img", "image": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "command": ["true"],
   "outputs": {"oci": "dir:/output/layout"}}
]}"#;
    let dag = parse_dag("full.json", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dag.jobs.len(), 3);
    let gen_job = dag.job("gen").unwrap();
    assert_eq!(gen_job.image, ImageRef::Tag("busybox:latest".into()));
    assert_eq!(gen_job.outputs["nums"], OutputSpec::Stdout);
    assert_eq!(gen_job.outputs["log"], OutputSpec::Stderr);
    assert_eq!(gen_job.outputs["site"], OutputSpec::Dir("/output/site".into()));
    assert_eq!(gen_job.outputs["pngs"].to_string(), "glob:/output/**/*.png");
    let r = &gen_job.requirements;
    assert_eq!((r.cores, r.memory_bytes, r.timeout_ms, r.network, r.isolation), (1, 512 << 20, 3_600_000, false, None));

    let u = dag.job("use").unwrap();
    assert_eq!(u.image, ImageRef::Job { job: "img".into(), output: "oci".into() });
    assert_eq!(u.stdin, Some(InputRef::Job { job: "gen".into(), output: "nums".into() }));
    assert_eq!(u.env["A"], "1");
    assert_eq!(u.env["B"], "x=y", "only the first `=` splits");
    assert_eq!(u.workdir.as_deref(), Some("/work"));
    assert_eq!(u.user.as_deref(), Some("1000:1000"));
    assert!(matches!(u.inputs["data"], InputRef::Blake3(_)));
    assert!(matches!(u.inputs["raw"], InputRef::Sha256(_)));
    assert_eq!(u.inputs["local"], InputRef::File("../data/in.csv".into()));
    let r = &u.requirements;
    assert_eq!(r.cores, 2);
    assert_eq!(r.memory_bytes, 2 << 30);
    assert_eq!(r.arch, Some(Arch::Aarch64));
    assert_eq!(r.gpu.as_ref().map(|g| g.count), Some(1));
    assert!(r.network);
    assert_eq!(r.scratch_bytes, 4 << 30);
    assert_eq!(r.output_bytes_max, 100 << 20);
    assert_eq!(r.timeout_ms, 90 * 60_000);
    assert_eq!(r.isolation, Some(Isolation::Namespace));
    assert_eq!(r.labels["pool"], "night");

    // Dependencies come first; among ready jobs, file order.
    let order: Vec<&str> = dag.topo_order().into_iter().map(|i| dag.jobs[i].id.as_str()).collect();
    assert_eq!(order, ["gen", "img", "use"]);
    assert_eq!(dag.dependencies(1), vec![0, 2]);
}

#[test]
fn topological_order_of_a_diamond_and_a_chain() {
    let text = r#"{"version": 1, "jobs": [
  {"id": "join", "image": "b:1", "command": ["x"], "inputs": {"l": "jobs:left/o", "r": "jobs:right/o"}},
  {"id": "right", "image": "b:1", "command": ["x"], "stdin": "jobs:root/o", "outputs": {"o": "stdout"}},
  {"id": "left", "image": "b:1", "command": ["x"], "stdin": "jobs:root/o", "outputs": {"o": "stdout"}},
  {"id": "root", "image": "b:1", "command": ["x"], "outputs": {"o": "stdout"}},
  {"id": "alone", "image": "b:1", "command": ["x"]}
]}"#;
    let dag = parse_dag("d.json", text).unwrap_or_else(|e| panic!("{e}"));
    let order: Vec<&str> = dag.topo_order().into_iter().map(|i| dag.jobs[i].id.as_str()).collect();
    assert_eq!(order, ["root", "right", "left", "join", "alone"]);
}

#[test]
fn whole_output_and_scratch_dirs_are_allowed_as_dir_outputs() {
    let text = r#"{"version": 1, "jobs": [{"id": "a", "image": "b:1", "command": ["x"],
      "outputs": {"all": "dir:/output", "tmp": "dir:/scratch", "one": "file:/scratch/one", "e": "fd:2"}}]}"#;
    let dag = parse_dag("w.json", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dag.jobs[0].outputs["all"], OutputSpec::Dir("/output".into()));
    assert_eq!(dag.jobs[0].outputs["e"], OutputSpec::Stderr);
}

#[test]
fn unicode_and_escapes_in_strings() {
    let text = "{\"version\": 1, \"jobs\": [{\"id\": \"a\", \"image\": \"b:1\", \"command\": [\"echo\", \"caf\\u00e9 \\ud83d\\udc1f \\\"q\\\" \\\\ \\/\"]}]}";
    let dag = parse_dag("u.json", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dag.jobs[0].command[1], "café 🐟 \"q\" \\ /");
}

#[test]
fn problems_print_as_file_line_col_job_message_and_help() {
    let text = "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"memroy\": \"1GiB\"}}]}";
    let err = parse_dag("dags/x.json", text).unwrap_err();
    let shown = err.to_string();
    assert_eq!(
        shown,
        "dags/x.json:3:21: job `a`: unknown field `memroy` in `requirements`\n  help: did you mean `memory`? known fields here: \
cores, memory, arch, cpu_flags, gpu, network, scratch, output_size, timeout, pids, isolation, labels\n1 problem in dags/x.json"
    );
    let two = parse_dag(
        "y.json",
        "{\"version\": 1, \"jobs\": [{\"id\": \"a\", \"image\": \"b:1\", \"command\": [], \"user\": 1}]}",
    )
    .unwrap_err();
    assert!(two.to_string().ends_with("2 problems in y.json"), "{two}");
    assert!(two.0.iter().all(|d| d.job.as_deref() == Some("a")));
}

#[test]
fn syntax_errors_say_the_format_is_strict_json() {
    let err = parse_dag("s.json", "{\"version\": 1,}").unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].help.contains("strict JSON"), "{err}");
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = parse_dag("deep.json", &text).unwrap_err();
    assert!(err.0[0].message.contains("nesting deeper than"), "{err}");
}

#[test]
fn many_problems_are_all_reported_in_file_order() {
    // 30 jobs, each with two problems: 60 diagnostics, sorted by line.
    let mut text = String::from("{\"version\": 1, \"jobs\": [\n");
    for i in 0..30 {
        let sep = if i + 1 < 30 { "," } else { "" };
        text.push_str(&format!(
            "  {{\"id\": \"j{i}\", \"image\": \"b:1\", \"command\": 1, \"workdir\": \"rel\"}}{sep}\n"
        ));
    }
    text.push_str("]}");
    let err = parse_dag("m.json", &text).unwrap_err();
    assert_eq!(err.0.len(), 60);
    let lines: Vec<u32> = err.0.iter().map(|d| d.location.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(err.0[59].job.as_deref(), Some("j29"));
}

/// Issue 21: paths inside trees and selections parse to what they name, a selection's `jobs:`
/// tree is a dependency, and each writes back as the DAG file wrote it.
#[test]
fn paths_inside_trees_and_selections_parse_and_write_back() {
    let h = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    let text = format!(
        r#"{{"version": 1, "jobs": [
  {{"id": "src", "image": "busybox:latest", "command": ["true"], "outputs": {{"tree": "dir:/output/src"}}}},
  {{"id": "cc", "image": "gcc:latest", "command": ["cc", "-c", "/input/c/adler32.c"],
   "stdin": "blake3:{h}/README",
   "inputs": {{"c": "blake3:{h}/lib/adler32.c",
              "inc": "jobs:src/tree/include",
              "hdrs": {{"tree": "jobs:src/tree", "include": ["*.h", "adler32.c"], "exclude": ["test/**"]}}}}}}]}}"#
    );
    let dag = parse_dag("sel.json", &text).unwrap_or_else(|e| panic!("{e}"));
    let cc = dag.job("cc").unwrap();
    let tree = InputRef::Blake3(format!("blake3:{h}").parse().unwrap());
    assert_eq!(cc.inputs["c"], InputRef::Path { base: Box::new(tree.clone()), path: "lib/adler32.c".into() });
    assert_eq!(cc.stdin, Some(InputRef::Path { base: Box::new(tree), path: "README".into() }));
    let src = InputRef::Job { job: "src".into(), output: "tree".into() };
    assert_eq!(cc.inputs["inc"], InputRef::Path { base: Box::new(src.clone()), path: "include".into() });
    let sel = &cc.inputs["hdrs"];
    assert_eq!(sel.root(), &src);
    assert_eq!(
        sel.to_json(),
        serde_json::json!({"tree": "jobs:src/tree", "include": ["*.h", "adler32.c"], "exclude": ["test/**"]})
    );
    assert_eq!(cc.inputs["c"].to_json(), serde_json::json!(format!("blake3:{h}/lib/adler32.c")));
    // `cc` reads `src`'s output through the path and the selection: it runs after it.
    assert_eq!(dag.all_dependencies()[1], vec![0]);
}

/// Issue 22: URL and `s3://` inputs with their pins, upload destinations (a bucket's label
/// required), `fd:N` outputs, the seed's `net` and `fd:0` (read as stdout, with a warning); a
/// presigned URL prints redacted and writes back pinned, and no destination enters the action key.
#[test]
fn urls_buckets_uploads_and_fd_outputs_parse_and_the_seeds_spellings_are_read() {
    let h = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    let presigned = "https://s3.example.org/b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Date=20261207T000000Z&X-Amz-Expires=60&X-Amz-Signature=deadbeef";
    let text = format!(
        r#"{{"version": 1, "jobs": [
  {{"id": "a", "image": "busybox:latest", "command": ["true"], "net": true,
   "inputs": {{"web": "https://example.org/data.csv#sha256={h}", "signed": "{presigned}",
              "obj": "s3://my-bucket/in/x.bin", "pinned": "s3://my-bucket/y#blake3={h}"}},
   "outputs": {{"o": "stdout", "three": "fd:3", "zero": "fd:0"}},
   "upload": {{"o": "s3://results/out.txt", "three": "http://127.0.0.1:9/put?sig=s3cret"}}}}]}}"#
    );
    let (dag, warnings) = shoal_dag::parse_dag_warned("u.json", &text).unwrap_or_else(|e| panic!("{e}"));
    let a = dag.job("a").unwrap();
    assert!(a.requirements.network, "`net: true` is `requirements.network`");
    assert_eq!(a.outputs["three"], OutputSpec::Fd(3));
    assert_eq!(a.outputs["zero"], OutputSpec::Stdout);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].to_string().contains("u.json:5:56"), "{}", warnings[0]);
    assert!(warnings[0].message.contains("`fd:0` is the job's stdin"), "{}", warnings[0]);
    assert_eq!(
        a.inputs["web"],
        InputRef::Url { url: "https://example.org/data.csv".into(), pin: Some(shoal_dag::UrlPin::Sha256(h.into())) }
    );
    let shown = a.inputs["signed"].to_string();
    assert!(shown.contains("X-Amz-Signature=REDACTED") && shown.contains("X-Amz-Credential=REDACTED"), "{shown}");
    assert!(!shown.contains("deadbeef") && shown.contains("X-Amz-Expires=60"), "{shown}");
    let blake: shoal_dag::Hash = format!("blake3:{h}").parse().unwrap();
    assert_eq!(a.inputs["pinned"].known_blake3(), Some(blake));
    assert_eq!(a.inputs["obj"].to_string(), "s3://my-bucket/in/x.bin");
    assert_eq!(a.inputs["pinned"].to_json(), serde_json::json!(format!("s3://my-bucket/y#blake3={h}")));
    assert_eq!(
        a.uploads["o"],
        shoal_dag::UploadTarget::S3(shoal_dag::S3Object { bucket: "results".into(), key: "out.txt".into() })
    );
    assert_eq!(a.uploads["three"].redacted(), "http://127.0.0.1:9/put?sig=REDACTED");
    // Only nodes with credentials for the bucket take the job.
    assert_eq!(a.requirements.labels.get("s3:results").map(String::as_str), Some("write"));
    // The destinations are no part of the action key.
    let key = |job: &shoal_dag::Job| {
        shoal_dag::ResolvedJob::from_job(job, blake, Default::default(), None).action_key()
    };
    let mut moved = a.clone();
    moved.uploads = Default::default();
    assert_eq!(key(a), key(&moved));
}
