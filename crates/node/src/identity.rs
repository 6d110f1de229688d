//! The node's ed25519 identity. It signs every run record this node produces; later it is also the
//! libp2p and iroh identity (one secret, DESIGN section 7).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;

/// Size of the secret key file, in bytes.
const KEY_FILE_BYTES: usize = 32;

/// Loads `home/node.key`, creating it (mode 0600) on first use.
pub fn load_or_create(home: &Path) -> Result<SigningKey> {
    let path = home.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let Ok(secret) = <[u8; KEY_FILE_BYTES]>::try_from(bytes.as_slice()) else {
                bail!(
                    "{} is {} bytes, not {KEY_FILE_BYTES}: it is not a shoal node key; move it away and a new key will be made",
                    path.display(),
                    bytes.len()
                );
            };
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            std::fs::create_dir_all(home)?;
            write_private(&path, key.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading the node key {}", path.display())),
    }
}

/// The node id as written in run records: the hex of the public key.
pub fn node_id(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

/// Writes a secret (a key, the token list) to `path` through a temporary file beside it, mode 0600
/// from its creation, synced, then renamed over `path`: never readable by others, never half written.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // A leftover temporary file keeps its old mode through `open`.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
