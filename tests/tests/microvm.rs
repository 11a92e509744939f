//! `--isolation vm`: RUN steps and `kiln run` in a throwaway microVM (qemu `-M microvm`,
//! software emulation on these hosts), against the container backend's results, its failure
//! modes and its isolation. Each VM boots Debian's cloud kernel (about 2 s under TCG).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::vm::{assert_nothing_left, manifest_digest, vm_available};
use tests::{Output, TestContext, wait_for, workspace_dir};

const EPOCH: &str = "1700000000";

fn host_kernel() -> String {
    String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn vm_run_prints_the_output_and_returns_the_exit_code() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    let base = ctx.base_image();
    let out = ctx
        .kiln()
        .args([
            "run",
            "--rm",
            "--isolation",
            "vm",
            "-e",
            "GREETING=hi there",
        ])
        .arg(base)
        .args([
            "sh",
            "-c",
            "echo \"$GREETING\"; uname -r; id -u; pwd; echo to-stderr >&2; exit 7",
        ])
        .run();
    assert_eq!(out.code, Some(7), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "hi there", "{out:?}");
    // Its own kernel, not the host's.
    assert!(lines[1].starts_with("6.1."), "{out:?}");
    assert_ne!(lines[1], host_kernel());
    assert_eq!(&lines[2..], ["0", "/"], "{out:?}");
    assert!(out.stderr.contains("to-stderr"), "{out:?}");
    assert!(!out.stdout.contains("to-stderr"), "{out:?}");

    // A user, a working directory, a read-only volume (copied in) and a tmpfs.
    let vol = ctx.work().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("data.txt"), "from the host\n").unwrap();
    let out = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm", "-u", "65534:65534"])
        .args(["-w", "/tmp/work", "--mount", "type=tmpfs,destination=/scratch"])
        .arg("-v")
        .arg(format!("{}:/vol:ro", vol.display()))
        .arg(base)
        .args([
            "sh",
            "-c",
            "id -u; id -g; pwd; cat /vol/data.txt; grep -c ' /scratch tmpfs' /proc/mounts; touch /vol/x 2>/dev/null || echo read-only",
        ])
        .run();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout, "65534\n65534\n/tmp/work\nfrom the host\n1\nread-only\n",
        "{out:?}"
    );

    // A program that does not exist: 127 and the container backend's message.
    let out = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm"])
        .arg(base)
        .arg("no-such-program")
        .run();
    assert_eq!(out.code, Some(127), "{out:?}");
    assert!(out.stderr.contains("executable file not found"), "{out:?}");
    // The builtin VMM needs hardware virtualization: without it (PVM here) it is refused in
    // one line (microvm_builtin.rs tests its runs).
    let out = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm", "--vmm", "builtin"])
        .arg(base)
        .arg("true")
        .run();
    if vm_sandbox::vm::hardware_kvm() {
        assert_eq!(out.code, Some(0), "{out:?}");
    } else {
        assert_ne!(out.code, Some(0));
        assert!(
            out.one_error_line()
                .contains("builtin VMM needs hardware virtualization"),
            "{out:?}"
        );
    }
    assert_nothing_left(&ctx);
}

/// The builder's compat cases give the same manifest digest built in microVMs as in
/// containers (with SOURCE_DATE_EPOCH, so the digests are reproducible at all).
#[test]
fn vm_builds_give_the_container_backend_digests() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = workspace_dir().join("testdata/compat");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    let mut with_run_steps = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let dockerfile = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
        if dockerfile
            .lines()
            .any(|l| l.trim_start().starts_with("RUN"))
        {
            with_run_steps += 1;
        }
        let mut digests = Vec::new();
        for isolation in ["container", "vm"] {
            let tag = format!("{name}-{isolation}:1");
            let out = ctx
                .kiln()
                .env("SOURCE_DATE_EPOCH", EPOCH)
                .args(["build", "-q", "--no-cache", "--isolation", isolation])
                .args(["--vm-timeout", "5m", "-t", &tag])
                .arg(case)
                .run();
            if out.code != Some(0) {
                failures.push(format!("{name} ({isolation}): {}", out.stderr.trim()));
                break;
            }
            digests.push(manifest_digest(&ctx, &tag));
        }
        if digests.len() == 2 && digests[0] != digests[1] {
            failures.push(format!(
                "{name}: container {} vm {}",
                digests[0], digests[1]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        with_run_steps >= 8,
        "only {with_run_steps} cases with RUN steps"
    );
    assert_nothing_left(&ctx);
}

/// What a step writes to a writable mount comes back to the host: a read-write volume of
/// `kiln run`, a build's cache mount (kept for the next build).
#[test]
fn vm_writable_mounts_come_back() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    let base = ctx.base_image();
    let vol = ctx.work().join("rw-volume");
    std::fs::create_dir_all(vol.join("keep")).unwrap();
    std::fs::write(vol.join("old.txt"), "old\n").unwrap();
    std::fs::write(vol.join("keep/k.txt"), "k\n").unwrap();
    let out = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm", "-v"])
        .arg(format!("{}:/data", vol.display()))
        .arg(base)
        .args([
            "sh",
            "-c",
            "cat /data/old.txt; rm /data/old.txt; mkdir /data/sub; echo new > /data/sub/new.txt",
        ])
        .run();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "old\n");
    assert!(!vol.join("old.txt").exists());
    assert_eq!(
        std::fs::read_to_string(vol.join("sub/new.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("keep/k.txt")).unwrap(),
        "k\n"
    );

    let dir = ctx.work().join("cache-ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {base}\nRUN --mount=type=cache,target=/c echo run >> /c/log && echo \"runs: $(wc -l < /c/log)\"\n"
        ),
    )
    .unwrap();
    for expected in ["runs: 1", "runs: 2"] {
        let out = ctx
            .kiln()
            .args([
                "build",
                "--no-cache",
                "--progress",
                "plain",
                "--isolation",
                "vm",
            ])
            .arg(&dir)
            .run();
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stderr.lines().any(|l| l.ends_with(expected)),
            "{expected}: {out:?}"
        );
    }
    assert_nothing_left(&ctx);
}

fn run_vm(ctx: &TestContext, extra: &[&str], script: &str) -> (Output, Duration) {
    let base = ctx.base_image();
    let start = Instant::now();
    let out = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm"])
        .args(extra)
        .arg(base)
        .args(["sh", "-c", script])
        .run();
    (out, start.elapsed())
}

#[test]
fn vm_failures_are_clear_and_leave_nothing_behind() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();

    // A hang: stopped at the timeout.
    let (out, took) = run_vm(&ctx, &["--vm-timeout", "8s"], "sleep 1000");
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.one_error_line().contains("did not finish within 8s"),
        "{out:?}"
    );
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert_nothing_left(&ctx);

    // A kernel panic.
    let (out, _) = run_vm(&ctx, &[], "echo c > /proc/sysrq-trigger; sleep 100");
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.one_error_line().contains("kernel panicked"), "{out:?}");
    assert_nothing_left(&ctx);

    // Out of memory: the OOM killer ends the step, and kiln says so.
    let (out, _) = run_vm(
        &ctx,
        &["--vm-memory", "256m"],
        "x=$(head -c 600000000 /dev/zero 2>/dev/null | tr '\\0' a 2>/dev/null); echo ${#x}",
    );
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.one_error_line().contains("out of memory"), "{out:?}");
    assert_nothing_left(&ctx);

    // A failing RUN step fails the build with its exit code.
    let ctxdir = ctx.work().join("failing");
    std::fs::create_dir_all(&ctxdir).unwrap();
    std::fs::write(
        ctxdir.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo about to fail && exit 3\n",
            ctx.base_image()
        ),
    )
    .unwrap();
    let out = ctx
        .kiln()
        .args(["build", "--isolation", "vm", "--progress", "plain"])
        .arg(&ctxdir)
        .run();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("about to fail"), "{out:?}");
    assert!(out.stderr.contains("exit code: 3"), "{out:?}");
    assert_nothing_left(&ctx);

    // kiln killed mid-run: qemu goes with it, and the next run sweeps its directory.
    let base = ctx.base_image();
    let mut child = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm"])
        .arg(base)
        .args(["sleep", "100"])
        .into_command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = ctx.root().join("vm").display().to_string();
    wait_for("qemu to start", || {
        !Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (out, _) = run_vm(&ctx, &[], "true");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_nothing_left(&ctx);
}

/// A step in the VM sees only what was passed in: no host files, no host devices, no
/// `/dev/kvm`, its own kernel.
#[test]
fn vm_steps_cannot_reach_the_host() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    let secret = ctx.work().join("host-secret.txt");
    std::fs::write(&secret, "do not leak\n").unwrap();
    let script = format!(
        "cat {secret} 2>/dev/null && echo LEAKED; \
         test -e /dev/kvm && echo HAS-KVM; \
         test -e /sys/class/misc/kvm && echo GUEST-HAS-KVM; \
         test -e /sys/class/block/vda && echo own-disk; \
         test -e /sys/class/tty/ttyS0 && echo own-console; \
         ls /sys/block; \
         grep -c . /proc/cpuinfo >/dev/null && echo cpuinfo",
        secret = secret.display()
    );
    let (out, _) = run_vm(&ctx, &[], &script);
    assert_eq!(out.code, Some(0), "{out:?}");
    for bad in ["LEAKED", "HAS-KVM", "GUEST-HAS-KVM"] {
        assert!(!out.stdout.contains(bad), "{bad}: {out:?}");
    }
    // The guest's block devices are the output disk only (and ram disks, if the kernel
    // made any): nothing of the host's.
    let blocks: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("own-") && *l != "cpuinfo")
        .collect();
    assert!(
        blocks.iter().all(|b| *b == "vda" || b.starts_with("ram")),
        "{out:?}"
    );
    assert!(out.stdout.contains("own-disk") && out.stdout.contains("own-console"));
    assert!(Path::new(&secret).exists());
    assert_nothing_left(&ctx);
}
