//! The conversion from located JSON to a [`Dag`], reporting every problem at once: the file's
//! shape and the jobs here, references and outputs in `refs`, requirements in `requirements`.

mod refs;
mod requirements;

use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::json::{self, Member, Node, Pos, Value};
use crate::spec::{Dag, ImageRef, InputRef, Job, OutputSpec, Requirements, job_refs};

/// [`parse_dag`] of a file's bytes: text that is not UTF-8 is reported at the line and column of
/// its first bad byte.
pub fn parse_dag_bytes(file_name: &str, bytes: &[u8]) -> Result<Dag, Diagnostics> {
    parse_dag_bytes_warned(file_name, bytes).map(|(dag, _)| dag)
}

/// [`parse_dag_bytes`] with the warnings of [`parse_dag_warned`].
pub fn parse_dag_bytes_warned(file_name: &str, bytes: &[u8]) -> Result<(Dag, Vec<Diagnostic>), Diagnostics> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_dag_warned(file_name, text),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
            let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let col = std::str::from_utf8(&good[line_start..]).map_or(1, |t| t.chars().count() as u32 + 1);
            Err(Diagnostics(vec![Diagnostic {
                location: Location { file: file_name.into(), line, col },
                job: None,
                message: format!(
                    "the file is not UTF-8: byte 0x{:02x} at offset {}",
                    bytes[e.valid_up_to()],
                    e.valid_up_to()
                ),
                help: "save the DAG file as UTF-8 (JSON text is UTF-8)".into(),
            }]))
        }
    }
}

/// Parses and validates a DAG, reporting every problem at once.
pub fn parse_dag(file_name: &str, text: &str) -> Result<Dag, Diagnostics> {
    parse_dag_warned(file_name, text).map(|(dag, _)| dag)
}

/// [`parse_dag`], with the warnings of a DAG that parsed: spellings read another way than
/// written (the seed's `fd:0` output read as stdout), each located with its help.
pub fn parse_dag_warned(file_name: &str, text: &str) -> Result<(Dag, Vec<Diagnostic>), Diagnostics> {
    let mut cx = Cx { file: file_name.to_string(), job: None, diags: Vec::new(), warnings: Vec::new() };
    // Each job is converted as soon as it is parsed and its located tree dropped: the tree of a
    // whole DAG took about twice the memory of the DAG itself.
    let mut converted = Converted::default();
    let parsed = json::parse_taking(text, "jobs", &mut |item| {
        match cx.job(&item) {
            Some((job, place)) => {
                converted.jobs.push(job);
                converted.places.push(place);
            }
            None => converted.failed = true,
        }
        converted.taken = true;
    });
    let root = match parsed {
        Ok(root) => root,
        Err(e) => {
            return Err(Diagnostics(vec![Diagnostic {
                location: Location { file: file_name.into(), line: e.pos.line, col: e.pos.col },
                job: None,
                message: format!("invalid JSON: {}", e.message),
                help: "a DAG file is strict JSON: double-quoted keys and strings, no comments, no trailing commas"
                    .into(),
            }]));
        }
    };
    let dag = cx.dag(&root, converted);
    if cx.diags.is_empty()
        && let Some(dag) = dag
    {
        return Ok((dag, cx.warnings));
    }
    let mut diags = cx.diags;
    diags.sort_by_key(|d| (d.location.line, d.location.col));
    diags.dedup();
    Err(Diagnostics(diags))
}

/// Where each job's pieces were written, for diagnostics found after conversion.
struct JobPlaces {
    id_pos: Pos,
    /// For each reference: (job, output, where the reference string is).
    refs: Vec<(String, String, Pos)>,
    image_ref: Option<(String, String, Pos)>,
}

/// The jobs converted while the file was parsed (`json::parse_taking`).
#[derive(Default)]
struct Converted {
    /// Whether the top-level `jobs` array was handed over element by element.
    taken: bool,
    jobs: Vec<Job>,
    places: Vec<JobPlaces>,
    /// Some job did not convert (its problems are reported).
    failed: bool,
}

struct Cx {
    file: String,
    job: Option<String>,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

const TOP_FIELDS: &[&str] = &["version", "jobs"];
const JOB_FIELDS: &[&str] = &[
    "id",
    "image",
    "container",
    "command",
    "env",
    "workdir",
    "user",
    "stdin",
    "inputs",
    "outputs",
    "upload",
    "net",
    "requirements",
];
const REQ_FIELDS: &[&str] = &[
    "cores",
    "memory",
    "arch",
    "cpu_flags",
    "gpu",
    "network",
    "scratch",
    "output_size",
    "timeout",
    "pids",
    "isolation",
    "labels",
];
const GPU_FIELDS: &[&str] = &["count", "model"];
const REF_HELP: &str = "a reference is `blake3:<64 hex>`, `sha256:<64 hex>`, `jobs:<id>/<output>`, `file:<path>`, `https://<host>/<path>` or `s3://<bucket>/<key>`";
const NAME_HELP: &str =
    "names start with a letter or digit and use only letters, digits, `.`, `_` and `-` (at most 128 characters)";
const MEMORY_MIN_BYTES: u64 = 16 << 20;
const SIZE_MAX_BYTES: u64 = 1 << 40;
const TIMEOUT_MAX_MS: u64 = 7 * 86_400_000;
const CORES_MAX: u64 = 1024;
/// The largest `pids` a job may ask for (the kernel's own `pid_max` limit).
const PIDS_MAX: u64 = 4_194_304;

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Levenshtein distance, in characters: how near a misspelt name is to a known one.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn suggest(field: &str, known: &[&str]) -> String {
    let best = known.iter().map(|k| (edit_distance(field, k), *k)).min();
    match best {
        Some((d, k)) if d <= 2 => format!("did you mean `{k}`? known fields here: {}", known.join(", ")),
        _ => format!("remove it; known fields here: {}", known.join(", ")),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Cx {
    fn report(&mut self, pos: Pos, message: impl Into<String>, help: impl Into<String>) {
        let d = self.diagnostic(pos, message, help);
        self.diags.push(d);
    }

    fn warn(&mut self, pos: Pos, message: impl Into<String>, help: impl Into<String>) {
        let d = self.diagnostic(pos, message, help);
        self.warnings.push(d);
    }

    fn diagnostic(&self, pos: Pos, message: impl Into<String>, help: impl Into<String>) -> Diagnostic {
        Diagnostic {
            location: Location { file: self.file.clone(), line: pos.line, col: pos.col },
            job: self.job.clone(),
            message: message.into(),
            help: help.into(),
        }
    }

    /// The members of an object, reporting duplicates and unknown keys; None if not an object.
    fn object<'a>(&mut self, node: &'a Node, what: &str, known: &[&str]) -> Option<BTreeMap<&'a str, &'a Member>> {
        let Value::Object(members) = &node.value else {
            self.report(
                node.pos,
                format!("{what} must be an object, not {}", node.value.type_name()),
                "write it as `{ ... }`",
            );
            return None;
        };
        let mut seen: BTreeMap<&str, &Member> = BTreeMap::new();
        for m in members {
            if let Some(first) = seen.get(m.key.as_str()) {
                let line = first.key_pos.line;
                self.report(
                    m.key_pos,
                    format!("duplicate key `{}` in {what}", m.key),
                    format!("it is already given on line {line}; keep one"),
                );
                continue;
            }
            if !known.is_empty() && !known.contains(&m.key.as_str()) {
                self.report(m.key_pos, format!("unknown field `{}` in {what}", m.key), suggest(&m.key, known));
                continue;
            }
            seen.insert(m.key.as_str(), m);
        }
        Some(seen)
    }

    fn string<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a str> {
        match &node.value {
            Value::String(s) => Some(s),
            other => {
                self.report(
                    node.pos,
                    format!("{what} must be a string, not {}", other.type_name()),
                    "put it in double quotes",
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
        let parsed = match &node.value {
            Value::Number(n) => n.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                let shown = match &node.value {
                    Value::Number(n) => n.clone(),
                    other => other.type_name().to_string(),
                };
                self.report(
                    node.pos,
                    format!("{what} must be a whole number from {min} to {max}, not {shown}"),
                    format!("write e.g. `{min}`"),
                );
                None
            }
        }
    }

    fn dag(&mut self, root: &Node, converted: Converted) -> Option<Dag> {
        self.job = None;
        let top = self.object(root, "the DAG", TOP_FIELDS)?;
        let mut ok = true;
        match top.get("version") {
            None => {
                self.report(root.pos, "missing field `version`", "add `\"version\": 1` at the top level");
                ok = false;
            }
            Some(m) => {
                if !matches!(&m.value.value, Value::Number(n) if n == "1") {
                    let shown = match &m.value.value {
                        Value::Number(n) => n.clone(),
                        other => other.type_name().into(),
                    };
                    self.report(
                        m.value.pos,
                        format!("unsupported version {shown}"),
                        "this shoal reads `\"version\": 1`",
                    );
                    ok = false;
                }
            }
        }
        let Some(jobs_member) = top.get("jobs") else {
            self.report(root.pos, "missing field `jobs`", "add `\"jobs\": [ ... ]` with at least one job");
            return None;
        };
        let Value::Array(items) = &jobs_member.value.value else {
            self.report(
                jobs_member.value.pos,
                format!("`jobs` must be an array, not {}", jobs_member.value.value.type_name()),
                "write `\"jobs\": [ {\"id\": ...}, ... ]`",
            );
            return None;
        };
        if items.is_empty() {
            self.report(jobs_member.value.pos, "`jobs` is empty", "add at least one job");
            return None;
        }
        let (mut jobs, mut places) = (converted.jobs, converted.places);
        if converted.taken {
            ok &= !converted.failed;
        } else {
            for item in items {
                match self.job(item) {
                    Some((job, place)) => {
                        jobs.push(job);
                        places.push(place);
                    }
                    None => ok = false,
                }
            }
        }
        // Held for the whole run: no doubling slack.
        jobs.shrink_to_fit();
        self.check_graph(&jobs, &places);
        self.job = None;
        (ok && self.diags.is_empty()).then_some(Dag { version: 1, jobs })
    }

    fn job(&mut self, node: &Node) -> Option<(Job, JobPlaces)> {
        self.job = None;
        // Learn the id first so every later problem names its job.
        if let Value::Object(members) = &node.value
            && let Some(Member { value: Node { value: Value::String(id), .. }, .. }) =
                members.iter().find(|m| m.key == "id")
        {
            self.job = Some(id.clone());
        }
        let fields = self.object(node, "a job", JOB_FIELDS)?;
        let before = self.diags.len();
        let id = match fields.get("id") {
            None => {
                self.report(node.pos, "missing field `id`", "give every job a unique `\"id\"`");
                None
            }
            Some(m) => {
                let id = self.string(&m.value, "`id`");
                if let Some(id) = id
                    && !valid_name(id)
                {
                    self.report(m.value.pos, format!("`{id}` is not a valid job id"), NAME_HELP);
                }
                id.map(str::to_string)
            }
        };
        let id_pos = fields.get("id").map(|m| m.value.pos).unwrap_or(node.pos);
        let mut image_ref = None;
        let image = match (fields.get("image"), fields.get("container")) {
            (Some(_), Some(c)) => {
                self.report(
                    c.key_pos,
                    "both `image` and `container` are given",
                    "`container` is another name for `image`; keep one",
                );
                None
            }
            (None, None) => {
                self.report(
                    node.pos,
                    "missing field `image`",
                    "add `\"image\": \"busybox:latest\"` (a tag, `sha256:`, `blake3:` or `jobs:<id>/<output>`)",
                );
                None
            }
            (Some(m), None) | (None, Some(m)) => {
                let image = self.string(&m.value, "`image`").and_then(|s| self.image_ref(s, m.value.pos));
                if let Some(ImageRef::Job { job, output }) = &image {
                    image_ref = Some((job.clone(), output.clone(), m.value.pos));
                }
                image
            }
        };
        let command = match fields.get("command") {
            None => {
                self.report(node.pos, "missing field `command`", "add `\"command\": [\"program\", \"arg\", ...]`");
                None
            }
            Some(m) => self.command(&m.value),
        };
        let env = fields.get("env").map(|m| self.env(&m.value)).unwrap_or_default();
        let workdir = fields.get("workdir").and_then(|m| {
            let s = self.string(&m.value, "`workdir`")?;
            if !s.starts_with('/') {
                self.report(
                    m.value.pos,
                    format!("`workdir` `{s}` is not absolute"),
                    "write an absolute path inside the container, e.g. `/work`",
                );
            }
            Some(s.to_string())
        });
        let user = fields.get("user").and_then(|m| self.string(&m.value, "`user`").map(str::to_string));
        let mut refs = Vec::new();
        let stdin = fields.get("stdin").and_then(|m| {
            let r = self.input_value(&m.value, "`stdin`", true)?;
            if let InputRef::Job { job, output } = r.root() {
                refs.push((job.clone(), output.clone(), m.value.pos));
            }
            Some(r)
        });
        let mut inputs = BTreeMap::new();
        if let Some(m) = fields.get("inputs")
            && let Some(members) = self.object(&m.value, "`inputs`", &[])
        {
            for (name, member) in members {
                if !valid_name(name) {
                    self.report(member.key_pos, format!("`{name}` is not a valid input name"), NAME_HELP);
                    continue;
                }
                if let Some(r) = self.input_value(&member.value, &format!("input `{name}`"), false) {
                    if let InputRef::Job { job, output } = r.root() {
                        refs.push((job.clone(), output.clone(), member.value.pos));
                    }
                    inputs.insert(name.to_string(), r);
                }
            }
        }
        let mut outputs = BTreeMap::new();
        if let Some(m) = fields.get("outputs")
            && let Some(members) = self.object(&m.value, "`outputs`", &[])
        {
            let mut paths: BTreeMap<String, (String, u32)> = BTreeMap::new();
            for (name, member) in members {
                if !valid_name(name) {
                    self.report(member.key_pos, format!("`{name}` is not a valid output name"), NAME_HELP);
                    continue;
                }
                let Some(s) = self.string(&member.value, &format!("output `{name}`")) else {
                    continue;
                };
                let Some(spec) = self.output_spec(s, member.value.pos) else {
                    continue;
                };
                let path = match &spec {
                    OutputSpec::File(p) | OutputSpec::Dir(p) | OutputSpec::Glob(p) => Some(p.clone()),
                    OutputSpec::Fd(n) => Some(format!("fd:{n}")),
                    _ => None,
                };
                if let Some(path) = path {
                    if let Some((other, line)) = paths.get(&path) {
                        self.report(
                            member.value.pos,
                            format!("outputs `{other}` (line {line}) and `{name}` both name `{path}`"),
                            "declare each path (or fd) once",
                        );
                        continue;
                    }
                    paths.insert(path, (name.to_string(), member.value.pos.line));
                }
                outputs.insert(name.to_string(), spec);
            }
        }
        let mut requirements = match fields.get("requirements") {
            Some(m) => self.requirements(&m.value),
            None => Requirements::default(),
        };
        // The seed's spelling: `"net": true` beside the job's other fields.
        if let Some(m) = fields.get("net") {
            match &m.value.value {
                Value::Bool(b) => {
                    let said = fields
                        .get("requirements")
                        .and_then(|r| match &r.value.value {
                            Value::Object(ms) => ms.iter().find(|x| x.key == "network"),
                            _ => None,
                        })
                        .map(|x| matches!(x.value.value, Value::Bool(v) if v == *b));
                    if said == Some(false) {
                        self.report(
                            m.key_pos,
                            "`net` and `requirements.network` disagree",
                            "`net` is another name for `requirements.network`; keep one",
                        );
                    }
                    requirements.network = *b;
                }
                other => self.report(
                    m.value.pos,
                    format!("`net` must be true or false, not {}", other.type_name()),
                    "write `\"net\": true` or `false` (the same as `requirements.network`)",
                ),
            }
        }
        let uploads = match fields.get("upload") {
            Some(m) => self.uploads(&m.value, &outputs, &mut requirements),
            None => BTreeMap::new(),
        };
        if self.diags.len() != before {
            // Still return what parsed, so graph checks can run on the rest of the DAG.
        }
        let job = Job {
            id: id?,
            image: image.unwrap_or(ImageRef::Tag(String::new())),
            command: command.unwrap_or_default(),
            env: env.into(),
            workdir,
            user,
            stdin,
            inputs: inputs.into(),
            outputs: outputs.into(),
            requirements,
            uploads: uploads.into(),
        };
        Some((job, JobPlaces { id_pos, refs, image_ref }))
    }

    /// `"upload": {"<output>": "https://...presigned PUT..." | "s3://bucket/key"}`. A job that
    /// writes to a bucket requires the bucket's label: only nodes with credentials for it take it.
    fn uploads(
        &mut self,
        node: &Node,
        outputs: &BTreeMap<String, OutputSpec>,
        requirements: &mut Requirements,
    ) -> BTreeMap<String, crate::UploadTarget> {
        use crate::location::{self, UploadTarget};
        let mut out = BTreeMap::new();
        let Some(members) = self.object(node, "`upload`", &[]) else { return out };
        for (name, member) in members {
            if !outputs.contains_key(name) {
                let known: Vec<&str> = outputs.keys().map(String::as_str).collect();
                self.report(member.key_pos, format!("`upload` names `{name}`, which is not an output of this job"), suggest(name, &known));
                continue;
            }
            if outputs[name].kind() == crate::DigestKind::Tree {
                self.report(
                    member.key_pos,
                    format!("output `{name}` is a directory; an upload sends one file"),
                    "upload a file output (`file:`, `stdout`, `fd:N`); pack a directory with tar in the job first",
                );
                continue;
            }
            let Some(s) = self.string(&member.value, &format!("the upload of `{name}`")) else { continue };
            let target = if s.starts_with("s3://") {
                match location::parse_s3(s) {
                    Ok((object, None)) => UploadTarget::S3(object),
                    Ok((_, Some(_))) => {
                        self.report(member.value.pos, "an upload destination has no pin", "remove the `#...` part");
                        continue;
                    }
                    Err(why) => {
                        self.report(member.value.pos, format!("`{s}` is not an S3 object: {why}"), "write `s3://<bucket>/<key>`");
                        continue;
                    }
                }
            } else {
                match location::parse_url(s) {
                    Ok((url, None)) => UploadTarget::Url(url),
                    Ok((_, Some(_))) => {
                        self.report(member.value.pos, "an upload destination has no pin", "remove the `#...` part");
                        continue;
                    }
                    Err(why) => {
                        self.report(
                            member.value.pos,
                            format!("`{}` is not an upload destination: {why}", location::redact(s)),
                            "write a URL the node may PUT to (a presigned S3 PUT) or `s3://<bucket>/<key>`",
                        );
                        continue;
                    }
                }
            };
            if let UploadTarget::S3(o) = &target {
                requirements.labels.entry(location::bucket_label(&o.bucket)).or_insert_with(|| "write".into());
            }
            out.insert(name.to_string(), target);
        }
        out
    }

    fn command(&mut self, node: &Node) -> Option<Vec<String>> {
        match &node.value {
            Value::String(s) => {
                self.report(
                    node.pos,
                    "`command` must be an array of strings, not a string",
                    format!("write it as an argv array, e.g. [\"sh\", \"-c\", {:?}]", s),
                );
                None
            }
            Value::Array(items) => {
                if items.is_empty() {
                    self.report(
                        node.pos,
                        "`command` is empty",
                        "give the program to run and its arguments, e.g. [\"echo\", \"hi\"]",
                    );
                    return None;
                }
                let mut argv = Vec::new();
                for item in items {
                    match &item.value {
                        Value::String(s) => argv.push(s.clone()),
                        other => self.report(
                            item.pos,
                            format!("`command` elements must be strings, not {}", other.type_name()),
                            "quote it: every argv element is a string",
                        ),
                    }
                }
                (argv.len() == items.len()).then_some(argv)
            }
            other => {
                self.report(
                    node.pos,
                    format!("`command` must be an array of strings, not {}", other.type_name()),
                    "write e.g. [\"echo\", \"hi\"]",
                );
                None
            }
        }
    }

    fn env(&mut self, node: &Node) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        // The seeds wrote env as ["KEY=VALUE", ...]; both forms are accepted.
        if let Value::Array(items) = &node.value {
            for item in items {
                let Some(s) = self.string(item, "an `env` entry") else {
                    continue;
                };
                match s.split_once('=') {
                    Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
                        if env.insert(k.to_string(), v.to_string()).is_some() {
                            self.report(item.pos, format!("`{k}` is set twice in `env`"), "set each variable once");
                        }
                    }
                    _ => self.report(
                        item.pos,
                        format!("env entry `{s}` is not `KEY=VALUE`"),
                        "write `\"KEY=VALUE\"`, or use an object {\"KEY\": \"VALUE\"}",
                    ),
                }
            }
            return env;
        }
        let Some(members) = self.object(node, "`env`", &[]) else {
            return env;
        };
        for (k, m) in members {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.report(
                    m.key_pos,
                    format!("`{k}` is not a valid environment variable name"),
                    "names are non-empty and contain no `=` or NUL",
                );
                continue;
            }
            if let Some(v) = self.string(&m.value, &format!("env `{k}`")) {
                if v.contains('\0') {
                    self.report(m.value.pos, format!("env `{k}` contains a NUL byte"), "remove it");
                    continue;
                }
                env.insert(k.to_string(), v.to_string());
            }
        }
        env
    }

    /// Dangling references, self references, output kinds of image references, cycles.
    fn check_graph(&mut self, jobs: &[Job], places: &[JobPlaces]) {
        let mut first: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Some(&j) = first.get(job.id.as_str()) {
                self.job = Some(job.id.clone());
                let line = places[j].id_pos.line;
                self.report(
                    places[i].id_pos,
                    format!("duplicate job id `{}`", job.id),
                    format!("the first job with this id is on line {line}; ids must be unique"),
                );
            } else {
                first.insert(&job.id, i);
            }
        }
        for (i, job) in jobs.iter().enumerate() {
            self.job = Some(job.id.clone());
            let all_refs = places[i].refs.iter().chain(places[i].image_ref.iter());
            for (target, output, pos) in all_refs {
                if target == &job.id {
                    self.report(
                        *pos,
                        format!("job `{target}` refers to its own output `{output}`"),
                        "a job cannot read what it writes; split it into two jobs",
                    );
                    continue;
                }
                let Some(&t) = first.get(target.as_str()) else {
                    let known: Vec<&str> = first.keys().copied().collect();
                    let near = known.iter().map(|k| (edit_distance(target, k), *k)).min();
                    let help = match near {
                        Some((d, k)) if d <= 2 => format!("did you mean `jobs:{k}/{output}`?"),
                        _ => format!("jobs in this DAG: {}", known.join(", ")),
                    };
                    self.report(*pos, format!("no job `{target}` in this DAG"), help);
                    continue;
                };
                match jobs[t].outputs.get(output) {
                    None => {
                        let names: Vec<&str> = jobs[t].outputs.keys().map(String::as_str).collect();
                        self.report(
                            *pos,
                            format!("job `{target}` has no output `{output}`"),
                            format!(
                                "its outputs are: {}",
                                if names.is_empty() { "(none)".into() } else { names.join(", ") }
                            ),
                        );
                    }
                    Some(spec) => {
                        let is_image = places[i]
                            .image_ref
                            .as_ref()
                            .is_some_and(|(j, o, p)| j == target && o == output && p == pos);
                        // An archive is a file, wherever the job wrote it (the seed's `fd:0`:
                        // an image written to stdout).
                        let holds_image = matches!(
                            spec,
                            OutputSpec::File(_) | OutputSpec::Dir(_) | OutputSpec::Stdout | OutputSpec::Fd(_)
                        );
                        if is_image && !holds_image {
                            self.report(*pos, format!("output `{output}` of job `{target}` is `{spec}`, which cannot hold an image"), "an image built by a job is a `file:`, `stdout` or `fd:N` output (an OCI or docker-save archive) or a `dir:` output (an OCI layout)");
                        }
                    }
                }
            }
        }
        self.report_cycles(jobs, places, &first);
    }

    fn report_cycles(&mut self, jobs: &[Job], places: &[JobPlaces], index: &BTreeMap<&str, usize>) {
        let n = jobs.len();
        let edges: Vec<Vec<usize>> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                job_refs(j)
                    .iter()
                    .filter_map(|(t, _)| index.get(t.as_str()).copied())
                    .filter(|&t| t != i)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        // Iterative DFS with colours; each back edge closes one cycle, reported once by its set of jobs.
        let mut colour = vec![0u8; n];
        let mut reported: BTreeSet<Vec<usize>> = BTreeSet::new();
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            let mut path: Vec<usize> = vec![start];
            colour[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if *next < edges[node].len() {
                    let to = edges[node][*next];
                    *next += 1;
                    match colour[to] {
                        0 => {
                            colour[to] = 1;
                            stack.push((to, 0));
                            path.push(to);
                        }
                        1 => {
                            let from = path.iter().position(|&p| p == to).expect("on the path");
                            let cycle: Vec<usize> = path[from..].to_vec();
                            let mut key = cycle.clone();
                            key.sort();
                            if reported.insert(key) {
                                let mut names: Vec<&str> = cycle.iter().map(|&c| jobs[c].id.as_str()).collect();
                                names.push(&jobs[to].id);
                                // Reported at the reference that closes the cycle (from `node` to `to`).
                                let pos = places[node]
                                    .refs
                                    .iter()
                                    .chain(places[node].image_ref.iter())
                                    .find(|(t, _, _)| t == &jobs[to].id)
                                    .map(|(_, _, p)| *p)
                                    .unwrap_or(places[node].id_pos);
                                self.job = Some(jobs[node].id.clone());
                                self.report(
                                    pos,
                                    format!("cycle: {}", names.join(" -> ")),
                                    "a job may only read outputs of jobs that do not depend on it; break the cycle",
                                );
                            }
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = 2;
                    stack.pop();
                    path.pop();
                }
            }
        }
    }
}
