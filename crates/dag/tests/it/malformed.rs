//! Data-driven: malformed DAG files, each with every problem it must report (line, column, job,
//! a piece of the message). A case fails when a problem is missing, extra, or in the wrong place.

use shoal_dag::parse_dag;

struct Case {
    name: &'static str,
    text: &'static str,
    /// (line, column, job, substring of the message), in the order reported (by position).
    want: &'static [(u32, u32, Option<&'static str>, &'static str)],
}

// Line 2 of most cases is `J` below; the field under test is on line 3, starting at column 4.
const CASES: &[Case] = &[
    // ---- JSON syntax: the first error, where it is ----
    Case { name: "empty file", text: "", want: &[(1, 1, None, "invalid JSON: expected a value")] },
    Case {
        name: "trailing comma in array",
        text: r#"{"version": 1, "jobs": [1,]}"#,
        want: &[(1, 27, None, "trailing comma: remove the `,` before `]`")],
    },
    Case {
        name: "trailing comma in object",
        text: "{\"version\": 1,\n }",
        want: &[(2, 2, None, "trailing comma: remove the `,` before `}`")],
    },
    Case {
        name: "single quotes",
        text: "{\"version\": 1, 'jobs': []}",
        want: &[(1, 16, None, "expected a key in double quotes")],
    },
    Case {
        name: "single-quoted value",
        text: "{\"version\": 'one'}",
        want: &[(1, 13, None, "strings need double quotes")],
    },
    Case {
        name: "comment",
        text: "{\n  // jobs\n  \"version\": 1}",
        want: &[(2, 3, None, "expected a key in double quotes")],
    },
    Case {
        name: "unterminated string",
        text: "{\"version\": 1, \"jobs\": [\"a",
        want: &[(1, 27, None, "unterminated string")],
    },
    Case { name: "leading zero", text: "{\"version\": 01}", want: &[(1, 13, None, "leading zeros")] },
    Case {
        name: "text after the document",
        text: "{\"version\": 1, \"jobs\": []}\n{}",
        want: &[(2, 1, None, "unexpected text after the end")],
    },
    Case { name: "invalid escape", text: r#"{"version": "\q"}"#, want: &[(1, 15, None, "invalid escape `\\q`")] },
    Case {
        name: "raw newline in string",
        text: "{\"version\": \"a\nb\"}",
        want: &[(1, 15, None, "control characters must be escaped")],
    },
    Case {
        name: "missing comma",
        text: "{\"version\": 1\n \"jobs\": []}",
        want: &[(2, 2, None, "expected `,` or `}` in an object")],
    },
    // ---- the top level ----
    Case {
        name: "top level is an array",
        text: "[]",
        want: &[(1, 1, None, "the DAG must be an object, not an array")],
    },
    Case {
        name: "missing version",
        text: "{\"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[(1, 1, None, "missing field `version`")],
    },
    Case {
        name: "unsupported version",
        text: "{\"version\": 2,\n \"jobs\": [{\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[(1, 13, None, "unsupported version 2")],
    },
    Case { name: "missing jobs", text: "{\"version\": 1}", want: &[(1, 1, None, "missing field `jobs`")] },
    Case {
        name: "jobs is an object",
        text: "{\"version\": 1, \"jobs\": {}}",
        want: &[(1, 24, None, "`jobs` must be an array, not an object")],
    },
    Case { name: "jobs is empty", text: "{\"version\": 1, \"jobs\": []}", want: &[(1, 24, None, "`jobs` is empty")] },
    Case {
        name: "unknown top-level field",
        text: "{\"version\": 1, \"job\": []}",
        want: &[(1, 1, None, "missing field `jobs`"), (1, 16, None, "unknown field `job` in the DAG")],
    },
    Case {
        name: "duplicate top-level key",
        text: "{\"version\": 1,\n \"version\": 1, \"jobs\": [{\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[(2, 2, None, "duplicate key `version` in the DAG")],
    },
    // ---- one job's fields ----
    Case {
        name: "job is a string",
        text: "{\"version\": 1, \"jobs\": [\n  \"a\"]}",
        want: &[(2, 3, None, "a job must be an object, not a string")],
    },
    Case {
        name: "missing id",
        text: "{\"version\": 1, \"jobs\": [\n  {\"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[(2, 3, None, "missing field `id`")],
    },
    Case {
        name: "id is a number",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": 7, \"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[(2, 10, None, "`id` must be a string, not a number")],
    },
    Case {
        name: "id with a space",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a b\", \"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[(2, 10, Some("a b"), "`a b` is not a valid job id")],
    },
    Case {
        name: "missing image",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"command\": [\"true\"]}]}",
        want: &[(2, 3, Some("a"), "missing field `image`")],
    },
    Case {
        name: "image and container",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"container\": \"busybox:latest\"}]}",
        want: &[(3, 4, Some("a"), "both `image` and `container` are given")],
    },
    Case {
        name: "image with capitals",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"BusyBox\", \"command\": [\"true\"]}]}",
        want: &[(2, 24, Some("a"), "`BusyBox` is not an image reference")],
    },
    Case {
        name: "image digest too short",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"sha256:abc\", \"command\": [\"true\"]}]}",
        want: &[(2, 24, Some("a"), "`sha256:abc` is not a valid sha256 hash")],
    },
    Case {
        name: "missing command",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\"}]}",
        want: &[(2, 3, Some("a"), "missing field `command`")],
    },
    Case {
        name: "command is a string",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": \"echo hi\"}]}",
        want: &[(2, 53, Some("a"), "`command` must be an array of strings, not a string")],
    },
    Case {
        name: "command is empty",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": []}]}",
        want: &[(2, 53, Some("a"), "`command` is empty")],
    },
    Case {
        name: "command element is a number",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"sleep\", 1]}]}",
        want: &[(2, 63, Some("a"), "`command` elements must be strings, not a number")],
    },
    Case {
        name: "misspelt outputs",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"ouputs\": {}}]}",
        want: &[(3, 4, Some("a"), "unknown field `ouputs` in a job")],
    },
    Case {
        name: "env entry without =",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"env\": [\"HOME\"]}]}",
        want: &[(3, 12, Some("a"), "env entry `HOME` is not `KEY=VALUE`")],
    },
    Case {
        name: "env set twice",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"env\": [\"A=1\", \"A=2\"]}]}",
        want: &[(3, 19, Some("a"), "`A` is set twice in `env`")],
    },
    Case {
        name: "env name with =",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"env\": {\"A=B\": \"1\"}}]}",
        want: &[(3, 12, Some("a"), "`A=B` is not a valid environment variable name")],
    },
    Case {
        name: "env value is a number",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"env\": {\"N\": 3}}]}",
        want: &[(3, 17, Some("a"), "env `N` must be a string, not a number")],
    },
    Case {
        name: "relative workdir",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"workdir\": \"work\"}]}",
        want: &[(3, 15, Some("a"), "`workdir` `work` is not absolute")],
    },
    Case {
        name: "user is a number",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"user\": 0}]}",
        want: &[(3, 12, Some("a"), "`user` must be a string, not a number")],
    },
    Case {
        name: "stdin is not a reference",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"stdin\": \"hello\"}]}",
        want: &[(3, 13, Some("a"), "`hello` is not a reference")],
    },
    Case {
        name: "inputs is an array",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": []}]}",
        want: &[(3, 14, Some("a"), "`inputs` must be an object, not an array")],
    },
    Case {
        name: "input name with a slash",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x/y\": \"file:x\"}}]}",
        want: &[(3, 15, Some("a"), "`x/y` is not a valid input name")],
    },
    Case {
        name: "short sha256 input",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"sha256:1234\"}}]}",
        want: &[(3, 20, Some("a"), "`sha256:1234` is not a valid sha256 hash")],
    },
    Case {
        name: "upper-case blake3 input",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"blake3:AF1349B9F5F9A1A6A0404DEA36DCC9499BCB25C9ADC112B7CC9A93CAE41F3262\"}}]}",
        want: &[(3, 20, Some("a"), "is not a valid blake3 hash")],
    },
    Case {
        name: "jobs reference without output",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"jobs:b\"}}]}",
        want: &[(3, 20, Some("a"), "`jobs:b` is not a job reference")],
    },
    Case {
        name: "empty file reference",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"file:\"}}]}",
        want: &[(3, 20, Some("a"), "`file:` has no path")],
    },
    // ---- outputs ----
    Case {
        name: "output outside /output",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"file:/etc/passwd\"}}]}",
        want: &[(3, 21, Some("a"), "output path `/etc/passwd` is outside /output and /scratch")],
    },
    Case {
        name: "relative output path",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"file:out.txt\"}}]}",
        want: &[(3, 21, Some("a"), "output path `out.txt` is not absolute")],
    },
    Case {
        name: "output path with ..",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"file:/output/../etc/shadow\"}}]}",
        want: &[(3, 21, Some("a"), "is not normalised")],
    },
    Case {
        name: "whole /output as a file",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"file:/output\"}}]}",
        want: &[(3, 21, Some("a"), "output path `/output` is outside /output and /scratch")],
    },
    Case {
        name: "unknown output kind",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"pipe:/output/x\"}}]}",
        want: &[(3, 21, Some("a"), "`pipe:/output/x` is not an output")],
    },
    Case {
        name: "unclosed glob class",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"glob:/output/[ab\"}}]}",
        want: &[(3, 21, Some("a"), "`[` without a closing `]`")],
    },
    Case {
        name: "** inside a component",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"glob:/output/a**\"}}]}",
        want: &[(3, 21, Some("a"), "`**` must be a whole path component")],
    },
    Case {
        name: "two outputs, one path",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"file:/output/x\",\n               \"p\": \"file:/output/x\"}}]}",
        want: &[(4, 21, Some("a"), "outputs `o` (line 3) and `p` both name `/output/x`")],
    },
    Case {
        name: "output name with a space",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"my out\": \"stdout\"}}]}",
        want: &[(3, 16, Some("a"), "`my out` is not a valid output name")],
    },
    Case {
        name: "URL input without a host",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"https:///x\"}}]}",
        want: &[(3, 20, Some("a"), "it has no host")],
    },
    Case {
        name: "URL input with an unknown pin",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"https://h/x#md5=00\"}}]}",
        want: &[(3, 20, Some("a"), "is not a pin")],
    },
    Case {
        name: "ftp URL input",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"ftp://h/x\"}}]}",
        want: &[(3, 20, Some("a"), "`ftp://h/x` is not a reference")],
    },
    Case {
        name: "S3 input with a bad bucket name",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"s3://B/x\"}}]}",
        want: &[(3, 20, Some("a"), "`B` is not a bucket name")],
    },
    Case {
        name: "upload of an undeclared output",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"upload\": {\"p\": \"s3://results/x\"}}]}",
        want: &[(3, 15, Some("a"), "`upload` names `p`, which is not an output of this job")],
    },
    Case {
        name: "upload of a directory",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"d\": \"dir:/output/d\"},\n   \"upload\": {\"d\": \"s3://results/x\"}}]}",
        want: &[(4, 15, Some("a"), "output `d` is a directory; an upload sends one file")],
    },
    Case {
        name: "upload destination with a pin",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"stdout\"},\n   \"upload\": {\"o\": \"https://h/x#sha256=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}]}",
        want: &[(4, 20, Some("a"), "an upload destination has no pin")],
    },
    Case {
        name: "fd output past 63",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"outputs\": {\"o\": \"fd:64\"}}]}",
        want: &[(3, 21, Some("a"), "`fd:64` is not an fd output")],
    },
    Case {
        name: "net that is not a boolean",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"net\": \"yes\"}]}",
        want: &[(3, 11, Some("a"), "`net` must be true or false")],
    },
    // ---- requirements ----
    Case {
        name: "requirements is a string",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": \"big\"}]}",
        want: &[(3, 20, Some("a"), "`requirements` must be an object, not a string")],
    },
    Case {
        name: "memory not a size",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"memory\": \"lots\"}}]}",
        want: &[(3, 31, Some("a"), "`memory`: ")],
    },
    Case {
        name: "memory too small",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"memory\": \"1KiB\"}}]}",
        want: &[(3, 31, Some("a"), "`memory` `1KiB` is out of range")],
    },
    Case {
        name: "memory as a bare number",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"memory\": 512}}]}",
        want: &[(3, 31, Some("a"), "`memory` must be a string, not a number")],
    },
    Case {
        name: "timeout not a duration",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"timeout\": \"forever\"}}]}",
        want: &[(3, 32, Some("a"), "`timeout`: ")],
    },
    Case {
        name: "timeout too long",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"timeout\": \"30d\"}}]}",
        want: &[(3, 32, Some("a"), "`timeout` `30d` is out of range")],
    },
    Case {
        name: "zero cores",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"cores\": 0}}]}",
        want: &[(3, 30, Some("a"), "must be a whole number from 1 to 1024, not 0")],
    },
    Case {
        name: "zero pids",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"pids\": 0}}]}",
        want: &[(3, 29, Some("a"), "must be a whole number from 1 to 4194304, not 0")],
    },
    Case {
        name: "fractional cores",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"cores\": 1.5}}]}",
        want: &[(3, 30, Some("a"), "not 1.5")],
    },
    Case {
        name: "unknown arch",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"arch\": \"sparc\"}}]}",
        want: &[(3, 29, Some("a"), "unknown arch `sparc`")],
    },
    Case {
        name: "cpu_flags is a string",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"cpu_flags\": \"avx2\"}}]}",
        want: &[(3, 34, Some("a"), "`cpu_flags` must be an array, not a string")],
    },
    Case {
        name: "cpu flag with a space",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"cpu_flags\": [\"avx 2\"]}}]}",
        want: &[(3, 35, Some("a"), "`avx 2` is not a CPU flag")],
    },
    Case {
        name: "gpu is a string",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"gpu\": \"yes\"}}]}",
        want: &[(3, 28, Some("a"), "`gpu` must be a count or an object, not a string")],
    },
    Case {
        name: "network is a string",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"network\": \"no\"}}]}",
        want: &[(3, 32, Some("a"), "`network` must be true or false, not a string")],
    },
    Case {
        name: "unknown isolation",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"isolation\": \"docker\"}}]}",
        want: &[(3, 34, Some("a"), "unknown isolation `docker`")],
    },
    Case {
        name: "misspelt memory",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"memroy\": \"1GiB\"}}]}",
        want: &[(3, 21, Some("a"), "unknown field `memroy` in `requirements`")],
    },
    Case {
        name: "label value is a number",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"labels\": {\"tier\": 1}}}]}",
        want: &[(3, 40, Some("a"), "label `tier` must be a string, not a number")],
    },
    Case {
        name: "negative scratch",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"requirements\": {\"scratch\": \"-1GiB\"}}]}",
        want: &[(3, 32, Some("a"), "`scratch`: ")],
    },
    // ---- the graph ----
    Case {
        name: "duplicate job id",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"]},\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[(3, 10, Some("a"), "duplicate job id `a`")],
    },
    Case {
        name: "dangling job reference, near miss",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"gen\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"o\": \"stdout\"}},\n  {\"id\": \"b\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"inputs\": {\"x\": \"jobs:gne/o\"}}]}",
        want: &[(3, 79, Some("b"), "no job `gne` in this DAG")],
    },
    Case {
        name: "reference to a missing output",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"gen\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"o\": \"stdout\"}},\n  {\"id\": \"b\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"inputs\": {\"x\": \"jobs:gen/out\"}}]}",
        want: &[(3, 79, Some("b"), "job `gen` has no output `out`")],
    },
    Case {
        name: "self reference",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"o\": \"stdout\"},\n   \"stdin\": \"jobs:a/o\"}]}",
        want: &[(3, 13, Some("a"), "job `a` refers to its own output `o`")],
    },
    Case {
        name: "two-job cycle",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"o\": \"stdout\"}, \"stdin\": \"jobs:b/o\"},\n  {\"id\": \"b\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"o\": \"stdout\"}, \"stdin\": \"jobs:a/o\"}]}",
        want: &[(3, 100, Some("b"), "cycle: a -> b -> a")],
    },
    Case {
        name: "three-job cycle through an image",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"jobs:c/img\", \"command\": [\"true\"], \"outputs\": {\"o\": \"stdout\"}},\n  {\"id\": \"b\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"o\": \"stdout\"}, \"stdin\": \"jobs:a/o\"},\n  {\"id\": \"c\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"img\": \"file:/output/i.tar\"}, \"stdin\": \"jobs:b/o\"}]}",
        want: &[(3, 100, Some("b"), "cycle: a -> c -> b -> a")],
    },
    Case {
        name: "image from a stdout output is fine, from a glob is not",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"build\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"outputs\": {\"g\": \"glob:/output/*.tar\"}},\n  {\"id\": \"use\", \"image\": \"jobs:build/g\", \"command\": [\"true\"]}]}",
        want: &[(3, 26, Some("use"), "output `g` of job `build` is `glob:/output/*.tar`, which cannot hold an image")],
    },
    // A cycle is reported once, at the reference that closes it; `a -> c` reads "a reads from c".
    // ---- several problems at once: all reported, in file order, each naming its job ----
    Case {
        name: "three problems in one job",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": \"ls\",\n   \"outputs\": {\"o\": \"file:/tmp/o\"},\n   \"requirements\": {\"cores\": 0}}]}",
        want: &[
            (2, 53, Some("a"), "`command` must be an array"),
            (3, 21, Some("a"), "outside /output"),
            (4, 30, Some("a"), "whole number from 1 to 1024"),
        ],
    },
    Case {
        name: "problems in two jobs name each job",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"one\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"workdir\": \"w\"},\n  {\"id\": \"two\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"user\": 0}]}",
        want: &[(2, 76, Some("one"), "`workdir` `w` is not absolute"), (3, 73, Some("two"), "`user` must be a string")],
    },
    Case {
        name: "field and graph problems together",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"colour\": \"red\"},\n  {\"id\": \"b\", \"image\": \"busybox:latest\", \"command\": [\"true\"], \"stdin\": \"jobs:z/o\"},\n  {\"id\": \"b\", \"image\": \"busybox:latest\", \"command\": [\"true\"]}]}",
        want: &[
            (2, 63, Some("a"), "unknown field `colour` in a job"),
            (3, 72, Some("b"), "no job `z` in this DAG"),
            (4, 10, Some("b"), "duplicate job id `b`"),
        ],
    },
    Case {
        name: "top-level and job problems together",
        text: "{\"version\": 3, \"extra\": true, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": []}]}",
        want: &[
            (1, 13, None, "unsupported version 3"),
            (1, 16, None, "unknown field `extra` in the DAG"),
            (2, 53, Some("a"), "`command` is empty"),
        ],
    },
    Case {
        name: "a path inside a tree that climbs out",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262/lib/../../etc\"}}]}",
        want: &[(3, 20, Some("a"), "it climbs out with `..`")],
    },
    Case {
        name: "an absolute path inside a job's output",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"jobs:b/out//etc\"}}]}",
        want: &[(3, 20, Some("a"), "it is absolute")],
    },
    Case {
        name: "a trailing slash after a tree",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": \"blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262/\"}}]}",
        want: &[(3, 20, Some("a"), "it is empty (a trailing `/`?)")],
    },
    Case {
        name: "a selection without its tree, with an unknown field",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": {\"include\": [\"/etc/*\"], \"excluded\": []}}}]}",
        want: &[
            (3, 20, Some("a"), "input `x` has no `tree`"),
            (3, 44, Some("a"), "unknown field `excluded` in input `x`"),
        ],
    },
    Case {
        name: "a selection's bad glob and a selection as stdin",
        text: "{\"version\": 1, \"jobs\": [\n  {\"id\": \"a\", \"image\": \"busybox:latest\", \"command\": [\"true\"],\n   \"inputs\": {\"x\": {\"tree\": \"jobs:b/src\", \"include\": [\"[a-\"], \"exclude\": [\"../x\"]}},\n   \"stdin\": {\"tree\": \"jobs:b/src\"}}]}",
        want: &[
            (3, 55, Some("a"), "`[a-` is not a glob of a selection"),
            (3, 75, Some("a"), "`../x` is not a glob of a selection"),
            (4, 13, Some("a"), "`stdin` is a file, and a selection is a tree"),
        ],
    },
];

#[test]
fn every_malformed_spec_reports_each_problem_where_it_is() {
    assert!(CASES.len() >= 45, "the table keeps at least 45 cases");
    let mut failures = Vec::new();
    for case in CASES {
        let got = match parse_dag("dag.json", case.text) {
            Ok(_) => {
                failures.push(format!("{}: parsed without error", case.name));
                continue;
            }
            Err(d) => d.0,
        };
        let ok = got.len() == case.want.len()
            && got.iter().zip(case.want).all(|(g, (line, col, job, msg))| {
                g.location.file == "dag.json"
                    && g.location.line == *line
                    && g.location.col == *col
                    && g.job.as_deref() == *job
                    && g.message.contains(msg)
                    && !g.help.is_empty()
            });
        if !ok {
            let got: Vec<String> = got
                .iter()
                .map(|g| format!("{}:{} job={:?} {:?}", g.location.line, g.location.col, g.job, g.message))
                .collect();
            failures.push(format!("{}:\n    want {:?}\n    got  {:#?}", case.name, case.want, got));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
}
