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
    let built = home.shoal(&["image", "build", rootfs.to_str().unwrap(), "--tag", "busybox-arm64:latest"]);
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
