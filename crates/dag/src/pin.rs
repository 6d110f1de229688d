//! Pinning's rewrite: a DAG's text with some jobs' references (image, inputs, stdin) replaced
//! by the `blake3:` hashes they stand for on one machine, printed in one canonical form. The
//! node pins tags and `sha256:` references before a DAG enters the ledger; `shoal submit` pins
//! `file:` inputs to the hashes of their uploads before it sends the DAG. Both use this one
//! rewrite; what each reference becomes is theirs to find out.

use std::sync::Arc;

use serde_json::Value;

/// The references of one job that pinning rewrites.
pub struct JobPins {
    /// The job's id, for errors.
    pub id: String,
    /// The image id its tag or `sha256:` stands for.
    pub image: Option<Arc<str>>,
    /// (input, what it becomes) of each input whose reference starts from `sha256:` or `file:`:
    /// a `blake3:` reference's string (with its path inside the tree), or a selection's object
    /// ([`crate::InputRef::to_json`]).
    pub inputs: Vec<(String, Value)>,
    /// What its stdin becomes.
    pub stdin: Option<Value>,
    /// (output, what its upload destination becomes): a presigned URL, redacted.
    pub uploads: Vec<(String, Value)>,
}

/// One job's references in its JSON object replaced by their pins.
fn apply(jv: &mut Value, pins: &JobPins) -> Result<(), String> {
    let obj = jv.as_object_mut().ok_or_else(|| format!("job `{}` is not an object", pins.id))?;
    if let Some(id) = &pins.image {
        let key = if obj.contains_key("image") { "image" } else { "container" };
        obj.insert(key.into(), Value::String(id.to_string()));
    }
    for (input, h) in &pins.inputs {
        obj.get_mut("inputs").and_then(Value::as_object_mut).map(|m| m.insert(input.clone(), h.clone()));
    }
    for (output, v) in &pins.uploads {
        obj.get_mut("upload").and_then(Value::as_object_mut).map(|m| m.insert(output.clone(), v.clone()));
    }
    if let Some(h) = &pins.stdin {
        obj.insert("stdin".into(), h.clone());
    }
    Ok(())
}

/// `text` (a DAG that parsed, so `{"jobs": [...], "version": 1}` in some order) with each job's
/// references rewritten by `pins`, pretty-printed as `serde_json::to_string_pretty` prints a
/// `Value` of it (keys sorted) plus a newline; the DAG's hash is the hash of these bytes. The jobs
/// are read, rewritten and written one at a time: a `Value` of a whole big DAG took 2.5 KB a job.
pub fn rewrite(text: &str, pins: &[JobPins]) -> Result<String, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer as _, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct Top<'p>(&'p [JobPins]);
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a DAG object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
            let (mut jobs, mut version) = (None, None);
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "jobs" => jobs = Some(map.next_value_seed(Jobs(self.0))?),
                    "version" => version = Some(map.next_value::<Value>()?),
                    // The DAG parsed, so there is nothing else.
                    _ => drop(map.next_value::<IgnoredAny>()?),
                }
            }
            let jobs = jobs.ok_or_else(|| A::Error::missing_field("jobs"))?;
            let version = version.ok_or_else(|| A::Error::missing_field("version"))?;
            let version = serde_json::to_string_pretty(&version).map_err(A::Error::custom)?.replace('\n', "\n  ");
            Ok(format!("{{\n  \"jobs\": [{jobs}\n  ],\n  \"version\": {version}\n}}\n"))
        }
    }

    /// The `jobs` array, as the text of its elements at their indentation.
    struct Jobs<'p>(&'p [JobPins]);
    impl<'de> DeserializeSeed<'de> for Jobs<'_> {
        type Value = String;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Jobs<'_> {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of jobs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
            let mut out = String::new();
            let mut i = 0;
            while let Some(mut job) = seq.next_element::<Value>()? {
                if let Some(pins) = self.0.get(i) {
                    apply(&mut job, pins).map_err(A::Error::custom)?;
                }
                let pretty = serde_json::to_string_pretty(&job).map_err(A::Error::custom)?;
                // Two levels in: a string never holds a raw newline, so every line break is
                // the printer's.
                out.push_str(if i == 0 { "\n    " } else { ",\n    " });
                out.push_str(&pretty.replace('\n', "\n    "));
                i += 1;
            }
            Ok(out)
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let out = (&mut de).deserialize_map(Top(pins))?;
    de.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rewrite as it was: a `Value` of the whole DAG, each job changed, printed.
    fn whole(text: &str, pins: &[JobPins]) -> String {
        let mut value: Value = serde_json::from_str(text).unwrap();
        let jobs = value.get_mut("jobs").and_then(Value::as_array_mut).unwrap();
        for (pins, jv) in pins.iter().zip(jobs.iter_mut()) {
            apply(jv, pins).unwrap();
        }
        serde_json::to_string_pretty(&value).unwrap() + "\n"
    }

    #[test]
    fn rewriting_job_by_job_prints_what_the_whole_value_printed() {
        let id: Arc<str> = format!("blake3:{}", "ab".repeat(32)).into();
        let h = format!("blake3:{}", "cd".repeat(32));
        let texts = [
            r#"{"version": 1, "jobs": [{"id": "a", "image": "busybox:latest", "command": ["echo", "é \" \\ \n \u0001 😀"]}]}"#,
            r#"{"jobs":[{"image":"x:1","id":"a","inputs":{"z":"sha256:00","b":"jobs:q/o"},"stdin":"sha256:11",
               "requirements":{"cores":2,"memory":"1GiB","timeout":1.5e3,"labels":{"k":"v"},"cpu_flags":[]},
               "env":{},"outputs":{"o":"stdout"}},
               {"id":"b","container":"y","command":[],"outputs":{}}],"version":1}"#,
            "{\"version\":1,\"jobs\":[{\"id\":\"c\",\"image\":\"blake3:00\",\"command\":[[1,[2,{}]],-0,12345678901234567890]}]}",
        ];
        let pins = |n: usize| -> Vec<JobPins> {
            (0..n)
                .map(|i| JobPins {
                    id: format!("j{i}"),
                    image: (i % 2 == 0).then(|| id.clone()),
                    inputs: if i == 0 { vec![("z".into(), h.clone().into())] } else { vec![] },
                    stdin: (i == 0).then(|| h.clone().into()),
                    uploads: Vec::new(),
                })
                .collect()
        };
        for text in texts {
            for n in [0, 1, 2] {
                assert_eq!(rewrite(text, &pins(n)).unwrap(), whole(text, &pins(n)), "{text}");
            }
        }
    }
}
