//! Integration tests of shoal-blobs. Each test opens its own store in a fresh temp home.

mod images;
mod net;
mod registry;
mod store;
mod stream;
mod trees;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shoal_blobs::Store;

pub async fn store() -> (tempfile::TempDir, Store) {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).await.unwrap();
    (home, store)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Whether the tools a test needs are installed; when they are not, the test is skipped with a
/// message, unless `SHOAL_REQUIRE_VM` or `CI` is set, which makes it a failure.
pub fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("missing {missing:?}: apt-get install -y docker-registry skopeo busybox-static");
    if std::env::var_os("SHOAL_REQUIRE_VM").is_some() || std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}
