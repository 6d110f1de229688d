//! Naming part of a tree: the file or subtree at a path inside it (`blake3:<tree>/lib/a.c`), and
//! the tree narrowed to the entries some globs select (`{"tree": ..., "include": ["*.h"]}`),
//! stored as a tree of its own so a job's action key covers only the bytes it reads.
//!
//! A glob with a `/` matches an entry's whole path from the tree's top (`lib/*.c`, `test/**`);
//! one without matches its name at any depth (`*.h` selects `zlib.h` and `contrib/x/y.h`), as a
//! `.gitignore` line does. `*` and `?` stay within a component, `**` spans components.

use globset::{GlobBuilder, GlobMatcher};

use crate::tree::{Entry, EntryKind, TREE_DEPTH_MAX, Tree};
use crate::{Digest, DigestKind, Hash, Store, StoreError};

/// Names listed as the nearest when a path is not in a tree.
const NEAREST_NAMES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TreePathError {
    #[error("{hash} is a file, not a tree: a path or selection needs a directory")]
    NotATree { hash: Hash },
    #[error("{0}")]
    Missing(Box<MissingPath>),
    #[error(
        "the selection of tree {tree} (include {include:?}, exclude {exclude:?}) selects nothing: widen `include` or narrow `exclude`"
    )]
    SelectsNothing { tree: Hash, include: Vec<String>, exclude: Vec<String> },
    #[error("`{glob}` is not a glob: {why}")]
    BadGlob { glob: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A path that is not in a tree, and what is there instead.
#[derive(Debug)]
pub struct MissingPath {
    pub tree: Hash,
    pub path: String,
    /// The first component not found, and the directory it was looked for in.
    pub missing: String,
    pub dir: String,
    pub nearest: Vec<String>,
}

impl std::fmt::Display for MissingPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` is not in tree {}: `{}` is not in `{}`{}",
            self.path,
            self.tree,
            self.missing,
            self.dir,
            nearest_note(&self.nearest)
        )
    }
}

fn nearest_note(nearest: &[String]) -> String {
    if nearest.is_empty() {
        "; that directory is empty".into()
    } else {
        format!("; nearest there: {}", nearest.join(", "))
    }
}

/// A glob of a selection, compiled.
struct Pattern {
    matcher: GlobMatcher,
    /// Without `/`: matched against the entry's name at any depth.
    by_name: bool,
}

impl Pattern {
    fn new(glob: &str) -> Result<Pattern, TreePathError> {
        let matcher = GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| TreePathError::BadGlob { glob: glob.into(), why: e.kind().to_string() })?
            .compile_matcher();
        Ok(Pattern { matcher, by_name: !glob.contains('/') })
    }

    fn matches(&self, path: &str, name: &str) -> bool {
        self.matcher.is_match(if self.by_name { name } else { path })
    }
}

impl Store {
    /// What is at `path` (relative, `/`-separated) inside tree `tree`: a file's digest or a
    /// subtree's.
    pub async fn tree_path(&self, tree: &Digest, path: &str) -> Result<Digest, TreePathError> {
        let mut at = self.as_tree(tree).await?;
        let mut walked = String::new();
        let mut current = tree.clone();
        for name in path.split('/').filter(|c| !c.is_empty()) {
            let entry = at.get(name).cloned().ok_or_else(|| {
                TreePathError::Missing(Box::new(MissingPath {
                    tree: tree.hash,
                    path: path.into(),
                    missing: name.into(),
                    dir: if walked.is_empty() { "/".into() } else { walked.clone() },
                    nearest: nearest(&at, name),
                }))
            })?;
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(name);
            current = match entry.kind {
                EntryKind::File { hash, size } => Digest { hash, kind: DigestKind::File, size },
                EntryKind::Dir { hash } => {
                    Digest { hash, kind: DigestKind::Tree, size: self.tree_bytes(hash, 0).await? }
                }
                EntryKind::Symlink { .. } => {
                    return Err(TreePathError::Missing(Box::new(MissingPath {
                        tree: tree.hash,
                        path: path.into(),
                        missing: name.into(),
                        dir: walked,
                        nearest: vec!["(a symlink: name its target's path instead)".into()],
                    })));
                }
            };
            if walked.len() < path.len() {
                at = self.as_tree(&current).await?;
            }
        }
        Ok(current)
    }

    /// Tree `tree` narrowed to the entries that some of `include` match (every one when it is
    /// empty) and none of `exclude`, at their paths, with the directories that hold them;
    /// stored, and its digest (the size: its files' bytes).
    pub async fn select(&self, tree: &Digest, include: &[String], exclude: &[String]) -> Result<Digest, TreePathError> {
        let top = self.as_tree(tree).await?;
        let include: Vec<Pattern> = include.iter().map(|g| Pattern::new(g)).collect::<Result<_, _>>()?;
        let exclude: Vec<Pattern> = exclude.iter().map(|g| Pattern::new(g)).collect::<Result<_, _>>()?;
        let picked = self.select_rec(top, String::new(), &include, &exclude, 0).await?;
        match picked {
            Some((hash, size)) => Ok(Digest { hash, kind: DigestKind::Tree, size }),
            None => Err(TreePathError::SelectsNothing {
                tree: tree.hash,
                include: include_globs(&include),
                exclude: include_globs(&exclude),
            }),
        }
    }

    fn select_rec<'a>(
        &'a self,
        tree: Tree,
        prefix: String,
        include: &'a [Pattern],
        exclude: &'a [Pattern],
        depth: usize,
    ) -> crate::tree::BoxFuture<'a, Result<Option<(Hash, u64)>, TreePathError>> {
        Box::pin(async move {
            if depth > TREE_DEPTH_MAX {
                return Err(StoreError::TooDeep { path: prefix.into() }.into());
            }
            let mut kept = Vec::new();
            let mut bytes = 0;
            for e in tree.entries {
                let path = if prefix.is_empty() { e.name.clone() } else { format!("{prefix}/{}", e.name) };
                if exclude.iter().any(|p| p.matches(&path, &e.name)) {
                    continue;
                }
                match &e.kind {
                    EntryKind::Dir { hash } => {
                        // A directory an include names is taken whole (less what exclude names).
                        let whole = include.iter().any(|p| p.matches(&path, &e.name));
                        let sub = self.get_tree(*hash).await?;
                        let everything: &[Pattern] = &[];
                        let inc = if whole { everything } else { include };
                        if let Some((h, size)) = self.select_rec(sub, path, inc, exclude, depth + 1).await? {
                            bytes += size;
                            kept.push(Entry { kind: EntryKind::Dir { hash: h }, ..e });
                        }
                    }
                    EntryKind::File { size, .. } => {
                        if include.is_empty() || include.iter().any(|p| p.matches(&path, &e.name)) {
                            bytes += size;
                            kept.push(e);
                        }
                    }
                    EntryKind::Symlink { .. } => {
                        if include.is_empty() || include.iter().any(|p| p.matches(&path, &e.name)) {
                            kept.push(e);
                        }
                    }
                }
            }
            if kept.is_empty() {
                return Ok(None);
            }
            let hash = self.put_tree(&Tree { entries: kept }).await?;
            Ok(Some((hash, bytes)))
        })
    }

    /// The tree a digest names, or why it is not one.
    async fn as_tree(&self, d: &Digest) -> Result<Tree, TreePathError> {
        if d.kind != DigestKind::Tree {
            return Err(TreePathError::NotATree { hash: d.hash });
        }
        Ok(self.get_tree(d.hash).await?)
    }

    /// The bytes of a tree's files, all levels.
    fn tree_bytes(&self, hash: Hash, depth: usize) -> crate::tree::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            if depth > TREE_DEPTH_MAX {
                return Err(StoreError::TooDeep { path: hash.to_string().into() });
            }
            let mut total = 0;
            for e in self.get_tree(hash).await?.entries {
                total += match e.kind {
                    EntryKind::File { size, .. } => size,
                    EntryKind::Dir { hash } => self.tree_bytes(hash, depth + 1).await?,
                    EntryKind::Symlink { .. } => 0,
                };
            }
            Ok(total)
        })
    }
}

fn include_globs(p: &[Pattern]) -> Vec<String> {
    p.iter().map(|p| p.matcher.glob().glob().to_string()).collect()
}

/// The names of `dir` nearest to `name` (by edit distance), a few.
pub(crate) fn nearest(dir: &Tree, name: &str) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> =
        dir.entries.iter().map(|e| (shoal_dag::edit_distance(&e.name, name), e.name.as_str())).collect();
    scored.sort();
    scored.into_iter().take(NEAREST_NAMES).map(|(_, n)| n.to_string()).collect()
}
