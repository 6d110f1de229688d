//! Provenance in git: a DAG run as one commit of a repository people already keep their work
//! in, and the same commit read back to run it again (`shoal rerun`).
//!
//! A run's commit changes these paths of the repository's tree, and nothing else:
//! - `dag.json`: the DAG as written (a run file's translation into the format, for a run file),
//!   with the secrets of presigned URLs redacted;
//! - `pinned.json`: the DAG every job of which names what ran: images by image id, inputs and
//!   stdin by `blake3:` hash (a URL keeps its redacted address with a `#blake3=` pin); `shoal run
//!   pinned.json` runs it again;
//! - `Runfile`: the run file as written, when the DAG came from one (else no such file);
//! - `run.json`: each job's status, whether the cache answered it, its action key, record and
//!   outputs, in the DAG's order;
//! - `records/<job>.json`: each job's signed run record, readable, with its signer and signature
//!   (over the record's canonical CBOR, which the readable record encodes back to);
//! - `machine/<node>.json` (the node id's first 16 hex digits): the facts of each machine that ran a job (CPU, flags, cores, memory,
//!   kernel release and config hash, accelerator, shoal version).
//!
//! Files are written from the run's facts alone (no clock, no host name of the committer), so
//! one run committed twice has one tree hash. The commit's author is the user's git identity;
//! the records stay signed by the nodes that made them. The code here is synchronous: git2 is.

pub mod node;
pub mod rerun;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use shoal_dag::{Dag, Digest, Hash, InputRef, Machine, RunRecord, SignedRecord};

use crate::run::{JobReport, Status};

/// The file of a commit that says it is a shoal run.
pub const PINNED: &str = "pinned.json";
const DAG: &str = "dag.json";
const RUN: &str = "run.json";
const RUN_FILE: &str = "Runfile";
const RECORDS: &str = "records";
const MACHINES: &str = "machine";
/// The priority of the in-memory object store a commit is written to before it is packed: above
/// the repository's own backends, so every object written goes there.
const MEMPACK_PRIORITY: i32 = 1000;
/// Largest shoal file of a commit read back, bytes: the DAG files are at most 16 MiB, run.json
/// of a DAG that size about as much.
const COMMIT_FILE_BYTES_MAX: usize = 64 << 20;
/// Hex digits of a node id that name its machine file.
const MACHINE_NAME_HEX: usize = 16;
/// Dirty paths an error names before it says "and N more".
const DIRTY_NAMED_MAX: usize = 5;

/// One job of a run, as `run.json` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobFact {
    pub job: String,
    pub status: Status,
    pub cached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_key: Option<Hash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Hash>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Hash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `run.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunFile {
    /// Where the DAG came from: its file as given, or `dag blake3:<hash>` of a mesh DAG.
    pub source: String,
    /// The hash of `pinned.json`'s bytes.
    pub pinned: Hash,
    pub ok: bool,
    pub jobs: Vec<JobFact>,
}

/// What a run's commit is made of.
pub struct RunFacts {
    pub source: String,
    /// The DAG's JSON as written.
    pub dag_text: String,
    pub dag: Dag,
    pub jobs: Vec<JobFact>,
    /// Each job's signed record, by job id.
    pub records: BTreeMap<String, SignedRecord>,
    /// The run's wall time, for the commit message only.
    pub wall_ms: u64,
    /// What made the commit: `shoal run`, `shoal submit`, `shoal provenance export`.
    pub command: &'static str,
    /// The run file as written, when the DAG came from one (committed as `Runfile`).
    pub run_file: Option<String>,
}

impl RunFacts {
    /// The facts of a run that ended in this process: its reports, and their records read back
    /// from `store`.
    pub async fn local(
        store: &shoal_blobs::Store,
        source: String,
        dag_text: String,
        dag: Dag,
        reports: &[JobReport],
        wall_ms: u64,
    ) -> Result<RunFacts> {
        let mut records = BTreeMap::new();
        for r in reports {
            if let Some(h) = r.record
                && let Some(signed) = store.get_record(h).await?
            {
                records.insert(r.job.clone(), signed);
            }
        }
        let jobs = reports
            .iter()
            .map(|r| JobFact {
                job: r.job.clone(),
                status: r.status,
                cached: r.cached,
                action_key: r.action_key,
                record: r.record,
                outputs: r.outputs.iter().map(|(k, d)| (k.clone(), d.hash)).collect(),
                error: r.error.clone(),
            })
            .collect();
        Ok(RunFacts { source, dag_text, dag, jobs, records, wall_ms, command: "shoal run", run_file: None })
    }

    pub fn ok(&self) -> bool {
        self.jobs.iter().all(|j| j.status == Status::Done)
    }
}

/// A provenance repository, opened: a work tree (kept clean) or a bare one.
pub struct Repo {
    git: git2::Repository,
    path: PathBuf,
}

impl Repo {
    /// Opens the repository at `path`, creating one where `path` does not exist or is an empty
    /// directory. Refuses a directory that is not a repository's top and a work tree with
    /// changes not committed (shoal's files would overwrite them).
    pub fn open(path: &Path) -> Result<Repo> {
        let empty = |p: &Path| std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false);
        let git = if !path.exists() || empty(path) {
            std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
            git2::Repository::init(path).with_context(|| format!("creating a git repository at {}", path.display()))?
        } else {
            git2::Repository::open(path).map_err(|e| {
                anyhow!(
                    "{} is not a git repository ({}): name a repository's top directory, a new \
                     directory, or run `git init {}` first",
                    path.display(),
                    e.message(),
                    path.display()
                )
            })?
        };
        let repo = Repo { git, path: path.to_path_buf() };
        repo.check_clean()?;
        Ok(repo)
    }

    /// Opens an existing repository to read (`shoal rerun`): no clean-tree check.
    pub fn open_existing(path: &Path) -> Result<Repo> {
        let git = git2::Repository::open(path).map_err(|e| {
            anyhow!(
                "{} is not a git repository ({}): name the repository a `--provenance` run wrote",
                path.display(),
                e.message()
            )
        })?;
        Ok(Repo { git, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a work tree with changes or untracked files.
    pub fn check_clean(&self) -> Result<()> {
        if self.git.is_bare() {
            return Ok(());
        }
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(true).include_ignored(false).recurse_untracked_dirs(true);
        let statuses = self.git.statuses(Some(&mut opts)).context("reading the work tree's status")?;
        if statuses.is_empty() {
            return Ok(());
        }
        let named: Vec<String> =
            statuses.iter().take(DIRTY_NAMED_MAX).filter_map(|s| s.path().map(str::to_string)).collect();
        let more = statuses.len().saturating_sub(DIRTY_NAMED_MAX);
        bail!(
            "the work tree of {} has changes not committed ({}{}): commit or stash them first (`git -C {} \
             status`); shoal commits its own files there and would overwrite them",
            self.path.display(),
            named.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
            self.path.display()
        )
    }

    /// The committer: `GIT_AUTHOR_NAME`/`GIT_AUTHOR_EMAIL` when both are set, else git's
    /// `user.name`/`user.email`.
    fn signature(&self) -> Result<git2::Signature<'static>> {
        if let (Ok(name), Ok(email)) = (std::env::var("GIT_AUTHOR_NAME"), std::env::var("GIT_AUTHOR_EMAIL")) {
            return git2::Signature::now(&name, &email).context("GIT_AUTHOR_NAME/GIT_AUTHOR_EMAIL");
        }
        self.git.signature().map_err(|_| {
            anyhow!(
                "git has no identity to commit with in {}: set one with `git config --global user.name \"Your Name\"` \
                 and `git config --global user.email you@example.org`",
                self.path.display()
            )
        })
    }

    /// Checks, before a run starts, everything a commit at its end needs: a clean work tree and
    /// an identity.
    pub fn check_ready(&self) -> Result<()> {
        self.check_clean()?;
        self.signature().map(drop)
    }

    /// Commits `files` (shoal's paths, replacing those of the current tree) on the checked-out
    /// branch, and updates the work tree. Returns the commit id.
    pub fn commit(&self, files: &Files, message: &str) -> Result<git2::Oid> {
        self.check_clean()?;
        let sig = self.signature()?;
        let parent = match self.git.head() {
            Ok(head) => Some(head.peel_to_commit().context("reading HEAD's commit")?),
            Err(e) if e.code() == git2::ErrorCode::UnbornBranch || e.code() == git2::ErrorCode::NotFound => None,
            Err(e) => return Err(e).context("reading HEAD"),
        };
        let base = parent.as_ref().map(|c| c.tree()).transpose()?;
        // The objects are written to memory, then go in as one pack of our own writing: a 1000-job
        // run's 2000 loose objects (an open, write, link and utime each) took most of the commit's
        // time, and libgit2's own pack (`Mempack::dump`) looks for deltas between them, 0.1 s more.
        let odb = self.git.odb()?;
        let mempack = odb.add_new_mempack_backend(MEMPACK_PRIORITY)?;
        let written = (|| -> Result<(git2::Oid, Written)> {
            let written = files.write_tree(&self.git, base.as_ref())?;
            let tree = self.git.find_tree(written.tree)?;
            let parents: Vec<&git2::Commit> = parent.iter().collect();
            let oid = self.git.commit(None, &sig, &sig, message, &tree, &parents).context("committing the run")?;
            // The new blobs' bytes are at hand; the trees and the commit are read back.
            let by_id: BTreeMap<git2::Oid, &[u8]> =
                written.blobs.iter().map(|(path, id)| (*id, files.files[path].as_slice())).collect();
            let mut objects: BTreeMap<git2::Oid, (git2::ObjectType, std::borrow::Cow<[u8]>)> = BTreeMap::new();
            for id in &written.new_blobs {
                objects.insert(*id, (git2::ObjectType::Blob, std::borrow::Cow::Borrowed(by_id[id])));
            }
            for id in written.trees.iter().copied().chain([oid]) {
                let o = odb.read(id)?;
                objects.insert(id, (o.kind(), std::borrow::Cow::Owned(o.data().to_vec())));
            }
            let objects: Vec<_> = objects.into_iter().map(|(id, (kind, data))| (id, kind, data)).collect();
            write_pack(self.git.path(), &objects)?;
            Ok((oid, written))
        })();
        mempack.reset()?;
        let (oid, written) = written?;
        odb.refresh()?;
        // HEAD moves from the parent to the commit, or fails if another commit got there first.
        let subject = message.lines().next().unwrap_or_default();
        let head = self.git.find_reference("HEAD")?;
        match (head.symbolic_target(), &parent) {
            (Some(branch), Some(p)) => self
                .git
                .reference_matching(branch, oid, true, p.id(), subject)
                .context("moving the branch to the run")?,
            (Some(branch), None) => self.git.reference(branch, oid, false, subject).context("starting the branch")?,
            (None, _) => {
                self.git.set_head_detached(oid)?;
                return Ok(oid);
            }
        };
        if !self.git.is_bare() {
            self.update_work_tree(base.as_ref(), &written, files)
                .context("updating the work tree to the run's commit")?;
        }
        Ok(oid)
    }

    /// The work tree and index made the commit's, for shoal's paths only (the rest of the tree
    /// is unchanged and was clean): files written and their index entries set from what was
    /// written, the old tree's shoal files that the commit drops removed. libgit2's checkout
    /// took 0.3 s for a 1000-job run's files.
    fn update_work_tree(&self, base: Option<&git2::Tree>, written: &Written, files: &Files) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let root = self.git.workdir().ok_or_else(|| anyhow!("the repository has no work tree"))?.to_path_buf();
        let mut index = self.git.index()?;
        // The base tree's blobs at shoal's paths, read once (a lookup by path reads and hashes
        // the subtree again each time).
        let mut before: BTreeMap<String, git2::Oid> = BTreeMap::new();
        if let Some(base) = base {
            for entry in base.iter() {
                let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
                match entry.kind() {
                    Some(git2::ObjectType::Tree) if name == RECORDS || name == MACHINES => {
                        for e in entry.to_object(&self.git)?.peel_to_tree()?.iter() {
                            before.insert(format!("{name}/{}", String::from_utf8_lossy(e.name_bytes())), e.id());
                        }
                    }
                    Some(git2::ObjectType::Blob) if files.files.contains_key(&name) || name == RUN_FILE => {
                        before.insert(name, entry.id());
                    }
                    _ => {}
                }
            }
            for stale in [RECORDS, MACHINES, RUN_FILE] {
                let old: Vec<&String> = before
                    .keys()
                    .filter(|p| *p == stale || p.strip_prefix(stale).is_some_and(|r| r.starts_with('/')))
                    .collect();
                for path in old.into_iter().filter(|p| !files.files.contains_key(*p)) {
                    match std::fs::remove_file(root.join(path)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| format!("removing {path}"));
                        }
                        _ => {}
                    }
                    index.remove_path(Path::new(path))?;
                }
                // A directory left empty goes too, as git leaves none.
                let _ = std::fs::remove_dir(root.join(stale));
            }
        }
        for (path, id) in &written.blobs {
            // The work tree was clean: a file the base tree holds as this very blob is on disk
            // as it, and its index entry stands.
            if before.get(path) == Some(id) {
                continue;
            }
            let full = root.join(path);
            if let Some(dir) = full.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&full, &files.files[path]).with_context(|| format!("writing {}", full.display()))?;
            let meta = std::fs::metadata(&full)?;
            // The index keeps 32 bits of each of these, as git does.
            index.add(&git2::IndexEntry {
                ctime: git2::IndexTime::new(meta.ctime() as i32, meta.ctime_nsec() as u32),
                mtime: git2::IndexTime::new(meta.mtime() as i32, meta.mtime_nsec() as u32),
                dev: meta.dev() as u32,
                ino: meta.ino() as u32,
                mode: 0o100644,
                uid: meta.uid(),
                gid: meta.gid(),
                file_size: meta.len() as u32,
                id: *id,
                flags: path.len().min(0xfff) as u16,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            })?;
        }
        index.write()?;
        Ok(())
    }

    /// Pushes the checked-out branch to `origin`.
    pub fn push(&self) -> Result<String> {
        let head = self.git.head().context("reading HEAD")?;
        let name = head.name().ok_or_else(|| anyhow!("HEAD is not a branch"))?.to_string();
        let mut remote = self.git.find_remote("origin").map_err(|_| {
            anyhow!(
                "{} has no remote `origin` to push to: `git -C {} remote add origin URL`",
                self.path.display(),
                self.path.display()
            )
        })?;
        let url = remote.url().unwrap_or("").to_string();
        remote.push(&[format!("{name}:{name}")], None).with_context(|| format!("pushing {name} to origin ({url})"))?;
        Ok(format!("{name} → origin ({url})"))
    }

    /// The commit `rev` names (HEAD when None), with its shoal files read and checked.
    pub fn read_run(&self, rev: Option<&str>) -> Result<Committed> {
        let rev = rev.unwrap_or("HEAD");
        let commit = self.git.revparse_single(rev).and_then(|o| o.peel_to_commit()).map_err(|e| {
            anyhow!(
                "{} has no commit `{rev}` ({}): `git -C {} log` lists them",
                self.path.display(),
                e.message(),
                self.path.display()
            )
        })?;
        let tree = commit.tree()?;
        let read = |path: &str| -> Result<Option<Vec<u8>>> {
            match tree.get_path(Path::new(path)) {
                Ok(entry) => {
                    let blob = entry
                        .to_object(&self.git)?
                        .peel_to_blob()
                        .with_context(|| format!("{path} in commit {}", commit.id()))?;
                    if blob.size() > COMMIT_FILE_BYTES_MAX {
                        bail!(
                            "{path} of commit {} is {} bytes; shoal writes none past {COMMIT_FILE_BYTES_MAX}: it is not a \
                             shoal run's file",
                            commit.id(),
                            blob.size()
                        );
                    }
                    Ok(Some(blob.content().to_vec()))
                }
                Err(_) => Ok(None),
            }
        };
        let id = commit.id().to_string();
        let Some(pinned) = read(PINNED)? else {
            bail!(
                "commit {} of {} holds no shoal run (it has no {PINNED}): name a commit a `--provenance` run made \
                 (`git -C {} log -- {PINNED}` lists them)",
                &id[..12],
                self.path.display(),
                self.path.display()
            );
        };
        let pinned = String::from_utf8(pinned).map_err(|_| anyhow!("{PINNED} of commit {} is not UTF-8", &id[..12]))?;
        let run: RunFile = match read(RUN)? {
            Some(b) => serde_json::from_slice(&b).with_context(|| format!("{RUN} of commit {}", &id[..12]))?,
            None => bail!("commit {} has {PINNED} but no {RUN}: it was not written by shoal, or was edited", &id[..12]),
        };
        if Hash::of(pinned.as_bytes()) != run.pinned {
            bail!(
                "{PINNED} of commit {} hashes to {}, and {RUN} says the run pinned {}: {PINNED} was edited after the run",
                &id[..12],
                Hash::of(pinned.as_bytes()),
                run.pinned
            );
        }
        let mut records = BTreeMap::new();
        let mut signed = BTreeMap::new();
        for job in &run.jobs {
            let Some(hash) = job.record else { continue };
            let path = format!("{RECORDS}/{}.json", job.job);
            let bytes = read(&path)?.ok_or_else(|| anyhow!("commit {} lacks {path}, which {RUN} names", &id[..12]))?;
            let (rec, s) =
                RecordFile::verify(&bytes, hash).with_context(|| format!("{path} of commit {}", &id[..12]))?;
            records.insert(job.job.clone(), rec);
            signed.insert(job.job.clone(), s);
        }
        Ok(Committed { id, pinned, run, records, signed })
    }
}

/// A run read back from a commit, every record verified.
pub struct Committed {
    pub id: String,
    pub pinned: String,
    pub run: RunFile,
    pub records: BTreeMap<String, RunRecord>,
    /// The same records as signed, by job id.
    pub signed: BTreeMap<String, SignedRecord>,
}

/// `records/<job>.json`: the record readable, and what was signed.
#[derive(Serialize, Deserialize)]
struct RecordFile {
    /// BLAKE3 of the signed record's CBOR: the hash stores and `shoal show` name it by.
    hash: Hash,
    record: serde_json::Value,
    /// The signer's ed25519 public key, hex.
    signer: String,
    /// The ed25519 signature over the record's canonical CBOR, hex.
    signature: String,
    /// The record's canonical CBOR, hex: what was signed. Absent when `record` encodes back to
    /// those bytes, as it does for every record of this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signed: Option<String>,
}

/// [`RecordFile`] as written: the record serialized straight from its type (a `Value` of it
/// first took a third of a 1000-job commit's time).
#[derive(Serialize)]
struct RecordFileOut<'a> {
    hash: Hash,
    record: &'a RunRecord,
    signer: String,
    signature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    signed: Option<String>,
}

impl RecordFileOut<'_> {
    /// `record` is `signed`'s, decoded.
    fn new<'a>(signed: &SignedRecord, record: &'a RunRecord) -> RecordFileOut<'a> {
        // A record of another shoal may hold what this one's type drops: then the signed bytes
        // are kept, since the readable record would not encode back to them. (JSON keeps every
        // field of the type: the tests check that a record file needs no `signed`.)
        let encodes_back = shoal_dag::canonical_cbor(record) == signed.record;
        RecordFileOut {
            hash: Hash::of(&signed.to_cbor()),
            record,
            signer: hex::encode(signed.signer),
            signature: hex::encode(&signed.signature),
            signed: (!encodes_back).then(|| hex::encode(&signed.record)),
        }
    }
}

impl RecordFile {
    /// Checks the file's signature, hash and readable part; returns the record.
    fn verify(bytes: &[u8], expected: Hash) -> Result<(RunRecord, SignedRecord)> {
        let file: RecordFile = serde_json::from_slice(bytes).context("not a shoal record file")?;
        let signer: [u8; 32] = hex::decode(&file.signer)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("its signer is not a 32-byte hex key"))?;
        let bytes = match &file.signed {
            Some(h) => hex::decode(h).map_err(|_| anyhow!("its `signed` field is not hex"))?,
            None => {
                let record: RunRecord = serde_json::from_value(file.record.clone())
                    .map_err(|e| anyhow!("its `record` is not a run record ({e}): it was edited after the run"))?;
                shoal_dag::canonical_cbor(&record)
            }
        };
        let signed = SignedRecord {
            record: bytes,
            signer,
            signature: hex::decode(&file.signature).map_err(|_| anyhow!("its signature is not hex"))?,
        };
        let record = signed.verify().map_err(|e| match e {
            shoal_dag::RecordError::BadSignature => anyhow!(
                "the run record's signature does not verify: the record was edited after the run, or was not signed \
                 by the key it names"
            ),
            e => anyhow!("{e}"),
        })?;
        let hash = Hash::of(&signed.to_cbor());
        if hash != file.hash || hash != expected {
            bail!("the signed record hashes to {hash}, and the file says {} (run.json: {expected})", file.hash);
        }
        if serde_json::to_value(&record)? != file.record {
            bail!("its readable `record` differs from the one signed: it was edited after the run");
        }
        Ok((record, signed))
    }
}

/// The files of a run's commit, by path; serialized bytes, ready to write.
pub struct Files {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Files {
    /// Writes the blobs and trees: the base tree's entries with shoal's top-level files replaced
    /// and its `records/` and `machine/` trees made anew.
    fn write_tree(&self, git: &git2::Repository, base: Option<&git2::Tree>) -> Result<Written> {
        let mut root = git.treebuilder(base)?;
        for stale in [RECORDS, MACHINES, RUN_FILE] {
            if root.get(stale)?.is_some() {
                root.remove(stale)?;
            }
        }
        let mut blobs = Vec::with_capacity(self.files.len());
        let mut new_blobs = Vec::new();
        let odb = git.odb()?;
        let mut subtrees: BTreeMap<&str, git2::TreeBuilder> = BTreeMap::new();
        for (path, bytes) in &self.files {
            // A blob the repository has (the previous run's record of a job the cache answered)
            // is neither written nor packed again.
            let blob = match blob_id(bytes) {
                Some(id) if odb.exists(id) => id,
                _ => {
                    let id = git.blob(bytes)?;
                    new_blobs.push(id);
                    id
                }
            };
            blobs.push((path.clone(), blob));
            match path.split_once('/') {
                Some((dir, name)) => {
                    let builder = match subtrees.entry(dir) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => v.insert(git.treebuilder(None)?),
                    };
                    builder.insert(name, blob, 0o100644)?;
                }
                None => {
                    root.insert(path, blob, 0o100644)?;
                }
            }
        }
        let mut trees = Vec::new();
        for (dir, builder) in subtrees {
            let oid = builder.write()?;
            trees.push(oid);
            root.insert(dir, oid, 0o040000)?;
        }
        let tree = root.write()?;
        trees.push(tree);
        Ok(Written { tree, trees, blobs, new_blobs })
    }
}

/// The id git gives `bytes` as a blob (SHA-1 of `blob <len>\0` and the bytes), computed with
/// plain SHA-1: libgit2's collision-detecting one was a tenth of a big commit's time. None
/// where the bytes could not be one (never, for a commit's files).
fn blob_id(bytes: &[u8]) -> Option<git2::Oid> {
    let mut h = sha1_smol::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    git2::Oid::from_bytes(&h.digest().bytes()).ok()
}

/// What [`Files::write_tree`] wrote: the root tree, every tree it made, each file's blob, and
/// the blobs the repository did not have before.
struct Written {
    tree: git2::Oid,
    trees: Vec<git2::Oid>,
    blobs: Vec<(String, git2::Oid)>,
    new_blobs: Vec<git2::Oid>,
}

/// Writes `objects` (sorted by id, as the index lists them) as a pack of their own in
/// `objects/pack/` of the repository at `git_dir`, with its index: version 2 of both, as `git
/// index-pack` writes them, no object deltified, zlib at its fastest. Writing the index here
/// saves libgit2's indexer, which inflates and hashes every object again (40 ms of a 1000-job
/// commit). The pack goes first and the index last, each whole under its final name by a
/// rename: a reader that finds the index finds its pack.
fn write_pack(git_dir: &Path, objects: &[(git2::Oid, git2::ObjectType, std::borrow::Cow<[u8]>)]) -> Result<()> {
    use std::io::Write;
    let total: usize = objects.iter().map(|(_, _, d)| d.len()).sum();
    let mut pack = Vec::with_capacity(total / 2 + 64);
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&u32::try_from(objects.len())?.to_be_bytes());
    // Each object deflated on its own, so on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(RECORD_THREADS_MAX);
    let chunk = objects.len().div_ceil(threads).max(1);
    let deflated: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = objects
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> std::io::Result<Vec<Vec<u8>>> {
                    part.iter()
                        .map(|(_, _, data)| {
                            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                            z.write_all(data)?;
                            z.finish()
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("a deflate thread panicked"))))
            .collect::<std::io::Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    // (offset, CRC-32 of the entry) of each object, in `objects`' order.
    let mut placed = Vec::with_capacity(objects.len());
    for ((_, kind, data), body) in objects.iter().zip(&deflated) {
        let code: u8 = match kind {
            git2::ObjectType::Commit => 1,
            git2::ObjectType::Tree => 2,
            git2::ObjectType::Blob => 3,
            git2::ObjectType::Tag => 4,
            other => bail!("a {other} object cannot go in a pack"),
        };
        let offset = pack.len();
        // The header: type and size, 4 bits of size then 7 per byte, low bits first.
        let mut size = data.len();
        let mut byte = (code << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        pack.extend_from_slice(body);
        let mut crc = flate2::Crc::new();
        crc.update(&pack[offset..]);
        placed.push((u32::try_from(offset).map_err(|_| anyhow!("a commit's pack past 2 GiB"))?, crc.sum()));
    }
    let pack_sum = sha1_smol::Sha1::from(&pack).digest().bytes();
    pack.extend_from_slice(&pack_sum);
    // The index: fan-out by first byte, ids, CRCs, offsets, the pack's checksum, its own.
    let mut idx = Vec::with_capacity(8 + 256 * 4 + objects.len() * 28 + 40);
    idx.extend_from_slice(&[0xff, b't', b'O', b'c']);
    idx.extend_from_slice(&2u32.to_be_bytes());
    for first in 0..=255u8 {
        let n = objects.iter().filter(|(id, _, _)| id.as_bytes()[0] <= first).count();
        idx.extend_from_slice(&u32::try_from(n)?.to_be_bytes());
    }
    for (id, _, _) in objects {
        idx.extend_from_slice(id.as_bytes());
    }
    for (_, crc) in &placed {
        idx.extend_from_slice(&crc.to_be_bytes());
    }
    for (offset, _) in &placed {
        idx.extend_from_slice(&offset.to_be_bytes());
    }
    idx.extend_from_slice(&pack_sum);
    let idx_sum = sha1_smol::Sha1::from(&idx).digest().bytes();
    idx.extend_from_slice(&idx_sum);
    let dir = git_dir.join("objects/pack");
    std::fs::create_dir_all(&dir)?;
    let name = format!("pack-{}", hex::encode(pack_sum));
    for (ext, bytes) in [("pack", &pack), ("idx", &idx)] {
        let tmp = dir.join(format!("tmp_{name}.{ext}"));
        if let Err(e) = std::fs::write(&tmp, bytes) {
            // A full disk leaves no half-written pack behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", tmp.display()));
        }
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}")))?;
    }
    Ok(())
}

/// One record's file: (job id, the record, the file's bytes).
type RecordWritten = (String, RunRecord, Vec<u8>);

/// Threads that write a commit's record files, at most.
const RECORD_THREADS_MAX: usize = 8;

/// Pretty JSON with every array on one line (`"cpu_flags": ["avx", "avx2", ...]`: a record's
/// arrays hold strings only), and a final newline. A record printed fully pretty was a third
/// longer, its CPU flags a line each.
fn inline_arrays<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    use serde_json::ser::{Formatter, PrettyFormatter};
    use std::io::{self, Write};
    struct Inline<'a>(PrettyFormatter<'a>);
    impl Formatter for Inline<'_> {
        fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b"[")
        }
        fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b"]")
        }
        fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
            Ok(())
        }
        fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_object(w)
        }
        fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_object(w)
        }
        fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
            self.0.begin_object_key(w, first)
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_object_value(w)
        }
        fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_object_value(w)
        }
    }
    let mut out = Vec::with_capacity(4096);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Inline(PrettyFormatter::new()));
    v.serialize(&mut ser)?;
    out.push(b'\n');
    Ok(out)
}

/// Pretty JSON with a final newline.
fn pretty<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(v)?;
    out.push(b'\n');
    Ok(out)
}

/// `text` with every presigned URL's secrets redacted (the DAG's URL inputs and upload targets,
/// as the JSON text writes them).
fn redact_text(text: &str, dag: &Dag) -> String {
    let mut out = text.to_string();
    let mut urls: Vec<String> = Vec::new();
    for job in &dag.jobs {
        for input in job.inputs.values().chain(job.stdin.iter()) {
            if let InputRef::Url { url, .. } = input.root() {
                urls.push(url.clone());
            }
        }
        for target in job.uploads.values() {
            urls.push(target.as_written());
        }
    }
    for url in urls.into_iter().filter(|u| shoal_dag::location::has_secret(u)) {
        let redacted = shoal_dag::location::redact(&url);
        out = out.replace(&url, &redacted);
        // As JSON escapes it (`\/`, `\u0026`, ...), when written so.
        if let (Ok(esc), Ok(red)) = (serde_json::to_string(&url), serde_json::to_string(&redacted)) {
            out = out.replace(&esc[1..esc.len() - 1], &red[1..red.len() - 1]);
        }
    }
    out
}

/// Each job's references pinned to what its record says ran, in the DAG's job order.
fn pins(dag: &Dag, records: &BTreeMap<String, RunRecord>) -> Vec<shoal_dag::pin::JobPins> {
    dag.jobs
        .iter()
        .map(|job| {
            let mut p = shoal_dag::pin::JobPins {
                id: job.id.clone(),
                image: None,
                inputs: Vec::new(),
                stdin: None,
                uploads: Vec::new(),
            };
            for (output, target) in job.uploads.iter() {
                p.uploads.push((output.clone(), serde_json::Value::String(target.redacted())));
            }
            let Some(rec) = records.get(&job.id) else { return p };
            if !matches!(job.image, shoal_dag::ImageRef::Job { .. }) {
                p.image = Some(rec.job.image.to_string().into());
            }
            let pin = |r: &InputRef, d: &Digest| -> Option<serde_json::Value> {
                match r {
                    InputRef::Job { .. } => None,
                    InputRef::Url { url, .. } => {
                        Some(InputRef::Url { url: url.clone(), pin: Some(shoal_dag::UrlPin::Blake3(d.hash)) }.to_json())
                    }
                    InputRef::S3 { object, .. } => Some(
                        InputRef::S3 { object: object.clone(), pin: Some(shoal_dag::UrlPin::Blake3(d.hash)) }.to_json(),
                    ),
                    // A selection or sub-path names exactly the digest it resolved to.
                    r if matches!(r.root(), InputRef::Job { .. }) => None,
                    _ => Some(InputRef::Blake3(d.hash).to_json()),
                }
            };
            for (name, r) in job.inputs.iter() {
                if let Some(d) = rec.job.inputs.get(name)
                    && let Some(v) = pin(r, d)
                {
                    p.inputs.push((name.clone(), v));
                }
            }
            if let (Some(r), Some(d)) = (&job.stdin, &rec.job.stdin) {
                p.stdin = pin(r, d);
            }
            p
        })
        .collect()
}

/// The files of a run's commit, and its message.
pub fn files_of(facts: &RunFacts) -> Result<(Files, String)> {
    // Records are decoded and written on every core: they are most of a big run's commit.
    let signed: Vec<(&String, &SignedRecord)> = facts.records.iter().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(RECORD_THREADS_MAX);
    let chunk = signed.len().div_ceil(threads).max(1);
    let done: Vec<Result<Vec<RecordWritten>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = signed
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<Vec<RecordWritten>> {
                    part.iter()
                        .map(|(job, signed)| {
                            let rec = signed.record_trusted()?;
                            let text = inline_arrays(&RecordFileOut::new(signed, &rec))?;
                            Ok(((*job).clone(), rec, text))
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a record's writer panicked")))).collect()
    });
    let mut records = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut machines: BTreeMap<String, (u64, Machine)> = BTreeMap::new();
    for (job, rec, text) in done.into_iter().collect::<Result<Vec<_>>>()?.into_iter().flatten() {
        files.insert(format!("{RECORDS}/{job}.json"), text);
        // The machine as its latest record here saw it.
        let at = rec.timing.finished_unix_ms;
        match machines.get(&rec.machine.node_id) {
            Some((t, m)) if (*t, m.kernel.as_str()) >= (at, rec.machine.kernel.as_str()) => {}
            _ => {
                machines.insert(rec.machine.node_id.clone(), (at, rec.machine.clone()));
            }
        }
        records.insert(job.clone(), rec);
    }
    for (node, (_, machine)) in &machines {
        let mut m = machine.clone();
        // Per job, not per machine.
        m.emulation = None;
        m.gpus.clear();
        // The node id's first 16 hex digits: unique among a mesh's nodes, and short enough for
        // `git log --stat` to show whole.
        files.insert(format!("{MACHINES}/{}.json", &node[..node.len().min(MACHINE_NAME_HEX)]), pretty(&m)?);
    }
    let dag_text = redact_text(&facts.dag_text, &facts.dag);
    let pinned =
        shoal_dag::pin::rewrite(&dag_text, &pins(&facts.dag, &records)).context("pinning the DAG's references")?;
    let run = RunFile {
        source: facts.source.clone(),
        pinned: Hash::of(pinned.as_bytes()),
        ok: facts.ok(),
        jobs: facts.jobs.clone(),
    };
    files.insert(DAG.into(), dag_text.into_bytes());
    if let Some(text) = &facts.run_file {
        files.insert(RUN_FILE.into(), text.clone().into_bytes());
    }
    files.insert(PINNED.into(), pinned.into_bytes());
    files.insert(RUN.into(), pretty(&run)?);
    Ok((Files { files }, message(facts, &run)))
}

/// The commit message: a subject that summarises the run, then a line per job.
fn message(facts: &RunFacts, run: &RunFile) -> String {
    use std::fmt::Write;
    let n = run.jobs.len();
    let cached = run.jobs.iter().filter(|j| j.cached).count();
    let failed = run.jobs.iter().filter(|j| j.status == Status::Failed).count();
    let skipped = run.jobs.iter().filter(|j| j.status == Status::Skipped).count();
    let wall = crate::output::millis(facts.wall_ms);
    let mut m = if run.ok {
        format!("{} {}: {n} jobs, {cached} cached, 0 failed, wall {wall}", facts.command, facts.source)
    } else {
        format!(
            "{} {}: FAILED, {failed} of {n} jobs failed, {skipped} skipped, {cached} cached, wall {wall}",
            facts.command, facts.source
        )
    };
    let _ = write!(m, "\n\npinned DAG {} (pinned.json); `shoal rerun` runs it again.\n", run.pinned);
    // At most this many job lines: the rest is in run.json.
    const JOB_LINES_MAX: usize = 50;
    for j in run.jobs.iter().take(JOB_LINES_MAX) {
        let how = match (j.status, j.cached) {
            (Status::Done, true) => "cached".to_string(),
            (s, _) => s.to_string(),
        };
        let _ = write!(m, "\n{:<20} {:<8}", j.job, how);
        if let Some(r) = j.record {
            let _ = write!(m, " record {}", r.short());
        }
        if let Some(e) = &j.error {
            let first = e.lines().next().unwrap_or_default();
            let _ = write!(m, " ({})", first.chars().take(120).collect::<String>());
        }
    }
    if n > JOB_LINES_MAX {
        let _ = write!(m, "\n... and {} more jobs (run.json)", n - JOB_LINES_MAX);
    }
    m.push('\n');
    m
}

/// Commits `facts` to `repo` (pushing to `origin` when `push`), and says so on stderr.
pub fn commit_run(repo: &Repo, facts: &RunFacts, push: bool) -> Result<git2::Oid> {
    let (files, message) = files_of(facts)?;
    let oid = repo.commit(&files, &message)?;
    let short = &oid.to_string()[..12];
    eprintln!(
        "provenance: commit {short} in {}{}",
        repo.path().display(),
        if facts.ok() { String::new() } else { " (the run failed; its records are in the commit)".into() }
    );
    if push {
        let pushed = repo.push()?;
        eprintln!("provenance: pushed {pushed}");
    }
    Ok(oid)
}

/// `REPO[@COMMIT]`: the repository and the revision, if one is named. A path that exists as
/// written is a repository even if it holds an `@`.
pub fn split_repo_rev(arg: &str) -> (PathBuf, Option<String>) {
    if Path::new(arg).exists() {
        return (PathBuf::from(arg), None);
    }
    match arg.rsplit_once('@') {
        Some((repo, rev)) if !rev.is_empty() && !rev.contains('/') => (PathBuf::from(repo), Some(rev.to_string())),
        _ => (PathBuf::from(arg), None),
    }
}

/// A DAG file in JSON, or a run file, parsed ([`shoal_dag::translate_any_bytes`]).
pub struct ParsedDag {
    pub dag: Dag,
    /// The DAG file's JSON text: the file's own, or a run file's translation, pretty-printed.
    pub json_text: String,
    /// A run file as written (committed as `Runfile`); `None` for a DAG file.
    pub run_file: Option<String>,
    pub warnings: Vec<shoal_dag::Diagnostic>,
}

/// Parses `bytes`, a DAG file or a run file, reporting every problem at its `file:line:col`.
pub fn parse_dag_or_run_file(file_name: &str, bytes: &[u8]) -> Result<ParsedDag, shoal_dag::Diagnostics> {
    let t = shoal_dag::translate_any_bytes(file_name, bytes)?;
    let (json_text, run_file) = match t.run_file {
        // It parsed, so it is UTF-8.
        None => (String::from_utf8_lossy(bytes).into_owned(), None),
        Some((text, json)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&json)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .map(|t| t + "\n")
                .unwrap_or(json);
            (pretty, Some(text))
        }
    };
    Ok(ParsedDag { dag: t.dag, json_text, run_file, warnings: t.warnings })
}
