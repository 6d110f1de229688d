//! Memory per job in a big DAG (issue 16, item 9): 20,000 trivial jobs took ~1 GB. The peak RSS
//! of `shoal run` grows by a small constant per job; these hold the runner to it (bounds on
//! memory, never on time). bench/dag_memory.py measures the whole figure, the store included.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Peak RSS growth per job allowed, bytes: here a cached run measures ~1.6 KB a job and a parse
/// ~1.5 KB in a debug build; before issue 16 they took ~6.7 and ~5.1 KB (both fail these).
const CACHED_RUN_BYTES_PER_JOB_MAX: u64 = 4 << 10;
const PARSE_BYTES_PER_JOB_MAX: u64 = 3 << 10;

/// A DAG of `n` trivial jobs in groups of four: one alone, two each reading the one before,
/// one reading all three. Every job prints `x`, so all of a group's position share one action
/// key: once a few have run, any number of them is answered from the cache. Written as text: a
/// `serde_json::Value` of it would raise this process's peak RSS, which a child inherits as the
/// floor of its own (the kernel's maxrss survives exec).
fn trivial_dag(n: usize) -> String {
    let jobs: Vec<String> = (0..n)
        .map(|i| {
            let inputs = match i % 4 {
                1 | 2 => format!(r#","inputs":{{"prev":"jobs:j{}/out"}}"#, i - 1),
                3 => format!(r#","inputs":{{"a":"jobs:j{}/out","b":"jobs:j{}/out","c":"jobs:j{}/out"}}"#, i - 1, i - 2, i - 3),
                _ => String::new(),
            };
            format!(r#"{{"id":"j{i}","image":"busybox:latest","command":["echo","x"],"outputs":{{"out":"stdout"}}{inputs}}}"#)
        })
        .collect();
    format!(r#"{{"version":1,"jobs":[{}]}}"#, jobs.join(","))
}

/// This process's own peak RSS, bytes.
fn own_peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// Runs `shoal ARGS` in `home` to its end and returns (its exit code, its peak RSS in bytes: the
/// kernel's maxrss of the process, from wait4, which is at least this process's peak RSS when it
/// was started), with stdout in `out`.
fn peak_rss(home: &Home, args: &[&str], out: &Path) -> (i32, u64) {
    // Reaped by the wait4 below, which also reports its rusage (std's `wait` does not).
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(shoal_bin())
        .args(args)
        .env("SHOAL_HOME", home.store())
        .env_remove("RUST_LOG")
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shoal");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of the plain C struct wait4 fills in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child, not waited for yet; both pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            assert!(libc::WIFEXITED(status), "shoal {args:?} was killed: status {status}");
            return (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024);
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shoal {args:?} did not finish in {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_cached_run_grows_by_a_small_constant_per_job() {
    let home = Home::with_busybox();
    let out = home.path().join("out.json");
    let run = |n: usize| {
        let dag = home.write(&format!("dag{n}.json"), &trivial_dag(n));
        let (code, rss) = peak_rss(&home, &["run", "--backend", "namespace", "--json", dag.to_str().unwrap()], &out);
        let report = std::fs::read_to_string(&out).unwrap();
        assert_eq!(code, 0, "a run of {n} jobs failed:\n{report}");
        (rss, report.matches(r#""cached": false"#).count())
    };
    run(8); // each position of a group runs once
    let (small, ran_small) = run(500);
    let (big, ran_big) = run(5000);
    assert_eq!((ran_small, ran_big), (0, 0), "the measured runs must be answered from the cache");
    assert!(own_peak_rss() < small, "this test's own peak RSS would hide the runs' peaks");
    let per_job = big.saturating_sub(small) / 4500;
    assert!(
        per_job < CACHED_RUN_BYTES_PER_JOB_MAX,
        "a cached run of 5,000 jobs peaked at {big} bytes and one of 500 at {small}: {per_job} bytes a job, \
         over {CACHED_RUN_BYTES_PER_JOB_MAX}"
    );
}

#[test]
fn parsing_a_big_dag_grows_by_a_small_constant_per_job() {
    let home = Home::empty();
    let out = home.path().join("out.txt");
    let parse = |n: usize| {
        // The last job is invalid: the whole file is parsed and checked, nothing runs.
        let text = trivial_dag(n);
        let text = text.rsplit_once("\"command\"").map(|(a, b)| format!("{a}\"comand\"{b}")).unwrap();
        let dag = home.write(&format!("bad{n}.json"), &text);
        let (code, rss) = peak_rss(&home, &["run", "--backend", "namespace", dag.to_str().unwrap()], &out);
        assert_ne!(code, 0, "a DAG with an unknown field ran");
        rss
    };
    let (small, big) = (parse(1000), parse(20_000));
    assert!(own_peak_rss() < small, "this test's own peak RSS would hide the runs' peaks");
    let per_job = big.saturating_sub(small) / 19_000;
    assert!(
        per_job < PARSE_BYTES_PER_JOB_MAX,
        "parsing 20,000 jobs peaked at {big} bytes and 1,000 at {small}: {per_job} bytes a job, over \
         {PARSE_BYTES_PER_JOB_MAX}"
    );
}
