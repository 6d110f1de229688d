//! The node's ed25519 identity. It signs every run record this node produces; later it is also the
//! libp2p and iroh identity (one secret, DESIGN section 7).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
            let tmp = home.join("node.key.tmp");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            file.write_all(key.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading the node key {}", path.display())),
    }
}

/// The node id as written in run records: the hex of the public key.
pub fn node_id(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}
