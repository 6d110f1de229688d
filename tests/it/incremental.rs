//! Incremental builds (issue 21): examples/cbuild.json compiles a small C program, each compile
//! job reading a selection of the source tree (its `.c` and the headers it includes), so an edit
//! reruns exactly the compiles whose selection it touches and what reads their objects; the rest
//! are cache hits. Locally with `shoal run`, and through a mesh of three nodes from a tree put in
//! the store (`shoal blob put DIR`), its `blake3:` hash in the DAG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::explorer::explorer_rootfs;
use crate::mesh::{MeshNode, all_in, mesh_key, submit, wait_dag, wait_for_mesh};
use crate::support::*;

/// The example copied into `dir`: `cbuild.json` beside `cbuild/src`.
fn copy_example(dir: &Path) -> PathBuf {
    let from = repo_root().join("examples");
    let copy = |rel: &str| {
        let (src, dst) = (from.join(rel), dir.join(rel));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    };
    copy("cbuild.json");
    for f in ["util.h", "util.c", "greet.h", "greet.c", "mathx.h", "mathx.c", "main.c", "test/check.c"] {
        copy(&format!("cbuild/src/{f}"));
    }
    dir.join("cbuild.json")
}

/// The gcc image (scripts/build-explorer-images.sh keeps its root filesystem) in `home`'s store,
/// or None where it is missing outside CI.
fn gcc_image(home: &Home) -> Option<()> {
    let rootfs = explorer_rootfs("gcc");
    if !rootfs.join("usr/bin/gcc").exists() {
        let msg = format!("the C build needs {} (scripts/build-explorer-images.sh makes it)", rootfs.display());
        assert!(std::env::var("CI").is_err() && std::env::var("SHOAL_REQUIRE_VM").is_err(), "{msg}");
        eprintln!("skipping: {msg}");
        return None;
    }
    let out = home.shoal(&[
        "image",
        "build",
        rootfs.to_str().unwrap(),
        "--tag",
        "gcc:bookworm",
        "--env",
        "PATH=/usr/local/bin:/usr/bin:/bin",
    ]);
    assert_success(&out, "shoal image build gcc");
    Some(())
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} holds `{from}`", file.display());
    std::fs::write(file, text.replace(from, to)).unwrap();
}

/// `shoal run --json` of the DAG: each job's `cached`.
fn run(home: &Home, dag: &Path) -> BTreeMap<String, bool> {
    let out = home.shoal(&["run", dag.to_str().unwrap(), "--backend", "namespace", "--json"]);
    assert_success(&out, "shoal run of the C build");
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job"].as_str().unwrap().to_string(), j["cached"] == true))
        .collect()
}

fn ran(cached: &BTreeMap<String, bool>) -> Vec<&str> {
    cached.iter().filter(|(_, c)| !**c).map(|(j, _)| j.as_str()).collect()
}

const ALL: [&str; 7] = ["cc-util", "cc-greet", "cc-mathx", "cc-main", "link", "check", "run"];

#[test]
fn a_c_build_reruns_exactly_the_compiles_an_edit_touches() {
    let home = Home::empty();
    if gcc_image(&home).is_none() {
        return;
    }
    let dag = copy_example(home.path());
    let mut all = ALL.to_vec();
    all.sort();
    assert_eq!(ran(&run(&home, &dag)), all, "a first build runs every job");
    assert!(ran(&run(&home, &dag)).is_empty(), "a rerun with no change is all cache hits");
    let out = |h: &Home| stdout(&h.shoal(&["get", "run", "out"]));
    assert_eq!(out(&home), "hello says hello to the mesh\nsum of squares 1..10 = 385\n");

    // One source file: its compile, the link and the self-test (which read its object), the run.
    edit(&home.path().join("cbuild/src/greet.c"), "%s says hello", "%s, at your service, says hello");
    assert_eq!(ran(&run(&home, &dag)), ["cc-greet", "check", "link", "run"]);
    assert_eq!(out(&home), "hello, at your service, says hello to the mesh\nsum of squares 1..10 = 385\n");

    // A header three modules include (declared by their selections): those three compiles, not
    // main.c's, which does not include it.
    edit(&home.path().join("cbuild/src/util.h"), "#define PROGRAM \"hello\"", "#define PROGRAM \"shoal\"");
    assert_eq!(ran(&run(&home, &dag)), ["cc-greet", "cc-mathx", "cc-util", "check", "link", "run"]);
    assert_eq!(out(&home), "shoal, at your service, says hello to the mesh\nsum of squares 1..10 = 385\n");

    // A file no selection picks (a README beside the sources): nothing runs.
    std::fs::write(home.path().join("cbuild/src/README"), "notes\n").unwrap();
    assert!(ran(&run(&home, &dag)).is_empty());
}

#[test]
fn a_c_build_through_three_nodes_reruns_exactly_the_compiles_an_edit_touches() {
    let homes: Vec<Home> = (0..3).map(|_| Home::empty()).collect();
    for h in &homes {
        if gcc_image(h).is_none() {
            return;
        }
    }
    let key = mesh_key(homes[0].path());
    let mut homes = homes.into_iter();
    let n0 = MeshNode::start(homes.next().unwrap(), &key, &[], &[]);
    let others: Vec<MeshNode> = homes.map(|h| MeshNode::start(h, &key, &[&n0.listen], &[])).collect();
    wait_for_mesh(&[&n0, &others[0], &others[1]]);
    let dir = n0.home.path().join("work");
    std::fs::create_dir_all(&dir).unwrap();
    let dag_file = copy_example(&dir);
    // The sources as a tree in the mesh's store; the DAG names it by hash.
    let put = || {
        let out = n0.cli(&["blob", "put", dir.join("cbuild/src").to_str().unwrap()]);
        assert_success(&out, "shoal blob put");
        stdout(&out).trim().to_string()
    };
    let dag_for = |tree: &str| {
        let text = std::fs::read_to_string(&dag_file).unwrap().replace("file:cbuild/src", tree);
        n0.home.write(&format!("cbuild-{}.json", &tree[7..19]), &text)
    };
    let first = submit(&others[0], &dag_for(&put()));
    let before = wait_dag(&others[1], &first, Duration::from_secs(180), "the C build done", |v| all_in(v, "done"));

    edit(&dir.join("cbuild/src/mathx.c"), "s += i * i", "s += i * i + 0");
    let tree = put();
    let listing = n0.cli(&["tree", "ls", &format!("{tree}/test")]);
    assert!(stdout(&listing).contains("check.c"), "{}{}", stdout(&listing), String::from_utf8_lossy(&listing.stderr));
    // A path inside a tree the node holds (the one the sources were put on) is checked at the
    // submit, not by a job later.
    let text = std::fs::read_to_string(dag_for(&tree)).unwrap();
    let bad = n0.home.write("bad-path.json", &text.replace(&format!("\"{tree}\""), &format!("\"{tree}/sub\"")));
    let out = n0.cli(&["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "a path not in the tree is refused at the submit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`sub` is not in `/`") && err.contains("nearest there: "), "{err}");
    let second = submit(&others[1], &dag_for(&tree));
    let after = wait_dag(&others[0], &second, Duration::from_secs(180), "the edited build done", |v| all_in(v, "done"));
    let mut reran: Vec<&str> =
        ALL.iter().copied().filter(|j| after["jobs"][j]["record"] != before["jobs"][j]["record"]).collect();
    reran.sort();
    // `s += i * i + 0` compiles to the same object at -O2: the link and what follows are hits too.
    assert_eq!(reran, ["cc-mathx"], "{after:#}");
    let (status, body) = n0.get(&format!("/v1/dags/{second}/jobs/run/outputs/out"));
    assert_eq!(
        (status, String::from_utf8_lossy(&body).to_string()),
        (200, "hello says hello to the mesh\nsum of squares 1..10 = 385\n".into())
    );
}

/// The README's incremental build, as written: its own directory for /tmp/ and its own store.
#[test]
fn readme_incremental_build_runs_as_written() {
    let home = Home::empty();
    if gcc_image(&home).is_none() {
        return;
    }
    let block = crate::held_home::readme_block("**Incremental builds.**");
    let script = block.replace("/tmp/", &format!("{}/", home.path().display()));
    let bin_dir = shoal_bin().parent().unwrap().to_path_buf();
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\nexport PATH={}:$PATH\n{script}", bin_dir.display()))
        .current_dir(repo_root())
        .env("SHOAL_HOME", home.store())
        .env_remove("RUST_LOG");
    let out = run_with_deadline(cmd);
    assert_success(&out, "the README's incremental build");
    let text = stdout(&out);
    assert!(text.contains("hello says hello to the mesh\n"), "{text}");
    assert!(text.contains("check.c"), "{text}");
    // The second run's table: cc-mathx ran again, cc-greet came from the cache.
    let second = &text[text.rfind("│ job").expect("two tables")..];
    let row = |job: &str| second.lines().find(|l| l.contains(&format!(" {job} "))).unwrap_or_default().to_string();
    assert!(row("cc-mathx").contains(" no "), "{second}");
    assert!(row("cc-greet").contains(" yes "), "{second}");
}
