//! The `requirements` object of a job.

use super::*;
use crate::spec::{Arch, Gpu, Isolation};
use crate::units::{parse_duration_ms, parse_size};

impl Cx {
    pub(super) fn size(&mut self, node: &Node, what: &str, min: u64) -> Option<u64> {
        let text = self.string(node, what)?;
        match parse_size(text) {
            Ok(v) if (min..=SIZE_MAX_BYTES).contains(&v) => Some(v),
            Ok(_) => {
                self.report(
                    node.pos,
                    format!("{what} `{text}` is out of range"),
                    format!(
                        "give a size from {} to 1TiB",
                        if min == 0 { "0".to_string() } else { "16MiB".to_string() }
                    ),
                );
                None
            }
            Err(e) => {
                self.report(node.pos, format!("{what}: {e}"), "write a size such as `512MiB` or `2GiB`");
                None
            }
        }
    }

    pub(super) fn requirements(&mut self, node: &Node) -> Requirements {
        let mut r = Requirements::default();
        let Some(fields) = self.object(node, "`requirements`", REQ_FIELDS) else {
            return r;
        };
        if let Some(m) = fields.get("cores")
            && let Some(v) = self.integer(&m.value, "`cores`", 1, CORES_MAX)
        {
            r.cores = v as u32;
        }
        if let Some(m) = fields.get("pids")
            && let Some(v) = self.integer(&m.value, "`pids`", 1, PIDS_MAX)
        {
            r.pids_max = v as u32;
        }
        if let Some(m) = fields.get("memory") {
            r.memory_bytes = self.size(&m.value, "`memory`", MEMORY_MIN_BYTES).unwrap_or(r.memory_bytes);
        }
        if let Some(m) = fields.get("scratch") {
            r.scratch_bytes = self.size(&m.value, "`scratch`", 0).unwrap_or(r.scratch_bytes);
        }
        if let Some(m) = fields.get("output_size") {
            r.output_bytes_max = self.size(&m.value, "`output_size`", 0).unwrap_or(r.output_bytes_max);
        }
        if let Some(m) = fields.get("timeout")
            && let Some(text) = self.string(&m.value, "`timeout`")
        {
            match parse_duration_ms(text) {
                Ok(ms) if (1..=TIMEOUT_MAX_MS).contains(&ms) => r.timeout_ms = ms,
                Ok(_) => self.report(
                    m.value.pos,
                    format!("`timeout` `{text}` is out of range"),
                    "give a duration from 1ms to 7d",
                ),
                Err(e) => self.report(
                    m.value.pos,
                    format!("`timeout`: {e}"),
                    "write a duration such as `30s`, `5m` or `1h30m`",
                ),
            }
        }
        if let Some(m) = fields.get("arch")
            && let Some(text) = self.string(&m.value, "`arch`")
        {
            r.arch = match text {
                "x86_64" | "amd64" => Some(Arch::X86_64),
                "aarch64" | "arm64" => Some(Arch::Aarch64),
                "riscv64" => Some(Arch::Riscv64),
                other => {
                    self.report(
                        m.value.pos,
                        format!("unknown arch `{other}`"),
                        "use `x86_64`, `aarch64` or `riscv64` (`amd64` and `arm64` are accepted)",
                    );
                    None
                }
            };
        }
        if let Some(m) = fields.get("cpu_flags") {
            match &m.value.value {
                Value::Array(items) => {
                    for item in items {
                        if let Some(flag) = self.string(item, "a CPU flag") {
                            if flag.is_empty()
                                || !flag.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                            {
                                self.report(
                                    item.pos,
                                    format!("`{flag}` is not a CPU flag"),
                                    "write flags as /proc/cpuinfo does, e.g. `avx2`, `sse4_2`",
                                );
                            } else {
                                r.cpu_flags.push(flag.to_string());
                            }
                        }
                    }
                }
                other => self.report(
                    m.value.pos,
                    format!("`cpu_flags` must be an array, not {}", other.type_name()),
                    "write e.g. [\"avx2\"]",
                ),
            }
        }
        if let Some(m) = fields.get("gpu") {
            r.gpu = match &m.value.value {
                Value::Number(_) => {
                    self.integer(&m.value, "`gpu`", 0, 64).map(|count| Gpu { count: count as u32, model: None })
                }
                Value::Object(_) => self.object(&m.value, "`gpu`", GPU_FIELDS).and_then(|g| {
                    let count = match g.get("count") {
                        Some(c) => self.integer(&c.value, "`gpu.count`", 0, 64)? as u32,
                        None => 1,
                    };
                    let model = g.get("model").and_then(|mm| self.string(&mm.value, "`gpu.model`").map(str::to_string));
                    Some(Gpu { count, model })
                }),
                other => {
                    self.report(
                        m.value.pos,
                        format!("`gpu` must be a count or an object, not {}", other.type_name()),
                        "write `1`, or {\"count\": 1, \"model\": \"A100\"}",
                    );
                    None
                }
            }
            .filter(|g| g.count > 0);
        }
        if let Some(m) = fields.get("network") {
            match &m.value.value {
                Value::Bool(b) => r.network = *b,
                other => self.report(
                    m.value.pos,
                    format!("`network` must be true or false, not {}", other.type_name()),
                    "write `\"network\": true` or `false`",
                ),
            }
        }
        if let Some(m) = fields.get("isolation")
            && let Some(text) = self.string(&m.value, "`isolation`")
        {
            match text {
                "vm" => r.isolation = Some(Isolation::Vm),
                "namespace" => r.isolation = Some(Isolation::Namespace),
                other => self.report(
                    m.value.pos,
                    format!("unknown isolation `{other}`"),
                    "use `vm` (a microVM, the default) or `namespace`",
                ),
            }
        }
        if let Some(m) = fields.get("labels")
            && let Some(members) = self.object(&m.value, "`labels`", &[])
        {
            for (k, mm) in members {
                if let Some(v) = self.string(&mm.value, &format!("label `{k}`")) {
                    r.labels.insert(k.to_string(), v.to_string());
                }
            }
        }
        r
    }
}
