//! Provenance in git (issue 23): `shoal run --provenance REPO` commits each run, git itself reads
//! the commit back, `shoal rerun REPO[@COMMIT]` runs it again and compares, and every bad input
//! (not a repository, a dirty tree, a commit without shoal's files, an edited record or DAG)
//! is refused by name with nothing written.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A repository with the user's git identity set, as a scientist's would have.
fn new_repo(home: &Home, name: &str) -> std::path::PathBuf {
    let path = home.path().join(name);
    let out = Command::new("git").args(["init", "-q", "-b", "main"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    git(&path, &["config", "user.name", "Ada Lovelace"]);
    git(&path, &["config", "user.email", "ada@example.org"]);
    path
}

fn run_prov(home: &Home, dag: &Path, repo: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--backend", "namespace", "--provenance", repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(dag.to_str().unwrap());
    home.shoal(&args)
}

const TWO_JOBS: &str = r#"{"version": 1, "jobs": [
  {"id": "make", "image": "busybox:latest", "command": ["sh", "-c", "cat /input/words | tr a-z A-Z > /output/up"],
   "inputs": {"words": "file:words.txt"}, "outputs": {"up": "file:/output/up"}},
  {"id": "count", "image": "busybox:latest", "command": ["wc", "-c", "/input/up"],
   "inputs": {"up": "jobs:make/up"}, "outputs": {"n": "stdout"}, "env": {"MODE": "plain"}}]}"#;

#[test]
fn a_run_becomes_one_commit_that_git_reads_and_rerun_matches_it() {
    let home = Home::with_busybox();
    home.write("words.txt", "one two three\n");
    let dag = home.write("two.json", TWO_JOBS);
    let repo = new_repo(&home, "runs");
    std::fs::write(repo.join("NOTES.md"), "my notes\n").unwrap();
    git(&repo, &["add", "NOTES.md"]);
    git(&repo, &["commit", "-qm", "notes"]);

    let out = run_prov(&home, &dag, &repo, &[]);
    assert_success(&out, "shoal run --provenance");
    assert!(stderr(&out).contains("provenance: commit"), "{}", stderr(&out));
    // git reads it: the author is the user's, the subject sums the run up.
    let log = git(&repo, &["log", "--format=%an <%ae>|%s"]);
    let first = log.lines().next().unwrap();
    assert!(first.starts_with("Ada Lovelace <ada@example.org>|shoal run "), "{log}");
    assert!(first.contains("2 jobs, 0 cached, 0 failed, wall"), "{log}");
    assert_eq!(log.lines().count(), 2, "{log}");
    let files = git(&repo, &["show", "--name-only", "--format=", "HEAD"]);
    for f in ["dag.json", "pinned.json", "run.json", "records/make.json", "records/count.json"] {
        assert!(files.lines().any(|l| l == f), "{f} not in the commit: {files}");
    }
    assert!(files.lines().any(|l| l.starts_with("machine/") && l.ends_with(".json")), "{files}");
    // The user's files stay, and the work tree is the commit's.
    assert_eq!(git(&repo, &["show", "HEAD:NOTES.md"]), "my notes\n");
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    // The pack shoal wrote and its index are whole, as git checks them.
    git(&repo, &["fsck", "--strict", "--no-progress"]);
    // dag.json as written; pinned.json with the tag and the file: input resolved.
    assert_eq!(git(&repo, &["show", "HEAD:dag.json"]), TWO_JOBS);
    let pinned: serde_json::Value = serde_json::from_str(&git(&repo, &["show", "HEAD:pinned.json"])).unwrap();
    let make = &pinned["jobs"][0];
    assert!(make["image"].as_str().unwrap().starts_with("blake3:"), "{pinned}");
    assert!(make["inputs"]["words"].as_str().unwrap().starts_with("blake3:"), "{pinned}");
    assert_eq!(pinned["jobs"][1]["inputs"]["up"], "jobs:make/up");
    // The record as signed, readable; the machine's facts.
    let rec: serde_json::Value = serde_json::from_str(&git(&repo, &["show", "HEAD:records/count.json"])).unwrap();
    assert_eq!(rec["record"]["exit"]["code"], 0, "{rec}");
    assert_eq!(rec["signer"].as_str().unwrap().len(), 64);
    assert!(rec.get("signed").is_none(), "the readable record encodes back to the signed bytes: {rec}");
    let machine_file = files.lines().find(|l| l.starts_with("machine/")).unwrap();
    let machine: serde_json::Value = serde_json::from_str(&git(&repo, &["show", &format!("HEAD:{machine_file}")])).unwrap();
    for fact in ["kernel", "cpu_model", "cpu_flags", "cores", "memory_bytes", "shoal_version"] {
        assert!(machine.get(fact).is_some(), "{fact} missing: {machine}");
    }

    // Rerun: every output matches, exit 0; the table says so.
    let out = home.shoal(&["rerun", "--backend", "namespace", "--no-cache", repo.to_str().unwrap()]);
    assert_success(&out, "shoal rerun");
    let text = stdout(&out);
    assert!(text.contains("every output matches (2 outputs)") && text.contains("equal"), "{text}");
    assert!(text.contains("kernel") && text.contains("cpu flags"), "{text}");
    let out = home.shoal(&["rerun", "--backend", "namespace", "--json", &format!("{}@HEAD", repo.display())]);
    assert_success(&out, "shoal rerun --json");
    assert_eq!(json(&out)["matched"], true);

    // The same run committed twice has one tree: the record exported to two repositories.
    let record = rec["hash"].as_str().unwrap();
    let (x, y) = (new_repo(&home, "x"), new_repo(&home, "y"));
    for r in [&x, &y] {
        let out = home.shoal(&["provenance", "export", &format!("/r/{record}"), "--repo", r.to_str().unwrap()]);
        assert_success(&out, "shoal provenance export /r/");
    }
    assert_eq!(git(&x, &["rev-parse", "HEAD^{tree}"]), git(&y, &["rev-parse", "HEAD^{tree}"]));
    let out = home.shoal(&["rerun", "--backend", "namespace", x.to_str().unwrap()]);
    assert_success(&out, "rerun of an exported permalink");

    // `why --against REPO`: an env var changed since the committed run.
    let changed = home.write("two.json", &TWO_JOBS.replace("\"plain\"", "\"fancy\""));
    assert_success(&home.shoal(&["run", "--backend", "namespace", changed.to_str().unwrap()]), "run after a change");
    let out = home.shoal(&["why", "count", "--against", repo.to_str().unwrap()]);
    assert_success(&out, "shoal why --against REPO");
    assert!(stdout(&out).contains(r#"MODE: "plain" → "fancy""#), "{}", stdout(&out));
}

#[test]
fn a_failed_run_is_committed_as_failed_and_a_nondeterministic_rerun_differs() {
    let home = Home::with_busybox();
    let repo = new_repo(&home, "runs");
    let dag = home.write(
        "fail.json",
        r#"{"version": 1, "jobs": [
          {"id": "ok", "image": "busybox:latest", "command": ["echo", "fine"], "outputs": {"o": "stdout"}},
          {"id": "bad", "image": "busybox:latest", "command": ["sh", "-c", "echo broken >&2; exit 3"], "outputs": {"o": "stdout"}},
          {"id": "after", "image": "busybox:latest", "command": ["cat", "/input/o"], "inputs": {"o": "jobs:bad/o"}, "outputs": {"o": "stdout"}}]}"#,
    );
    let out = run_prov(&home, &dag, &repo, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let subject = git(&repo, &["log", "-1", "--format=%s"]);
    assert!(subject.contains("FAILED, 1 of 3 jobs failed, 1 skipped"), "{subject}");
    let files = git(&repo, &["show", "--name-only", "--format=", "HEAD"]);
    assert!(files.contains("records/bad.json") && files.contains("records/ok.json"), "{files}");
    assert!(!files.contains("records/after.json"), "{files}");
    let run: serde_json::Value = serde_json::from_str(&git(&repo, &["show", "HEAD:run.json"])).unwrap();
    assert_eq!(run["ok"], false);
    assert_eq!(run["jobs"][2]["status"], "skipped");

    // A job that prints the time: its rerun differs, and the exit status says so.
    let clock = home.write(
        "clock.json",
        r#"{"version": 1, "jobs": [{"id": "clock", "image": "busybox:latest", "command": ["sh", "-c", "date; cat /proc/uptime"], "outputs": {"t": "stdout"}}]}"#,
    );
    assert_success(&run_prov(&home, &clock, &repo, &[]), "the clock run");
    // The new commit's records replace the old ones, in the tree, the index and the work tree.
    assert_eq!(git(&repo, &["ls-files", "records"]), "records/clock.json\n");
    assert!(!repo.join("records/bad.json").exists() && repo.join("records/clock.json").exists());
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    git(&repo, &["fsck", "--strict", "--no-progress"]);
    let out = home.shoal(&["rerun", "--backend", "namespace", "--no-cache", repo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("DIFFERENT") && stdout(&out).contains("1 of 1 outputs differ"), "{}", stdout(&out));
    // An older commit by name: the failed run, whose failure is reported again.
    let out = home.shoal(&["rerun", "--backend", "namespace", &format!("{}@HEAD~1", repo.display())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("job `bad` did not finish"), "{}", stdout(&out));
}

#[test]
fn bad_repositories_commits_and_records_are_refused_by_name() {
    let home = Home::with_busybox();
    let dag = home.write(
        "one.json",
        r#"{"version": 1, "jobs": [{"id": "one", "image": "busybox:latest", "command": ["echo", "1"], "outputs": {"o": "stdout"}}]}"#,
    );
    // Not a repository: a directory with files and no .git.
    let plain = home.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("data.csv"), "x\n").unwrap();
    let out = run_prov(&home, &dag, &plain, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not a git repository") && stderr(&out).contains("git init"), "{}", stderr(&out));
    assert!(!plain.join(".git").exists());
    assert!(!stdout(&out).contains("done"), "it ran: {}", stdout(&out));

    // A dirty work tree: refused before anything runs, the file named, nothing committed.
    let repo = new_repo(&home, "runs");
    std::fs::write(repo.join("draft.txt"), "unsaved\n").unwrap();
    let out = run_prov(&home, &dag, &repo, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("changes not committed (draft.txt)"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("done"), "it ran: {}", stdout(&out));
    assert!(Command::new("git").arg("-C").arg(&repo).args(["rev-parse", "HEAD"]).output().unwrap().status.code() != Some(0));
    std::fs::remove_file(repo.join("draft.txt")).unwrap();

    // A commit without shoal's files.
    std::fs::write(repo.join("README"), "hi\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-qm", "readme"]);
    let out = home.shoal(&["rerun", repo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("holds no shoal run (it has no pinned.json)"), "{}", stderr(&out));
    let out = home.shoal(&["rerun", &format!("{}@nosuchrev", repo.display())]);
    assert!(stderr(&out).contains("has no commit `nosuchrev`"), "{}", stderr(&out));
    let out = home.shoal(&["rerun", home.path().join("nowhere").to_str().unwrap()]);
    assert!(stderr(&out).contains("is not a git repository"), "{}", stderr(&out));

    // A record edited after the run: its readable part, then its signature.
    assert_success(&run_prov(&home, &dag, &repo, &[]), "the run");
    let path = repo.join("records/one.json");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, original.replacen("\"code\": 0", "\"code\": 1", 1)).unwrap();
    git(&repo, &["commit", "-qam", "edit the exit"]);
    let out = home.shoal(&["rerun", "--backend", "namespace", repo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("records/one.json") && stderr(&out).contains("edited"), "{}", stderr(&out));
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    let sig = v["signature"].as_str().unwrap().to_string();
    let flipped = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
    v["signature"] = flipped.into();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    git(&repo, &["commit", "-qam", "forge the signature"]);
    let out = home.shoal(&["rerun", "--backend", "namespace", repo.to_str().unwrap()]);
    assert!(stderr(&out).contains("signature does not verify"), "{}", stderr(&out));
    // pinned.json edited: its hash no longer is the one run.json names.
    std::fs::write(&path, &original).unwrap();
    let pinned = std::fs::read_to_string(repo.join("pinned.json")).unwrap();
    std::fs::write(repo.join("pinned.json"), pinned.replace("\"1\"", "\"2\"")).unwrap();
    git(&repo, &["commit", "-qam", "edit the DAG"]);
    let out = home.shoal(&["rerun", "--backend", "namespace", repo.to_str().unwrap()]);
    assert!(stderr(&out).contains("pinned.json was edited after the run"), "{}", stderr(&out));

    // A fresh store has none of the blobs: every one is named.
    git(&repo, &["reset", "-q", "--hard", "HEAD~3"]);
    let fresh = Home::empty();
    let out = fresh.shoal(&["rerun", repo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("1 blob(s) the commit names are not in this store") && stderr(&out).contains("the image of job `one`"), "{}", stderr(&out));
}

#[test]
fn push_sends_the_commit_to_a_bare_origin_and_a_run_file_is_committed_as_written() {
    let home = Home::with_busybox();
    let origin = home.path().join("origin.git");
    assert!(Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(&origin).status().unwrap().success());
    let repo = new_repo(&home, "runs");
    git(&repo, &["remote", "add", "origin", origin.to_str().unwrap()]);
    let run_file = "# Shout a word.\nFROM busybox:latest\nENV WORD=\"hello there\"\nRUN echo \"$WORD\" | tr a-z A-Z\nOUTPUT shout stdout\n";
    let path = home.write("shout.run", run_file);
    let out = run_prov(&home, &path, &repo, &["--push"]);
    assert_success(&out, "shoal run --provenance --push of a run file");
    assert!(stderr(&out).contains("provenance: pushed refs/heads/main"), "{}", stderr(&out));
    assert_eq!(git(&origin, &["log", "--format=%H"]), git(&repo, &["log", "--format=%H"]));
    assert_eq!(git(&origin, &["show", "main:Runfile"]), run_file);
    let dag: serde_json::Value = serde_json::from_str(&git(&origin, &["show", "main:dag.json"])).unwrap();
    assert_eq!(dag["jobs"][0]["env"]["WORD"], "hello there");
    let out = home.shoal(&["rerun", "--backend", "namespace", "--no-cache", repo.to_str().unwrap()]);
    assert_success(&out, "rerun of a run file's commit");
    // --push with no origin says how to add one (the commit stays).
    let lone = new_repo(&home, "lone");
    let out = run_prov(&home, &path, &lone, &["--push"]);
    assert!(stderr(&out).contains("has no remote `origin`"), "{}", stderr(&out));
    assert_eq!(git(&lone, &["log", "--format=%s"]).lines().count(), 1);
}

/// In a mesh: `submit --wait --provenance` commits when the DAG ends; another node, asked later,
/// writes the same records (`shoal provenance export DAG`); and a fresh store with nothing in it
/// reruns the commit by joining the mesh, which has every blob it names.
#[test]
fn a_mesh_run_is_committed_at_its_end_exported_by_another_node_and_rerun_from_a_fresh_store() {
    use crate::mesh::{MeshNode, mesh_key, wait_for_mesh};
    let key_dir = tempfile::tempdir().unwrap();
    let key = mesh_key(key_dir.path());
    let a = MeshNode::start(Home::with_busybox(), &key, &[], &[]);
    let b = MeshNode::start(Home::empty(), &key, &[a.listen.as_str()], &[]);
    wait_for_mesh(&[&a, &b]);
    let work = Home::empty();
    work.write("words.txt", "one two three\n");
    let dag = work.write("two.json", TWO_JOBS);
    let repo = new_repo(&work, "runs");
    let out = work.shoal(&["submit", "--node", &a.http, "--wait", "--provenance", repo.to_str().unwrap(), dag.to_str().unwrap()]);
    assert_success(&out, "shoal submit --wait --provenance");
    let subject = git(&repo, &["log", "-1", "--format=%s"]);
    assert!(subject.starts_with("shoal submit ") && subject.contains("2 jobs"), "{subject}");
    assert_eq!(git(&repo, &["show", "HEAD:dag.json"]), TWO_JOBS);
    // --provenance without --wait says what to do instead.
    let out = work.shoal(&["submit", "--node", &a.http, "--provenance", repo.to_str().unwrap(), dag.to_str().unwrap()]);
    assert!(stderr(&out).contains("needs --wait") && stderr(&out).contains("shoal provenance export"), "{}", stderr(&out));

    // The other node writes the same records for the DAG, any time after.
    let dags = a.get_json("/v1/dags");
    let hash = dags["dags"][0]["dag"].as_str().unwrap().to_string();
    let later = new_repo(&work, "later");
    let out = work.shoal(&["provenance", "export", &hash, "--repo", later.to_str().unwrap(), "--node", &b.http]);
    assert_success(&out, "shoal provenance export DAG");
    for f in ["records/make.json", "records/count.json", "pinned.json"] {
        assert_eq!(git(&later, &["show", &format!("HEAD:{f}")]), git(&repo, &["show", &format!("HEAD:{f}")]), "{f}");
    }
    assert!(git(&later, &["log", "-1", "--format=%s"]).starts_with("shoal provenance export dag blake3:"));

    // A run file goes to a node as its translation, and its commit keeps it as written.
    let run_file = "FROM busybox:latest\nRUN echo mesh | tr a-z A-Z\nOUTPUT o stdout\n";
    let shout = work.write("shout.run", run_file);
    let shouts = new_repo(&work, "shouts");
    let out = work.shoal(&["submit", "--node", &a.http, "--wait", "--provenance", shouts.to_str().unwrap(), shout.to_str().unwrap()]);
    assert_success(&out, "shoal submit of a run file");
    assert!(stderr(&out).contains("shout.run:1:6: `busybox:latest` is a tag"), "{}", stderr(&out));
    assert_eq!(git(&shouts, &["show", "HEAD:Runfile"]), run_file);
    let dag: serde_json::Value = serde_json::from_str(&git(&shouts, &["show", "HEAD:dag.json"])).unwrap();
    assert_eq!(dag["jobs"][0]["id"], "main");

    // A fresh store lacks every blob; joined to the mesh, it reruns the commit and matches.
    let fresh = Home::empty();
    let out = fresh.shoal(&["rerun", "--backend", "namespace", repo.to_str().unwrap()]);
    assert!(stderr(&out).contains("the image of job `make`") && stderr(&out).contains("input `words` of job `make`"), "{}", stderr(&out));
    let out = fresh.shoal(&[
        "rerun", "--backend", "namespace", "--join", &a.listen, "--mesh-key", key.to_str().unwrap(), repo.to_str().unwrap(),
    ]);
    assert_success(&out, "shoal rerun --join from a fresh store");
    assert!(stdout(&out).contains("every output matches (2 outputs)"), "{}", stdout(&out));
}

/// Every kind of input is pinned in pinned.json to what the job read — a URL (its signature
/// redacted, its bytes pinned by BLAKE3), a path inside a stored tree, a selection of a `file:`
/// tree — and a presigned upload's signature is in no file of the commit; the rerun matches.
#[test]
fn every_kind_of_input_is_pinned_and_no_signature_enters_the_repository() {
    use crate::data::{Route, Web};
    let home = Home::with_busybox();
    let web = Web::start();
    web.route("/words.txt", Route::Bytes(b"alpha beta\n".to_vec()));
    let src = home.path().join("src");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/a.c"), "int a;\n").unwrap();
    std::fs::write(src.join("lib/b.h"), "#define B\n").unwrap();
    std::fs::write(src.join("main.c"), "int main;\n").unwrap();
    let out = home.shoal(&["blob", "put", src.to_str().unwrap()]);
    assert_success(&out, "shoal blob put");
    let tree = stdout(&out).split_whitespace().find(|w| w.starts_with("blake3:")).unwrap().to_string();
    let (get_sig, put_sig) = ("0123456789abcdef0123", "fedcba9876543210fedc");
    let dag = home.write(
        "kinds.json",
        &serde_json::json!({"version": 1, "jobs": [{
            "id": "kinds", "image": "busybox:latest",
            "command": ["sh", "-c", "cat /input/words /input/one; ls -R /input/sel"],
            "inputs": {
                "words": format!("{}/words.txt?X-Amz-Expires=3600&X-Amz-Signature={get_sig}", web.base),
                "one": format!("{tree}/lib/a.c"),
                "sel": {"tree": "file:src", "include": ["**/*.c"]}
            },
            "outputs": {"o": "stdout"},
            "upload": {"o": format!("{}/up/o.txt?X-Amz-Expires=3600&X-Amz-Signature={put_sig}", web.base)}
        }]})
        .to_string(),
    );
    let repo = new_repo(&home, "runs");
    let out = run_prov(&home, &dag, &repo, &[]);
    assert_success(&out, "the run of every kind of input");
    assert!(stdout(&out).contains("uploaded"), "{}", stdout(&out));
    let pinned: serde_json::Value = serde_json::from_str(&git(&repo, &["show", "HEAD:pinned.json"])).unwrap();
    let inputs = &pinned["jobs"][0]["inputs"];
    let words = inputs["words"].as_str().unwrap();
    assert!(words.contains("X-Amz-Signature=REDACTED") && words.contains("#blake3="), "{pinned}");
    assert!(inputs["one"].as_str().unwrap().starts_with("blake3:"), "{pinned}");
    assert!(inputs["sel"].as_str().unwrap().starts_with("blake3:"), "{pinned}");
    assert!(pinned["jobs"][0]["upload"]["o"].as_str().unwrap().contains("X-Amz-Signature=REDACTED"), "{pinned}");
    // No file of any commit holds either signature.
    for sig in [get_sig, put_sig] {
        let found = Command::new("git").arg("-C").arg(&repo).args(["grep", "-c", sig, "HEAD"]).output().unwrap();
        assert_eq!(found.status.code(), Some(1), "{sig} is in the commit: {}", String::from_utf8_lossy(&found.stdout));
    }
    // The rerun reads what was pinned (no fetch: the bytes are here) and uploads nothing.
    let fetched = web.hits("/words.txt");
    let out = home.shoal(&["rerun", "--backend", "namespace", "--no-cache", repo.to_str().unwrap()]);
    assert_success(&out, "the rerun");
    assert!(stdout(&out).contains("every output matches (1 outputs)"), "{}", stdout(&out));
    assert_eq!(web.hits("/words.txt"), fetched);
    assert_eq!(web.hits("/up/o.txt"), 1);
}

/// The README's provenance example, as written (jobs in microVMs): its own directory for /tmp/ and
/// its own store; git reads the commit, the rerun matches, and `why` names the changed command.
#[test]
fn readme_provenance_runs_as_written() {
    let home = Home::with_busybox();
    if !crate::microvm::vm_ready(&home) {
        return;
    }
    let block = crate::held_home::readme_block("**Provenance in git.**");
    let script = block.replace("/tmp/", &format!("{}/", home.path().display()));
    let bin_dir = shoal_bin().parent().unwrap().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\nexport PATH={}:$PATH\n{script}", bin_dir.display()))
        .current_dir(repo_root())
        .env("SHOAL_HOME", home.store())
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.org")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.org")
        .env_remove("RUST_LOG");
    let out = run_with_deadline(cmd);
    assert_success(&out, "the README's provenance example");
    let text = stdout(&out);
    for part in ["pinned.json", "records/report.json", "run.json", "machine/"] {
        assert!(text.contains(part), "git log --stat lacks {part}: {text}");
    }
    assert!(text.contains("every output matches (6 outputs)"), "{text}");
    assert!(text.contains("command") && text.contains("slow red fox"), "{text}");
    let runs = home.path().join("runs");
    let log = git(&runs, &["log", "--format=%an|%s"]);
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(log.lines().all(|l| l.starts_with("Ada Lovelace|shoal run ") && l.contains("5 jobs")), "{log}");
}

#[test]
fn a_run_file_with_mistakes_is_refused_at_its_lines_and_columns() {
    let home = Home::with_busybox();
    let bad = home.write("bad.run", "FROM busybox:latest\nRUNN echo hi\nOUTPUT o /tmp/nowhere\n");
    let out = home.shoal(&["run", "--backend", "namespace", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.run:2:1: unknown instruction `RUNN`") && err.contains("did you mean `RUN`?"), "{err}");
    assert!(err.contains("bad.run:3:10:") && err.contains("`/tmp/nowhere` is not an output"), "{err}");
    let good = home.write("good.run", "# comment\nFROM busybox:latest\nENV W=\"two words\"\nRUN echo \"$W\"\nOUTPUT o stdout\n");
    let out = home.shoal(&["run", "--backend", "namespace", "--json", good.to_str().unwrap()]);
    assert_success(&out, "a run file");
    assert_eq!(json(&out)["jobs"][0]["job"], "main");
    let out = home.shoal(&["get", "main", "o"]);
    assert_eq!(stdout(&out), "two words\n");
}
