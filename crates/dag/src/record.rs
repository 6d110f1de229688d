//! Resolved jobs, action keys and signed run records.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cbor::{canonical_cbor, from_cbor};
use crate::hash::Hash;
use crate::spec::{Arch, Job, OutputSpec, Requirements};

/// Whether a hash names plain bytes or a tree (a directory encoded as canonical CBOR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestKind {
    File,
    Tree,
}

/// A stored thing: its hash, whether it is a file or a tree, and its size in bytes (for a tree,
/// the total of its files).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest {
    pub hash: Hash,
    pub kind: DigestKind,
    pub size: u64,
}

/// A job with every reference resolved to a hash: exactly what determines its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedJob {
    /// BLAKE3 of the image blob (config + rootfs tree).
    pub image: Hash,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub stdin: Option<Digest>,
    pub inputs: BTreeMap<String, Digest>,
    pub outputs: BTreeMap<String, OutputSpec>,
    pub arch: Option<Arch>,
    /// Sorted and deduplicated by the resolver.
    pub cpu_flags: Vec<String>,
    pub network: bool,
}

/// Hashed before the CBOR of a resolved job, so an action key never equals the hash of any other
/// kind of stored thing. Changing the hashed layout means changing this prefix.
const ACTION_DOMAIN: &[u8] = b"shoal-action-v1\0";

impl ResolvedJob {
    /// A job with its references resolved: `image` is the image id, `inputs` and `stdin` the digests
    /// its references resolved to. Keeps only what changes results (DESIGN: action key): cores,
    /// memory, scratch, timeout, isolation and labels do not enter it.
    pub fn from_job(job: &Job, image: Hash, inputs: BTreeMap<String, Digest>, stdin: Option<Digest>) -> ResolvedJob {
        let mut cpu_flags = job.requirements.cpu_flags.clone();
        cpu_flags.sort();
        cpu_flags.dedup();
        ResolvedJob {
            image,
            command: job.command.clone(),
            env: job.env.clone().into(),
            workdir: job.workdir.clone(),
            user: job.user.clone(),
            stdin,
            inputs,
            outputs: job.outputs.clone().into(),
            arch: job.requirements.arch,
            cpu_flags,
            network: job.requirements.network,
        }
    }

    /// The action key: BLAKE3 over a domain prefix and the job's canonical CBOR. Input digests enter
    /// with their kind and size, both fixed by the hash, so they never split one computation in two.
    pub fn action_key(&self) -> Hash {
        #[derive(Serialize)]
        struct Keyed<'a> {
            job: &'a ResolvedJob,
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(ACTION_DOMAIN);
        hasher.update(&canonical_cbor(&Keyed { job: self }));
        Hash(*hasher.finalize().as_bytes())
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Timeout,
    Oom,
    OutputTooLarge {
        output: String,
        limit_bytes: u64,
    },
    /// The machinery could not run or finish the job; the text says why.
    Error(String),
}

impl Exit {
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub queued_unix_ms: u64,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub wall_ms: u64,
    pub user_ms: u64,
    pub sys_ms: u64,
    pub peak_memory_bytes: u64,
}

/// The machine a run happened on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub node_id: String,
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpu_flags: Vec<String>,
    pub arch: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub backend: String,
    pub accelerator: Option<String>,
    pub qemu: Option<String>,
    pub guest_kernel: Option<String>,
    /// How a job of another architecture ran here (qemu-user through binfmt_misc); absent when
    /// it ran natively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulation: Option<String>,
    /// The GPUs the job was given: model, vendor and driver version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    /// BLAKE3 of the host kernel's build configuration (`/proc/config.gz` or
    /// `/boot/config-<release>`), when the host has one: two kernels of one release built
    /// differently tell apart here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_config: Option<Hash>,
    /// The shoal that ran the job (`shoal --version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shoal_version: Option<String>,
}

/// What a run produced (the seeds' "output description").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub version: u32,
    pub job_id: String,
    pub action_key: Hash,
    pub job: ResolvedJob,
    pub requirements: Requirements,
    pub outputs: BTreeMap<String, Digest>,
    pub stdout: Digest,
    pub stderr: Digest,
    pub exit: Exit,
    pub timing: Timing,
    pub machine: Machine,
    /// Node ids holding the outputs.
    pub holders: Vec<String>,
}

/// A run record as stored: its canonical CBOR, who signed it and the ed25519 signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    #[serde(with = "serde_bytes_vec")]
    pub record: Vec<u8>,
    pub signer: [u8; 32],
    #[serde(with = "serde_bytes_vec")]
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a signed record.
    #[error("not a signed run record: {0}")]
    Decode(String),
    /// The signer's key is not a valid ed25519 key.
    #[error("the signer key of the run record is invalid")]
    BadSigner,
    /// The signature does not match the record and signer: it was altered or forged.
    #[error("the run record's signature does not verify: it was altered or not signed by its claimed signer")]
    BadSignature,
}

impl RunRecord {
    pub fn to_cbor(&self) -> Vec<u8> {
        canonical_cbor(self)
    }

    /// What two runs of one action must share to agree (redundant runs, `shoal node
    /// --cache-agree`): the BLAKE3 of the canonical CBOR of its outputs' (name, hash) and its
    /// exit. Timing, machine and holders differ from run to run and stay out.
    pub fn result_digest(&self) -> Hash {
        let outputs: Vec<(&String, Hash)> = self.outputs.iter().map(|(n, d)| (n, d.hash)).collect();
        Hash::of(&canonical_cbor(&(outputs, &self.exit)))
    }

    pub fn sign(&self, key: &SigningKey) -> SignedRecord {
        let record = self.to_cbor();
        let signature = key.sign(&record).to_bytes().to_vec();
        SignedRecord { record, signer: key.verifying_key().to_bytes(), signature }
    }
}

impl SignedRecord {
    /// Checks the signature, then decodes the record.
    pub fn verify(&self) -> Result<RunRecord, RecordError> {
        let key = VerifyingKey::from_bytes(&self.signer).map_err(|_| RecordError::BadSigner)?;
        let sig = Signature::from_slice(&self.signature).map_err(|_| RecordError::BadSignature)?;
        key.verify(&self.record, &sig).map_err(|_| RecordError::BadSignature)?;
        self.record_trusted()
    }

    /// Decodes the record without checking the signature: for a record whose bytes the caller
    /// already trusts (read back by hash from a store that verified it when it entered).
    pub fn record_trusted(&self) -> Result<RunRecord, RecordError> {
        from_cbor(&self.record).map_err(RecordError::Decode)
    }

    pub fn to_cbor(&self) -> Vec<u8> {
        canonical_cbor(self)
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<SignedRecord, RecordError> {
        from_cbor(bytes).map_err(RecordError::Decode)
    }
}

/// Byte vectors as CBOR byte strings (not arrays of integers).
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&hex::encode(v)) } else { s.serialize_bytes(v) }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                hex::decode(v).map_err(E::custom)
            }
        }
        // `deserialize_byte_buf`, not `deserialize_bytes`: ciborium hands out borrowed bytes only up
        // to its 4 KiB scratch buffer and refuses longer ones ("invalid type: bytes, expected
        // bytes"), which made every record over about 4 KiB unreadable.
        if d.is_human_readable() { d.deserialize_str(V) } else { d.deserialize_byte_buf(V) }
    }
}
