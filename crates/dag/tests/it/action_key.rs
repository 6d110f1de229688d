//! Properties of the action key, through the real path: JSON text -> parse_dag -> ResolvedJob::from_job.
//! It ignores formatting and key order; it changes when any result-relevant field changes; it stays
//! put when only scheduling requirements (cores, memory, timeout, scratch, labels) change.

use std::collections::BTreeMap;

use proptest::prelude::*;
use shoal_dag::{Digest, DigestKind, Hash, InputRef, Job, ResolvedJob, parse_dag};

/// A job as plain data, rendered to JSON in many ways.
#[derive(Clone, Debug)]
struct Spec {
    image: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
    inputs: BTreeMap<String, String>,
    outputs: BTreeMap<String, String>,
    arch: Option<String>,
    cpu_flags: Vec<String>,
    network: bool,
    cores: u32,
    memory_mib: u32,
    timeout_s: u32,
    labels: BTreeMap<String, String>,
}

/// How to lay the JSON out: whitespace flavour, a permutation seed for key order, env as object or list.
#[derive(Clone, Debug)]
struct Layout {
    ws: usize,
    order_seed: u64,
    env_as_list: bool,
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,6}"
}

fn text() -> impl Strategy<Value = String> {
    // Includes quotes, backslashes, unicode and control characters, all of which must be escaped.
    "[ -~é\u{1F41F}\n\t\"\\\\]{0,12}"
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            prop::sample::select(vec!["busybox:latest", "debian:12", "localhost:5000/tools:1.0"]),
            prop::collection::vec(text(), 1..4),
        ),
        prop::collection::btree_map("[A-Z][A-Z0-9_]{0,5}", text(), 0..4),
        (
            prop::option::of("/[a-z]{1,6}"),
            prop::option::of(prop::sample::select(vec!["root", "1000", "nobody:nogroup"])),
        ),
        prop::collection::btree_map(
            name(),
            prop::sample::select(vec![
                "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "file:data/in.txt",
            ]),
            0..4,
        ),
        prop::collection::btree_map(
            name(),
            prop::sample::select(vec!["stdout", "stderr", "file:/output/a", "dir:/output/d", "glob:/output/*.txt"]),
            0..3,
        ),
        (
            prop::option::of(prop::sample::select(vec!["x86_64", "aarch64"])),
            prop::collection::vec(prop::sample::select(vec!["avx2", "sse4_2", "aes"]), 0..3),
            any::<bool>(),
        ),
        (1u32..64, 16u32..4096, 1u32..86_400, prop::collection::btree_map(name(), name(), 0..3)),
    )
        .prop_map(
            |(
                (image, command),
                env,
                (workdir, user),
                inputs,
                outputs,
                (arch, cpu_flags, network),
                (cores, memory_mib, timeout_s, labels),
            )| {
                // Output paths must be distinct; keep the first output of each spec.
                let mut seen = std::collections::BTreeSet::new();
                let outputs = outputs
                    .into_iter()
                    .filter(|(_, v)| !v.contains(':') || seen.insert(v.to_string()))
                    .map(|(k, v)| (k, v.to_string()))
                    .collect();
                Spec {
                    image: image.to_string(),
                    command,
                    env,
                    workdir,
                    user: user.map(str::to_string),
                    inputs: inputs.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
                    outputs,
                    arch: arch.map(str::to_string),
                    cpu_flags: cpu_flags.into_iter().map(str::to_string).collect(),
                    network,
                    cores,
                    memory_mib,
                    timeout_s,
                    labels,
                }
            },
        )
}

fn layout() -> impl Strategy<Value = Layout> {
    (0usize..4, any::<u64>(), any::<bool>()).prop_map(|(ws, order_seed, env_as_list)| Layout {
        ws,
        order_seed,
        env_as_list,
    })
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Deterministic shuffle (xorshift) so key order varies with the seed.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn object(mut members: Vec<(String, String)>, l: &Layout, depth: usize) -> String {
    shuffle(&mut members, l.order_seed.wrapping_add(depth as u64));
    let (sep, colon, nl) = match l.ws {
        0 => (",", ":", String::new()),
        1 => (", ", ": ", String::new()),
        2 => (",", " : ", format!("\n{}", "  ".repeat(depth + 1))),
        _ => (",\t", ":\t", "\r\n".to_string()),
    };
    let body: Vec<String> = members.into_iter().map(|(k, v)| format!("{nl}{}{colon}{v}", quote(&k))).collect();
    format!("{{{}{nl}}}", body.join(sep))
}

fn array(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "))
}

fn render(s: &Spec, l: &Layout) -> String {
    let str_map =
        |m: &BTreeMap<String, String>, depth| object(m.iter().map(|(k, v)| (k.clone(), quote(v))).collect(), l, depth);
    let mut job = vec![
        ("id".to_string(), quote("j")),
        ("image".to_string(), quote(&s.image)),
        ("command".to_string(), array(&s.command)),
        ("inputs".to_string(), str_map(&s.inputs, 2)),
        ("outputs".to_string(), str_map(&s.outputs, 2)),
    ];
    if l.env_as_list {
        let list: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        job.push(("env".into(), array(&list)));
    } else {
        job.push(("env".into(), str_map(&s.env, 2)));
    }
    if let Some(w) = &s.workdir {
        job.push(("workdir".into(), quote(w)));
    }
    if let Some(u) = &s.user {
        job.push(("user".into(), quote(u)));
    }
    let mut req = vec![
        ("cores".to_string(), s.cores.to_string()),
        ("memory".to_string(), quote(&format!("{}MiB", s.memory_mib))),
        ("timeout".to_string(), quote(&format!("{}s", s.timeout_s))),
        ("network".to_string(), s.network.to_string()),
        ("cpu_flags".to_string(), array(&s.cpu_flags)),
        ("labels".to_string(), str_map(&s.labels, 3)),
    ];
    if let Some(a) = &s.arch {
        req.push(("arch".into(), quote(a)));
    }
    job.push(("requirements".into(), object(req, l, 2)));
    let jobs = format!("[{}]", object(job, l, 1));
    object(vec![("version".into(), "1".into()), ("jobs".into(), jobs)], l, 0)
}

/// Resolves references the way a store would: the same reference always gives the same digest.
fn resolve(job: &Job) -> ResolvedJob {
    let digest = |r: &InputRef| Digest { hash: Hash::of(format!("{r:?}").as_bytes()), kind: DigestKind::File, size: 1 };
    let image = Hash::of(format!("{:?}", job.image).as_bytes());
    let inputs = job.inputs.iter().map(|(k, r)| (k.clone(), digest(r))).collect();
    ResolvedJob::from_job(job, image, inputs, job.stdin.as_ref().map(digest))
}

fn key(text: &str) -> Hash {
    let dag = parse_dag("p.json", text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    resolve(&dag.jobs[0]).action_key()
}

/// One result-relevant change to a spec; each must change the key.
fn mutate(s: &Spec, which: usize) -> Option<Spec> {
    let mut m = s.clone();
    match which {
        0 => m.image = if s.image == "debian:12" { "debian:13".into() } else { "debian:12".into() },
        1 => m.command[0].push('x'),
        2 => m.command.push("extra".into()),
        3 => {
            m.env.insert("SHOAL_NEW".into(), "1".into());
        }
        4 => {
            let (k, v) = s.env.iter().next()?;
            m.env.insert(k.clone(), format!("{v}x"));
        }
        5 => m.workdir = Some(format!("{}x", s.workdir.clone().unwrap_or_else(|| "/w".into()))),
        6 => m.user = if s.user.as_deref() == Some("root") { Some("1000".into()) } else { Some("root".into()) },
        7 => {
            m.inputs.insert("zz_new".into(), "file:other.txt".into());
        }
        8 => {
            let (k, v) = s.inputs.iter().next()?;
            m.inputs.insert(
                k.clone(),
                if v.starts_with("file:") { "file:changed.txt".into() } else { "file:data/in.txt".into() },
            );
        }
        9 => {
            let (k, v) = s.inputs.iter().next()?;
            m.inputs.remove(k);
            m.inputs.insert(format!("{k}2"), v.clone());
        }
        10 => {
            m.outputs.insert("zz_new".into(), "file:/output/new".into());
        }
        11 => {
            let (k, v) = s.outputs.iter().next()?;
            m.outputs.remove(k);
            m.outputs.insert(format!("{k}2"), v.clone());
        }
        12 => {
            m.arch = if s.arch.as_deref() == Some("aarch64") { Some("x86_64".into()) } else { Some("aarch64".into()) }
        }
        13 => {
            if s.cpu_flags.contains(&"avx512f".to_string()) {
                return None;
            }
            m.cpu_flags.push("avx512f".into());
        }
        14 => m.network = !s.network,
        _ => unreachable!(),
    }
    Some(m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ignores_formatting_key_order_and_env_form(s in spec(), a in layout(), b in layout()) {
        prop_assert_eq!(key(&render(&s, &a)), key(&render(&s, &b)));
    }

    #[test]
    fn changes_with_every_result_relevant_field(s in spec(), l in layout(), which in 0usize..15) {
        if let Some(m) = mutate(&s, which) {
            prop_assert_ne!(key(&render(&s, &l)), key(&render(&m, &l)), "change {} kept the key", which);
        }
    }

    #[test]
    fn ignores_scheduling_requirements(s in spec(), l in layout(), cores in 1u32..64, mem in 16u32..4096, t in 1u32..86_400) {
        let mut m = s.clone();
        m.cores = cores;
        m.memory_mib = mem;
        m.timeout_s = t;
        m.labels.insert("pool".into(), "night".into());
        prop_assert_eq!(key(&render(&s, &l)), key(&render(&m, &l)));
    }

    #[test]
    fn cpu_flag_order_and_repeats_do_not_matter(s in spec(), l in layout()) {
        let mut m = s.clone();
        m.cpu_flags.reverse();
        if let Some(f) = s.cpu_flags.first() {
            m.cpu_flags.push(f.clone());
        }
        prop_assert_eq!(key(&render(&s, &l)), key(&render(&m, &l)));
    }
}

const PINNED: &str = "d223a391c66ab87c591b42a809db764e8741cf1400cb649d2b0151f463b32f93";

#[test]
fn the_key_of_a_known_job_is_stable() {
    // Pinned: changing the hashed layout must change ACTION_DOMAIN, and this value, on purpose.
    let text = r#"{"version": 1, "jobs": [{"id": "j", "image": "busybox:latest", "command": ["echo", "hi"]}]}"#;
    let k = key(text);
    assert_eq!(k, key(&text.replace(", ", ",\n   ")));
    assert_eq!(k.to_hex(), PINNED);
    let other = r#"{"version": 1, "jobs": [{"id": "renamed", "image": "busybox:latest", "command": ["echo", "hi"]}]}"#;
    assert_eq!(k, key(other), "the job id names a job; it does not change what it computes");
}
