//! The catalogue: curated images, the media types they read and write, their options (rendered
//! as a form by the page) and the argv template those options fill. Loaded once from TOML and
//! checked whole: every problem of the file is reported, each naming its image and option.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The catalogue shipped in the binary.
pub const BUILTIN: &str = include_str!("../../explorer/catalogue.toml");
/// The catalogue format this code reads.
const CATALOGUE_VERSION: u32 = 1;
/// Default limits of one run: the seed's "1 CPU, some memory, seconds".
const TIMEOUT_DEFAULT: &str = "10s";
const MEMORY_DEFAULT: &str = "512MiB";
const OUTPUT_SIZE_DEFAULT: &str = "16MiB";
/// Longest a string option may be unless its entry says otherwise, in bytes.
const STRING_LEN_DEFAULT: usize = 256;
/// Where input files appear in the sandbox.
pub const INPUT_DIR: &str = "/input";

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    version: u32,
    #[serde(default)]
    types: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "image")]
    images: Vec<EntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    id: String,
    title: String,
    #[serde(default)]
    description: String,
    image: String,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    outputs: Vec<String>,
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout: Option<String>,
    memory: Option<String>,
    output_size: Option<String>,
    /// Whether its runs get a network (outbound only); never for anonymous runs of a public explorer.
    #[serde(default)]
    network: bool,
    #[serde(default)]
    options: Vec<OptionFile>,
    #[serde(default)]
    example: Vec<Example>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionFile {
    name: String,
    label: Option<String>,
    #[serde(default)]
    help: String,
    #[serde(rename = "type")]
    kind: String,
    default: Option<toml::Value>,
    #[serde(default)]
    choices: Vec<ChoiceFile>,
    min: Option<i64>,
    max: Option<i64>,
    flag: Option<String>,
    off: Option<String>,
    max_len: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChoiceFile {
    Plain(String),
    Labelled { value: String, label: String },
}

/// A file the page starts with when this image is chosen.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub name: String,
    pub text: String,
}

/// The checked catalogue.
#[derive(Clone, Debug, Serialize)]
pub struct Catalogue {
    /// Media type -> file extensions (without the dot).
    pub types: BTreeMap<String, Vec<String>>,
    pub entries: Vec<Entry>,
}

/// One image of the catalogue.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub id: String,
    pub title: String,
    pub description: String,
    /// The image's tag in the store.
    pub image: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes_max: u64,
    /// Runs get a network (outbound only): token holders only on a public explorer.
    pub network: bool,
    pub options: Vec<OptionSpec>,
    pub examples: Vec<Example>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OptionSpec {
    pub name: String,
    pub label: String,
    pub help: String,
    #[serde(flatten)]
    pub kind: OptionKind,
}

/// What an option is, and so which form field the page draws for it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OptionKind {
    /// A select.
    Choice { choices: Vec<Choice>, default: String },
    /// A number field with bounds.
    Integer { min: i64, max: i64, default: i64 },
    /// A checkbox: `flag` when on, `off` when off.
    Boolean { flag: String, off: String, default: bool },
    /// A text field.
    String { max_len: usize, default: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

/// One thing wrong with a request's options; part of the API's error body (`api::ErrorBody`),
/// its fields in the order of their names as that body has always had them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub message: String,
    /// The option's name (empty for the request as a whole).
    pub option: String,
}

/// A job's argv and environment, rendered from a template and options.
#[derive(Debug, PartialEq, Eq)]
pub struct Rendered {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Names a placeholder may take besides the options.
const BUILTIN_PLACEHOLDERS: [&str; 2] = ["main", "files"];

impl Catalogue {
    /// Parses and checks a catalogue, naming every problem.
    pub fn parse(source: &str, text: &str) -> Result<Catalogue, String> {
        let file: CatalogueFile = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        let mut problems = Vec::new();
        if file.version != CATALOGUE_VERSION {
            problems.push(format!("`version` is {}; this shoal reads version {CATALOGUE_VERSION}", file.version));
        }
        let mut ids = BTreeSet::new();
        let mut entries = Vec::new();
        for e in file.images {
            let at = format!("image `{}`", e.id);
            if !ids.insert(e.id.clone()) {
                problems.push(format!("{at}: the id is used twice; ids must be unique"));
            }
            if !plain_id(&e.id) {
                problems.push(format!("{at}: an id uses letters, digits, `-` and `_` only"));
            }
            if e.command.is_empty() {
                problems.push(format!("{at}: `command` is empty"));
            }
            let mut limit =
                |what: &str, given: &Option<String>, default: &str, parse: fn(&str) -> Result<u64, String>| {
                    let text = given.as_deref().unwrap_or(default);
                    parse(text).unwrap_or_else(|e| {
                        problems.push(format!("{at}: `{what}` = {text:?}: {e}"));
                        0
                    })
                };
            let timeout_ms = limit("timeout", &e.timeout, TIMEOUT_DEFAULT, shoal_dag::parse_duration_ms);
            let memory_bytes = limit("memory", &e.memory, MEMORY_DEFAULT, shoal_dag::parse_size);
            let output_bytes_max = limit("output_size", &e.output_size, OUTPUT_SIZE_DEFAULT, shoal_dag::parse_size);
            let mut options = Vec::new();
            let mut names = BTreeSet::new();
            for o in e.options {
                let at = format!("{at}, option `{}`", o.name);
                if !names.insert(o.name.clone()) {
                    problems.push(format!("{at}: the name is used twice"));
                }
                if !option_name(&o.name) || BUILTIN_PLACEHOLDERS.contains(&o.name.as_str()) {
                    problems.push(format!(
                        "{at}: a name starts with a lowercase letter and uses a-z, 0-9 and `_` (not `main` or `files`)"
                    ));
                }
                match option_spec(o) {
                    Ok(spec) => options.push(spec),
                    Err(why) => problems.push(format!("{at}: {why}")),
                }
            }
            let known: BTreeSet<&str> = options.iter().map(|o| o.name.as_str()).chain(BUILTIN_PLACEHOLDERS).collect();
            for t in e.command.iter().chain(e.env.values()) {
                for p in placeholders(t).iter().filter(|p| !known.contains(p.as_str())) {
                    problems.push(format!("{at}: the template `{t}` names `{{{p}}}`, which is no option"));
                }
            }
            for x in &e.example {
                if !input_name(&x.name) {
                    problems.push(format!("{at}: the example file name `{}` is not a plain file name", x.name));
                }
            }
            entries.push(Entry {
                id: e.id,
                title: e.title,
                description: e.description,
                image: e.image,
                inputs: e.inputs,
                outputs: e.outputs,
                command: e.command,
                env: e.env,
                timeout_ms,
                memory_bytes,
                output_bytes_max,
                network: e.network,
                options,
                examples: e.example,
            });
        }
        if problems.is_empty() {
            Ok(Catalogue { types: file.types, entries })
        } else {
            Err(format!("{source}: {}", problems.join("; ")))
        }
    }

    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The media type of a file, by its extension (`text/plain` when unknown).
    pub fn media_type_of(&self, name: &str) -> &str {
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        self.types.iter().find(|(_, exts)| exts.contains(&ext)).map(|(t, _)| t.as_str()).unwrap_or("text/plain")
    }
}

fn option_spec(o: OptionFile) -> Result<OptionSpec, String> {
    let label = o.label.clone().unwrap_or_else(|| o.name.clone());
    let unused = |what: &str, present: bool| {
        if present { Err(format!("`{what}` does not apply to a {}", o.kind)) } else { Ok(()) }
    };
    let kind = match o.kind.as_str() {
        "choice" => {
            unused("min/max", o.min.is_some() || o.max.is_some())?;
            let choices: Vec<Choice> = o
                .choices
                .into_iter()
                .map(|c| match c {
                    ChoiceFile::Plain(v) => Choice { label: v.clone(), value: v },
                    ChoiceFile::Labelled { value, label } => Choice { value, label },
                })
                .collect();
            if choices.is_empty() {
                return Err("a choice needs `choices`".into());
            }
            let default = match &o.default {
                Some(toml::Value::String(s)) => s.clone(),
                None => choices[0].value.clone(),
                Some(other) => return Err(format!("`default` = {other} is not a string")),
            };
            if !choices.iter().any(|c| c.value == default) {
                return Err(format!("`default` = {default:?} is not one of the choices"));
            }
            OptionKind::Choice { choices, default }
        }
        "integer" => {
            let (Some(min), Some(max)) = (o.min, o.max) else { return Err("an integer needs `min` and `max`".into()) };
            if min > max {
                return Err(format!("`min` {min} is above `max` {max}"));
            }
            let default = match &o.default {
                Some(toml::Value::Integer(i)) => *i,
                None => min,
                Some(other) => return Err(format!("`default` = {other} is not an integer")),
            };
            if !(min..=max).contains(&default) {
                return Err(format!("`default` {default} is outside {min}..={max}"));
            }
            OptionKind::Integer { min, max, default }
        }
        "boolean" => {
            let flag = o.flag.clone().ok_or("a boolean needs `flag`, its text when on")?;
            let default = match &o.default {
                Some(toml::Value::Boolean(b)) => *b,
                None => false,
                Some(other) => return Err(format!("`default` = {other} is not true or false")),
            };
            OptionKind::Boolean { flag, off: o.off.clone().unwrap_or_default(), default }
        }
        "string" => {
            let default = match &o.default {
                Some(toml::Value::String(s)) => s.clone(),
                None => String::new(),
                Some(other) => return Err(format!("`default` = {other} is not a string")),
            };
            OptionKind::String { max_len: o.max_len.unwrap_or(STRING_LEN_DEFAULT), default }
        }
        other => return Err(format!("`type` = {other:?}; use choice, integer, boolean or string")),
    };
    if !matches!(kind, OptionKind::Boolean { .. }) {
        unused("flag/off", o.flag.is_some() || o.off.is_some())?;
    }
    Ok(OptionSpec { name: o.name, label, help: o.help, kind })
}

/// Catalogue ids: `gcc`, `python3`, `my-tool_2`.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn option_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Input file names follow the DAG's rule for input names: a letter or digit first, then
/// letters, digits, `.`, `_` and `-`, at most 128 bytes.
pub fn input_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A piece of a template: literal text or a placeholder.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Brace,
    Name(&'a str),
}

/// Splits a template into text and placeholders. A placeholder is `{name}` with a name as options
/// have (`[a-z][a-z0-9_]*`); any other brace is text, so shell code such as `${b%.*}` needs no
/// escaping; `{{` and `}}` are a literal `{` and `}`.
fn pieces(t: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push(Piece::Brace);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push(Piece::Text("}"));
            rest = after;
        } else if let Some(end) = tail.find('}').filter(|&end| end > 0 && option_name(&tail[1..end])) {
            out.push(Piece::Name(&tail[1..end]));
            rest = &tail[end + 1..];
        } else {
            out.push(Piece::Text(&tail[..1]));
            rest = &tail[1..];
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

fn placeholders(t: &str) -> Vec<String> {
    pieces(t).into_iter().filter_map(|p| if let Piece::Name(n) = p { Some(n.to_string()) } else { None }).collect()
}

impl Entry {
    /// Every option with its value: the request's, checked, or the default. Reports every problem.
    pub fn normalize(&self, given: &BTreeMap<String, Value>) -> Result<BTreeMap<String, Value>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut out = BTreeMap::new();
        for name in given.keys().filter(|n| !self.options.iter().any(|o| &o.name == *n)) {
            let known: Vec<&str> = self.options.iter().map(|o| o.name.as_str()).collect();
            problems.push(Problem {
                option: name.clone(),
                message: format!(
                    "`{}` has no option `{name}`; its options are: {}",
                    self.id,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            });
        }
        for o in &self.options {
            let v = given.get(&o.name);
            let bad = |message: String| Problem { option: o.name.clone(), message };
            let value = match (&o.kind, v) {
                (OptionKind::Choice { default, .. }, None) => Ok(Value::from(default.clone())),
                (OptionKind::Choice { choices, .. }, Some(Value::String(s)))
                    if choices.iter().any(|c| &c.value == s) =>
                {
                    Ok(Value::from(s.clone()))
                }
                (OptionKind::Choice { choices, .. }, Some(other)) => {
                    let list: Vec<&str> = choices.iter().map(|c| c.value.as_str()).collect();
                    Err(bad(format!("{}: {other} is not one of {}", o.label, list.join(", "))))
                }
                (OptionKind::Integer { default, .. }, None) => Ok(Value::from(*default)),
                (OptionKind::Integer { min, max, .. }, Some(v)) => {
                    let n = match v {
                        Value::Number(n) => n.as_i64(),
                        Value::String(s) => s.trim().parse::<i64>().ok(),
                        _ => None,
                    };
                    match n {
                        Some(n) if (*min..=*max).contains(&n) => Ok(Value::from(n)),
                        Some(n) => Err(bad(format!("{}: {n} is outside {min} to {max}", o.label))),
                        None => Err(bad(format!("{}: {v} is not a whole number (give {min} to {max})", o.label))),
                    }
                }
                (OptionKind::Boolean { default, .. }, None) => Ok(Value::from(*default)),
                (OptionKind::Boolean { .. }, Some(Value::Bool(b))) => Ok(Value::from(*b)),
                (OptionKind::Boolean { .. }, Some(other)) => {
                    Err(bad(format!("{}: {other} is not true or false", o.label)))
                }
                (OptionKind::String { default, .. }, None) => Ok(Value::from(default.clone())),
                (OptionKind::String { max_len, .. }, Some(Value::String(s))) => {
                    if s.len() > *max_len {
                        Err(bad(format!("{}: {} bytes; at most {max_len}", o.label, s.len())))
                    } else if s.chars().any(char::is_control) {
                        Err(bad(format!("{}: holds a control character (a newline, a tab, ...)", o.label)))
                    } else {
                        Ok(Value::from(s.clone()))
                    }
                }
                (OptionKind::String { .. }, Some(other)) => Err(bad(format!("{}: {other} is not text", o.label))),
            };
            match value {
                Ok(v) => {
                    out.insert(o.name.clone(), v);
                }
                Err(p) => problems.push(p),
            }
        }
        if problems.is_empty() { Ok(out) } else { Err(problems) }
    }

    /// The argv and environment for normalized `options`, `main` (the file to run) and
    /// `files` (every input's name, sorted).
    pub fn render(&self, options: &BTreeMap<String, Value>, main: Option<&str>, files: &[String]) -> Rendered {
        let text_of = |name: &str| -> String {
            if name == "main" {
                return main.map(|m| format!("{INPUT_DIR}/{m}")).unwrap_or_default();
            }
            let Some(spec) = self.options.iter().find(|o| o.name == name) else { return String::new() };
            match (&spec.kind, options.get(name)) {
                (OptionKind::Boolean { flag, off, .. }, Some(Value::Bool(b))) => {
                    if *b {
                        flag.clone()
                    } else {
                        off.clone()
                    }
                }
                (_, Some(Value::String(s))) => s.clone(),
                (_, Some(Value::Number(n))) => n.to_string(),
                _ => String::new(),
            }
        };
        // Returns the text and whether some placeholder came out empty.
        let fill = |t: &str| -> (String, bool) {
            let mut s = String::new();
            let mut empty = false;
            for p in pieces(t) {
                match p {
                    Piece::Text(x) => s.push_str(x),
                    Piece::Brace => s.push('{'),
                    Piece::Name(n) => {
                        let v = text_of(n);
                        empty |= v.is_empty();
                        s.push_str(&v);
                    }
                }
            }
            (s, empty)
        };
        let mut command = Vec::new();
        for t in &self.command {
            if t == "{files}" {
                command.extend(files.iter().map(|f| format!("{INPUT_DIR}/{f}")));
                continue;
            }
            let (s, empty) = fill(t);
            if !empty {
                command.push(s);
            }
        }
        let env = self.env.iter().map(|(k, t)| (k.clone(), fill(t).0)).collect();
        Rendered { command, env }
    }

    /// Whether the template runs a particular file (`{main}`).
    pub fn needs_main(&self) -> bool {
        self.command.iter().chain(self.env.values()).any(|t| t.contains("{main}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalogue(entry: &str) -> Result<Catalogue, String> {
        Catalogue::parse("test.toml", &format!("version = 1\n[types]\n\"text/x-c\" = [\"c\", \"h\"]\n{entry}"))
    }

    const ENTRY: &str = r#"
[[image]]
id = "t"
title = "T"
image = "busybox:latest"
command = ["tool", "-x{level}", "{loud}", "-D{define}", "{files}", "{main}", "{{literal}}", "${x%.*}"]
env = { MODE = "{mode}", LOUD = "{loud}" }
[[image.options]]
name = "level"
type = "integer"
min = 0
max = 3
default = 1
[[image.options]]
name = "loud"
type = "boolean"
flag = "--loud"
[[image.options]]
name = "define"
type = "string"
max_len = 8
[[image.options]]
name = "mode"
type = "choice"
choices = ["a", { value = "b", label = "Bee" }]
default = "b"
"#;

    #[test]
    fn the_builtin_catalogue_parses_and_names_the_four_tools() {
        let c = Catalogue::parse("builtin", BUILTIN).unwrap();
        let ids: Vec<&str> = c.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["gcc", "python3", "dot", "sh"]);
        for e in &c.entries {
            assert!(e.normalize(&BTreeMap::new()).is_ok(), "{}: defaults are valid", e.id);
            assert!(!e.examples.is_empty(), "{} has an example", e.id);
        }
        assert_eq!(c.media_type_of("main.C"), "text/x-c");
        assert_eq!(c.media_type_of("g.gv"), "text/vnd.graphviz");
        assert_eq!(c.media_type_of("README"), "text/plain");
    }

    #[test]
    fn rendering_fills_drops_empty_elements_and_expands_files() {
        let c = catalogue(ENTRY).unwrap();
        let e = c.entry("t").unwrap();
        let check = |given: serde_json::Value, want: &[&str], want_env: &[(&str, &str)]| {
            let given: BTreeMap<String, Value> = serde_json::from_value(given).unwrap();
            let opts = e.normalize(&given).unwrap();
            let r = e.render(&opts, Some("a.c"), &["a.c".into(), "b.h".into()]);
            assert_eq!(r.command, want, "{given:?}");
            let env: BTreeMap<String, String> = want_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(r.env, env);
        };
        check(
            json!({}),
            &["tool", "-x1", "/input/a.c", "/input/b.h", "/input/a.c", "{literal}", "${x%.*}"],
            &[("LOUD", ""), ("MODE", "b")],
        );
        check(
            json!({"level": "3", "loud": true, "define": "N=2", "mode": "a"}),
            &["tool", "-x3", "--loud", "-DN=2", "/input/a.c", "/input/b.h", "/input/a.c", "{literal}", "${x%.*}"],
            &[("LOUD", "--loud"), ("MODE", "a")],
        );
    }

    #[test]
    fn every_bad_option_is_reported_at_once() {
        let c = catalogue(ENTRY).unwrap();
        let e = c.entry("t").unwrap();
        let given: BTreeMap<String, Value> = serde_json::from_value(
            json!({"level": 9, "loud": "yes", "define": "much too long", "mode": "c", "colour": 1}),
        )
        .unwrap();
        let problems = e.normalize(&given).unwrap_err();
        let named: Vec<&str> = problems.iter().map(|p| p.option.as_str()).collect();
        assert_eq!(named, ["colour", "level", "loud", "define", "mode"]);
        assert!(problems[1].message.contains("9 is outside 0 to 3"), "{problems:?}");
        assert!(problems[4].message.contains("not one of a, b"), "{problems:?}");
        let nl: BTreeMap<String, Value> = serde_json::from_value(json!({"define": "a\nb"})).unwrap();
        assert!(e.normalize(&nl).unwrap_err()[0].message.contains("control character"));
    }

    #[test]
    fn catalogue_mistakes_are_all_named() {
        let bad = r#"
[[image]]
id = "x y"
title = "X"
image = "i"
command = ["run", "{nosuch}", "${shell%.*}"]
timeout = "soon"
[[image.options]]
name = "n"
type = "integer"
min = 5
max = 1
[[image.options]]
name = "c"
type = "choice"
choices = ["a"]
default = "z"
"#;
        let err = catalogue(bad).unwrap_err();
        for want in [
            "an id uses letters",
            "`timeout` = \"soon\"",
            "`min` 5 is above `max` 1",
            "\"z\" is not one of the choices",
            "names `{nosuch}`, which is no option",
        ] {
            assert!(err.contains(want), "missing {want:?} in: {err}");
        }
    }

    #[test]
    fn input_names_follow_the_dag_rule() {
        for ok in ["main.c", "a", "0.txt", "x-y_z.tar.gz"] {
            assert!(input_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "é.c", &"x".repeat(129)] {
            assert!(!input_name(bad), "{bad}");
        }
    }
}
