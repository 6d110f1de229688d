//! Keys and ids: a node secret's libp2p identity, the mesh key's file format, and the peer id of
//! a node id and back (both are the node's ed25519 public key).

use libp2p::pnet::PreSharedKey;
use libp2p::{PeerId, identity};
use shoal_mesh::ledger::NodeId;

use super::net::NetError;

/// The libp2p identity of a node secret. Copies it: libp2p zeroes the buffer it is given.
pub(super) fn keypair_of(secret: &[u8; 32]) -> Result<identity::Keypair, NetError> {
    let mut bytes = *secret;
    identity::Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| NetError::Identity(e.to_string()))
}

/// The peer id a node secret gives.
pub fn peer_id_of(secret: &[u8; 32]) -> PeerId {
    // Every 32-byte string is an ed25519 secret key: this cannot fail.
    keypair_of(secret).expect("32 bytes are an ed25519 secret key").public().to_peer_id()
}

const PSK_HEADER: &str = "/key/swarm/psk/1.0.0/";
const PSK_ENCODING: &str = "/base16/";

/// Reads a mesh key in libp2p's key file format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex
/// digits), as go-libp2p's and rust-libp2p's private networks write it. Surrounding whitespace and
/// CRLF line ends are accepted.
pub fn parse_psk(text: &str) -> Result<[u8; 32], NetError> {
    let mut lines = text.trim().lines().map(str::trim);
    let (header, encoding, key) = match (lines.next(), lines.next(), lines.next(), lines.next()) {
        (Some(h), Some(e), Some(k), None) => (h, e, k),
        _ => return Err(NetError::Psk("it does not have exactly three lines".into())),
    };
    if header != PSK_HEADER {
        return Err(NetError::Psk(format!("the first line is {header:?}")));
    }
    if encoding != PSK_ENCODING {
        return Err(NetError::Psk(format!("the encoding line is {encoding:?} (only base16 is read)")));
    }
    let bytes = hex::decode(key).map_err(|e| NetError::Psk(format!("the key line is not hex ({e})")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| NetError::Psk(format!("the key is {} bytes, not 32", bytes.len())))
}

/// Writes a mesh key in libp2p's key file format (what [`parse_psk`] reads).
pub fn format_psk(key: &[u8; 32]) -> String {
    PreSharedKey::new(*key).to_key_file()
}

/// The libp2p peer id of a node id (both are the node's ed25519 public key).
pub fn peer_id_of_node(node: &NodeId) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(node).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

/// The node id of a libp2p peer id, when it names an ed25519 key (an identity multihash of the
/// key's protobuf encoding, as every shoal node's does).
pub fn node_of_peer(peer: &PeerId) -> Option<NodeId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_peer_ids_map_both_ways() {
        for secret in [[1u8; 32], [7u8; 32], [0xfe; 32]] {
            let peer = peer_id_of(&secret);
            let node = node_of_peer(&peer).expect("a shoal peer id names an ed25519 key");
            assert_eq!(node, keypair_of(&secret).unwrap().public().try_into_ed25519().unwrap().to_bytes());
            assert_eq!(peer_id_of_node(&node), Some(peer));
        }
    }

    #[test]
    fn a_peer_id_of_no_ed25519_key_has_no_node_id() {
        // A random peer id is an identity multihash of 32 random bytes, not of a key's protobuf.
        assert_eq!(node_of_peer(&PeerId::random()), None);
        // A peer id hashed with SHA-256 (as RSA keys' are) carries no key at all.
        let sha = libp2p::multihash::Multihash::<64>::wrap(0x12, &[9; 32]).unwrap();
        assert_eq!(node_of_peer(&PeerId::from_multihash(sha).unwrap()), None);
    }

    #[test]
    fn a_node_id_that_is_no_curve_point_has_no_peer_id() {
        // Not every 32 bytes decode as an ed25519 point; y = 2 with the sign bit set is none.
        let mut node = [0u8; 32];
        node[0] = 2;
        node[31] = 0x80;
        assert_eq!(peer_id_of_node(&node), None);
    }
}
