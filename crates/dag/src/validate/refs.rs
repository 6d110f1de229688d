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

    pub(super) fn input_ref(&mut self, s: &str, pos: Pos) -> Option<InputRef> {
        let (scheme, rest) = s.split_once(':').unwrap_or(("", s));
        match scheme {
            "blake3" => {
                self.hash_ref("blake3", rest, pos).then(|| InputRef::Blake3(Hash::from_hex(rest).expect("checked")))
            }
            "sha256" => self.hash_ref("sha256", rest, pos).then(|| InputRef::Sha256(rest.to_string())),
            "jobs" => self.job_ref(rest, pos).map(|(job, output)| InputRef::Job { job, output }),
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
            _ => {}
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
                    "an output is `stdout`, `stderr`, `file:<path>`, `dir:<path>` or `glob:<pattern>`",
                );
                None
            }
        }
    }
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
