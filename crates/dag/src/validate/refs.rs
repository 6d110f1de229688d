//! References (`blake3:`, `sha256:`, `jobs:`, `file:`, images) and output specs.

use super::*;
use crate::hash::Hash;

impl Cx {
    pub(super) fn job_ref(&mut self, rest: &str, pos: Pos) -> Option<(String, String)> {
        match rest.split_once('/') {
            Some((job, output)) if valid_name(job) && valid_name(output) => Some((job.to_string(), output.to_string())),
            _ => {
                self.report(
                    pos,
                    format!("`jobs:{rest}` is not a job reference"),
                    "write `jobs:<job id>/<output name>`",
                );
                None
            }
        }
    }

    pub(super) fn hash_ref(&mut self, scheme: &str, hex: &str, pos: Pos) -> bool {
        if is_hex64(hex) {
            return true;
        }
        self.report(
            pos,
            format!("`{scheme}:{hex}` is not a valid {scheme} hash"),
            format!("a {scheme} hash is `{scheme}:` followed by 64 lowercase hex digits"),
        );
        false
    }

    /// An input as the DAG gives it: a reference's string, or a selection's object (`{"tree":
    /// ..., "include": [...], "exclude": [...]}`; not for stdin, which is a file).
    pub(super) fn input_value(&mut self, node: &Node, what: &str, stdin: bool) -> Option<InputRef> {
        if let Value::String(s) = &node.value {
            return self.input_ref(s, node.pos);
        }
        if !matches!(node.value, Value::Object(_)) {
            self.report(
                node.pos,
                format!("{what} must be a reference string or a selection object, not {}", node.value.type_name()),
                SELECT_HELP,
            );
            return None;
        }
        if stdin {
            self.report(
                node.pos,
                format!("{what} is a file, and a selection is a tree"),
                "give stdin a file: a reference, or a path inside a tree (`blake3:<tree>/path/to/file`)",
            );
            return None;
        }
        let fields = self.object(node, what, &["tree", "include", "exclude"])?;
        let Some(tree) = fields.get("tree") else {
            self.report(node.pos, format!("{what} has no `tree`"), SELECT_HELP);
            return None;
        };
        let base = self.string(&tree.value, "`tree`").and_then(|s| self.input_ref(s, tree.value.pos));
        let mut globs = |key: &str| -> Option<Vec<String>> {
            let Some(m) = fields.get(key) else { return Some(Vec::new()) };
            let Value::Array(items) = &m.value.value else {
                self.report(m.value.pos, format!("`{key}` must be an array of globs"), SELECT_HELP);
                return None;
            };
            let mut out = Vec::new();
            for item in items {
                let g = self.string(item, &format!("a glob of `{key}`"))?;
                if let Err(why) = selection_glob(g) {
                    self.report(item.pos, format!("`{g}` is not a glob of a selection: {why}"), SELECT_HELP);
                    return None;
                }
                out.push(g.to_string());
            }
            Some(out)
        };
        let (include, exclude) = (globs("include"), globs("exclude"));
        Some(InputRef::Select { base: Box::new(base?), include: include?, exclude: exclude? })
    }

    /// `rest` of a `blake3:`/`sha256:` reference: the hash, and the path inside its tree after
    /// the first `/`, if any.
    fn hash_with_path(&mut self, scheme: &str, rest: &str, pos: Pos) -> Option<(String, Option<String>)> {
        let (hex, path) = match rest.split_once('/') {
            Some((hex, path)) => (hex, Some(path)),
            None => (rest, None),
        };
        if !self.hash_ref(scheme, hex, pos) {
            return None;
        }
        let path = match path {
            Some(p) => Some(self.sub_path(&format!("{scheme}:{rest}"), p, pos)?),
            None => None,
        };
        Some((hex.to_string(), path))
    }

    /// A path inside a tree, as a reference names it after its tree: relative and normalised.
    fn sub_path(&mut self, reference: &str, path: &str, pos: Pos) -> Option<String> {
        let why = if path.is_empty() {
            Some("it is empty (a trailing `/`?)")
        } else if path.starts_with('/') {
            Some("it is absolute")
        } else if path.len() > SUB_PATH_BYTES_MAX {
            Some("it is longer than 4096 bytes")
        } else if path.split('/').any(|c| c == "..") {
            Some("it climbs out with `..`")
        } else if path.split('/').any(|c| c.is_empty() || c == "." || c.contains('\0')) {
            Some("it has an empty or `.` component, or a NUL")
        } else {
            None
        };
        match why {
            Some(why) => {
                self.report(
                    pos,
                    format!("the path inside the tree in `{reference}` is not one: {why}"),
                    "write the path relative to the tree's top, e.g. `blake3:<tree>/lib/adler32.c` or `jobs:<id>/<output>/include`",
                );
                None
            }
            None => Some(path.to_string()),
        }
    }

    pub(super) fn input_ref(&mut self, s: &str, pos: Pos) -> Option<InputRef> {
        let (scheme, rest) = s.split_once(':').unwrap_or(("", s));
        let at = |base: InputRef, path: Option<String>| match path {
            Some(path) => InputRef::Path { base: Box::new(base), path },
            None => base,
        };
        match scheme {
            "blake3" => self
                .hash_with_path("blake3", rest, pos)
                .map(|(hex, path)| at(InputRef::Blake3(Hash::from_hex(&hex).expect("checked")), path)),
            "sha256" => self.hash_with_path("sha256", rest, pos).map(|(hex, path)| at(InputRef::Sha256(hex), path)),
            "jobs" => {
                let mut parts = rest.splitn(3, '/');
                let (job, output) = (parts.next().unwrap_or(""), parts.next());
                let named = match output {
                    Some(output) => format!("{job}/{output}"),
                    None => job.to_string(),
                };
                let (job, output) = self.job_ref(&named, pos)?;
                let path = match parts.next() {
                    Some(p) => Some(self.sub_path(s, p, pos)?),
                    None => None,
                };
                Some(at(InputRef::Job { job, output }, path))
            }
            "https" | "http" => match crate::location::parse_url(s) {
                Ok((url, pin)) => Some(InputRef::Url { url, pin }),
                Err(why) => {
                    self.report(
                        pos,
                        format!("`{}` is not a URL input: {why}", crate::location::redact(s)),
                        "write `https://host/path`, optionally pinned: `https://host/path#sha256=<64 hex>` or `#blake3=<64 hex>`",
                    );
                    None
                }
            },
            "s3" => match crate::location::parse_s3(s) {
                Ok((object, pin)) => Some(InputRef::S3 { object, pin }),
                Err(why) => {
                    self.report(
                        pos,
                        format!("`{s}` is not an S3 object: {why}"),
                        "write `s3://<bucket>/<key>`, optionally pinned with `#sha256=<64 hex>` or `#blake3=<64 hex>`",
                    );
                    None
                }
            },
            "file" => {
                if rest.is_empty() {
                    self.report(
                        pos,
                        "`file:` has no path",
                        "write `file:<path>`, relative to the DAG file or absolute",
                    );
                    None
                } else {
                    Some(InputRef::File(rest.to_string()))
                }
            }
            _ => {
                self.report(pos, format!("`{s}` is not a reference"), REF_HELP);
                None
            }
        }
    }

    pub(super) fn image_ref(&mut self, s: &str, pos: Pos) -> Option<ImageRef> {
        if let Some(rest) = s.strip_prefix("jobs:") {
            return self.job_ref(rest, pos).map(|(job, output)| ImageRef::Job { job, output });
        }
        if let Some(hex) = s.strip_prefix("sha256:") {
            return self.hash_ref("sha256", hex, pos).then(|| ImageRef::Sha256(hex.to_string()));
        }
        if let Some(hex) = s.strip_prefix("blake3:") {
            return self.hash_ref("blake3", hex, pos).then(|| ImageRef::Blake3(Hash::from_hex(hex).expect("checked")));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/' | ':'))
            && !name.starts_with(['/', ':', '.', '-'])
            && !name.ends_with(['/', ':']);
        let digest_ok = digest.is_none_or(|d| d.strip_prefix("sha256:").is_some_and(is_hex64));
        if !name_ok || !digest_ok {
            self.report(pos, format!("`{s}` is not an image reference"), "write a tag like `busybox:latest` or `registry:5000/name:tag`, `sha256:<hex>`, `blake3:<hex>` or `jobs:<id>/<output>`");
            return None;
        }
        Some(ImageRef::Tag(s.to_string()))
    }

    pub(super) fn output_path(&mut self, kind: &str, path: &str, pos: Pos) -> bool {
        let help = "write an absolute path under `/output` or `/scratch`, e.g. `file:/output/result.txt`";
        if !path.starts_with('/') {
            self.report(pos, format!("output path `{path}` is not absolute"), help);
            return false;
        }
        if path.ends_with('/') || path.contains("//") || path.split('/').any(|c| c == ".." || c == ".") {
            self.report(
                pos,
                format!("output path `{path}` is not normalised"),
                "remove `.`/`..` components, doubled and trailing slashes",
            );
            return false;
        }
        let inside = ["/output/", "/scratch/"].iter().any(|root| path.starts_with(root));
        if !inside {
            let whole = kind == "dir" && (path == "/output" || path == "/scratch");
            if !whole {
                self.report(pos, format!("output path `{path}` is outside /output and /scratch"), help);
                return false;
            }
        }
        true
    }

    pub(super) fn output_spec(&mut self, s: &str, pos: Pos) -> Option<OutputSpec> {
        match s {
            "stdout" | "fd:1" => return Some(OutputSpec::Stdout),
            "stderr" | "fd:2" => return Some(OutputSpec::Stderr),
            "fd:0" => {
                self.warn(
                    pos,
                    "`fd:0` is the job's stdin, which it reads: this output is read as `stdout`",
                    "write `stdout` (or `fd:1`); for an extra stream of results write `fd:3` and up",
                );
                return Some(OutputSpec::Stdout);
            }
            _ => {}
        }
        if let Some(digits) = s.strip_prefix("fd:") {
            return match digits.parse::<u32>() {
                Ok(n) if (3..=crate::FD_OUTPUT_MAX).contains(&n) && !digits.starts_with('0') => {
                    Some(OutputSpec::Fd(n))
                }
                _ => {
                    self.report(
                        pos,
                        format!("`{s}` is not an fd output"),
                        format!("write `fd:N` with N from 3 to {} (fd:1 is stdout, fd:2 stderr)", crate::FD_OUTPUT_MAX),
                    );
                    None
                }
            };
        }
        let (kind, path) = s.split_once(':').unwrap_or(("", s));
        match kind {
            "file" => self.output_path(kind, path, pos).then(|| OutputSpec::File(path.to_string())),
            "dir" => self.output_path(kind, path, pos).then(|| OutputSpec::Dir(path.to_string())),
            "glob" => {
                if !self.output_path(kind, path, pos) {
                    return None;
                }
                if let Err(why) = check_glob(path) {
                    self.report(
                        pos,
                        format!("`{path}` is not a valid glob: {why}"),
                        "use `*`, `?`, `**` and `[...]` classes, e.g. `glob:/output/*.png`",
                    );
                    return None;
                }
                Some(OutputSpec::Glob(path.to_string()))
            }
            _ => {
                self.report(
                    pos,
                    format!("`{s}` is not an output"),
                    "an output is `stdout`, `stderr`, `fd:<3..63>`, `file:<path>`, `dir:<path>` or `glob:<pattern>`",
                );
                None
            }
        }
    }
}

/// Most bytes of a path inside a tree that a reference names.
const SUB_PATH_BYTES_MAX: usize = 4096;

const SELECT_HELP: &str = "a selection is `{\"tree\": \"<reference to a tree>\", \"include\": [\"*.h\", \"lib/*.c\"], \"exclude\": [\"test/**\"]}`, globs relative to the tree's top";

/// A glob of a selection: relative to the tree's top, no `..`, and valid as a glob.
fn selection_glob(g: &str) -> Result<(), String> {
    if g.is_empty() {
        return Err("it is empty".into());
    }
    if g.starts_with('/') {
        return Err("it is absolute; globs are relative to the tree's top".into());
    }
    if g.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
        return Err("it has a `..`, `.` or empty component".into());
    }
    check_glob(&format!("/{g}"))
}

/// Checks a glob pattern's syntax: balanced, non-empty `[...]` classes, `**` only as a whole component.
pub(super) fn check_glob(pattern: &str) -> Result<(), String> {
    for component in pattern.split('/') {
        if component.contains("**") && component != "**" {
            return Err("`**` must be a whole path component (`/**/`)".into());
        }
        let mut chars = component.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '[' => {
                    if chars.peek() == Some(&'!') || chars.peek() == Some(&'^') {
                        chars.next();
                    }
                    let mut n = 0;
                    loop {
                        match chars.next() {
                            None => return Err("`[` without a closing `]`".into()),
                            Some(']') if n > 0 => break,
                            Some(_) => n += 1,
                        }
                    }
                }
                ']' => return Err("`]` without an opening `[`".into()),
                '\\' if chars.next().is_none() => {
                    return Err("a trailing `\\`".into());
                }
                _ => {}
            }
        }
    }
    Ok(())
}
