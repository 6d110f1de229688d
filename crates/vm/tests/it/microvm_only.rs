//! What only the microVM backend does: guest faults, the host's deadline, resources reaching the
//! guest, the run record's VM details, and nothing left behind.

use std::fs;
use std::time::Instant;

use shoal_vm::microvm::disk::Fault;
use shoal_vm::{Backend, Exit, MicrovmBackend, MicrovmConfig, RunError};

use crate::{fixture, processes_with, vm_available, vm_cache_dir};

fn faulty(fault: Fault, boot_grace_ms: u64) -> MicrovmBackend {
    let mut cfg = MicrovmConfig::new(vm_cache_dir());
    cfg.fault = Some(fault);
    cfg.boot_grace_ms = Some(boot_grace_ms);
    MicrovmBackend::new(cfg).expect("the microVM backend sets up")
}

#[test]
fn a_guest_kernel_panic_is_reported_as_such() {
    if !vm_available() {
        return;
    }
    let f = fixture();
    let req = f.request("echo never");
    let work_dir = req.work_dir.clone();
    let err = faulty(Fault::Panic, 60_000).run(req).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RunError::Helper(_)), "{err:?}");
    assert!(text.contains("the guest kernel panicked"), "{text}");
    assert!(text.contains("injected fault: panicking"), "the console tail is kept: {text}");
    assert_eq!(processes_with(&work_dir.to_string_lossy()), Vec::<String>::new());
}

#[test]
fn a_hung_guest_is_killed_at_the_deadline_and_reported() {
    if !vm_available() {
        return;
    }
    let f = fixture();
    let mut req = f.request("echo never");
    req.limits.timeout_ms = 1_000;
    let work_dir = req.work_dir.clone();
    let started = Instant::now();
    let err = faulty(Fault::Hang, 6_000).run(req).unwrap_err();
    let took = started.elapsed();
    assert!(err.to_string().contains("the microVM hung"), "{err}");
    // Deadline: timeout 1 s + guest grace 2 s + boot allowance 6 s.
    assert!(took.as_secs_f64() >= 8.5, "killed after {took:?}, before its deadline");
    assert_eq!(processes_with(&work_dir.to_string_lossy()), Vec::<String>::new(), "QEMU outlived the job");
    let left: Vec<_> = fs::read_dir(&work_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n == "request.img" || n == "reply.img"), "disks left behind: {left:?}");
}

#[test]
fn cores_and_memory_reach_the_guest_and_the_record_names_the_vm() {
    if !vm_available() {
        return;
    }
    let f = fixture();
    let mut req = f.request("nproc; grep MemTotal /proc/meminfo; uname -r");
    req.limits.cores = 2;
    req.limits.memory_bytes = 300 << 20;
    let work_dir = req.work_dir.clone();
    let out = crate::microvm().unwrap().run(req).expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout.to_vec()).into_owned();
    assert_eq!(out.exit, Exit::Code(0), "{stdout}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("2"), "{stdout}");
    let mem_kib: u64 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((300 << 10..(300 + 160) << 10).contains(&mem_kib), "MemTotal {mem_kib} kB");
    let vm = out.vm.expect("vm details");
    assert_eq!(lines.next(), Some(vm.guest_kernel.as_str()));
    assert_eq!(out.backend, "microvm");
    assert!(matches!(out.accelerator.as_deref(), Some("tcg" | "kvm")));
    assert!(vm.qemu.starts_with(char::is_numeric), "{}", vm.qemu);
    let t = vm.timeline;
    let points = [t.kernel_entry_ms, t.init_start_ms, t.job_start_ms, t.job_end_ms, t.reply_written_ms, t.qemu_exit_ms];
    assert!(points.windows(2).all(|w| w[0] <= w[1]), "timeline out of order: {t:?}");
    let left: Vec<_> = fs::read_dir(&work_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n == "request.img" || n == "reply.img"), "disks left behind: {left:?}");
}

#[test]
fn network_true_reaches_out_through_qemu_user_networking() {
    if !vm_available() {
        return;
    }
    // A server on the host's loopback, which the guest reaches as 10.0.2.2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\n\r\nhello from host").unwrap();
    });
    let f = fixture();
    let mut req = f.request(&format!("grep -o eth0 /proc/net/dev; wget -q -O - http://10.0.2.2:{port}/"));
    req.network = true;
    let out = crate::microvm().unwrap().run(req).expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout.to_vec()).into_owned();
    assert_eq!(out.exit, Exit::Code(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr.to_vec()));
    assert!(stdout.contains("eth0") && stdout.ends_with("hello from host"), "{stdout}");
    server.join().unwrap();
}

#[test]
fn inputs_and_stdin_cross_into_the_guest() {
    if !vm_available() {
        return;
    }
    let f = fixture();
    let dir = f.path("in-dir");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/a.txt"), "aaa").unwrap();
    std::os::unix::fs::symlink("sub/a.txt", dir.join("link")).unwrap();
    fs::write(f.path("one"), "one file\n").unwrap();
    fs::write(f.path("stdin"), "from stdin\n").unwrap();
    let mut req =
        f.request("cat; cat /input/one; cat /input/d/link; readlink /input/d/link; touch /input/one 2>&1 || echo ro");
    req.inputs = vec![
        shoal_vm::InputMount { name: "d".into(), host_path: dir },
        shoal_vm::InputMount { name: "one".into(), host_path: f.path("one") },
    ];
    req.stdin = Some(f.path("stdin"));
    let out = crate::microvm().unwrap().run(req).expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout.to_vec()).into_owned();
    assert_eq!(out.exit, Exit::Code(0), "{stdout}");
    assert!(stdout.starts_with("from stdin\none file\naaasub/a.txt\n"), "{stdout}");
    assert!(stdout.trim_end().ends_with("ro"), "an input was writable: {stdout}");
}

#[test]
fn a_warm_vm_takes_the_next_job_and_nothing_outlives_the_pool() {
    if !vm_available() {
        return;
    }
    let f = fixture();
    let cache = f.path("vm-cache");
    let mut cfg = MicrovmConfig::new(&cache);
    cfg.warm_per_kind = 1;
    let backend = MicrovmBackend::new(cfg).expect("sets up");
    // The first job boots cold and leaves a VM booting for the next one of its kind.
    let first = backend.run(f.request("echo first")).expect("runs");
    assert_eq!((first.exit, first.stdout.to_vec()), (Exit::Code(0), b"first\n".to_vec()));
    assert!(!first.vm.unwrap().warm);
    // The next one, with an input and stdin, finds it: the request disk is filled in place.
    fs::write(f.path("in"), "input bytes\n").unwrap();
    let mut req = f.request("cat; cat /input/x");
    req.stdin = Some(f.path("in"));
    req.inputs = vec![shoal_vm::InputMount { name: "x".into(), host_path: f.path("in") }];
    let second = backend.run(req).expect("runs");
    assert_eq!(String::from_utf8_lossy(&second.stdout.to_vec()), "input bytes\ninput bytes\n");
    let vm = second.vm.expect("vm details");
    assert!(vm.warm, "the second job should have run in the pre-booted VM");
    assert!(vm.timeline.job_start_ms <= vm.timeline.qemu_exit_ms);
    // A job of another kind (more memory) boots cold.
    let mut big = f.request("echo big");
    big.limits.memory_bytes = 400 << 20;
    assert!(!backend.run(big).expect("runs").vm.unwrap().warm);
    drop(backend);
    let warm_dir = cache.join("warm");
    let left: Vec<_> =
        fs::read_dir(&warm_dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "warm VM directories left: {left:?}");
    assert_eq!(processes_with(&warm_dir.to_string_lossy()), Vec::<String>::new(), "a warm QEMU outlived its pool");
}

#[test]
fn host_facts_are_kept_between_backends_and_redone_when_a_file_changes() {
    if !vm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest_init = dir.path().join("guest-init");
    fs::copy(shoal_vm::microvm::find_guest_init().unwrap(), &guest_init).unwrap();
    let mut cfg = MicrovmConfig::new(dir.path().join("cache"));
    cfg.guest_init = Some(guest_init.clone());
    let real = MicrovmBackend::new(cfg.clone()).unwrap().report().qemu_version;
    assert!(real.chars().next().is_some_and(|c| c.is_ascii_digit()), "{real}");
    let facts_file = dir.path().join("cache/host-facts.json");
    let mut facts: serde_json::Value = serde_json::from_slice(&fs::read(&facts_file).unwrap()).unwrap();
    facts["qemu_version"] = "kept-from-before".into();
    fs::write(&facts_file, serde_json::to_vec(&facts).unwrap()).unwrap();
    assert_eq!(MicrovmBackend::new(cfg.clone()).unwrap().report().qemu_version, "kept-from-before");
    // A new guest-init (here: the same bytes, a new mtime) makes everything worked out again.
    let f = fs::OpenOptions::new().write(true).open(&guest_init).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60)).unwrap();
    drop(f);
    assert_eq!(MicrovmBackend::new(cfg.clone()).unwrap().report().qemu_version, real);
    // A facts file that is not ours is ignored, not trusted.
    fs::write(&facts_file, b"{ not json").unwrap();
    assert_eq!(MicrovmBackend::new(cfg).unwrap().report().qemu_version, real);
}
