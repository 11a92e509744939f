//! The container sandbox's walls, each asserted to hold, as root and as an unprivileged user:
//! host files and PIDs out of sight, loopback only with `--network none`, `mount`, `mknod`,
//! `ptrace` of a host process, raw sockets and module loading refused, read-only volumes,
//! containers unable to signal each other, nothing of the host-made `/etc` files in a layer,
//! and a fork bomb in a RUN step bounded, and a step or container that fills memory killed at
//! its memory limit.
//!
//! The probes run `testdata/escape-probe/probe.c`, built static with the host's gcc.

use std::io::Read as _;
use std::process::Command;

use tests::{Output, TestContext, builds_as_root, have_program, require, workspace_dir};

/// Builds the probe and an image `probe` (busybox plus `/probe`).
fn probe_image(ctx: &TestContext) -> Option<&'static str> {
    if !require("gcc", have_program("gcc"), "gcc builds the escape probe") {
        return None;
    }
    let img = ctx.base_image();
    let dir = ctx.work().join("probe-ctx");
    std::fs::create_dir_all(&dir).unwrap();
    let built = Command::new("gcc")
        .args(["-static", "-O", "-o"])
        .arg(dir.join("probe"))
        .arg(workspace_dir().join("testdata/escape-probe/probe.c"))
        .output()
        .unwrap();
    let static_libc = built.status.success();
    if !require(
        "static libc",
        static_libc,
        &String::from_utf8_lossy(&built.stderr),
    ) {
        return None;
    }
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {img}\nCOPY probe /probe\n"),
    )
    .unwrap();
    ctx.give(&dir);
    ctx.kiln()
        .args(["build", "-q", "-t", "probe"])
        .arg(&dir)
        .run()
        .ok();
    Some("probe")
}

fn run(ctx: &TestContext, args: &[&str]) -> Output {
    ctx.kiln().arg("run").arg("--rm").args(args).run()
}

fn assert_denied(o: &Output, what: &str) {
    let out = o.ok();
    assert!(
        out.starts_with(&format!("{what}: denied")),
        "{what} was not refused: {o:?}"
    );
}

fn walls(ctx: &TestContext) {
    let Some(img) = probe_image(ctx) else { return };

    // Host files outside the root: by path, by `..`, through /proc/1/root.
    let secret = ctx.work().join("host-secret");
    std::fs::write(&secret, "do not read\n").unwrap();
    ctx.give(&secret);
    let s = secret.to_string_lossy().into_owned();
    for path in [
        s.clone(),
        format!("/../../../..{s}"),
        format!("/proc/1/root{s}"),
        format!("/proc/self/root/../..{s}"),
    ] {
        assert_denied(&run(ctx, &[img, "/probe", "read", &path]), "read");
    }
    let o = run(
        ctx,
        &[
            img,
            "sh",
            "-c",
            &format!("cat {s} /proc/1/root{s} 2>/dev/null; true"),
        ],
    );
    assert!(!o.ok().contains("do not read"), "{o:?}");

    // Host PIDs: none visible, and one cannot be reached by number.
    let o = run(ctx, &[img, "sh", "-c", "ls /proc | grep -c '^[0-9]'"]);
    let visible: usize = o.ok().trim().parse().unwrap();
    assert!(visible <= 4, "host processes visible: {o:?}");
    let me = std::process::id().to_string();
    assert_denied(&run(ctx, &[img, "/probe", "kill", &me]), "kill");
    assert_denied(&run(ctx, &[img, "/probe", "ptrace", &me]), "ptrace");

    // --network none: loopback only.
    let o = run(ctx, &["--network", "none", img, "cat", "/proc/net/dev"]);
    let ifaces: Vec<String> = o
        .ok()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    assert_eq!(ifaces, ["lo"], "{o:?}");

    // Privileged operations.
    for (what, arg) in [
        ("mount", "mount"),
        ("mknod", "mknod"),
        ("raw socket", "raw"),
        ("finit_module", "module"),
        ("unshare", "unshare"),
    ] {
        assert_denied(&run(ctx, &[img, "/probe", arg]), what);
    }
    let o = run(
        ctx,
        &[
            img,
            "sh",
            "-c",
            "grep -E '^(CapEff|Seccomp|NoNewPrivs)' /proc/self/status",
        ],
    );
    let status = o.ok();
    assert!(status.contains("CapEff:\t00000000a00405fb"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");

    // A read-only volume refuses writes.
    let vol = ctx.work().join("ro-vol");
    std::fs::create_dir(&vol).unwrap();
    ctx.give(&vol);
    let o = run(
        ctx,
        &[
            "-v",
            &format!("{}:/v:ro", vol.display()),
            img,
            "touch",
            "/v/x",
        ],
    );
    assert!(o.fails().contains("Read-only file system"), "{o:?}");
    assert!(!vol.join("x").exists());

    // One container cannot signal another's processes.
    ctx.kiln()
        .args(["run", "-d", "--name", "victim", img, "sleep", "300"])
        .run()
        .ok();
    let id = ctx
        .kiln()
        .args(["ps", "-q", "--no-trunc"])
        .run()
        .ok()
        .trim()
        .to_string();
    let mut pid = String::new();
    std::fs::File::open(ctx.root().join("containers").join(&id).join("pid"))
        .unwrap()
        .read_to_string(&mut pid)
        .unwrap();
    assert_denied(&run(ctx, &[img, "/probe", "kill", pid.trim()]), "kill");
    let o = run(
        ctx,
        &[
            img,
            "sh",
            "-c",
            &format!("kill -9 {} ; echo $?", pid.trim()),
        ],
    );
    assert_ne!(o.stdout.trim(), "0", "{o:?}");
    let ps = ctx.kiln().args(["ps", "-q"]).run();
    assert_eq!(ps.ok().trim(), &id[..12], "the victim must still run");
    ctx.kiln().args(["rm", "-f", "victim"]).run().ok();
}

/// The host-made `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` never reach a layer,
/// whether the image has them or not, whatever a step writes to them.
fn etc_files_stay_out_of_layers(ctx: &TestContext) {
    let img = ctx.base_image();
    let dir = ctx.work().join("etc-ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {img}\nRUN echo 10.6.6.6 evil >> /etc/hosts && echo nameserver 10.9.9.9 >> /etc/resolv.conf && echo other > /etc/hostname && touch /marker\n"
        ),
    )
    .unwrap();
    ctx.give(&dir);
    ctx.kiln()
        .args(["build", "-q", "-t", "etc-test"])
        .arg(&dir)
        .run()
        .ok();
    // The step wrote through to the host-made files, which the image does not keep.
    let o = ctx
        .kiln()
        .args([
            "run",
            "--rm",
            "etc-test",
            "cat",
            "/etc/hosts",
            "/etc/hostname",
        ])
        .run();
    assert!(!o.ok().contains("10.6.6.6"), "{o:?}");
    let last_layer = last_layer_names(ctx, "etc-test");
    assert!(last_layer.iter().any(|n| n == "marker"), "{last_layer:?}");
    for leaked in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        assert!(
            !last_layer.iter().any(|n| n == leaked),
            "{leaked} leaked into the layer: {last_layer:?}"
        );
    }
}

/// The entry names of an image's last layer, read from the store.
fn last_layer_names(ctx: &TestContext, image: &str) -> Vec<String> {
    use snapshotter::Store as _;
    let store = ctx.store();
    let desc = store
        .resolve(&image.parse().unwrap())
        .unwrap()
        .expect("image exists");
    let img = snapshotter::image::read_image(&store, &desc).unwrap();
    let layer = img.manifest.layers().last().unwrap();
    let digest: snapshotter::Digest = layer.digest().to_string().parse().unwrap();
    let blob = store.open(&digest).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .display()
                .to_string()
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// A RUN step that forks without end fails cleanly, and the host can still start processes.
fn fork_bomb_is_bounded(ctx: &TestContext, tag: &str) {
    let img = ctx.base_image();
    let dir = ctx.work().join("bomb-ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {img}\nRUN i=0; while [ $i -lt 20000 ]; do sleep 12{tag} & i=$((i+1)); done; echo all-forked\n"
        ),
    )
    .unwrap();
    ctx.give(&dir);
    let o = ctx
        .kiln()
        .args(["build", "--progress", "plain", "-t", "bomb"])
        .arg(&dir)
        .run();
    let err = o.fails();
    assert!(!err.lines().any(|l| l == "all-forked"), "{o:?}");
    assert!(
        err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
        "{o:?}"
    );
    assert!(err.lines().last().unwrap().contains("error"), "{err}");
    // Every process of the step is gone with it.
    let left = Command::new("pgrep")
        .args(["-c", "-f", &format!("^sleep 12{tag}$")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "0");
    ctx.kiln().args(["run", "--rm", img, "true"]).run().ok();
}

/// A RUN step (and a container) that fills memory is killed at its memory limit, alone: the
/// build fails in one line naming the cause, and the next build and run work. As root; a
/// rootless container has no memory cgroup here, and `run --memory` says so.
fn memory_is_bounded(ctx: &TestContext) {
    let img = ctx.base_image();
    let hog = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo filled ${#x}";
    if ctx.rootless() {
        let o = run(ctx, &["-m", "64m", img, "true"]);
        assert!(o.one_error_line().contains("--memory needs root"), "{o:?}");
        return;
    }
    let dir = ctx.work().join("memory-ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), format!("FROM {img}\nRUN {hog}\n")).unwrap();
    let o = ctx
        .kiln()
        .args(["build", "-q", "-m", "64m", "-t", "hog"])
        .arg(&dir)
        .run();
    assert!(!o.stderr.lines().any(|l| l.starts_with("filled ")), "{o:?}");
    assert!(o.one_error_line().contains("out of memory"), "{o:?}");
    // The container: killed (137, as Docker), the next one runs.
    let o = run(ctx, &["-m", "64m", img, "sh", "-c", hog]);
    assert_eq!(o.code, Some(137), "{o:?}");
    assert!(!o.stdout.contains("filled"), "{o:?}");
    let o = run(ctx, &["-m", "256m", img, "sh", "-c", "echo fine"]);
    assert_eq!(o.stdout, "fine\n", "{o:?}");
    // Nothing of the groups is left.
    let groups = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "6", "-name", "kiln-*"])
        .output()
        .unwrap();
    assert!(groups.stdout.is_empty(), "{groups:?}");
    ctx.kiln().args(["system", "check"]).run().ok();
}

fn all(ctx: &TestContext, tag: &str) {
    walls(ctx);
    etc_files_stay_out_of_layers(ctx);
    fork_bomb_is_bounded(ctx, tag);
    memory_is_bounded(ctx);
}

#[test]
fn the_sandbox_holds_as_root() {
    if builds_as_root() {
        all(&TestContext::new(), "1");
    }
}

#[test]
fn the_sandbox_holds_as_an_unprivileged_user() {
    if let Some(ctx) = TestContext::unprivileged() {
        all(&ctx, "2");
    }
}
