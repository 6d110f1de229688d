//! The committed fuzz corpora and regression inputs, replayed through the entry points the
//! fuzzers call, on stable: every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`. A failure names the file; `cargo fuzz run <target> <file>`
//! replays it under the fuzzer.

mod regressions;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use shoal_fuzz_entry::{TARGETS, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Runs every corpus and regression file of `name`; returns how many ran.
fn replay(name: &str) -> usize {
    let entry = target(name).unwrap_or_else(|| panic!("no entry point `{name}`"));
    let mut failed = Vec::new();
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        for file in files(&fuzz_dir().join(sub).join(name)) {
            let data = std::fs::read(&file).unwrap();
            n += 1;
            if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "{name}: {} input(s) fail (the panic is printed above): {failed:#?}", failed.len());
    n
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                assert!(replay(stringify!($name)) > 0, "the corpus of `{}` is empty", stringify!($name));
            }
        )*

        /// Every target has a replay test above, a fuzz target file and a committed corpus, and
        /// every corpus directory belongs to a target.
        #[test]
        fn every_target_is_replayed_and_fuzzed() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(tested.contains(name), "`{name}` has no replay test");
                let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
                assert!(file.is_file(), "{} is missing", file.display());
            }
            for sub in ["corpus", "regressions"] {
                for dir in std::fs::read_dir(fuzz_dir().join(sub)).into_iter().flatten().flatten() {
                    let name = dir.file_name().to_string_lossy().into_owned();
                    assert!(target(&name).is_some(), "fuzz/{sub}/{name} belongs to no target");
                }
            }
        }
    };
}

replay_tests!(dag_json, record, fact, wire, tree, oci, layer, archive, registry, multipart, catalogue);
