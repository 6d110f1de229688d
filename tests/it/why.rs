//! `shoal why JOB` (issue 23, item 3): why a job's latest run is another action than its run
//! before, for each kind of change: an env var, a file edited inside a tree input, a requirement
//! the action key covers, an image with one file more; and `--against` an older run.

use crate::support::*;

fn run(home: &Home, dag: &std::path::Path) {
    let out = home.shoal(&["run", "--backend", "namespace", dag.to_str().unwrap()]);
    assert_success(&out, "shoal run");
}

fn why(home: &Home, args: &[&str]) -> String {
    let mut all = vec!["why"];
    all.extend_from_slice(args);
    let out = home.shoal(&all);
    assert_success(&out, "shoal why");
    stdout(&out)
}

fn write_dag(home: &Home, foo_value: &str, flags: &str) -> std::path::PathBuf {
    home.write(
        "w.json",
        &format!(
            r#"{{"version": 1, "jobs": [{{"id": "w", "image": "busybox:latest", "command": ["sh", "-c", "ls -R /input/src; echo $FOO"],
              "env": {{"FOO": "{foo_value}"}}, "inputs": {{"src": "file:src"}}, "outputs": {{"o": "stdout"}},
              "requirements": {{"cpu_flags": [{flags}]}}}}]}}"#
        ),
    )
}

#[test]
fn why_names_what_changed_an_env_var_a_file_in_a_tree_a_requirement_and_an_image_file() {
    let home = Home::with_busybox();
    let src = home.path().join("src");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/a.c"), "int a;\n").unwrap();
    std::fs::write(src.join("b.h"), "#define B\n").unwrap();
    let dag = write_dag(&home, "1", "");
    let out = home.shoal(&["run", "--backend", "namespace", "--json", dag.to_str().unwrap()]);
    assert_success(&out, "the first run");
    let first = json(&out)["jobs"][0]["record"].as_str().unwrap().to_string();
    let out = home.shoal(&["why", "w"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("job `w` has one recorded run here"), "{}", stderr(&out));
    let out = home.shoal(&["why", "nope"]);
    assert!(stderr(&out).contains("no run of a job `nope` is recorded here"), "{}", stderr(&out));

    // An env var.
    let dag = write_dag(&home, "2", "");
    run(&home, &dag);
    let text = why(&home, &["w"]);
    assert!(text.contains("in 1 part(s)") && text.contains("env") && text.contains(r#"FOO: "1" → "2""#), "{text}");

    // A file edited inside the tree input, one added.
    std::fs::write(src.join("lib/a.c"), "int a = 1;\n").unwrap();
    std::fs::write(src.join("c.h"), "#define C\n").unwrap();
    run(&home, &dag);
    let text = why(&home, &["w"]);
    assert!(text.contains("input `src`") && text.contains("~ lib/a.c") && text.contains("+ c.h"), "{text}");
    assert!(!text.contains("b.h") && !text.contains("env"), "{text}");

    // A requirement the action key covers.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.split_whitespace().any(|w| w == "sse2") {
        let dag = write_dag(&home, "2", r#""sse2""#);
        run(&home, &dag);
        let text = why(&home, &["w", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["changes"][0]["part"], "cpu_flags", "{v}");
        assert_eq!(v["changes"].as_array().unwrap().len(), 1, "{v}");
    }

    // The image with one file more, under the same tag.
    let rootfs = home.path().join("busybox-rootfs");
    std::fs::write(rootfs.join("etc/motd"), "hello\n").unwrap();
    home.build_busybox(&rootfs);
    run(&home, &home.path().join("w.json"));
    let text = why(&home, &["w"]);
    assert!(text.contains("image (") && text.contains("+ etc/motd"), "{text}");
    assert!(text.contains("in 1 part(s)"), "{text}");

    // Against the first run: every part at once.
    let text = why(&home, &["w", "--against", &first]);
    for part in ["env", "input `src`", "image ("] {
        assert!(text.contains(part), "{part}: {text}");
    }
    // Running the same action again without the cache: the same action, said so.
    let out = home.shoal(&["run", "--backend", "namespace", "--no-cache", home.path().join("w.json").to_str().unwrap()]);
    assert_success(&out, "a rerun without the cache");
    let text = why(&home, &["w"]);
    assert!(text.contains("the same action as run"), "{text}");
}
