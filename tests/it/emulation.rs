//! Jobs of other architectures (issue 20, item 5): an `arch: aarch64` job on this x86-64 machine
//! runs under qemu-user (the kernel's binfmt_misc handler) in the namespace sandbox, and its run
//! record names the emulation. Debian's arm64 busybox-static is the image (scripts/setup.sh puts
//! it in `/var/cache/shoal/arm64`).

use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// Debian's arm64 busybox-static, as scripts/setup.sh leaves it.
const ARM64_BUSYBOX: &str = "/var/cache/shoal/arm64/busybox";

/// The arm64 busybox and the aarch64 handler, or a skip (a failure where the VM tests must run:
/// CI's setup provides both).
fn arm64_ready(what: &str) -> bool {
    let handler = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    if Path::new(ARM64_BUSYBOX).is_file() && handler.starts_with("enabled") {
        return true;
    }
    assert!(
        std::env::var_os("SHOAL_REQUIRE_VM").is_none(),
        "{what} needs {ARM64_BUSYBOX} and qemu-user's aarch64 binfmt_misc handler: run scripts/setup.sh"
    );
    eprintln!("skipping {what}: no arm64 busybox or aarch64 handler (run scripts/setup.sh)");
    false
}

#[test]
fn an_aarch64_job_runs_on_this_x86_machine_under_emulation_and_its_record_says_so() {
    if !arm64_ready("the aarch64 emulation test") {
        return;
    }
    let home = Home::empty();
    let rootfs = home.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(ARM64_BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    let built = home.shoal(&[
        "image",
        "build",
        rootfs.to_str().unwrap(),
        "--tag",
        "busybox-arm64:latest",
        "--platform",
        "linux/arm64",
    ]);
    assert_success(&built, "shoal image build");
    let job = |isolation: &str| {
        format!(
            r#"{{"version": 1, "jobs": [{{"id": "m", "image": "busybox-arm64:latest",
                "command": ["/bin/busybox", "uname", "-m"], "outputs": {{"m": "stdout"}},
                "requirements": {{"arch": "aarch64"{isolation}}}}}]}}"#
        )
    };
    // The default backend (microVMs) leaves an emulated job to the namespace sandbox.
    let dag = home.write("arm.json", &job(""));
    let run = home.shoal(&["run", dag.to_str().unwrap()]);
    assert_success(&run, "shoal run of an aarch64 job");
    let out = home.shoal(&["get", "m", "m"]);
    assert_success(&out, "shoal get");
    assert_eq!(stdout(&out), "aarch64\n");
    let show = home.shoal(&["show", "m"]);
    assert_success(&show, "shoal show");
    let record: Value = serde_json::from_str(&stdout(&show)).unwrap();
    let machine = &record["machine"];
    assert_eq!(
        (machine["arch"].as_str(), machine["backend"].as_str()),
        (Some("x86_64"), Some("namespace")),
        "{machine}"
    );
    let emulation = machine["emulation"].as_str().unwrap_or_default();
    assert!(emulation.starts_with("qemu-user aarch64 through binfmt_misc"), "{machine}");

    // A job that also wants a microVM cannot have one here, and is told why (isolation is not in
    // the action key: without --no-cache the first run would answer).
    let vm = home.write("arm-vm.json", &job(r#", "isolation": "vm""#));
    let run = home.shoal(&["run", "--no-cache", vm.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("runs in the namespace sandbox only"), "{err}");
}

#[test]
fn readme_arm64_example_runs_as_written() {
    if !arm64_ready("the README's arm64 example") {
        return;
    }
    let home = Home::empty();
    let block = crate::held_home::readme_block("**Other architectures.**");
    // Its own directory for /tmp/, and its own store.
    let script = block.replace("/tmp/", &format!("{}/", home.path().display()));
    let bin_dir = shoal_bin().parent().unwrap().to_path_buf();
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\nexport PATH={}:$PATH\n{script}", bin_dir.display()))
        .env("SHOAL_HOME", home.store())
        .env_remove("RUST_LOG");
    let out = run_with_deadline(cmd);
    assert_success(&out, "the README's arm64 example");
    let text = stdout(&out);
    assert!(text.contains("aarch64\n"), "{text}");
    assert!(text.contains("\"emulation\": \"qemu-user aarch64 through binfmt_misc"), "{text}");
}

/// A multi-platform image (an OCI index of an amd64 and an arm64 busybox): the import picks this
/// machine's entry, `--platform` another under the same tag, and each job gets the tag's image for
/// its architecture; a platform the index lacks, or a job whose tag has no image for its
/// architecture, is refused with the fix.
#[test]
fn a_multi_platform_image_gives_each_job_the_entry_for_its_architecture() {
    if !arm64_ready("the multi-platform image test") {
        return;
    }
    let home = Home::empty();
    // Two one-layer layouts, then one layout whose index names both.
    let layout = |name: &str, busybox: &Path, platform: &str| {
        let rootfs = home.path().join(format!("{name}-rootfs"));
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        let out = home.path().join(format!("{name}-layout"));
        let built = home.shoal(&[
            "image",
            "build",
            rootfs.to_str().unwrap(),
            "--tag",
            &format!("{name}:latest"),
            "--platform",
            platform,
            "--oci-out",
            out.to_str().unwrap(),
        ]);
        assert_success(&built, "shoal image build");
        out
    };
    let host_busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(Path::new).find(|p| p.is_file());
    let amd = layout("amd", host_busybox.expect("busybox-static (scripts/setup.sh)"), "linux/amd64");
    let arm = layout("arm", Path::new(ARM64_BUSYBOX), "linux/arm64");
    let multi = home.path().join("multi");
    std::fs::create_dir_all(multi.join("blobs/sha256")).unwrap();
    let mut manifests = Vec::new();
    for (dir, arch) in [(&amd, "amd64"), (&arm, "arm64")] {
        for blob in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            std::fs::copy(blob.path(), multi.join("blobs/sha256").join(blob.file_name())).unwrap();
        }
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut entry = index["manifests"][0].clone();
        entry["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        entry.as_object_mut().unwrap().remove("annotations");
        manifests.push(entry);
    }
    std::fs::copy(amd.join("oci-layout"), multi.join("oci-layout")).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests});
    std::fs::write(multi.join("index.json"), index.to_string()).unwrap();
    let multi = multi.to_str().unwrap();

    let import = |extra: &[&str]| home.shoal(&[&["image", "import", multi, "--tag", "bb:multi"][..], extra].concat());
    assert_success(&import(&[]), "importing the index for this machine");
    let uname = |arch: &str| {
        format!(
            r#"{{"id": "{}", "image": "bb:multi", "command": ["/bin/busybox", "uname", "-m"],
                "outputs": {{"m": "stdout"}}, "requirements": {{"arch": "{arch}"}}}}"#,
            arch.replace('_', "-")
        )
    };
    // Before the arm64 entry is imported, an aarch64 job is told how to get it.
    let dag =
        home.write("both.json", &format!(r#"{{"version": 1, "jobs": [{}, {}]}}"#, uname("x86_64"), uname("aarch64")));
    let run = home.shoal(&["run", dag.to_str().unwrap()]);
    assert!(!run.status.success(), "an aarch64 job ran an amd64 image");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("image `bb:multi` is linux/amd64, the job asks for aarch64"), "{err}");
    assert!(err.contains("--platform linux/arm64"), "{err}");

    assert_success(&import(&["--platform", "linux/arm64"]), "importing the index's arm64 entry");
    let run = home.shoal(&["run", dag.to_str().unwrap()]);
    assert_success(&run, "shoal run of both jobs");
    for (job, want) in [("x86-64", "x86_64\n"), ("aarch64", "aarch64\n")] {
        let out = home.shoal(&["get", job, "m"]);
        assert_success(&out, "shoal get");
        assert_eq!(stdout(&out), want, "job {job}");
    }

    // A platform the index has no entry for names the ones it has.
    let bad = import(&["--platform", "linux/riscv64"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("has no linux/riscv64 image (it has linux/amd64, linux/arm64)"), "{err}");
    let bad = import(&["--platform", "windows/amd64"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("write it as docker does"), "{bad:?}");
}
