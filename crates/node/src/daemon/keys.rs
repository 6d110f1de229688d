//! The mesh key file (`shoal mesh init`, `--mesh-key`).

use anyhow::{Context, Result, anyhow};

/// The mesh key: 32 bytes in libp2p's pre-shared key file format.
pub fn read_mesh_key(path: &std::path::Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no mesh key at {}: create one with `shoal mesh init` and copy it to every node of the mesh \
             (or pass --mesh-key PATH)",
            path.display()
        )
    })?;
    crate::mesh::net::parse_psk(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Writes a fresh mesh key (32 random bytes in libp2p's key file format), mode 0600, atomically.
pub fn write_mesh_key(path: &std::path::Path) -> Result<()> {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    crate::identity::write_private(path, crate::mesh::net::format_psk(&key).as_bytes())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_written_key_reads_back_and_only_its_owner_may_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.key");
        write_mesh_key(&path).unwrap();
        let key = read_mesh_key(&path).unwrap();
        assert_ne!(key, [0; 32]);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A second key is another one: it is random, not derived from anything.
        let other = dir.path().join("other.key");
        write_mesh_key(&other).unwrap();
        assert_ne!(read_mesh_key(&other).unwrap(), key);
    }

    #[test]
    fn a_missing_key_names_the_command_that_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", read_mesh_key(&dir.path().join("mesh.key")).unwrap_err());
        assert!(err.contains("shoal mesh init") && err.contains("--mesh-key"), "{err}");
    }

    #[test]
    fn a_malformed_key_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.key");
        std::fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nnot hex\n").unwrap();
        let err = read_mesh_key(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()) && err.contains("not hex"), "{err}");
    }
}
