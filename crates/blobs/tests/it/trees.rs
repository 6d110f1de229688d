use std::os::unix::fs::MetadataExt;
use std::path::Path;

use proptest::prelude::*;
use shoal_blobs::tree::{Entry, EntryKind, Tree};
use shoal_blobs::{DigestKind, StoreError};

use crate::{is_root, mode, store, write};

fn sample_dir(root: &Path) {
    write(&root.join("bin/tool"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("bin/su"), b"setuid binary", 0o4755);
    write(&root.join("bin/sg"), b"setgid binary", 0o2711);
    write(&root.join("etc/conf"), b"a=1\n", 0o644);
    write(&root.join("etc/secret"), b"s", 0o600);
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("etc/outside")).unwrap();
    std::os::unix::fs::symlink("../../../../nowhere", root.join("etc/dangling")).unwrap();
    std::fs::hard_link(root.join("etc/conf"), root.join("etc/conf.link")).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(root.join("etc/secret"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("bin/alias"), Some(42), Some(43)).unwrap();
    }
}

#[tokio::test]
async fn tree_round_trip() {
    let (home, s) = store().await;
    let src = home.path().join("src");
    sample_dir(&src);
    let before = s.list().await.unwrap().len();
    let d = s.put_tree_from_dir(&src).await.unwrap();
    assert_eq!(d.kind, DigestKind::Tree);
    // Blobs: 5 distinct file contents (the hard link stored once) + 5 trees (root, bin, etc, tmp, empty;
    // tmp and empty are the same empty tree, so 4 distinct).
    let after = s.list().await.unwrap().len();
    assert_eq!(after - before, 5 + 4, "hard-linked files are stored once");

    let root = s.get_tree(d.hash).await.unwrap();
    let names: Vec<&str> = root.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["bin", "empty", "etc", "tmp"]);
    let EntryKind::Dir { hash: etc } = root.get("etc").unwrap().kind else { panic!() };
    let etc = s.get_tree(etc).await.unwrap();
    assert_eq!(etc.get("outside").unwrap().kind, EntryKind::Symlink { target: "/etc/passwd".into() });
    assert_eq!(etc.get("conf").unwrap().kind, etc.get("conf.link").unwrap().kind);

    let dst = home.path().join("dst");
    s.materialize(d.hash, &dst).await.unwrap();
    assert_eq!(mode(&dst.join("bin/tool")), 0o755);
    assert_eq!(mode(&dst.join("bin/su")), 0o4755);
    assert_eq!(mode(&dst.join("bin/sg")), 0o2711);
    assert_eq!(mode(&dst.join("tmp")), 0o1777);
    assert_eq!(mode(&dst.join("etc/secret")), 0o600);
    assert_eq!(std::fs::read(dst.join("bin/tool")).unwrap(), b"#!/bin/sh\necho hi\n");
    // Symlinks come back as links, never followed: the one pointing outside is still a link.
    let md = std::fs::symlink_metadata(dst.join("etc/outside")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(std::fs::read_link(dst.join("etc/outside")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(std::fs::read_link(dst.join("etc/dangling")).unwrap(), Path::new("../../../../nowhere"));
    // Identical files are copies a user can edit one by one...
    let a = std::fs::metadata(dst.join("etc/conf")).unwrap();
    let b = std::fs::metadata(dst.join("etc/conf.link")).unwrap();
    assert_ne!((a.dev(), a.ino()), (b.dev(), b.ino()));
    // ...and hard-linked where nobody writes.
    let ro = home.path().join("ro");
    s.materialize_read_only(d.hash, &ro).await.unwrap();
    let a = std::fs::metadata(ro.join("etc/conf")).unwrap();
    let b = std::fs::metadata(ro.join("etc/conf.link")).unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    if is_root() {
        let m = std::fs::symlink_metadata(dst.join("etc/secret")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        let m = std::fs::symlink_metadata(dst.join("bin/alias")).unwrap();
        assert_eq!((m.uid(), m.gid()), (42, 43));
    }
    // Building the copy gives the same hash.
    assert_eq!(s.put_tree_from_dir(&dst).await.unwrap().hash, d.hash);
    // Materializing over an existing path is refused.
    assert!(matches!(s.materialize(d.hash, &dst).await, Err(StoreError::DestinationExists { .. })));

    // rootfs: materialized once, concurrently, into home/rootfs/<hex>.
    let (p1, p2) = tokio::join!(s.rootfs(d.hash), s.rootfs(d.hash));
    let (p1, p2) = (p1.unwrap(), p2.unwrap());
    assert_eq!(p1, p2);
    assert_eq!(p1, s.home().join("rootfs").join(d.hash.to_hex()));
    assert_eq!(mode(&p1.join("bin/su")), 0o4755);
    assert_eq!(s.put_tree_from_dir(&p1).await.unwrap().hash, d.hash);
    s.shutdown().await;
}

#[tokio::test]
async fn refuses_unsafe_names() {
    let (home, s) = store().await;
    let file = s.put_bytes(&b"x"[..]).await.unwrap();
    for bad in ["..", ".", "a/b", ""] {
        let t = Tree {
            entries: vec![Entry {
                name: bad.into(),
                kind: EntryKind::File { hash: file, size: 1 },
                mode: 0o644,
                uid: 0,
                gid: 0,
            }],
        };
        let h = s.put_tree(&t).await.unwrap();
        let dst = home.path().join(format!("dst{}", bad.len()));
        let err = s.materialize(h, &dst).await.unwrap_err();
        assert!(matches!(err, StoreError::BadTree { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("invalid"), "{err}");
        assert!(!home.path().join("x").exists());
    }
    // A symlink named `..` pointing outside must not be written either.
    let t = Tree {
        entries: vec![Entry {
            name: "..".into(),
            kind: EntryKind::Symlink { target: "/".into() },
            mode: 0o777,
            uid: 0,
            gid: 0,
        }],
    };
    let h = s.put_tree(&t).await.unwrap();
    assert!(s.materialize(h, &home.path().join("d2")).await.is_err());
    s.shutdown().await;
}

#[tokio::test]
async fn refuses_special_files() {
    let (home, s) = store().await;
    let src = home.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let fifo = src.join("sub/pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = s.put_tree_from_dir(&src).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { kind: "FIFO", .. }), "{err}");
    assert!(err.to_string().contains(fifo.to_str().unwrap()), "{err}");
    s.shutdown().await;
}

#[derive(Debug, Clone)]
enum Spec {
    File(Vec<u8>, u32),
    Dir(u32),
    Link(String),
}

fn spec() -> impl Strategy<Value = Vec<(Vec<String>, Spec)>> {
    let name = prop::sample::select(vec!["a", "b", "c", "d.txt", "é", "Z", ".hidden"]).prop_map(String::from);
    let path = prop::collection::vec(name, 1..4);
    let kind = prop_oneof![
        (prop::collection::vec(any::<u8>(), 0..64), prop::sample::select(vec![0o644u32, 0o755, 0o600, 0o4755, 0o2755]))
            .prop_map(|(d, m)| Spec::File(d, m)),
        prop::sample::select(vec![0o755u32, 0o700, 0o1777]).prop_map(Spec::Dir),
        prop::sample::select(vec!["a", "../b", "/etc/passwd"]).prop_map(|t| Spec::Link(t.into())),
    ];
    prop::collection::vec((path, kind), 0..12)
}

/// Creates the entries in the given order; later entries under an existing non-directory are skipped.
fn create(root: &Path, entries: &[(Vec<String>, Spec)], rev: bool) {
    std::fs::create_dir_all(root).unwrap();
    let mut order: Vec<&(Vec<String>, Spec)> = entries.iter().collect();
    // The same final tree either way: decide which entries survive in forward order first.
    let mut taken: Vec<(Vec<String>, Spec)> = Vec::new();
    for (p, k) in order.drain(..) {
        let clash = taken.iter().any(|(q, qk)| {
            (q.len() <= p.len() && p[..q.len()] == q[..] && !matches!(qk, Spec::Dir(_)))
                || (q.len() > p.len() && q[..p.len()] == p[..])
                || q == p
        });
        if !clash {
            taken.push((p.clone(), k.clone()));
        }
    }
    if rev {
        taken.reverse();
    }
    // Directories after their contents, so their modes do not block writing into them.
    let mut dirs = Vec::new();
    for (p, k) in &taken {
        let path = p.iter().fold(root.to_path_buf(), |a, c| a.join(c));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match k {
            Spec::File(d, m) => write(&path, d, *m),
            Spec::Dir(m) => {
                std::fs::create_dir_all(&path).unwrap();
                dirs.push((path, *m));
            }
            Spec::Link(t) => std::os::unix::fs::symlink(t, &path).unwrap(),
        }
    }
    for (path, m) in dirs {
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    }
}

#[test]
fn random_trees_round_trip() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (home, s) = rt.block_on(store());
    let counter = std::sync::atomic::AtomicUsize::new(0);
    proptest!(ProptestConfig::with_cases(24), |(entries in spec())| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let one = home.path().join(format!("one{n}"));
        let two = home.path().join(format!("two{n}"));
        create(&one, &entries, false);
        std::thread::sleep(std::time::Duration::from_millis(2));
        create(&two, &entries, true);
        rt.block_on(async {
            let a = s.put_tree_from_dir(&one).await.unwrap();
            let b = s.put_tree_from_dir(&two).await.unwrap();
            prop_assert_eq!(a.hash, b.hash, "creation order and mtimes must not matter");
            let m = home.path().join(format!("m{n}"));
            s.materialize(a.hash, &m).await.unwrap();
            let c = s.put_tree_from_dir(&m).await.unwrap();
            prop_assert_eq!(a.hash, c.hash);
            Ok(())
        })?;
    });
    rt.block_on(s.shutdown());
}

/// An ext4 file system in a file in /dev/shm, loop-mounted at `dir` for one test (needs root, as
/// CI is): ext4's hard-link limit (65,000) is what `shoal get` ran into.
struct LoopExt4 {
    dir: std::path::PathBuf,
    image: std::path::PathBuf,
}

impl LoopExt4 {
    fn mount(dir: &Path, mib: u64) -> LoopExt4 {
        let image = std::path::PathBuf::from(format!("/dev/shm/shoal-test-{}.ext4", std::process::id()));
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        let run = |cmd: &str, args: &[&str]| {
            let out = std::process::Command::new(cmd).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd} {args:?} (needs root, as CI runs): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run("mkfs.ext4", &["-q", "-F", "-N", "100000", image.to_str().unwrap()]);
        std::fs::create_dir_all(dir).unwrap();
        run("mount", &["-o", "loop", image.to_str().unwrap(), dir.to_str().unwrap()]);
        LoopExt4 { dir: dir.to_owned(), image }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// `shoal get` of a directory output with many identical files failed with `Too many links`
/// (65,001 entries left behind): identical files were hard-linked to each other, past ext4's
/// link limit, an edit of one changed the others, and a failure left a half-written directory.
#[tokio::test]
async fn many_identical_files_materialize_as_copies_and_past_the_link_limit() {
    let (home, s) = store().await;
    let same = s.put_bytes(&b"same"[..]).await.unwrap();
    let file =
        |name: String, hash| Entry { name, kind: EntryKind::File { hash, size: 4 }, mode: 0o644, uid: 0, gid: 0 };
    let mut entries: Vec<Entry> = (0..66_000).map(|i| file(format!("f{i:05}"), same)).collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let tree = s.put_tree(&Tree { entries }).await.unwrap();
    let fs = LoopExt4::mount(&home.path().join("ext4"), 200);

    let copy = fs.dir.join("copy");
    s.materialize(tree, &copy).await.unwrap();
    std::fs::write(copy.join("f00000"), b"edited").unwrap();
    assert_eq!(std::fs::read(copy.join("f00001")).unwrap(), b"same", "editing one file changed another");
    assert_eq!(std::fs::metadata(copy.join("f65999")).unwrap().nlink(), 1);
    std::fs::remove_dir_all(&copy).unwrap();

    let ro = fs.dir.join("ro");
    s.materialize_read_only(tree, &ro).await.unwrap();
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 66_000);
    assert_eq!(std::fs::read(ro.join("f65999")).unwrap(), b"same");
    assert!(std::fs::metadata(ro.join("f00000")).unwrap().nlink() > 1, "identical read-only files are linked");

    // A materialization that fails leaves nothing behind.
    let present = s.put_bytes(&b"here"[..]).await.unwrap();
    let broken = s
        .put_tree(&Tree { entries: vec![file("a".into(), present), file("b".into(), shoal_blobs::Hash::of(b"gone"))] })
        .await
        .unwrap();
    let bad = fs.dir.join("bad");
    assert!(s.materialize(broken, &bad).await.is_err());
    assert!(!bad.exists(), "a failed materialization left a half-written directory");
}

/// A directory 300 levels deep (a job's output, say) overflowed the stack when it was
/// materialized, aborting `shoal get` or the runner handing it to the next job: storing one
/// deeper than `TREE_DEPTH_MAX` is refused naming it, and so is materializing a tree made
/// elsewhere (a peer's) that deep; `TREE_DEPTH_MAX` levels store and materialize.
#[tokio::test]
async fn trees_deeper_than_the_limit_are_refused() {
    use shoal_blobs::tree::TREE_DEPTH_MAX;
    let (home, s) = store().await;
    let nested = |root: &Path, depth: usize| {
        let mut p = root.to_path_buf();
        for _ in 0..depth {
            p.push("a");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("f"), b"deep").unwrap();
    };
    let ok = home.path().join("ok");
    nested(&ok, TREE_DEPTH_MAX);
    let d = s.put_tree_from_dir(&ok).await.unwrap();
    s.materialize(d.hash, &home.path().join("ok-out")).await.unwrap();

    let deep = home.path().join("deep");
    nested(&deep, 300);
    let err = s.put_tree_from_dir(&deep).await.unwrap_err();
    assert!(matches!(err, StoreError::TooDeep { .. }), "{err}");
    assert!(err.to_string().contains("more than 64 directories below"), "{err}");

    // A tree that deep built blob by blob, as a peer could serve it.
    let file = s.put_bytes(&b"deep"[..]).await.unwrap();
    let entry = |name: &str, kind| Entry { name: name.into(), kind, mode: 0o755, uid: 0, gid: 0 };
    let mut tree =
        s.put_tree(&Tree { entries: vec![entry("f", EntryKind::File { hash: file, size: 4 })] }).await.unwrap();
    for _ in 0..300 {
        tree = s.put_tree(&Tree { entries: vec![entry("a", EntryKind::Dir { hash: tree })] }).await.unwrap();
    }
    let err = s.materialize(tree, &home.path().join("deep-out")).await.unwrap_err();
    assert!(err.to_string().contains("more than 64 directories deep"), "{err}");
    s.shutdown().await;
}

/// Issue 21: a path inside a tree names its file or subtree; a selection narrows a tree to the
/// entries its globs pick, at their paths, and the narrowed tree's hash changes only when a
/// picked entry does.
#[tokio::test]
async fn a_path_names_part_of_a_tree_and_a_selection_keeps_only_what_its_globs_pick() {
    use shoal_blobs::TreePathError;
    let (home, s) = crate::store().await;
    let src = home.path().join("src");
    let w = |p: &str, text: &str| {
        let path = src.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    w("zlib.h", "zlib header\n");
    w("zutil.h", "zutil header\n");
    w("adler32.c", "adler\n");
    w("crc32.c", "crc\n");
    w("contrib/minizip/unzip.h", "minizip header\n");
    w("test/example.c", "test\n");
    w("test/helper.h", "test header\n");
    let tree = s.put_tree_from_dir(&src).await.unwrap();

    let file = s.tree_path(&tree, "contrib/minizip/unzip.h").await.unwrap();
    assert_eq!(file.hash, shoal_blobs::Hash::of(b"minizip header\n"));
    let dir = s.tree_path(&tree, "test").await.unwrap();
    assert_eq!((dir.kind, dir.size), (shoal_blobs::DigestKind::Tree, 17));
    let err = s.tree_path(&tree, "contrib/minizp/unzip.h").await.unwrap_err();
    assert!(matches!(&err, TreePathError::Missing(m) if m.missing == "minizp" && m.dir == "contrib"));
    assert!(err.to_string().contains("nearest there: minizip"), "{err}");
    assert!(matches!(s.tree_path(&file, "x").await.unwrap_err(), TreePathError::NotATree { .. }));

    // Headers at any depth (a glob without `/` matches names), one source, no tests.
    let inc = |v: &[&str]| v.iter().map(|g| g.to_string()).collect::<Vec<_>>();
    let picked = s.select(&tree, &inc(&["*.h", "adler32.c"]), &inc(&["test/**"])).await.unwrap();
    let dest = home.path().join("picked");
    s.materialize(picked.hash, &dest).await.unwrap();
    let mut found: Vec<String> = walk(&dest);
    found.sort();
    assert_eq!(found, ["adler32.c", "contrib/minizip/unzip.h", "zlib.h", "zutil.h"]);
    assert_eq!(picked.size, "zlib header\nzutil header\nadler\nminizip header\n".len() as u64);

    // Editing a file the selection does not pick leaves its hash; editing a picked one changes it.
    w("crc32.c", "crc, edited\n");
    let edited = s.put_tree_from_dir(&src).await.unwrap();
    assert_ne!(edited.hash, tree.hash);
    assert_eq!(s.select(&edited, &inc(&["*.h", "adler32.c"]), &inc(&["test/**"])).await.unwrap(), picked);
    w("zutil.h", "zutil header, edited\n");
    let edited = s.put_tree_from_dir(&src).await.unwrap();
    assert_ne!(s.select(&edited, &inc(&["*.h", "adler32.c"]), &inc(&["test/**"])).await.unwrap().hash, picked.hash);
    // A directory named by an include comes whole; a selection of nothing is an error.
    let whole = s.select(&tree, &inc(&["test"]), &[]).await.unwrap();
    assert_eq!(whole.size, 17);
    let err = s.select(&tree, &inc(&["*.rs"]), &[]).await.unwrap_err();
    assert!(matches!(err, TreePathError::SelectsNothing { .. }), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()).into_iter().map(|p| format!("{name}/{p}")));
        } else {
            out.push(name);
        }
    }
    out
}
