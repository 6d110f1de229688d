//! Run files: a short, line-oriented, Dockerfile-like text that stands for a DAG of one job.
//! docs/RUNFILE.md has the same grammar with a worked example and the design record.
//!
//! ```text
//! # Count the lines of a file.
//! FROM sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
//! INPUT text https://example.org/words.txt
//! ENV LC_ALL=C GREETING="hello world"
//! RUN echo "$GREETING" && \
//!     wc -l < /input/text
//! OUTPUT count stdout
//! REQUIRE cores=1 memory=128MiB timeout=30s
//! ```
//!
//! # Grammar
//! - One instruction per line: a case-insensitive keyword, whitespace, then its arguments. Blank
//!   lines and lines whose first non-blank character is `#` are ignored, also inside a continued
//!   instruction. A line ending in `\` (spaces and tabs may follow it) continues on the next line:
//!   the `\` is dropped and the next line is appended as it is, as in a Dockerfile. A file that
//!   ends inside a continued line is an error. `\r\n` line ends and a leading BOM are accepted.
//! - Arguments are separated by whitespace. A double-quoted part of an argument may hold spaces;
//!   inside quotes `\"` is a quote and `\\` a backslash (any other `\` is kept as it is). In
//!   `NAME=VALUE` arguments the first `=` outside quotes separates the name from the value.
//!   `RUN` takes the rest of its line as it is.
//! - `FROM <image>`: exactly once, before every other instruction. Any image the DAG's `image`
//!   accepts: `sha256:<hex>`, `blake3:<hex>`, a tag (`name:tag`, `host:port/name:tag`) or
//!   `name@sha256:<hex>`. A tag without a digest is accepted with a warning: the run is not pinned.
//! - `ID <job id>`: at most once; the job's id, `main` when absent.
//! - `RUN <shell command>`: one or more; the lines, in order, make one script run as
//!   `["/bin/sh", "-c", "set -e\n<line 1>\n<line 2>..."]`. `RUN ["program", "arg", ...]`, the
//!   exec form (a JSON array of strings), is the job's command as it is, and must be the only
//!   `RUN`. An argument starting with `[` directly followed by another non-blank character is
//!   always the exec form; `[` followed by a blank is the exec form only if it is a JSON array of
//!   strings, and otherwise a shell command (the `[ -f x ]` test).
//! - `ENV NAME=VALUE [NAME=VALUE ...]`: environment variables, each set once.
//! - `WORKDIR <path>`, `USER <user>`, `STDIN <source>`: at most once each; the job's `workdir`,
//!   `user` and `stdin`.
//! - `INPUT <name> <source>`, `OUTPUT <name> <spec>`, `UPLOAD <output> <destination>`: one entry
//!   of the job's `inputs`, `outputs` and `upload`, written as in a DAG file (`file:/output/x`,
//!   not a bare path; `stdout`, `fd:3`, `dir:/output/d`, `glob:/output/*.png`; `blake3:`,
//!   `sha256:`, `https://`, `s3://`, `file:` sources). Each name once. A selection input has no
//!   run-file spelling.
//! - `REQUIRE <key>=<value> [...]`: entries of the job's `requirements`, each key once.
//!   `memory`, `scratch`, `output_size`, `timeout`, `arch` and `isolation` are strings as
//!   written; `cpu_flags` is a comma-separated list (`avx2,sse4_2`); `labels` is a
//!   comma-separated list of `name=value` (`labels=pool=night,zone=eu`); any other value is a
//!   number if it reads as a JSON number, a boolean if `true` or `false`, else a string (`gpu`
//!   takes a count).
//! - `NET on|off`: at most once; the job's `net` (the same as `requirements.network`).
//! - The DAG's `version` is 1.
//!
//! # How it is checked
//! The run file is translated into the text of a DAG file, with a table of which byte ranges of
//! that text came from which token of the run file, and the text is parsed by
//! [`crate::parse_dag_warned`]: a run file accepts exactly what a DAG file accepts, and each
//! problem the DAG validator finds is moved back to the run file's `line:col` (and `line N` in
//! its text to the run file's line). Every key and value of the generated text is on a line of
//! its own, so a line of the text names one token. Problems of the run file's own grammar are
//! reported directly, and what it lacks (`FROM`, a usable `RUN`) is stood in for so that the rest
//! is still checked: everything is reported at once.

use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::json::{self, Pos, Value};
use crate::spec::{Dag, ImageRef};
use crate::validate::{edit_distance, parse_dag_bytes_warned, parse_dag_warned};

/// The job's id when the run file has no `ID`.
const DEFAULT_JOB_ID: &str = "main";

/// Parses a run file into its one-job [`Dag`] and the warnings about it (an image named by a
/// tag alone), or reports every problem, each at the run file's `line:col` with its fix.
///
/// ```
/// let text = "FROM busybox:1.36\nRUN echo hi > /output/greeting\nOUTPUT greeting file:/output/greeting\n";
/// let (dag, warnings) = shoal_dag::parse_run_file("hi.run", text).unwrap();
/// assert_eq!(dag.jobs[0].command, ["/bin/sh", "-c", "set -e\necho hi > /output/greeting"]);
/// assert_eq!((warnings[0].location.line, warnings[0].location.col), (1, 6));
///
/// let err = shoal_dag::parse_run_file("hi.run", "FROM busybox:1.36\nRUN true\nOUTPT x stdout\n").unwrap_err();
/// assert_eq!((err.0[0].location.line, err.0[0].location.col), (3, 1));
/// assert!(err.0[0].help.starts_with("did you mean `OUTPUT`?"));
/// ```
pub fn parse_run_file(file_name: &str, text: &str) -> Result<(Dag, Vec<Diagnostic>), Diagnostics> {
    translate_run_file(file_name, text).map(|(dag, _, warnings)| (dag, warnings))
}

/// [`parse_run_file`], with the DAG file's JSON text the run file translates to (what a node is
/// sent, and what a provenance commit keeps as the DAG).
pub fn translate_run_file(file_name: &str, text: &str) -> Result<(Dag, String, Vec<Diagnostic>), Diagnostics> {
    let mut p = Parser::new(file_name);
    let dangling = logical_lines(text, &mut |line| p.instruction(line));
    if let Some(at) = dangling {
        p.error(
            at,
            "the file ends inside a continued line",
            "remove the trailing `\\`, or write the rest of the instruction on the next line",
        );
    }
    p.finish();
    let (root, from_at) = p.generate();
    let generated = Generated::write(&root);
    let mut errors = std::mem::take(&mut p.errors);
    match parse_dag_warned(file_name, &generated.text) {
        Ok((dag, warnings)) if errors.is_empty() => {
            let mut warnings: Vec<Diagnostic> = warnings.into_iter().map(|w| generated.map_back(w)).collect();
            warnings.extend(unpinned(file_name, &dag, from_at));
            warnings.sort_by_key(|d| (d.location.line, d.location.col));
            return Ok((dag, generated.text, warnings));
        }
        Ok(_) => {}
        Err(Diagnostics(diags)) => errors.extend(diags.into_iter().map(|d| generated.map_back(d))),
    }
    errors.sort_by_key(|d| (d.location.line, d.location.col));
    errors.dedup();
    Err(Diagnostics(errors))
}

/// The warning for an image named by a tag alone, at the image in `FROM`: which image runs is
/// then whatever the tag names on the node that runs it.
fn unpinned(file_name: &str, dag: &Dag, image_at: Option<Pos>) -> Option<Diagnostic> {
    let ImageRef::Tag(tag) = &dag.jobs.first()?.image else { return None };
    let at = image_at?;
    (!tag.contains("@sha256:")).then(|| Diagnostic {
        location: Location { file: file_name.into(), line: at.line, col: at.col },
        job: None,
        message: format!("`{tag}` is a tag: this run is not pinned to a digest, and runs whatever image the tag names where it runs"),
        help: "pin it with what `shoal image ls` prints for the tag: `FROM blake3:<hex>` (its image) or `FROM sha256:<hex>` (its oci digest)".into(),
    })
}

/// A DAG file or a run file, told apart by the first non-blank byte: `{` starts a DAG in JSON
/// ([`parse_dag_bytes_warned`]), anything else a run file ([`parse_run_file`]). Text that is not
/// UTF-8 is reported at the line and column of its first bad byte.
pub fn parse_any_bytes(file_name: &str, bytes: &[u8]) -> Result<(Dag, Vec<Diagnostic>), Diagnostics> {
    translate_any_bytes(file_name, bytes).map(|t| (t.dag, t.warnings))
}

/// A DAG file or a run file, parsed as [`parse_any_bytes`] does.
pub struct Translated {
    pub dag: Dag,
    /// For a run file: its text as written, and the DAG file's JSON text it translates to.
    /// `None` for a DAG file, whose bytes are its JSON text.
    pub run_file: Option<(String, String)>,
    pub warnings: Vec<Diagnostic>,
}

/// [`parse_any_bytes`], keeping a run file's text and its translation (what a node is sent and a
/// provenance commit keeps).
pub fn translate_any_bytes(file_name: &str, bytes: &[u8]) -> Result<Translated, Diagnostics> {
    let body = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let (dag, warnings) = parse_dag_bytes_warned(file_name, bytes)?;
        return Ok(Translated { dag, run_file: None, warnings });
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => translate_run_file(file_name, text).map(|(dag, json, warnings)| Translated {
            dag,
            run_file: Some((text.to_string(), json)),
            warnings,
        }),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let col = std::str::from_utf8(&good[line_start..]).map_or(1, |t| t.chars().count() + 1);
            let bad = bytes.get(e.valid_up_to()).copied().unwrap_or(0);
            Err(Diagnostics(vec![Diagnostic {
                location: Location { file: file_name.into(), line: saturating_u32(line), col: saturating_u32(col) },
                job: None,
                message: format!("the file is not UTF-8: byte 0x{bad:02x} at offset {}", e.valid_up_to()),
                help: "save the run file as UTF-8".into(),
            }]))
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The instructions, with how each is written (for helps).
const INSTRUCTIONS: &[(&str, &str)] = &[
    ("FROM", "FROM <image>"),
    ("ID", "ID <job id>"),
    ("RUN", "RUN <shell command>` or `RUN [\"program\", \"arg\", ...]"),
    ("ENV", "ENV NAME=VALUE [NAME=VALUE ...]"),
    ("WORKDIR", "WORKDIR <absolute path>"),
    ("USER", "USER <user>"),
    ("INPUT", "INPUT <name> <source>"),
    ("OUTPUT", "OUTPUT <name> <spec>"),
    ("STDIN", "STDIN <source>"),
    ("REQUIRE", "REQUIRE <key>=<value> [<key>=<value> ...]"),
    ("UPLOAD", "UPLOAD <output> <destination>"),
    ("NET", "NET on|off"),
];

/// Requirements whose value the DAG format takes as a string, whatever it looks like.
const STRING_REQUIREMENTS: &[&str] = &["memory", "scratch", "output_size", "timeout", "arch", "isolation"];

fn usage(keyword: &str) -> &'static str {
    INSTRUCTIONS.iter().find(|(k, _)| *k == keyword).map_or("", |(_, u)| u)
}

/// The help for an unknown instruction (what a Dockerfile's means here, or the nearest known
/// one), and the instruction it was likely meant to be.
fn unknown_help(keyword: &str) -> (String, Option<&'static str>) {
    let known: Vec<&'static str> = INSTRUCTIONS.iter().map(|(k, _)| *k).collect();
    let list = known.join(", ");
    match keyword {
        "CMD" | "ENTRYPOINT" => {
            let help = format!(
                "a run file's command is its `RUN` lines (run by /bin/sh) or one exec-form `RUN [...]`; instructions are: {list}"
            );
            return (help, Some("RUN"));
        }
        "COPY" | "ADD" => {
            let help = format!(
                "files come in with `INPUT <name> <source>` and are at /input/<name>; instructions are: {list}"
            );
            return (help, None);
        }
        _ => {}
    }
    // `RUN["true"]`: a keyword without the blank after it.
    let glued = known.iter().find(|k| {
        keyword.strip_prefix(**k).and_then(|rest| rest.chars().next()).is_some_and(|c| !c.is_ascii_alphanumeric())
    });
    if let Some(k) = glued {
        return (format!("put a blank after `{k}`"), Some(*k));
    }
    let near = known.iter().map(|k| (edit_distance(keyword, k), *k)).min();
    match near {
        // Short keywords only take a one-letter slip, or `ID` would be everyone's guess.
        Some((d, k)) if d <= 2 && 2 * d <= k.len() => {
            (format!("did you mean `{k}`? instructions are: {list}"), Some(k))
        }
        _ => (format!("remove it; instructions are: {list}"), None),
    }
}

/// One instruction as written, its continuation lines joined: each character with where it is.
struct Line {
    chars: Vec<(char, Pos)>,
}

/// Hands each instruction of `text` to `each` as soon as it is read (one line at a time is
/// held, at twelve bytes a character); returns where the `\` is if the file ends inside a
/// continued line.
fn logical_lines(text: &str, each: &mut dyn FnMut(&Line)) -> Option<Pos> {
    // A byte-order mark is not part of the first line (nor counted in its columns).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut current: Option<Vec<(char, Pos)>> = None;
    let mut dangling = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line = saturating_u32(i + 1);
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut chars: Vec<(char, Pos)> =
            raw.chars().enumerate().map(|(j, c)| (c, Pos { line, col: saturating_u32(j + 1) })).collect();
        let last = chars.iter().rposition(|(c, _)| !matches!(c, ' ' | '\t'));
        let mut acc = current.take().unwrap_or_default();
        match last {
            Some(end) if chars[end].0 == '\\' => {
                dangling = Some(chars[end].1);
                chars.truncate(end);
                acc.extend(chars);
                current = Some(acc);
            }
            _ => {
                dangling = None;
                acc.extend(chars);
                each(&Line { chars: acc });
            }
        }
    }
    if let Some(acc) = current {
        each(&Line { chars: acc });
    }
    dangling
}

/// A token of the run file: its text (quotes decoded) and where it starts.
#[derive(Clone, Debug)]
struct Tok {
    text: String,
    at: Pos,
}

/// A whitespace-separated argument, quotes decoded.
struct Word {
    chars: Vec<char>,
    /// Where each of `chars` was written.
    char_at: Vec<Pos>,
    /// Where the argument starts (its opening quote, if it starts with one).
    at: Pos,
    /// The index in `chars` of the first `=` outside quotes, and where the text after it starts.
    eq: Option<(usize, Pos)>,
}

impl Word {
    fn tok(&self) -> Tok {
        Tok { text: self.chars.iter().collect(), at: self.at }
    }

    /// `NAME=VALUE` split at its first `=` outside quotes.
    fn key_value(&self) -> Option<(Tok, Tok)> {
        let (i, value_at) = self.eq?;
        let key = Tok { text: self.chars[..i].iter().collect(), at: self.at };
        Some((key, Tok { text: self.chars[i + 1..].iter().collect(), at: value_at }))
    }

    /// The value after `=`, split at commas: each piece a word of its own (whose `=` is its
    /// first one).
    fn value_list(&self) -> Vec<Word> {
        let Some((i, value_at)) = self.eq else { return Vec::new() };
        let mut out = Vec::new();
        let mut piece = Word { chars: Vec::new(), char_at: Vec::new(), at: value_at, eq: None };
        for j in i + 1..self.chars.len() {
            let (c, at) = (self.chars[j], self.char_at[j]);
            if c == ',' {
                let next_at = self.char_at.get(j + 1).copied().unwrap_or(after(at));
                out.push(std::mem::replace(
                    &mut piece,
                    Word { chars: Vec::new(), char_at: Vec::new(), at: next_at, eq: None },
                ));
                continue;
            }
            if c == '=' && piece.eq.is_none() {
                let value_at =
                    self.char_at.get(j + 1).copied().filter(|_| j + 1 < self.chars.len()).unwrap_or(after(at));
                piece.eq = Some((piece.chars.len(), value_at));
            }
            piece.chars.push(c);
            piece.char_at.push(at);
        }
        out.push(piece);
        out
    }
}

/// The position just after `pos` on its line.
fn after(pos: Pos) -> Pos {
    Pos { line: pos.line, col: pos.col.saturating_add(1) }
}

/// A problem found while reading a line: where, what, and the fix.
type Problem = (Pos, String, String);

/// Splits arguments at whitespace outside double quotes.
fn words(args: &[(char, Pos)]) -> Result<Vec<Word>, Problem> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while args.get(i).is_some_and(|(c, _)| c.is_whitespace()) {
            i += 1;
        }
        let Some(&(_, at)) = args.get(i) else { return Ok(out) };
        let mut word = Word { chars: Vec::new(), char_at: Vec::new(), at, eq: None };
        while let Some(&(c, pos)) = args.get(i).filter(|(c, _)| !c.is_whitespace()) {
            i += 1;
            match c {
                '"' => loop {
                    let Some(&(c, p)) = args.get(i) else {
                        return Err((
                            pos,
                            "this quote is not closed".into(),
                            "add the closing `\"` (inside quotes, write `\\\"` for a quote and `\\\\` for a backslash)"
                                .into(),
                        ));
                    };
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' if matches!(args.get(i), Some(('"' | '\\', _))) => {
                            word.chars.push(args[i].0);
                            word.char_at.push(p);
                            i += 1;
                        }
                        _ => {
                            word.chars.push(c);
                            word.char_at.push(p);
                        }
                    }
                },
                '=' if word.eq.is_none() => {
                    let value_at = args.get(i).map_or(after(pos), |&(_, p)| p);
                    word.eq = Some((word.chars.len(), value_at));
                    word.chars.push(c);
                    word.char_at.push(pos);
                }
                _ => {
                    word.chars.push(c);
                    word.char_at.push(pos);
                }
            }
        }
        out.push(word);
    }
}

/// Whether `s` is a number as JSON writes one.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A piece of the DAG to generate, and the run-file position of the token it came from.
#[derive(Clone)]
struct Placed {
    at: Option<Pos>,
    value: Gen,
}

#[derive(Clone)]
enum Gen {
    Str(String),
    /// A number or boolean, as JSON writes it.
    Literal(String),
    Array(Vec<Placed>),
    /// Key, where the key was written, value.
    Object(Vec<(String, Option<Pos>, Placed)>),
}

impl Placed {
    fn new(at: Option<Pos>, value: Gen) -> Self {
        Placed { at, value }
    }

    fn str(tok: &Tok) -> Self {
        Placed { at: Some(tok.at), value: Gen::Str(tok.text.clone()) }
    }
}

/// One `RUN` line that parsed.
enum Run {
    Shell(Tok),
    /// The argv, each element where it is written, and where the `[` is.
    Exec(Vec<Tok>, Pos),
}

/// The instructions read so far, and the problems found in them.
struct Parser {
    file: String,
    errors: Vec<Diagnostic>,
    /// The first instruction, for problems of the whole file.
    first_instruction: Option<Pos>,
    /// The first known instruction other than `FROM` (its keyword and where), while no `FROM` was seen.
    first_other: Option<(String, Pos)>,
    /// The instructions unknown ones were taken for (misspelt `FROM`, `RUN[...]`): their absence
    /// is not reported again.
    misspelt: BTreeSet<&'static str>,
    /// `FROM`, `ID`, `WORKDIR`, `USER`, `STDIN`, `NET`: where the keyword is, and the argument if it parsed.
    singles: BTreeMap<&'static str, (Pos, Option<Tok>)>,
    run_lines: Vec<Pos>,
    runs: Vec<Run>,
    env: Vec<(Tok, Tok)>,
    inputs: Vec<(Tok, Tok)>,
    outputs: Vec<(Tok, Tok)>,
    uploads: Vec<(Tok, Tok)>,
    requirements: Vec<(Tok, Placed)>,
    /// Where the first `ENV`, `INPUT`, `OUTPUT`, `UPLOAD`, `REQUIRE` keyword is.
    first_keyword: BTreeMap<&'static str, Pos>,
    /// (instruction, name) → the line it was first given on.
    names: BTreeMap<(&'static str, String), u32>,
}

impl Parser {
    fn new(file: &str) -> Self {
        Parser {
            file: file.to_string(),
            errors: Vec::new(),
            first_instruction: None,
            first_other: None,
            misspelt: BTreeSet::new(),
            singles: BTreeMap::new(),
            run_lines: Vec::new(),
            runs: Vec::new(),
            env: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            uploads: Vec::new(),
            requirements: Vec::new(),
            first_keyword: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    fn error(&mut self, at: Pos, message: impl Into<String>, help: impl Into<String>) {
        self.errors.push(Diagnostic {
            location: Location { file: self.file.clone(), line: at.line, col: at.col },
            job: None,
            message: message.into(),
            help: help.into(),
        });
    }

    fn problem(&mut self, (at, message, help): Problem) {
        self.error(at, message, help);
    }

    fn instruction(&mut self, line: &Line) {
        let chars = &line.chars;
        let Some(start) = chars.iter().position(|(c, _)| !c.is_whitespace()) else { return };
        let kw_end = chars[start..].iter().position(|(c, _)| c.is_whitespace()).map_or(chars.len(), |n| start + n);
        let written: String = chars[start..kw_end].iter().map(|(c, _)| c).collect();
        let kw_at = chars[start].1;
        let args_end = chars.iter().rposition(|(c, _)| !c.is_whitespace()).map_or(kw_end, |n| n + 1).max(kw_end);
        let args_start =
            chars[kw_end..args_end].iter().position(|(c, _)| !c.is_whitespace()).map_or(args_end, |n| kw_end + n);
        let args = &chars[args_start..args_end];
        self.first_instruction.get_or_insert(kw_at);
        let upper = written.to_ascii_uppercase();
        let Some(&(keyword, _)) = INSTRUCTIONS.iter().find(|(k, _)| *k == upper) else {
            let (help, meant) = unknown_help(&upper);
            self.misspelt.extend(meant);
            self.error(kw_at, format!("unknown instruction `{written}`"), help);
            return;
        };
        if keyword == "FROM" {
            if let Some((first, _)) = self.singles.get("FROM") {
                let line = first.line;
                self.error(
                    kw_at,
                    "a second `FROM`",
                    format!("a run file runs one image: keep one `FROM` (the first is on line {line})"),
                );
                return;
            }
            if let Some((other, at)) = &self.first_other {
                let help =
                    format!("move it above line {} (`{other}`): `FROM` comes before every other instruction", at.line);
                self.error(kw_at, "`FROM` is not the first instruction", help);
            }
        } else if self.first_other.is_none() && !self.singles.contains_key("FROM") {
            self.first_other = Some((keyword.to_string(), kw_at));
        }
        match keyword {
            "FROM" | "ID" | "WORKDIR" | "USER" | "STDIN" | "NET" => self.single(keyword, kw_at, args),
            "RUN" => self.run(kw_at, args),
            "ENV" | "REQUIRE" => self.key_values(keyword, kw_at, args),
            _ => self.pair(keyword, kw_at, args),
        }
    }

    /// The arguments as words, or None with the problem reported.
    fn words(&mut self, args: &[(char, Pos)]) -> Option<Vec<Word>> {
        words(args).map_err(|p| self.problem(p)).ok()
    }

    /// Exactly `n` arguments, or None with the problem reported.
    fn exactly(&mut self, keyword: &'static str, kw_at: Pos, args: &[(char, Pos)], n: usize) -> Option<Vec<Word>> {
        let words = self.words(args)?;
        if words.len() == n {
            return Some(words);
        }
        let count = if n == 1 { "one argument" } else { "two arguments" };
        let help = format!("write `{}`; quote an argument that holds spaces: \"a b\"", usage(keyword));
        let (at, message) = match words.get(n) {
            Some(extra) => (extra.at, format!("`{keyword}` takes {count}, not {}", words.len())),
            None if words.is_empty() => (kw_at, format!("`{keyword}` needs {count}")),
            None => (kw_at, format!("`{keyword}` takes {count}, not {}", words.len())),
        };
        self.error(at, message, help);
        None
    }

    /// `FROM`, `ID`, `WORKDIR`, `USER`, `STDIN`, `NET`: once, with one argument.
    fn single(&mut self, keyword: &'static str, kw_at: Pos, args: &[(char, Pos)]) {
        if let Some((first, _)) = self.singles.get(keyword) {
            let line = first.line;
            self.error(kw_at, format!("`{keyword}` is given twice"), format!("keep one (the first is on line {line})"));
            return;
        }
        let mut tok = self.exactly(keyword, kw_at, args, 1).and_then(|w| w.first().map(Word::tok));
        if keyword == "NET"
            && let Some(t) = tok.take()
        {
            match t.text.to_ascii_lowercase().as_str() {
                "on" => tok = Some(Tok { text: "true".into(), at: t.at }),
                "off" => tok = Some(Tok { text: "false".into(), at: t.at }),
                _ => self.error(
                    t.at,
                    format!("`NET` is `on` or `off`, not `{}`", t.text),
                    "write `NET on` to give the job a network, `NET off` (the default) for none",
                ),
            }
        }
        self.singles.insert(keyword, (kw_at, tok));
    }

    /// Reports `name` if `keyword` already gave it; else remembers it.
    fn first_time(&mut self, keyword: &'static str, name: &Tok, what: &str) -> bool {
        match self.names.get(&(keyword, name.text.clone())) {
            Some(&line) => {
                self.error(
                    name.at,
                    format!("{what} `{}` is given twice", name.text),
                    format!("keep one (the first is on line {line})"),
                );
                false
            }
            None => {
                self.names.insert((keyword, name.text.clone()), name.at.line);
                true
            }
        }
    }

    /// `INPUT`, `OUTPUT`, `UPLOAD`: a name and a value.
    fn pair(&mut self, keyword: &'static str, kw_at: Pos, args: &[(char, Pos)]) {
        self.first_keyword.entry(keyword).or_insert(kw_at);
        let Some(words) = self.exactly(keyword, kw_at, args, 2) else { return };
        let (name, value) = (words[0].tok(), words[1].tok());
        let what = match keyword {
            "INPUT" => "input",
            "OUTPUT" => "output",
            _ => "the upload of",
        };
        if !self.first_time(keyword, &name, what) {
            return;
        }
        match keyword {
            "INPUT" => self.inputs.push((name, value)),
            "OUTPUT" => self.outputs.push((name, value)),
            _ => self.uploads.push((name, value)),
        }
    }

    /// `ENV` and `REQUIRE`: one or more `KEY=VALUE`.
    fn key_values(&mut self, keyword: &'static str, kw_at: Pos, args: &[(char, Pos)]) {
        self.first_keyword.entry(keyword).or_insert(kw_at);
        let Some(words) = self.words(args) else { return };
        let (noun, example) = match keyword {
            "ENV" => ("variable", "ENV NAME=value GREETING=\"hello world\""),
            _ => ("requirement", "REQUIRE cores=2 memory=1GiB timeout=10m"),
        };
        if words.is_empty() {
            self.error(kw_at, format!("`{keyword}` needs at least one `KEY=VALUE`"), format!("write e.g. `{example}`"));
        }
        for word in &words {
            let Some((key, value)) = word.key_value() else {
                let shown: String = word.chars.iter().collect();
                self.error(
                    word.at,
                    format!("`{shown}` is not `KEY=VALUE`"),
                    format!("write e.g. `{example}` (quote a value with spaces; no spaces around `=`)"),
                );
                continue;
            };
            if key.text.is_empty() {
                self.error(
                    word.at,
                    format!("`{keyword}` {noun} without a name before `=`"),
                    format!("write e.g. `{example}`"),
                );
                continue;
            }
            if !self.first_time(keyword, &key, noun) {
                continue;
            }
            if keyword == "ENV" {
                self.env.push((key, value));
                continue;
            }
            let placed = match key.text.as_str() {
                k if STRING_REQUIREMENTS.contains(&k) => Placed::str(&value),
                "cpu_flags" => Placed::new(
                    Some(value.at),
                    Gen::Array(word.value_list().iter().map(|flag| Placed::str(&flag.tok())).collect()),
                ),
                "labels" => {
                    let mut members = Vec::new();
                    for label in word.value_list() {
                        match label.key_value() {
                            Some((k, v)) => members.push((k.text, Some(k.at), Placed::str(&v))),
                            None => self.error(
                                label.at,
                                format!("label `{}` is not `NAME=VALUE`", label.tok().text),
                                "write e.g. `REQUIRE labels=pool=night,zone=eu`",
                            ),
                        }
                    }
                    Placed::new(Some(value.at), Gen::Object(members))
                }
                _ if value.text == "true" || value.text == "false" || is_json_number(&value.text) => {
                    Placed::new(Some(value.at), Gen::Literal(value.text.clone()))
                }
                _ => Placed::str(&value),
            };
            self.requirements.push((key, placed));
        }
    }

    fn run(&mut self, kw_at: Pos, args: &[(char, Pos)]) {
        self.run_lines.push(kw_at);
        let Some(&(first, at)) = args.first() else {
            self.error(kw_at, "`RUN` needs a command", format!("write `{}`", usage("RUN")));
            return;
        };
        let text: String = args.iter().map(|(c, _)| c).collect();
        if first == '[' {
            let strict = args.get(1).is_none_or(|(c, _)| !c.is_whitespace());
            match exec_form(&text, args) {
                Ok(argv) => {
                    self.runs.push(Run::Exec(argv, at));
                    return;
                }
                Err(problem) if strict => {
                    self.problem(problem);
                    return;
                }
                // `[ -f x ] && ...`: the shell's test command.
                Err(_) => {}
            }
        }
        self.runs.push(Run::Shell(Tok { text, at }));
    }

    /// The problems of the whole file: no `FROM`, no `RUN`, an exec form beside other `RUN`s.
    fn finish(&mut self) {
        let start = self.first_instruction.unwrap_or(Pos { line: 1, col: 1 });
        let from_at = self.singles.get("FROM").map(|(at, _)| *at);
        if from_at.is_none() && !self.misspelt.contains("FROM") {
            self.error(
                start,
                "the run file has no `FROM`",
                "start it with `FROM <image>`, e.g. `FROM sha256:<hex>` with a digest `shoal image ls` prints",
            );
        }
        if self.run_lines.is_empty() && !self.misspelt.contains("RUN") {
            self.error(
                from_at.unwrap_or(start),
                "the run file has no `RUN`",
                "add what the job runs: `RUN <shell command>` lines, or one `RUN [\"program\", \"arg\", ...]`",
            );
        }
        let n = self.run_lines.len();
        if n > 1 {
            let execs: Vec<Pos> =
                self.runs.iter().filter_map(|r| if let Run::Exec(_, at) = r { Some(*at) } else { None }).collect();
            for at in execs {
                self.error(
                    at,
                    "an exec-form `RUN [...]` must be the only `RUN`",
                    format!("this file has {n} `RUN` lines: write this one as a shell command (`RUN program arg`), or drop the others"),
                );
            }
        }
    }

    /// The DAG as values to write, and where the image of `FROM` is written.
    fn generate(&self) -> (Placed, Option<Pos>) {
        let arg = |k: &str| self.singles.get(k).and_then(|(_, t)| t.as_ref());
        let kw = |k: &str| self.singles.get(k).map(|(at, _)| *at);
        let from_kw = kw("FROM");
        let mut job: Vec<(String, Option<Pos>, Placed)> = Vec::new();
        let id = match arg("ID") {
            Some(t) => Placed::str(t),
            None => Placed::new(None, Gen::Str(DEFAULT_JOB_ID.into())),
        };
        job.push(("id".into(), kw("ID"), id));
        // What is missing was reported; a stand-in lets the rest still be checked.
        let image = match arg("FROM") {
            Some(t) => Placed::str(t),
            None => Placed::new(None, Gen::Str("busybox".into())),
        };
        job.push(("image".into(), from_kw, image));
        job.push(("command".into(), self.run_lines.first().copied(), self.command()));
        let map = |pairs: &[(Tok, Tok)]| {
            Gen::Object(pairs.iter().map(|(k, v)| (k.text.clone(), Some(k.at), Placed::str(v))).collect())
        };
        for (key, keyword, pairs) in
            [("env", "ENV", &self.env), ("inputs", "INPUT", &self.inputs), ("outputs", "OUTPUT", &self.outputs)]
        {
            if !pairs.is_empty() {
                let at = self.first_keyword.get(keyword).copied();
                job.push((key.into(), at, Placed::new(at, map(pairs))));
            }
        }
        for (key, keyword) in [("workdir", "WORKDIR"), ("user", "USER"), ("stdin", "STDIN")] {
            if let Some(t) = arg(keyword) {
                job.push((key.into(), kw(keyword), Placed::str(t)));
            }
        }
        if let Some(t) = arg("NET") {
            job.push(("net".into(), kw("NET"), Placed::new(Some(t.at), Gen::Literal(t.text.clone()))));
        }
        if !self.uploads.is_empty() {
            let at = self.first_keyword.get("UPLOAD").copied();
            job.push(("upload".into(), at, Placed::new(at, map(&self.uploads))));
        }
        if !self.requirements.is_empty() {
            let at = self.first_keyword.get("REQUIRE").copied();
            let members = self.requirements.iter().map(|(k, v)| (k.text.clone(), Some(k.at), v.clone())).collect();
            job.push(("requirements".into(), at, Placed::new(at, Gen::Object(members))));
        }
        let root_at = from_kw.or(self.first_instruction).unwrap_or(Pos { line: 1, col: 1 });
        let root = Placed::new(
            Some(root_at),
            Gen::Object(vec![
                ("version".into(), None, Placed::new(None, Gen::Literal("1".into()))),
                (
                    "jobs".into(),
                    None,
                    Placed::new(Some(root_at), Gen::Array(vec![Placed::new(Some(root_at), Gen::Object(job))])),
                ),
            ]),
        );
        (root, arg("FROM").map(|t| t.at))
    }

    fn command(&self) -> Placed {
        match self.runs.as_slice() {
            [Run::Exec(argv, at)] => Placed::new(Some(*at), Gen::Array(argv.iter().map(Placed::str).collect())),
            runs if !runs.is_empty() && runs.iter().all(|r| matches!(r, Run::Shell(_))) => {
                let mut script = String::from("set -e");
                let mut first_at = None;
                for run in runs {
                    if let Run::Shell(t) = run {
                        script.push('\n');
                        script.push_str(&t.text);
                        first_at.get_or_insert(t.at);
                    }
                }
                let s = |text: &str| Placed::new(first_at, Gen::Str(text.into()));
                Placed::new(first_at, Gen::Array(vec![s("/bin/sh"), s("-c"), s(&script)]))
            }
            // Reported (no `RUN`, or an exec form beside others); a stand-in lets the rest be checked.
            _ => Placed::new(None, Gen::Array(vec![Placed::new(None, Gen::Str("true".into()))])),
        }
    }
}

/// `RUN ["program", "arg", ...]`: the argv, each element where it is written; or the problem.
fn exec_form(text: &str, args: &[(char, Pos)]) -> Result<Vec<Tok>, Problem> {
    // The text is one line: the JSON parser's column is a character index into `args`.
    let at = |pos: Pos| -> Pos {
        let i = usize::try_from(pos.col.saturating_sub(1)).unwrap_or(usize::MAX);
        match args.get(i) {
            Some(&(_, p)) => p,
            None => args.last().map_or(Pos { line: 1, col: 1 }, |&(_, p)| after(p)),
        }
    };
    let help = "write `RUN [\"program\", \"arg\", ...]` (double-quoted strings, JSON escapes), or a shell command without the leading `[`";
    // Only a top-level object's key is ever taken, and an exec form is an array.
    let node = json::parse_taking(text, "", &mut |_| {}).map_err(|e| {
        (at(e.pos), format!("the exec form of `RUN` is not a JSON array: {}", e.message), help.to_string())
    })?;
    let Value::Array(items) = node.value else {
        return Err((at(node.pos), "the exec form of `RUN` is not a JSON array".into(), help.into()));
    };
    if items.is_empty() {
        return Err((
            at(node.pos),
            "the exec form of `RUN` is empty".into(),
            "give the program to run and its arguments: `RUN [\"echo\", \"hi\"]`".into(),
        ));
    }
    let mut argv = Vec::with_capacity(items.len());
    for item in items {
        match item.value {
            Value::String(s) => argv.push(Tok { text: s, at: at(item.pos) }),
            other => {
                return Err((
                    at(item.pos),
                    format!("the exec form's elements must be strings, not {}", other.type_name()),
                    "quote it: every argument is a string".into(),
                ));
            }
        }
    }
    Ok(argv)
}

/// A byte range of the generated DAG text and the run-file token it came from.
struct Span {
    start: usize,
    end: usize,
    /// The line of the generated text it starts on.
    line: u32,
    at: Pos,
}

/// The generated DAG text, and where each piece of it came from.
struct Generated {
    text: String,
    line: u32,
    spans: Vec<Span>,
    /// Byte offset of the start of each line of `text` (line 1 first).
    line_starts: Vec<usize>,
}

impl Generated {
    fn write(root: &Placed) -> Generated {
        let mut g = Generated { text: String::new(), line: 1, spans: Vec::new(), line_starts: Vec::new() };
        g.value(root, true);
        g.line_starts = std::iter::once(0).chain(g.text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        g
    }

    /// Starts a new line (but not the first), so each line holds at most one token that came
    /// from the run file.
    fn new_line(&mut self, first: bool) {
        if !first {
            self.text.push('\n');
            self.line += 1;
        }
    }

    fn begin(&mut self, at: Option<Pos>) -> Option<usize> {
        let start = self.text.len();
        at.map(|at| {
            self.spans.push(Span { start, end: start, line: self.line, at });
            self.spans.len() - 1
        })
    }

    fn end(&mut self, span: Option<usize>) {
        if let Some(i) = span {
            self.spans[i].end = self.text.len();
        }
    }

    fn token(&mut self, token: &str, at: Option<Pos>) {
        self.new_line(false);
        let span = self.begin(at);
        self.text.push_str(token);
        self.end(span);
    }

    fn value(&mut self, placed: &Placed, first: bool) {
        match &placed.value {
            Gen::Str(s) => self.token(&json_string(s), placed.at),
            Gen::Literal(s) => self.token(s, placed.at),
            Gen::Array(items) => {
                self.new_line(first);
                let span = self.begin(placed.at);
                self.text.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    self.value(item, false);
                }
                self.text.push(']');
                self.end(span);
            }
            Gen::Object(members) => {
                self.new_line(first);
                let span = self.begin(placed.at);
                self.text.push('{');
                for (i, (key, key_at, value)) in members.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    self.token(&json_string(key), *key_at);
                    self.text.push(':');
                    self.value(value, false);
                }
                self.text.push('}');
                self.end(span);
            }
        }
    }

    /// The run-file position of the generated text's `line:col`: of the innermost piece that
    /// holds it, else of the piece before it.
    fn run_file_pos(&self, line: u32, col: u32) -> Pos {
        let line_index = usize::try_from(line.saturating_sub(1)).unwrap_or(usize::MAX);
        let offset = match self.line_starts.get(line_index) {
            Some(&start) => {
                let rest = &self.text[start..];
                let chars = usize::try_from(col.saturating_sub(1)).unwrap_or(usize::MAX);
                start + rest.char_indices().nth(chars).map_or(rest.len(), |(i, _)| i)
            }
            None => self.text.len(),
        };
        // Spans are in the order they start (the text is written front to back).
        let before = self.spans.partition_point(|s| s.start <= offset);
        let spans = &self.spans[..before];
        let holding = spans.iter().rev().find(|s| offset < s.end).or(spans.last());
        holding.map_or(Pos { line: 1, col: 1 }, |s| s.at)
    }

    /// The run-file line of a line of the generated text (the token that starts on it).
    fn run_file_line(&self, line: u32) -> Option<u32> {
        let i = self.spans.partition_point(|s| s.line < line);
        self.spans.get(i).filter(|s| s.line == line).map(|s| s.at.line)
    }

    /// `d`, found in the generated text, moved to the run file.
    fn map_back(&self, d: Diagnostic) -> Diagnostic {
        let at = self.run_file_pos(d.location.line, d.location.col);
        Diagnostic {
            location: Location { file: d.location.file, line: at.line, col: at.col },
            job: d.job,
            message: self.remap_line_refs(&d.message),
            help: self.remap_line_refs(&d.help),
        }
    }

    /// `text` with each `line N` outside backquotes (the validator's "the first is on line N")
    /// naming the run file's line instead of the generated text's.
    fn remap_line_refs(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut quoted = false;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c == '`' {
                quoted = !quoted;
            }
            let word_start = !out.chars().next_back().is_some_and(char::is_alphanumeric);
            if !quoted
                && word_start
                && let Some(after) = rest.strip_prefix("line ")
            {
                let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                if let Some(line) = after[..digits].parse::<u32>().ok().and_then(|n| self.run_file_line(n)) {
                    out.push_str("line ");
                    out.push_str(&line.to_string());
                    rest = &after[digits..];
                    continue;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

fn json_string(s: &str) -> String {
    // Serializing a str cannot fail; the fallback is never taken.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_words(input: &str, expected: &[&str]) {
        let args: Vec<(char, Pos)> =
            input.chars().enumerate().map(|(i, c)| (c, Pos { line: 1, col: saturating_u32(i + 1) })).collect();
        let got: Vec<String> = words(&args).unwrap().iter().map(|w| w.chars.iter().collect()).collect();
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn words_split_at_blanks_outside_quotes() {
        check_words("a b\tc", &["a", "b", "c"]);
        check_words(r#"A="x y" B=z"#, &["A=x y", "B=z"]);
        check_words(r#"A="q\"uote\\d" "#, &["A=q\"uote\\d"]);
        check_words(r#"A="a\nb""#, &["A=a\\nb"]);
        check_words(r#"x"y z"w"#, &["xy zw"]);
        check_words("", &[]);
    }

    #[test]
    fn json_numbers() {
        for yes in ["0", "-1", "12", "1.5", "2e3", "-0.5E-2"] {
            assert!(is_json_number(yes), "{yes}");
        }
        for no in ["", "-", "01", "1.", ".5", "1e", "2GiB", "0x1", "+1"] {
            assert!(!is_json_number(no), "{no}");
        }
    }

    #[test]
    fn continuation_lines_join_and_keep_positions() {
        let mut lines = Vec::new();
        let dangling = logical_lines("RUN a \\  \n  # skipped\n\n   b\nRUN c\\", &mut |l| lines.push(l.chars.clone()));
        assert_eq!(lines.len(), 2);
        let text: String = lines[0].iter().map(|(c, _)| c).collect();
        assert_eq!(text, "RUN a    b");
        assert_eq!(lines[0][9].1, Pos { line: 4, col: 4 });
        assert_eq!(dangling, Some(Pos { line: 5, col: 6 }));
    }

    #[test]
    fn line_references_are_moved_outside_quotes_only() {
        let g = Generated {
            text: String::new(),
            line: 1,
            spans: vec![Span { start: 0, end: 1, line: 7, at: Pos { line: 3, col: 1 } }],
            line_starts: vec![0],
        };
        assert_eq!(g.remap_line_refs("on line 7; `line 7` (line 7)"), "on line 3; `line 7` (line 3)");
        assert_eq!(g.remap_line_refs("on line 8, baseline 7"), "on line 8, baseline 7");
    }
}
