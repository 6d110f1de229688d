//! Run files: what they translate to, and every problem located at the run file's `line:col`,
//! whether the run file's grammar or the DAG validator found it.

use proptest::prelude::*;
use shoal_dag::location::bucket_label;
use shoal_dag::{Arch, Diagnostic, ImageRef, InputRef, OutputSpec, UploadTarget, parse_any_bytes, parse_run_file};

const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const B3: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

/// `text` with `{SHA}` and `{B3}` replaced by 64 hex digits.
fn expand(text: &str) -> String {
    text.replace("{SHA}", SHA).replace("{B3}", B3)
}

/// Parses `text`, which must fail with exactly `want`: (line, column, piece of the message, piece
/// of the help), in file order.
fn check_errors(text: &str, want: &[(u32, u32, &str, &str)]) {
    let text = expand(text);
    let err = match parse_run_file("t.run", &text) {
        Ok((dag, _)) => panic!("{text:?} parsed: {dag:?}"),
        Err(e) => e,
    };
    let got: Vec<(u32, u32, &str, &str)> =
        err.0.iter().map(|d| (d.location.line, d.location.col, d.message.as_str(), d.help.as_str())).collect();
    assert_eq!(got.len(), want.len(), "{text:?}:\n{err}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0 == w.0 && g.1 == w.1 && g.2.contains(w.2) && g.3.contains(w.3),
            "{text:?}: want {w:?}, got {g:?}\n{err}"
        );
    }
    assert!(err.0.iter().all(|d| d.location.file == "t.run"), "{err}");
}

fn parse_ok(text: &str) -> (shoal_dag::Dag, Vec<Diagnostic>) {
    let text = expand(text);
    parse_run_file("t.run", &text).unwrap_or_else(|e| panic!("{text:?}:\n{e}"))
}

#[test]
fn a_full_run_file_translates_to_its_one_job() {
    let text = r#"# Count the words of two inputs.
FROM sha256:{SHA}
id count
ENV LC_ALL=C GREETING="hello \"big\" world" PATH_LIKE="a\\b"
WORKDIR /work
USER 1000:1000
INPUT text blake3:{B3}
INPUT words https://example.org/words.txt
STDIN blake3:{B3}
   # the script
RUN echo "$GREETING"
run wc -w /input/text /input/words > /output/count
OUTPUT count file:/output/count
OUTPUT log stdout
OUTPUT pages dir:/output/pages
UPLOAD count s3://results/count.txt
REQUIRE cores=2 memory=1GiB timeout=1h30m arch=arm64
REQUIRE cpu_flags=avx2,sse4_2 labels=pool=night,zone=eu gpu=1 pids=64
NET on
"#;
    let (dag, warnings) = parse_ok(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(dag.version, 1);
    assert_eq!(dag.jobs.len(), 1);
    let job = &dag.jobs[0];
    assert_eq!(job.id, "count");
    assert_eq!(job.image, ImageRef::Sha256(SHA.into()));
    assert_eq!(
        job.command,
        ["/bin/sh", "-c", "set -e\necho \"$GREETING\"\nwc -w /input/text /input/words > /output/count"]
    );
    assert_eq!(job.env["LC_ALL"], "C");
    assert_eq!(job.env["GREETING"], "hello \"big\" world");
    assert_eq!(job.env["PATH_LIKE"], "a\\b");
    assert_eq!(job.workdir.as_deref(), Some("/work"));
    assert_eq!(job.user.as_deref(), Some("1000:1000"));
    assert!(matches!(job.stdin, Some(InputRef::Blake3(_))));
    assert!(matches!(job.inputs["text"], InputRef::Blake3(_)));
    assert!(matches!(&job.inputs["words"], InputRef::Url { url, pin: None } if url == "https://example.org/words.txt"));
    assert_eq!(job.outputs["count"], OutputSpec::File("/output/count".into()));
    assert_eq!(job.outputs["log"], OutputSpec::Stdout);
    assert_eq!(job.outputs["pages"], OutputSpec::Dir("/output/pages".into()));
    assert!(matches!(&job.uploads["count"], UploadTarget::S3(o) if o.bucket == "results" && o.key == "count.txt"));
    let r = &job.requirements;
    assert_eq!((r.cores, r.memory_bytes, r.timeout_ms, r.pids_max), (2, 1 << 30, 90 * 60_000, 64));
    assert_eq!(r.arch, Some(Arch::Aarch64));
    assert_eq!(r.cpu_flags, ["avx2", "sse4_2"]);
    assert_eq!(r.gpu.as_ref().map(|g| g.count), Some(1));
    assert_eq!(r.labels["pool"], "night");
    assert_eq!(r.labels["zone"], "eu");
    assert_eq!(r.labels[&bucket_label("results")], "write", "an upload to a bucket requires its label");
    assert!(r.network, "NET on");
}

#[test]
fn defaults_id_main_and_no_net() {
    let (dag, _) = parse_ok("FROM blake3:{B3}\nRUN true\n");
    let job = &dag.jobs[0];
    assert_eq!(job.id, "main");
    assert!(matches!(job.image, ImageRef::Blake3(_)));
    assert_eq!(job.command, ["/bin/sh", "-c", "set -e\ntrue"]);
    assert!(!job.requirements.network);
    assert!(job.env.is_empty() && job.inputs.is_empty() && job.outputs.is_empty() && job.uploads.is_empty());
    let (dag, _) = parse_ok("FROM blake3:{B3}\nNET off\nREQUIRE network=false\nRUN true\n");
    assert!(!dag.jobs[0].requirements.network);
}

#[test]
fn exec_form_is_the_command_as_it_is() {
    let (dag, _) = parse_ok(
        r#"FROM sha256:{SHA}
RUN ["/bin/echo", "a b", "c\"d", "caf\u00e9"]"#,
    );
    assert_eq!(dag.jobs[0].command, ["/bin/echo", "a b", "c\"d", "café"]);
    // A blank after `[`: still the exec form when it is a JSON array of strings...
    let (dag, _) = parse_ok("FROM sha256:{SHA}\nRUN [ \"echo\", \"x\" ]");
    assert_eq!(dag.jobs[0].command, ["echo", "x"]);
    // ...else the shell's `[` test.
    let (dag, _) = parse_ok("FROM sha256:{SHA}\nRUN [ -f /etc/passwd ] && echo yes\nRUN [ \"$X\" = y ] || true");
    assert_eq!(
        dag.jobs[0].command,
        ["/bin/sh", "-c", "set -e\n[ -f /etc/passwd ] && echo yes\n[ \"$X\" = y ] || true"]
    );
}

#[test]
fn continuation_lines_and_comments() {
    let text = "\u{feff}  # a comment\n\n\
FROM sha256:{SHA}\r\n\
RUN echo a \\\n    && echo b\n\
RUN printf '%s\\n' \\  \n  # a comment inside is skipped, as in a Dockerfile\n\n   x \\\n   y\n\
ENV A=1 \\\n    B=2\n\
\t# indented comment\n";
    let (dag, _) = parse_ok(text);
    let job = &dag.jobs[0];
    assert_eq!(job.command[2], "set -e\necho a     && echo b\nprintf '%s\\n'    x    y");
    assert_eq!((job.env["A"].as_str(), job.env["B"].as_str()), ("1", "2"));
}

#[test]
fn grammar_errors_are_located_with_a_fix() {
    // No FROM: at the first instruction.
    check_errors("# nothing to run from\nRUN echo hi\n", &[(2, 1, "has no `FROM`", "FROM <image>")]);
    // An empty file: no FROM and no RUN, both at its start.
    check_errors("", &[(1, 1, "has no `FROM`", "FROM <image>"), (1, 1, "has no `RUN`", "RUN <shell command>")]);
    check_errors(
        "FROM sha256:{SHA}\nRUN true\nFROM busybox:1\n",
        &[(3, 1, "a second `FROM`", "the first is on line 1")],
    );
    check_errors(
        "ENV A=1\n  from sha256:{SHA}\nRUN true",
        &[(2, 3, "`FROM` is not the first instruction", "move it above line 1 (`ENV`)")],
    );
    check_errors(
        "FROM sha256:{SHA}\nRUN true\n  Inptu data blake3:{B3}\n",
        &[(3, 3, "unknown instruction `Inptu`", "did you mean `INPUT`?")],
    );
    check_errors("FROM sha256:{SHA}\nCMD [\"true\"]\nRUN true", &[(2, 1, "unknown instruction `CMD`", "`RUN`")]);
    check_errors(
        "FROM sha256:{SHA}\nCOPY . /src\nRUN true",
        &[(2, 1, "unknown instruction `COPY`", "INPUT <name> <source>")],
    );
    check_errors(
        "FROM sha256:{SHA}\nRUN[\"true\"]",
        &[(2, 1, "unknown instruction `RUN[\"true\"]`", "put a blank after `RUN`")],
    );
    // A misspelt FROM is reported once, not also as a missing FROM.
    check_errors("FORM sha256:{SHA}\nRUN true", &[(1, 1, "unknown instruction `FORM`", "did you mean `FROM`?")]);
    check_errors(
        "FROM sha256:{SHA}\nENV A=1 GREETING hello\nRUN true",
        &[(2, 9, "`GREETING` is not `KEY=VALUE`", "ENV NAME=value"), (2, 18, "`hello` is not `KEY=VALUE`", "")],
    );
    check_errors("FROM sha256:{SHA}\nENV =x\nRUN true", &[(2, 5, "without a name", "ENV NAME=value")]);
    check_errors("FROM sha256:{SHA}\nENV\nRUN true", &[(2, 1, "`ENV` needs at least one", "ENV NAME=value")]);
    check_errors("FROM sha256:{SHA}\nENV A=\"x y\nRUN true", &[(2, 7, "quote is not closed", "closing `\"`")]);
    check_errors(
        "FROM sha256:{SHA}\nENV A=1\nENV B=2 A=3\nRUN true",
        &[(3, 9, "variable `A` is given twice", "the first is on line 2")],
    );
    check_errors(
        "FROM sha256:{SHA}\nRUN echo one\nRUN [\"echo\", \"two\"]",
        &[(3, 5, "must be the only `RUN`", "2 `RUN` lines")],
    );
    check_errors("FROM sha256:{SHA}\nENV A=1\n", &[(1, 1, "has no `RUN`", "RUN <shell command>")]);
    check_errors("FROM sha256:{SHA}\nRUN\n", &[(2, 1, "`RUN` needs a command", "RUN <shell command>")]);
    check_errors(
        "FROM sha256:{SHA}\nRUN [\"echo\", 'hi']",
        &[(2, 14, "not a JSON array: expected a value (strings need double quotes)", "RUN [\"program\"")],
    );
    check_errors("FROM sha256:{SHA}\nRUN [\"echo\", 1]", &[(2, 14, "must be strings, not a number", "quote it")]);
    check_errors("FROM sha256:{SHA}\nRUN []", &[(2, 5, "exec form of `RUN` is empty", "RUN [\"echo\"")]);
    check_errors("FROM sha256:{SHA}\nWORKDIR\nRUN true", &[(2, 1, "`WORKDIR` needs one argument", "WORKDIR <")]);
    check_errors(
        "FROM sha256:{SHA}\nWORKDIR /my dir\nRUN true",
        &[(2, 13, "`WORKDIR` takes one argument, not 2", "quote an argument")],
    );
    check_errors(
        "FROM sha256:{SHA}\nINPUT a b c\nRUN true",
        &[(2, 11, "`INPUT` takes two arguments, not 3", "INPUT <name> <source>")],
    );
    check_errors(
        "FROM sha256:{SHA}\nOUTPUT a\nRUN true",
        &[(2, 1, "`OUTPUT` takes two arguments, not 1", "OUTPUT <name> <spec>")],
    );
    check_errors(
        "FROM sha256:{SHA}\nOUTPUT a stdout\nOUTPUT a stderr\nRUN true",
        &[(3, 8, "output `a` is given twice", "line 2")],
    );
    check_errors("FROM sha256:{SHA}\nUSER a\nUSER b\nRUN true", &[(3, 1, "`USER` is given twice", "line 2")]);
    check_errors("FROM sha256:{SHA}\nNET maybe\nRUN true", &[(2, 5, "`NET` is `on` or `off`", "NET on")]);
    check_errors(
        "FROM sha256:{SHA}\nREQUIRE labels=pool\nRUN true",
        &[(2, 16, "label `pool` is not `NAME=VALUE`", "labels=pool=night")],
    );
    check_errors("FROM sha256:{SHA}\nRUN true \\", &[(2, 10, "ends inside a continued line", "trailing `\\`")]);
}

#[test]
fn validation_errors_are_moved_to_the_run_files_tokens() {
    check_errors(
        "FROM sha256:{SHA}\nRUN true\nOUTPUT x /tmp/nowhere",
        &[(3, 10, "`/tmp/nowhere` is not an output", "`file:<path>`")],
    );
    check_errors(
        "FROM sha256:{SHA}\nRUN true\nOUTPUT y \\\n   file:/tmp/nowhere",
        &[(4, 4, "output path `/tmp/nowhere` is outside /output and /scratch", "under `/output`")],
    );
    check_errors(
        "FROM sha256:{SHA}\nINPUT data blake3:abc\nRUN true",
        &[(2, 12, "`blake3:abc` is not a valid blake3 hash", "64 lowercase hex digits")],
    );
    check_errors("FROM sha256:{SHA}\nRUN true\nREQUIRE cores=2 memory=lots", &[(3, 24, "`memory`", "512MiB")]);
    check_errors(
        "FROM sha256:{SHA}\nRUN true\nREQUIRE cores=two",
        &[(3, 15, "`cores` must be a whole number from 1 to 1024", "")],
    );
    check_errors(
        "FROM sha256:{SHA}\nRUN true\nREQUIRE memroy=1GiB",
        &[(3, 9, "unknown field `memroy` in `requirements`", "did you mean `memory`?")],
    );
    check_errors("FROM sha256:{SHA}\nID not/valid\nRUN true", &[(2, 4, "`not/valid` is not a valid job id", "")]);
    check_errors("FROM sha256:{SHA}\nWORKDIR work\nRUN true", &[(2, 9, "`workdir` `work` is not absolute", "/work")]);
    check_errors("FROM Busybox:1\nRUN true", &[(1, 6, "`Busybox:1` is not an image reference", "sha256:<hex>")]);
    check_errors(
        "FROM sha256:{SHA}\nRUN true\nOUTPUT log stdout\n  UPLOAD lgo s3://b/k",
        &[(4, 10, "`upload` names `lgo`, which is not an output of this job", "did you mean `log`?")],
    );
    check_errors(
        "FROM sha256:{SHA}\nREQUIRE network=false\nNET on\nRUN true",
        &[(3, 1, "`net` and `requirements.network` disagree", "keep one")],
    );
    // The validator's "line N" names the run file's line.
    check_errors(
        "FROM sha256:{SHA}\nRUN true\nOUTPUT a file:/output/x\nENV A=1\nOUTPUT b file:/output/x\n",
        &[(5, 10, "outputs `a` (line 3) and `b` both name `/output/x`", "once")],
    );
    // Grammar and validation problems together, in file order.
    check_errors(
        "FROM sha256:{SHA}\nINPUT data sha256:xyz\nFOO bar\nRUN true\nWORKDIR rel",
        &[(2, 12, "not a valid sha256 hash", ""), (3, 1, "unknown instruction `FOO`", ""), (5, 9, "not absolute", "")],
    );
}

#[test]
fn many_problems_are_all_reported_in_file_order() {
    let mut text = expand("FROM sha256:{SHA}\nRUN true\n");
    for i in 0..3000 {
        text.push_str(&format!("INPUT in{i} blake3:bad\nREQUIRE x{i}=1\n"));
    }
    let err = parse_run_file("m.run", &text).unwrap_err();
    assert_eq!(err.0.len(), 6000);
    let at: Vec<(u32, u32)> = err.0.iter().map(|d| (d.location.line, d.location.col)).collect();
    // The source follows `INPUT in<N> ` (9 characters and N's digits), the key `REQUIRE ` (8).
    let want: Vec<(u32, u32)> = (0..3000).flat_map(|i| [(3 + 2 * i, 10 + digits(i)), (4 + 2 * i, 9)]).collect();
    let first_wrong = at.iter().zip(&want).position(|(a, w)| a != w);
    assert_eq!(first_wrong, None, "{:?}", first_wrong.map(|i| (at[i], want[i])));
}

fn digits(n: u32) -> u32 {
    n.to_string().len() as u32
}

#[test]
fn validation_errors_name_the_job() {
    let err = parse_run_file("x.run", "FROM b:1\nID build\nWORKDIR rel\nRUN true").unwrap_err();
    assert_eq!(
        err.to_string(),
        "x.run:3:9: job `build`: `workdir` `rel` is not absolute\n  help: write an absolute path inside the container, e.g. `/work`\n1 problem in x.run"
    );
}

#[test]
fn a_tag_is_accepted_with_a_located_warning() {
    let (dag, warnings) = parse_ok("# tagged\nFROM   busybox:latest\nRUN true");
    assert_eq!(dag.jobs[0].image, ImageRef::Tag("busybox:latest".into()));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert_eq!((w.location.file.as_str(), w.location.line, w.location.col), ("t.run", 2, 8));
    assert!(w.message.contains("not pinned to a digest"), "{w}");
    assert!(w.help.contains("shoal image ls") && w.help.contains("FROM sha256:<hex>"), "{w}");
    // Pinned by digest: no warning.
    let (dag, warnings) = parse_ok("FROM registry:5000/busybox@sha256:{SHA}\nRUN true");
    assert!(matches!(dag.jobs[0].image, ImageRef::Tag(_)));
    assert!(warnings.is_empty(), "{warnings:?}");
    // The validator's warnings are moved too, and come in file order.
    let (_, warnings) = parse_ok("FROM busybox:1\nRUN true\nOUTPUT o fd:0");
    let at: Vec<(u32, u32)> = warnings.iter().map(|w| (w.location.line, w.location.col)).collect();
    assert_eq!(at, [(1, 6), (3, 10)], "{warnings:?}");
    assert!(warnings[1].message.contains("`fd:0`"));
}

#[test]
fn parse_any_bytes_tells_json_from_a_run_file() {
    let json = format!(
        " \n\t{{\"version\": 1, \"jobs\": [{{\"id\": \"j\", \"image\": \"sha256:{SHA}\", \"command\": [\"true\"]}}]}}"
    );
    let (dag, _) = parse_any_bytes("d.json", json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dag.jobs[0].id, "j");
    // A JSON mistake is reported as one.
    let err = parse_any_bytes("d.json", b"\n{\"version\": 1,}").unwrap_err();
    assert!(err.0[0].message.starts_with("invalid JSON"), "{err}");

    let run = expand("\n  FROM sha256:{SHA}\nRUN echo {}\n");
    let (dag, _) = parse_any_bytes("r.run", run.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dag.jobs[0].id, "main");
    assert_eq!(dag.jobs[0].command[2], "set -e\necho {}");

    let err = parse_any_bytes("r.run", b"FROM b:1\nRUN echo \xff\n").unwrap_err();
    let d = &err.0[0];
    assert_eq!((d.location.line, d.location.col), (2, 10));
    assert!(d.message.contains("not UTF-8") && d.message.contains("0xff"), "{err}");
}

/// Lines that look like run-file lines, to reach past the first problem.
fn line_strategy() -> impl Strategy<Value = String> {
    let keyword = prop_oneof![
        Just("FROM"),
        Just("RUN"),
        Just("ENV"),
        Just("REQUIRE"),
        Just("INPUT"),
        Just("OUTPUT"),
        Just("UPLOAD"),
        Just("NET"),
        Just("ID"),
        Just("WORKDIR"),
        Just("STDIN"),
        Just("USER"),
        Just("#"),
        Just(""),
    ];
    let arg = prop_oneof![
        Just("busybox:1".to_string()),
        Just(format!("sha256:{SHA}")),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[".to_string()),
        Just("A=\"x \\\" y\"".to_string()),
        Just("labels=a=b,c".to_string()),
        Just("cpu_flags=,x,".to_string()),
        Just("\\".to_string()),
        Just("file:/output/x".to_string()),
        Just("line 2".to_string()),
        "\\PC{0,12}",
    ];
    (keyword, prop::collection::vec(arg, 0..4)).prop_map(|(k, args)| format!("{k} {}", args.join(" ")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*|[ -~\\n\\r\\t\\\\\"\\[\\]=#]{0,200}") {
        let lines = text.split('\n').count() as u32;
        if let Err(e) = parse_run_file("p.run", &text) {
            prop_assert!(!e.0.is_empty());
            for d in &e.0 {
                prop_assert!(d.location.line >= 1 && d.location.col >= 1 && d.location.line <= lines, "{d}");
            }
        }
        let _ = parse_any_bytes("p.run", text.as_bytes());
    }

    #[test]
    fn line_like_text_never_panics_and_its_dag_text_is_valid_json(lines in prop::collection::vec(line_strategy(), 0..12)) {
        let text = lines.join("\n");
        let line_count = text.split('\n').count() as u32;
        match parse_run_file("p.run", &text) {
            Ok((dag, warnings)) => {
                prop_assert_eq!(dag.jobs.len(), 1);
                for w in &warnings {
                    prop_assert!(w.location.line >= 1 && w.location.line <= line_count, "{}", w);
                }
            }
            Err(e) => {
                for d in &e.0 {
                    // The generated DAG text is always well-formed JSON.
                    prop_assert!(!d.message.starts_with("invalid JSON"), "{}", d);
                    prop_assert!(d.location.line >= 1 && d.location.col >= 1 && d.location.line <= line_count, "{}", d);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_any_bytes("p", &bytes);
    }
}

/// The fenced blocks of docs/RUNFILE.md with the given info string, in order.
fn doc_blocks(info: &str) -> Vec<String> {
    let doc = include_str!("../../../../docs/RUNFILE.md");
    let open = format!("```{info}\n");
    doc.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once("```\n").map(|(block, _)| block.to_string()))
        .collect()
}

#[test]
fn the_documented_examples_are_what_the_parser_does() {
    let runs = doc_blocks("runfile");
    let (jsons, texts) = (doc_blocks("json"), doc_blocks("text"));
    assert_eq!((runs.len(), jsons.len(), texts.len()), (2, 1, 1));
    let (from_run, warnings) = parse_run_file("count.run", &runs[0]).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let from_json = shoal_dag::parse_dag("count.json", &jsons[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_run, from_json);
    let err = parse_run_file("broken.run", &runs[1]).unwrap_err();
    assert_eq!(format!("{err}\n"), texts[0]);
}
