//! The messages nodes exchange, as canonical CBOR: what gossipsub carries (fact batches on
//! `shoal/facts/1`, announcements on `shoal/caps/1`) and the anti-entropy exchange over
//! request-response (`/shoal/sync/1`). Pure types and codecs: no I/O.
//!
//! Anti-entropy: a node sends one peer its ledger digest (`SyncReq::Digest`) now and then, of the
//! whole ledger or of one DAG's facts (a DAG with a topic of its own); a peer whose digest differs
//! answers with every fact id it holds in that scope (`SyncResp::Ids`); the asker then
//! fetches what it lacks (`SyncReq::Get`) and pushes what the peer lacks (`SyncReq::Put`). Equal
//! digests cost one round trip of ~100 bytes, which is all an idle mesh sends.
//!
//! Holding a submitted DAG's blobs: before a node acknowledges a submit it asks a peer to hold
//! what the DAG needs (`SyncReq::Hold`): the DAG blob, its jobs' images (image blob, rootfs tree
//! and every file in it) and `blake3:` inputs. The peer fetches them from the asker (and its
//! other peers) over iroh and answers at once with where it stands (`SyncResp::Holding`); the
//! asker asks again until the answer is `Held` or `Failed`, so no request outlives the sync
//! timeout however large the blobs.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_dag::{Hash, canonical_cbor};

use crate::capabilities::Capabilities;
use crate::ledger::{Fact, NodeId};

/// The protocol this build speaks: these messages, the ledger's facts and how they fold. Nodes of
/// different protocols refuse each other at connection time (libp2p identify carries it as
/// [`protocol_name`]); their messages carry it as `v` and a message of another one is dropped
/// (defence in depth: gossip relayed by a third node arrives without a connection to judge).
/// Raised with any change an older node would misread. A new field of a message with a serde
/// default is not one; a new field of a fact is (an older node decodes the fact without it, and
/// the signature no longer checks). 3: `Done` names its action key (the mesh-wide cache). 4: a
/// `Submit` may carry a `Quorum` and a `Done` its `result` (redundant runs).
pub const PROTOCOL_VERSION: u32 = 4;
/// Version of these messages: the protocol's.
pub const WIRE_VERSION: u32 = PROTOCOL_VERSION;
/// How identify names a shoal protocol: `/shoal/<version>`.
const PROTOCOL_PREFIX: &str = "/shoal/";
/// Most facts in one gossip message or one `Get`/`Put`/`Facts`.
pub const FACTS_PER_MESSAGE_MAX: usize = 1024;
/// Most fact ids in one `Ids` answer (32 bytes each: 32 MiB at most, the response size limit).
pub const IDS_PER_MESSAGE_MAX: usize = 1_000_000;
/// Tombstones of compacted DAGs in one `SyncResp::Tombstones` (about 100 bytes each).
pub const TOMBSTONES_PER_MESSAGE_MAX: usize = 4_096;

/// Largest DAG file sent inline with its `Submit` fact, in bytes; larger ones are fetched by hash.
pub const DAG_INLINE_BYTES_MAX: usize = 256 * 1024;

/// A gossip message on the facts topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactBatch {
    pub v: u32,
    pub facts: Vec<Fact>,
    /// The content of DAGs these facts submit, when small: a submitter may leave the moment its
    /// submit is acknowledged, and its peers then still have what to run. Named by BLAKE3 of the
    /// text; a receiver checks that before using it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dags: Vec<DagText>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagText {
    pub hash: Hash,
    pub text: String,
}

/// What a node tells the mesh about itself, every few seconds (`shoal peers` shows it). A *full*
/// one carries its capabilities; the others leave out what rarely changes (release, hostname,
/// addresses, HTTP URL: empty), which the receiver keeps from the last full one
/// ([`Announce::filled_from`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub v: u32,
    pub node: NodeId,
    /// Its shoal release (`CARGO_PKG_VERSION`); empty from a node older than the field.
    #[serde(default)]
    pub version: String,
    pub hostname: String,
    /// Its capabilities, in every [`CAPS_EVERY`](crate::settings::CAPS_EVERY)th announcement and the first ones after a new
    /// connection (they rarely change, and the CPU flags alone are ~1 KB); `None` in between.
    pub caps: Option<Capabilities>,
    /// Where its iroh endpoint listens (its id is `node`: one key serves both).
    pub blob_addrs: Vec<SocketAddr>,
    /// Where its libp2p swarm listens (multiaddrs as text), so peers can dial it directly.
    pub listen: Vec<String>,
    /// Its HTTP API, if it serves one.
    pub http: Option<String>,
    /// Jobs it is running, and its cores not held by them.
    pub running: u32,
    pub free_cores: u32,
    /// Facts it holds, and their digest (equal digests, equal ledgers).
    pub facts: u64,
    pub ledger_digest: Hash,
    /// When it sent this, by its own clock (Unix ms).
    pub sent_unix_ms: u64,
}

impl Announce {
    /// Without what rarely changes: a heartbeat between full announcements (~190 bytes of CBOR
    /// instead of ~260 for a node with one address of each kind, and ~1.4 KB with the
    /// capabilities of a PC).
    pub fn lite(mut self) -> Announce {
        self.caps = None;
        self.version.clear();
        self.hostname.clear();
        self.blob_addrs.clear();
        self.listen.clear();
        self.http = None;
        self
    }

    /// A light announcement completed with what `prev`, the same node's last full one, said; a
    /// full one as it is.
    pub fn filled_from(mut self, prev: &Announce) -> Announce {
        if self.caps.is_none() {
            self.version.clone_from(&prev.version);
            self.hostname.clone_from(&prev.hostname);
            self.blob_addrs.clone_from(&prev.blob_addrs);
            self.listen.clone_from(&prev.listen);
            self.http.clone_from(&prev.http);
        }
        self
    }
}

/// An anti-entropy request, or a request to hold a DAG's blobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncReq {
    Digest {
        digest: Hash,
        count: u64,
        /// The scope: this DAG's facts ([`Ledger::dag_ids`](crate::ledger::Ledger::dag_ids)); the
        /// whole ledger if none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dag: Option<Hash>,
    },
    Get {
        ids: Vec<Hash>,
    },
    Put {
        facts: Vec<Fact>,
    },
    /// Fetch and keep (pin) every blob the DAG `dag` needs: the DAG blob itself, its images and
    /// its `blake3:` inputs. Asked again until the answer is final.
    Hold {
        dag: Hash,
    },
    /// The DAGs compacted out of the ledger: this node's digest of their tombstones, and where a
    /// page of them should start (after this DAG hash). Answered `Tombstones`: an empty page when
    /// the digests are equal (a node that joined after a compaction learns of it this way).
    Tombstones {
        digest: Hash,
        count: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Hash>,
    },
    /// A heartbeat or greeting straight to one peer (`liveness::Audience::Peer`/`Connected`);
    /// answered `Heard`.
    Announce {
        /// Boxed: an announcement with capabilities is far larger than the other requests.
        announce: Box<Announce>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncResp {
    Same,
    Ids {
        ids: Vec<Hash>,
        /// The scope of the `Digest` this answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dag: Option<Hash>,
    },
    Facts {
        facts: Vec<Fact>,
    },
    Stored {
        added: u64,
        refused: u64,
        /// DAGs some of the facts were about that the answering node compacted (see
        /// `ledger/compact.rs`): the sender holds facts of theirs it should drop too.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        compacted: Vec<(Hash, crate::ledger::Compacted)>,
    },
    Refused {
        reason: String,
    },
    /// Where the holding of `dag`'s blobs stands.
    Holding {
        dag: Hash,
        state: HoldState,
    },
    /// An `Announce` arrived.
    Heard,
    /// A page of tombstones of compacted DAGs, by DAG hash, and whether more follow.
    Tombstones {
        list: Vec<(Hash, crate::ledger::Compacted)>,
        more: bool,
    },
}

/// A peer's progress in holding a DAG's blobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Fetching: `done` of `items` (the DAG, each image, each input) are held, `bytes` arrived.
    Fetching { done: u32, items: u32, bytes: u64 },
    /// Every blob the DAG needs is held (and pinned); `bytes` arrived for it.
    Held { bytes: u64 },
    /// It cannot hold them, and why.
    Failed { reason: String },
}

/// The identify protocol string of a protocol version (`/shoal/1`).
pub fn protocol_name(version: u32) -> String {
    format!("{PROTOCOL_PREFIX}{version}")
}

/// A peer whose protocol this node does not speak.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node speaks protocol {ours}, the peer speaks {}: the two cannot share a ledger; write the newer \
     image to the older stick (or update the older node's shoal) so both run one protocol",
    match theirs { Some(v) => format!("protocol {v}"), None => format!("{said:?}, no shoal protocol") }
)]
pub struct Incompatible {
    pub ours: u32,
    /// Its protocol version, if what it said names one.
    pub theirs: Option<u32>,
    /// What it said (identify's protocol version string).
    pub said: String,
}

/// Whether a peer that says it speaks `said` (identify's protocol version) can be a peer of a
/// node speaking protocol `ours`: only the same protocol can (a fold that differs would split
/// the mesh's view of every job without anyone noticing); returns its version.
pub fn check_protocol(ours: u32, said: &str) -> Result<u32, Incompatible> {
    let theirs = said.strip_prefix(PROTOCOL_PREFIX).and_then(|v| v.parse::<u32>().ok());
    match theirs {
        Some(v) if v == ours => Ok(v),
        _ => Err(Incompatible { ours, theirs, said: said.to_string() }),
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("a malformed mesh message: {0}")]
pub struct WireError(String);

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    canonical_cbor(value)
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    shoal_dag::from_cbor(bytes).map_err(WireError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Body, Hlc};
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_light_announcement_is_small_and_filled_from_the_last_full_one() {
        let full = Announce {
            v: PROTOCOL_VERSION,
            node: [3; 32],
            version: "0.1.0".into(),
            hostname: "lab-pc-7".into(),
            caps: Some(crate::capabilities::Capabilities {
                arch: shoal_dag::Arch::X86_64,
                cores: 2,
                memory_bytes: 1 << 30,
                cpu_flags: Default::default(),
                gpus: vec![],
                labels: Default::default(),
                microvm: false,
                vm_accel: None,
                speed: crate::capabilities::SPEED_REFERENCE,
                emulated: Vec::new(),
            }),
            blob_addrs: vec!["10.1.2.3:41234".parse().unwrap()],
            listen: vec!["/ip4/10.1.2.3/tcp/7171".into()],
            http: Some("http://10.1.2.3:7170".into()),
            running: 1,
            free_cores: 3,
            facts: 10,
            ledger_digest: Hash::of(b"x"),
            sent_unix_ms: 1_000,
        };
        let beat = Announce { running: 2, facts: 11, sent_unix_ms: 2_000, ..full.clone() }.lite();
        let (lite, heavy) = (encode(&beat).len(), encode(&Announce { caps: None, ..full.clone() }).len());
        eprintln!("lite {lite} bytes, without caps {heavy}, full {}", encode(&full).len());
        assert!(lite < heavy, "{beat:?}");
        let seen = beat.filled_from(&full);
        assert_eq!(seen, Announce { caps: None, running: 2, facts: 11, sent_unix_ms: 2_000, ..full.clone() });
        // A full one stands as it is.
        let moved = Announce { hostname: "renamed".into(), ..full.clone() };
        assert_eq!(moved.clone().filled_from(&full), moved);
    }

    #[test]
    fn only_the_same_protocol_is_compatible() {
        assert_eq!(protocol_name(PROTOCOL_VERSION), format!("/shoal/{PROTOCOL_VERSION}"));
        assert_eq!(check_protocol(1, "/shoal/1"), Ok(1));
        for (said, theirs) in [("/shoal/0", Some(0)), ("/shoal/2", Some(2)), ("/ipfs/0.1.0", None), ("/shoal/", None)] {
            let e = check_protocol(1, said).unwrap_err();
            assert_eq!((e.ours, e.theirs, e.said.as_str()), (1, theirs, said));
            let text = e.to_string();
            assert!(text.contains("this node speaks protocol 1") && text.contains("write the newer image"), "{text}");
        }
        assert!(check_protocol(1, "/shoal/0").unwrap_err().to_string().contains("the peer speaks protocol 0"));
    }

    #[test]
    fn an_announcement_without_a_version_still_decodes() {
        #[derive(Serialize)]
        struct Old<'a> {
            v: u32,
            node: NodeId,
            hostname: &'a str,
            caps: Option<Capabilities>,
            blob_addrs: Vec<SocketAddr>,
            listen: Vec<String>,
            http: Option<String>,
            running: u32,
            free_cores: u32,
            facts: u64,
            ledger_digest: Hash,
            sent_unix_ms: u64,
        }
        let old = Old {
            v: 1,
            node: [3; 32],
            hostname: "pc",
            caps: None,
            blob_addrs: vec![],
            listen: vec![],
            http: None,
            running: 0,
            free_cores: 2,
            facts: 0,
            ledger_digest: Hash::of(b""),
            sent_unix_ms: 5,
        };
        let a: Announce = decode(&encode(&old)).unwrap();
        assert_eq!((a.version.as_str(), a.sent_unix_ms), ("", 5));
    }

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let fact = Fact::sign(&key, Hlc { wall_ms: 5, counter: 1 }, Body::Cancel { dag: Hash::of(b"d") });
        let batch = FactBatch { v: WIRE_VERSION, facts: vec![fact.clone()], dags: vec![] };
        assert_eq!(decode::<FactBatch>(&encode(&batch)).unwrap(), batch);
        let req = SyncReq::Put { facts: vec![fact] };
        assert_eq!(decode::<SyncReq>(&encode(&req)).unwrap(), req);
        let req = SyncReq::Hold { dag: Hash::of(b"d") };
        assert_eq!(decode::<SyncReq>(&encode(&req)).unwrap(), req);
        for state in [
            HoldState::Fetching { done: 1, items: 3, bytes: 5 << 20 },
            HoldState::Held { bytes: 7 },
            HoldState::Failed { reason: "no provider".into() },
        ] {
            let resp = SyncResp::Holding { dag: Hash::of(b"d"), state };
            assert_eq!(decode::<SyncResp>(&encode(&resp)).unwrap(), resp);
        }
        assert!(decode::<SyncResp>(b"\xff\x00garbage").is_err());
    }

    /// Messages around and well past ciborium's 4 KiB scratch buffer decode (a long failure
    /// reason, a DAG sent inline, many facts).
    #[test]
    fn messages_of_any_size_round_trip() {
        let key = SigningKey::from_bytes(&[7; 32]);
        for size in [4000usize, 4096, 4097, 64 << 10, (1 << 20) + 7] {
            let fail = Fact::sign(
                &key,
                Hlc { wall_ms: 5, counter: 1 },
                Body::Fail { claim: Hash::of(b"c"), reason: "x".repeat(size) },
            );
            let text = "{".to_string() + &" ".repeat(size) + "}";
            let batch = FactBatch {
                v: WIRE_VERSION,
                facts: vec![fail.clone()],
                dags: vec![DagText { hash: Hash::of(text.as_bytes()), text }],
            };
            assert_eq!(decode::<FactBatch>(&encode(&batch)).unwrap(), batch);
            let facts: Vec<Fact> = (0..(size / 200).min(FACTS_PER_MESSAGE_MAX) as u64)
                .map(|i| {
                    Fact::sign(&key, Hlc { wall_ms: i, counter: 0 }, Body::Cancel { dag: Hash::of(&i.to_le_bytes()) })
                })
                .chain([fail])
                .collect();
            let put = SyncReq::Put { facts };
            assert_eq!(decode::<SyncReq>(&encode(&put)).unwrap(), put);
            let ids =
                SyncResp::Ids { ids: (0..size as u64 / 32).map(|i| Hash::of(&i.to_le_bytes())).collect(), dag: None };
            assert_eq!(decode::<SyncResp>(&encode(&ids)).unwrap(), ids);
        }
    }
}
