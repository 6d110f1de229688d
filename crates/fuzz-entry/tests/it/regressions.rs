//! Regressions found by fuzzing or while writing a target: one test each, on the input committed
//! under `fuzz/regressions/<target>/` (which the corpus replay also runs through the target).

use std::path::{Path, PathBuf};

fn input(target: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target).join(name)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A `docker save` archive whose layer is a symlink to /dev/null was imported with the device as
/// its layer (and one to /dev/zero never finished, filling the disk): it is refused, naming it.
/// (crates/blobs/tests/it/images.rs has the host-file case.)
#[test]
fn archive_layer_link_to_a_device_is_refused() {
    let rt = runtime();
    let home = tempfile::tempdir().unwrap();
    let store = rt.block_on(shoal_blobs::Store::open(home.path())).unwrap();
    let err = rt
        .block_on(store.import_docker_archive(&input("archive", "layer-link-to-dev-null"), None))
        .expect_err("a layer linked to a device")
        .to_string();
    assert!(err.contains("`l1/layer.tar` is a link to /dev/null, outside the archive"), "{err}");
    rt.block_on(store.shutdown());
}

/// A 4.6 KB layer whose one file is 300 directories deep overflowed the stack while its tree was
/// merged, aborting the process (a node importing it died): such a path is refused, naming it.
#[test]
fn layer_path_too_deep_is_refused() {
    let rt = runtime();
    let home = tempfile::tempdir().unwrap();
    let store = rt.block_on(shoal_blobs::Store::open(home.path())).unwrap();
    let err = rt
        .block_on(shoal_blobs::image::fuzz::expand_layer(&store, &input("layer", "path-300-deep")))
        .expect_err("a path 300 deep")
        .to_string();
    assert!(err.contains("more than 64 directories deep"), "{err}");
    shoal_fuzz_entry::layer(&std::fs::read(input("layer", "path-300-deep")).unwrap());
    rt.block_on(store.shutdown());
}

/// A pull whose layer failed its digest check (or any later step) left the downloaded layer in
/// the store's `tmp/` until the next open, so failed pulls piled up on disk: found by the
/// `registry` target, whose entry point checks that `tmp/` is empty after every pull.
#[test]
fn failed_pull_leaves_no_download_behind() {
    shoal_fuzz_entry::registry(&std::fs::read(input("registry", "layer-digest-mismatch")).unwrap());
}
