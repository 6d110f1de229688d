//! What a node can run, and whether a job's requirements fit it: pure functions the scheduler
//! core and `shoal peers` use. A job no node in the mesh could ever run is reported unschedulable
//! with every reason, instead of waiting forever.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_dag::{Arch, Isolation, Requirements};

/// What a node offers, as it gossips it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub arch: Arch,
    pub cores: u32,
    pub memory_bytes: u64,
    pub cpu_flags: BTreeSet<String>,
    /// One entry per GPU.
    pub gpus: Vec<GpuCap>,
    pub labels: BTreeMap<String, String>,
    /// Whether the node can run microVMs (QEMU, guest kernel and guest-init present).
    pub microvm: bool,
    /// How it runs them, where it can: KVM, or TCG (QEMU emulating the CPU, on PCs without
    /// VT-x/AMD-V). `isolation: vm` jobs prefer KVM nodes ([`TCG_VM_SPEED_PER_MILLE`]); None from a
    /// node that does not say (older than the field) or cannot run microVMs.
    #[serde(default)]
    pub vm_accel: Option<VmAccel>,
    /// How fast one core of it runs, per mille of a reference core ([`SPEED_REFERENCE`]): the
    /// scheduler puts a job on the fastest free node that fits. Measured at start.
    #[serde(default = "speed_reference")]
    pub speed: u32,
    /// Architectures it runs under emulation (qemu-user through binfmt_misc, in its namespace
    /// sandbox), each with its speed per core as [`Capabilities::speed`] counts it: a job of such
    /// an arch fits it, and placement prefers a node that runs the arch natively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emulated: Vec<Emulated>,
}

/// A GPU as a node announces it. Nodes before vendor and memory were announced sent the model
/// alone, as a string: it still reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "GpuWire")]
pub struct GpuCap {
    pub model: String,
    /// `nvidia`, `amd`, `intel`, or the PCI vendor id; empty when not said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    /// Its memory, where its driver says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Bound to vfio-pci in an IOMMU group of its own: passed whole to a microVM (an
    /// `isolation: vm` job), not to the namespace sandbox.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vfio: bool,
}

impl GpuCap {
    /// A GPU known by its model alone.
    pub fn model(model: impl Into<String>) -> GpuCap {
        GpuCap { model: model.into(), vendor: String::new(), memory_bytes: None, vfio: false }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum GpuWire {
    Model(String),
    Full {
        model: String,
        #[serde(default)]
        vendor: String,
        #[serde(default)]
        memory_bytes: Option<u64>,
        #[serde(default)]
        vfio: bool,
    },
}

impl From<GpuWire> for GpuCap {
    fn from(w: GpuWire) -> GpuCap {
        match w {
            GpuWire::Model(model) => GpuCap::model(model),
            GpuWire::Full { model, vendor, memory_bytes, vfio } => GpuCap { model, vendor, memory_bytes, vfio },
        }
    }
}

/// An architecture a node runs under emulation, and how fast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emulated {
    pub arch: Arch,
    pub speed: u32,
}

/// What a core emulating another architecture (qemu-user) counts for, per mille of the node's
/// native speed: qemu-user translates every instruction, several times slower than native.
pub const EMULATED_SPEED_PER_MILLE: u32 = 150;

impl Capabilities {
    /// The speed of one core for a job of `arch` (None: any): native, emulated, or None when the
    /// node runs it neither way.
    pub fn speed_for(&self, arch: Option<Arch>) -> Option<u32> {
        match arch {
            None => Some(self.speed),
            Some(a) if a == self.arch => Some(self.speed),
            Some(a) => self.emulated.iter().find(|e| e.arch == a).map(|e| e.speed),
        }
    }
}

/// How a node runs microVMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAccel {
    Kvm,
    Tcg,
}

impl VmAccel {
    pub fn as_str(self) -> &'static str {
        match self {
            VmAccel::Kvm => "kvm",
            VmAccel::Tcg => "tcg",
        }
    }
}

/// What a node running microVMs under TCG counts for in placing an `isolation: vm` job, per mille
/// of its announced speed: QEMU's TCG translates every guest instruction, so a job in a microVM
/// runs several times slower than under KVM. It ranks such a node behind KVM nodes of like speed
/// without making it unschedulable: when the KVM nodes are busy it claims after their stagger.
pub const TCG_VM_SPEED_PER_MILLE: u32 = 100;

/// The speed of the reference core, and of a node that did not say.
pub const SPEED_REFERENCE: u32 = 1000;

fn speed_reference() -> u32 {
    SPEED_REFERENCE
}

/// One reason a job does not fit a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mismatch {
    Arch {
        wanted: Arch,
        has: Arch,
    },
    Cores {
        wanted: u32,
        has: u32,
    },
    Memory {
        wanted_bytes: u64,
        has_bytes: u64,
    },
    CpuFlags {
        missing: Vec<String>,
    },
    /// `vfio`: counted are the GPUs a microVM can take (an `isolation: vm` job).
    Gpu {
        wanted: u32,
        model: Option<String>,
        has: u32,
        vfio: bool,
    },
    Label {
        key: String,
        wanted: String,
        has: Option<String>,
    },
    NoMicrovm,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Arch { wanted, has } => write!(f, "needs {wanted:?}, is {has:?}"),
            Mismatch::Cores { wanted, has } => write!(f, "needs {wanted} cores, has {has}"),
            Mismatch::Memory { wanted_bytes, has_bytes } => {
                write!(f, "needs {} MiB of memory, has {} MiB", wanted_bytes >> 20, has_bytes >> 20)
            }
            Mismatch::CpuFlags { missing } => write!(f, "lacks CPU flags {}", missing.join(", ")),
            Mismatch::Gpu { wanted, model, has, vfio } => {
                let what = if *vfio { " a microVM can take (bound to vfio-pci, for isolation: vm)" } else { "" };
                match model {
                    Some(m) => write!(f, "needs {wanted} GPU(s) of model {m}{what}, has {has} of it"),
                    None => write!(f, "needs {wanted} GPU(s){what}, has {has}"),
                }
            }
            Mismatch::Label { key, wanted, has } => match has {
                Some(h) => write!(f, "needs label {key}={wanted}, has {key}={h}"),
                None => write!(f, "needs label {key}={wanted}, has none"),
            },
            Mismatch::NoMicrovm => write!(f, "needs isolation: vm and cannot run microVMs"),
        }
    }
}

/// Every way `req` does not fit `caps`; empty when it fits.
pub fn mismatches(req: &Requirements, caps: &Capabilities) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if let Some(arch) = req.arch
        && caps.speed_for(Some(arch)).is_none()
    {
        out.push(Mismatch::Arch { wanted: arch, has: caps.arch });
    }
    if req.cores > caps.cores {
        out.push(Mismatch::Cores { wanted: req.cores, has: caps.cores });
    }
    if req.memory_bytes > caps.memory_bytes {
        out.push(Mismatch::Memory { wanted_bytes: req.memory_bytes, has_bytes: caps.memory_bytes });
    }
    let missing: Vec<String> = req.cpu_flags.iter().filter(|f| !caps.cpu_flags.contains(*f)).cloned().collect();
    if !missing.is_empty() {
        out.push(Mismatch::CpuFlags { missing });
    }
    if let Some(gpu) = &req.gpu {
        // An `isolation: vm` job gets GPUs passed to its microVM by VFIO; any other the
        // namespace sandbox's, or VFIO ones in a microVM when those are all there is.
        let vm = req.isolation == Some(Isolation::Vm);
        let has = caps
            .gpus
            .iter()
            .filter(|g| gpu.model.as_ref().is_none_or(|want| g.model == *want) && (g.vfio || !vm))
            .count() as u32;
        if has < gpu.count {
            out.push(Mismatch::Gpu { wanted: gpu.count, model: gpu.model.clone(), has, vfio: vm });
        }
    }
    for (key, wanted) in &req.labels {
        let has = caps.labels.get(key);
        if has != Some(wanted) {
            out.push(Mismatch::Label { key: key.clone(), wanted: wanted.clone(), has: has.cloned() });
        }
    }
    if req.isolation == Some(Isolation::Vm) && !caps.microvm {
        out.push(Mismatch::NoMicrovm);
    }
    out
}

/// Why no node of `mesh` can run `req`, or None if one can. The reason lists each node's
/// mismatches, so a user sees what to change (or which machine to add).
pub fn unschedulable(req: &Requirements, mesh: &[(String, Capabilities)]) -> Option<String> {
    if mesh.is_empty() {
        return Some("the mesh has no nodes".into());
    }
    let mut reasons = Vec::new();
    for (node, caps) in mesh {
        let m = mismatches(req, caps);
        if m.is_empty() {
            return None;
        }
        let list: Vec<String> = m.iter().map(ToString::to_string).collect();
        reasons.push(format!("{node}: {}", list.join("; ")));
    }
    Some(format!("no node can run it: {}", reasons.join(" | ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dag::Gpu;

    fn node() -> Capabilities {
        Capabilities {
            arch: Arch::X86_64,
            cores: 2,
            memory_bytes: 24 << 30,
            cpu_flags: ["avx2", "sse4_2"].into_iter().map(String::from).collect(),
            gpus: vec![],
            labels: [("pool".to_string(), "night".to_string())].into(),
            microvm: true,
            vm_accel: Some(VmAccel::Kvm),
            speed: SPEED_REFERENCE,
            emulated: Vec::new(),
        }
    }

    #[test]
    fn a_default_job_fits_and_every_mismatch_is_named() {
        assert!(mismatches(&Requirements::default(), &node()).is_empty());
        let req = Requirements {
            arch: Some(Arch::Aarch64),
            cores: 8,
            memory_bytes: 64 << 30,
            cpu_flags: vec!["avx512f".into(), "avx2".into()],
            gpu: Some(Gpu { count: 1, model: None }),
            labels: [("pool".to_string(), "day".to_string())].into(),
            isolation: Some(Isolation::Vm),
            ..Requirements::default()
        };
        let m = mismatches(&req, &node());
        assert_eq!(m.len(), 6, "{m:?}");
        assert!(m.contains(&Mismatch::CpuFlags { missing: vec!["avx512f".into()] }));
        let mut no_vm = node();
        no_vm.microvm = false;
        assert_eq!(
            mismatches(&Requirements { isolation: Some(Isolation::Vm), ..Requirements::default() }, &no_vm),
            vec![Mismatch::NoMicrovm]
        );
        assert!(mismatches(&Requirements::default(), &no_vm).is_empty(), "unset isolation may use namespaces");
    }

    #[test]
    fn a_gpu_job_in_a_mesh_without_gpus_is_unschedulable_with_the_reason() {
        let req = Requirements { gpu: Some(Gpu { count: 1, model: None }), ..Requirements::default() };
        let mesh = vec![("a".to_string(), node()), ("b".to_string(), node())];
        let why = unschedulable(&req, &mesh).expect("unschedulable");
        assert!(why.contains("a: needs 1 GPU(s), has 0") && why.contains("b: needs 1 GPU(s), has 0"), "{why}");
        let mut gpu_node = node();
        gpu_node.gpus = vec![GpuCap::model("A100")];
        let mesh = vec![("a".to_string(), node()), ("g".to_string(), gpu_node.clone())];
        assert_eq!(unschedulable(&req, &mesh), None);
        let h100 = Requirements { gpu: Some(Gpu { count: 1, model: Some("H100".into()) }), ..Requirements::default() };
        assert!(unschedulable(&h100, &[("g".to_string(), gpu_node)]).unwrap().contains("model H100"));
        assert!(unschedulable(&Requirements::default(), &[]).is_some());
    }

    /// A node older than `vm_accel` announces none: its capabilities still parse.
    #[test]
    fn capabilities_without_an_accelerator_still_parse() {
        let mut v: ciborium::Value = ciborium::Value::serialized(&node()).unwrap();
        if let ciborium::Value::Map(fields) = &mut v {
            fields.retain(|(k, _)| k.as_text() != Some("vm_accel"));
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&v, &mut bytes).unwrap();
        let old: Capabilities = shoal_dag::from_cbor(&bytes).unwrap();
        assert_eq!(old, Capabilities { vm_accel: None, ..node() });
        assert_eq!(shoal_dag::from_cbor::<Capabilities>(&shoal_dag::canonical_cbor(&node())).unwrap(), node());
    }
}

#[cfg(test)]
mod gpu_wire_tests {
    use super::*;

    /// A GPU reads from an older node's announcement (the model as a string) and a newer one's.
    #[test]
    fn a_gpu_reads_from_its_model_alone_or_with_vendor_and_memory() {
        let full = GpuCap { model: "A100".into(), vendor: "nvidia".into(), memory_bytes: Some(80 << 30), vfio: false };
        let bytes = shoal_dag::canonical_cbor(&vec![full.clone()]);
        assert_eq!(shoal_dag::from_cbor::<Vec<GpuCap>>(&bytes).unwrap(), vec![full]);
        let old = shoal_dag::canonical_cbor(&vec!["A100".to_string()]);
        assert_eq!(shoal_dag::from_cbor::<Vec<GpuCap>>(&old).unwrap(), vec![GpuCap::model("A100")]);
    }
}
