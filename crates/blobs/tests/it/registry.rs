use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_blobs::image::{ImageConfig, build_oci_layout_from_dir};
use shoal_blobs::{ImageRef, PullOptions};

use crate::{have_tools, store, write};

/// Kills the registry when the test ends, however it ends.
struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn pull_from_a_local_registry() {
    if !have_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let (home, s) = store().await;
    let port = free_port();
    let storage = home.path().join("registry");
    std::fs::create_dir_all(&storage).unwrap();
    let config = home.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .unwrap();
    let _registry = Registry(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let src = home.path().join("rootfs");
    write(&src.join("bin/app"), b"#!/bin/sh\necho app\n", 0o755);
    write(&src.join("etc/conf"), b"conf", 0o644);
    std::os::unix::fs::symlink("app", src.join("bin/alias")).unwrap();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    write(&src.join("lib/big"), &big, 0o644);
    let cfg = ImageConfig {
        env: vec!["PATH=/bin".into()],
        cmd: vec!["/bin/app".into()],
        arch: "x86_64".into(),
        ..Default::default()
    };
    let layout = home.path().join("layout");
    build_oci_layout_from_dir(&src, &cfg, &layout, "v1").unwrap();
    let push = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://127.0.0.1:{port}/tools/app:v1"),
        ])
        .output()
        .unwrap();
    assert!(push.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&push.stderr));

    let reference = format!("127.0.0.1:{port}/tools/app:v1");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let progress: shoal_blobs::ProgressFn = std::sync::Arc::new(move |d, t| seen2.lock().unwrap().push((d, t)));
    let t = Instant::now();
    let id = s.pull_with_progress(&reference, PullOptions::default(), Some(progress)).await.unwrap();
    eprintln!("MEASURE pull of a 3 MiB image from a local registry: {} ms", t.elapsed().as_millis());
    let (rid, img) = s.resolve_image(&ImageRef::Tag(reference.clone())).await.unwrap();
    assert_eq!(rid, id);
    assert_eq!(img.config, cfg);
    assert_eq!(img.rootfs, s.put_tree_from_dir(&src).await.unwrap().hash, "the pulled rootfs matches the source");
    let fs = s.rootfs(img.rootfs).await.unwrap();
    assert_eq!(std::fs::read(fs.join("lib/big")).unwrap(), big);
    {
        let seen = seen.lock().unwrap();
        let &(done, total) = seen.last().unwrap();
        assert!(total > 0 && done == total, "{seen:?}");
    }
    // By digest as well.
    let digest = img.oci_digest.clone().unwrap();
    let by_digest = s.pull(&format!("127.0.0.1:{port}/tools/app@{digest}"), PullOptions::default()).await.unwrap();
    assert_eq!(by_digest, id);
    // A missing tag says so.
    let err = s.pull(&format!("127.0.0.1:{port}/tools/app:nope"), PullOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    s.shutdown().await;
}
