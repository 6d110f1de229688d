//! What the store-backed entry points share in one process: a tokio runtime and a store in a
//! temp directory, opened once (opening a store costs far more than one input) and used by one
//! entry point at a time, so each can check that it left the store's `tmp/` empty.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use shoal_blobs::tree::{Entry, EntryKind, Tree};
use shoal_blobs::{Hash, Store};
use tokio::runtime::Runtime;

struct Env {
    rt: Runtime,
    store: Store,
    /// Where inputs are written and scratch directories made: beside the store, not in it.
    root: PathBuf,
    /// Serializes the entry points (the replay test runs targets on parallel threads).
    lock: Mutex<()>,
    base: OnceLock<Hash>,
}

/// The directories of earlier processes are removed when the next one starts: a fuzzer is
/// ended by a signal, so nothing runs at its exit.
fn root() -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(dir) = std::fs::read_dir(&tmp) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("shoal-fuzz-")
                && pid.parse::<u32>().is_ok()
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = shoal_blobs::remove_tree_forcefully(&e.path());
            }
        }
    }
    tmp.join(format!("shoal-fuzz-{}", std::process::id()))
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = root();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let store = rt.block_on(Store::open(&root.join("home"))).expect("a store in the temp directory");
        std::fs::create_dir_all(root.join("scratch")).expect("a scratch directory");
        Env { rt, store, root, lock: Mutex::new(()), base: OnceLock::new() }
    })
}

/// Runs `f` with the shared store and runtime, alone.
pub fn with_store(f: impl FnOnce(&Store, &Runtime)) {
    let env = env();
    let _alone = env.lock.lock().unwrap_or_else(|e| e.into_inner());
    f(&env.store, &env.rt)
}

/// `data` written to a file outside the store.
pub fn input_file(data: &[u8]) -> PathBuf {
    let path = env().root.join("input");
    std::fs::write(&path, data).expect("writing the input file");
    path
}

/// A fresh directory outside the store, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env().root.join("scratch")).expect("a scratch directory")
}

/// A small tree to merge layers onto: `etc/passwd`, `bin/sh` -> `busybox`, `tmp/`.
pub async fn base_tree(store: &Store) -> Hash {
    if let Some(h) = env().base.get() {
        return *h;
    }
    let file = store.put_bytes(&b"root:x:0:0::/root:/bin/sh\n"[..]).await.expect("put");
    let entry = |name: &str, kind| Entry { name: name.into(), kind, mode: 0o755, uid: 0, gid: 0 };
    let etc = Tree { entries: vec![entry("passwd", EntryKind::File { hash: file, size: 26 })] };
    let bin = Tree { entries: vec![entry("sh", EntryKind::Symlink { target: "busybox".into() })] };
    let (etc, bin, tmp) = (
        store.put_tree(&etc).await.expect("put"),
        store.put_tree(&bin).await.expect("put"),
        store.put_tree(&Tree::default()).await.expect("put"),
    );
    let root = Tree {
        entries: vec![
            entry("bin", EntryKind::Dir { hash: bin }),
            entry("etc", EntryKind::Dir { hash: etc }),
            entry("tmp", EntryKind::Dir { hash: tmp }),
        ],
    };
    let h = store.put_tree(&root).await.expect("put");
    *env().base.get_or_init(|| h)
}

/// The store's `tmp/` holds nothing once an operation has returned.
pub fn assert_tmp_empty(store: &Store) {
    let tmp = store.home().join("tmp");
    let left: Vec<String> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind in {}: {left:?}", tmp.display());
}
