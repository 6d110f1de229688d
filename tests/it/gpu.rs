//! GPUs (issue 20, item 4), on a fake machine: `SHOAL_GPU_ROOT` points the node's detection at a
//! tree that looks like the /proc, /sys and /dev of a host with two NVIDIA GPUs (and their driver)
//! and an AMD one. A job asking for a GPU gets one of them: its device node, the driver's shared
//! nodes and user-space libraries at their own paths, and the record names it with the driver.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

const MODEL: &str = "NVIDIA GeForce RTX 3060";

fn fake_machine(dir: &Path) {
    let w = |p: &str, text: &str| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    for (i, bus) in ["0000:01:00.0", "0000:02:00.0"].iter().enumerate() {
        w(
            &format!("proc/driver/nvidia/gpus/{bus}/information"),
            &format!("Model: \t\t {MODEL}\nDevice Minor: \t {i}\n"),
        );
        w(&format!("dev/nvidia{i}"), &format!("fake nvidia{i}\n"));
    }
    w("proc/driver/nvidia/version", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.54.03  Tue Jun  6 2023\n");
    w("dev/nvidiactl", "fake nvidiactl\n");
    w("usr/lib/x86_64-linux-gnu/libcuda.so.535.54.03", "fake libcuda\n");
    std::os::unix::fs::symlink("libcuda.so.535.54.03", dir.join("usr/lib/x86_64-linux-gnu/libcuda.so.1")).unwrap();
    w("usr/lib/x86_64-linux-gnu/libc.so.6", "not a driver library\n");
    w("sys/class/drm/renderD128/device/vendor", "0x1002\n");
    w("sys/class/drm/renderD128/device/device", "0x73bf\n");
    w("sys/class/drm/renderD128/device/mem_info_vram_total", "17163091968\n");
    w("dev/dri/renderD128", "fake render\n");
}

#[test]
fn doctor_lists_the_fake_machines_nvidia_gpus_with_their_driver_and_its_render_node() {
    let home = Home::empty();
    let root = home.path().join("machine");
    fake_machine(&root);
    let out = shoal(&home, Some(&root), &["doctor", "--json"]);
    assert_success(&out, "shoal doctor");
    let checks: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let gpus = checks.as_array().unwrap().iter().find(|c| c["check"] == "GPUs").unwrap()["detail"].clone();
    let r = root.display();
    assert_eq!(
        gpus.as_str().unwrap(),
        format!(
            "{MODEL} (nvidia, driver 535.54.03) at {r}/dev/nvidia0; {MODEL} (nvidia, driver 535.54.03) at \
             {r}/dev/nvidia1; amd 0x73bf (amd), 16.0 GiB at {r}/dev/dri/renderD128"
        )
    );
    let none = shoal(&home, Some(&root.join("nowhere")), &["doctor", "--json"]);
    assert!(stdout(&none).contains("\"none found\""), "{}", stdout(&none));
}

fn shoal(home: &Home, root: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(args).env("SHOAL_HOME", home.store()).env_remove("RUST_LOG").current_dir(home.path());
    match root {
        Some(r) => cmd.env("SHOAL_GPU_ROOT", r),
        None => cmd.env_remove("SHOAL_GPU_ROOT"),
    };
    run_with_deadline(cmd)
}

#[test]
fn a_job_asking_for_a_gpu_gets_one_of_the_machines_with_its_driver() {
    let home = Home::with_busybox();
    let root = home.path().join("machine");
    fake_machine(&root);
    let dag = |count: u32| {
        format!(
            r#"{{"version": 1, "jobs": [{{"id": "g", "image": "busybox:latest",
                "command": ["sh", "-c", "cat /dev/nvidia* /usr/lib/x86_64-linux-gnu/libcuda.so.1; ls /dev"],
                "outputs": {{"o": "stdout"}}, "requirements": {{"gpu": {{"count": {count}, "model": "{MODEL}"}}}}}}]}}"#
        )
    };
    let one = home.write("gpu.json", &dag(1));
    let run = shoal(&home, Some(&root), &["run", one.to_str().unwrap()]);
    assert_success(&run, "shoal run of a GPU job");
    let out = stdout(&shoal(&home, Some(&root), &["get", "g", "o"]));
    // One GPU of the two: its node and the shared control node, the driver's library through its
    // symlink; not the other GPU's node.
    assert!(out.contains("fake nvidia0\n") && out.contains("fake nvidiactl\n"), "{out}");
    assert!(out.contains("fake libcuda\n"), "{out}");
    assert!(!out.contains("nvidia1"), "only the lent GPU: {out}");
    let record: Value = serde_json::from_str(&stdout(&shoal(&home, Some(&root), &["show", "g"]))).unwrap();
    assert_eq!(record["machine"]["gpus"], serde_json::json!([format!("{MODEL} (nvidia, driver 535.54.03)")]));
    assert_eq!(record["machine"]["backend"], "namespace");

    // More than the machine has, or a machine without any: refused with what it lacks.
    let three = home.write("gpu3.json", &dag(3));
    let run = shoal(&home, Some(&root), &["run", "--no-cache", three.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("needs 3 GPU(s)") && err.contains("has 2"), "{err}");
    let run = shoal(&home, None, &["run", "--no-cache", one.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("needs 1 GPU(s)") && err.contains("has 0"), "{err}");
}

/// A node announces the GPUs it found with vendor, model and memory (where the driver says), and
/// a mesh job asking for the AMD one by model is placed on it and gets it.
#[test]
fn a_node_announces_its_gpus_and_a_mesh_job_gets_one() {
    let home = Home::with_busybox();
    let root = home.path().join("machine");
    fake_machine(&root);
    // The node inherits it: each test runs in a process of its own.
    unsafe { std::env::set_var("SHOAL_GPU_ROOT", &root) };
    let key = crate::mesh::mesh_key(home.path());
    let node = crate::mesh::MeshNode::start(home, &key, &[], &[]);
    let peers = node.get_json("/v1/peers");
    let me = peers["peers"].as_array().unwrap().iter().find(|p| p["me"] == true).unwrap().clone();
    let gpus = me["caps"]["gpus"].as_array().unwrap().clone();
    assert_eq!(gpus.len(), 3, "{me:#}");
    assert_eq!((gpus[0]["vendor"].as_str(), gpus[0]["model"].as_str()), (Some("nvidia"), Some(MODEL)));
    assert_eq!(gpus[2]["vendor"], "amd");
    assert_eq!(gpus[2]["memory_bytes"], 17_163_091_968u64);
    let dag = r#"{"version": 1, "jobs": [{"id": "g", "image": "busybox:latest",
        "command": ["sh", "-c", "ls /dev/dri"], "outputs": {"o": "stdout"},
        "requirements": {"gpu": {"count": 1, "model": "amd 0x73bf"}}}]}"#;
    let out = node.cli(&["submit", "--wait", node.home.write("g.json", dag).to_str().unwrap()]);
    assert_success(&out, "shoal submit of a GPU job");
    let out = node.cli(&["get", "g", "o"]);
    assert_success(&out, "shoal get");
    assert_eq!(stdout(&out), "renderD128\n");
}

/// A fake machine whose GPUs are set aside for virtual machines (bound to vfio-pci): an AMD one
/// in IOMMU group 12 with its audio function (bound to vfio-pci too), an NVIDIA one whose group
/// also holds a device its host driver keeps, and one with no IOMMU group at all.
fn vfio_machine(dir: &Path) {
    let w = |p: &str, text: &str| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let link = |target: &str, p: &str| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    };
    let device = |addr: &str, class: &str, vendor: &str, driver: &str, group: Option<u32>| {
        let d = format!("sys/bus/pci/devices/{addr}");
        w(&format!("{d}/class"), &format!("{class}\n"));
        w(&format!("{d}/vendor"), &format!("{vendor}\n"));
        w(&format!("{d}/device"), "0x73bf\n");
        link(&format!("../../../bus/pci/drivers/{driver}"), &format!("{d}/driver"));
        if let Some(g) = group {
            link(&format!("../../../kernel/iommu_groups/{g}"), &format!("{d}/iommu_group"));
            link(
                &format!("../../../../devices/pci0000:00/{addr}"),
                &format!("sys/kernel/iommu_groups/{g}/devices/{addr}"),
            );
            w(&format!("dev/vfio/{g}"), "fake vfio group\n");
        }
    };
    device("0000:03:00.0", "0x030000", "0x1002", "vfio-pci", Some(12));
    device("0000:03:00.1", "0x040300", "0x1002", "vfio-pci", Some(12));
    device("0000:04:00.0", "0x030200", "0x10de", "vfio-pci", Some(13));
    device("0000:04:00.1", "0x040300", "0x10de", "snd_hda_intel", Some(13));
    device("0000:05:00.0", "0x030000", "0x8086", "vfio-pci", None);
    // A network card bound to vfio-pci is no GPU.
    device("0000:06:00.0", "0x020000", "0x8086", "vfio-pci", Some(14));
    w("dev/vfio/vfio", "fake vfio container\n");
}

/// VFIO passthrough (issue 20, item 4) on a fake sysfs/devfs: the GPU a microVM can take is
/// announced, `shoal doctor` says why the others cannot be, and an `isolation: vm` job lent it
/// boots QEMU with the device passed (`-device vfio-pci,host=...` on microvm's PCIe bus). This
/// machine has no IOMMU, so real QEMU then refuses the device: the job fails with QEMU's own
/// words about that address, which is as far as a machine without the hardware goes.
#[test]
fn a_gpu_bound_to_vfio_is_passed_to_a_microvm_job_and_doctor_says_why_another_is_not() {
    let home = Home::with_busybox();
    let root = home.path().join("machine");
    vfio_machine(&root);
    let out = shoal(&home, Some(&root), &["doctor", "--json"]);
    let checks: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = checks.as_array().unwrap();
    let gpus = rows.iter().find(|c| c["check"] == "GPUs").unwrap()["detail"].as_str().unwrap().to_string();
    assert_eq!(
        gpus,
        format!("amd 0x73bf (amd, VFIO passthrough of 0000:03:00.0, IOMMU group 12) at {}/dev/vfio/12", root.display())
    );
    let refused: Vec<&str> =
        rows.iter().filter(|c| c["check"] == "GPU for microVMs").map(|c| c["detail"].as_str().unwrap()).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].contains("0000:04:00.0") && refused[0].contains("0000:04:00.1, bound to snd_hda_intel"));
    assert!(refused[1].contains("0000:05:00.0 is bound to vfio-pci but has no IOMMU group"), "{}", refused[1]);

    let dag = |isolation: &str| {
        format!(
            r#"{{"version": 1, "jobs": [{{"id": "g", "image": "busybox:latest", "command": ["true"],
                "requirements": {{"gpu": {{"count": 1}}{isolation}}}}}]}}"#
        )
    };
    // Asked for in the namespace sandbox: a GPU bound to vfio-pci goes to microVMs only.
    let ns = home.write("ns.json", &dag(r#", "isolation": "namespace""#));
    let run = shoal(&home, Some(&root), &["run", ns.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("bound to vfio-pci, which only a microVM takes"), "{err}");
    // Two for a microVM: the machine has one it can pass.
    let two = home.write("two.json", &dag(r#", "isolation": "vm""#).replace(r#""count": 1"#, r#""count": 2"#));
    let run = shoal(&home, Some(&root), &["run", two.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("needs 2 GPU(s) a microVM can take") && err.contains("has 1"), "{err}");

    if !crate::microvm::vm_ready(&home) {
        return;
    }
    let vm = home.write("vm.json", &dag(r#", "isolation": "vm""#));
    let run = shoal(&home, Some(&root), &["run", vm.to_str().unwrap()]);
    assert!(!run.status.success(), "no IOMMU here: QEMU cannot take the device");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("-device vfio-pci,host=0000:03:00.0"), "QEMU was given the device: {err}");
}
