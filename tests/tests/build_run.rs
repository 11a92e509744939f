//! `kiln build` and `kiln run` end to end, with the container sandbox.

use std::process::Command;

use tests::{TestContext, require, workspace_dir};

/// The container sandbox needs root and overlayfs for now.
fn sandbox_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let overlay = std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay"));
    require(
        "container sandbox",
        root && overlay,
        "needs root and overlayfs (rootless mode is not built yet)",
    )
}

#[test]
fn the_example_builds_and_runs() {
    if !sandbox_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let out = ctx
        .kiln()
        .args(["build", "-t", "hello:1.0"])
        .arg(workspace_dir().join("examples/hello"))
        .run();
    out.ok();
    assert!(
        out.stderr.contains("[6/7] RUN chmod +x hello.sh"),
        "{}",
        out.stderr
    );
    let run = ctx.kiln().args(["run", "--rm", "hello:1.0"]).run();
    assert_eq!(
        run.ok(),
        "hello from a kiln-built image\nbuilt by kiln on Linux\n"
    );
    let run = ctx
        .kiln()
        .args([
            "build",
            "--build-arg",
            "GREETING=hi",
            "-q",
            "-t",
            "hello:hi",
        ])
        .arg(workspace_dir().join("examples/hello"))
        .run();
    run.ok();
    let run = ctx.kiln().args(["run", "hello:hi"]).run();
    assert!(
        run.ok().starts_with("hi from a kiln-built image\n"),
        "{}",
        run.stdout
    );
    // The built image is a valid OCI image for other tools too.
    if require(
        "umoci",
        tests::have_program("umoci"),
        "apt-get install umoci",
    ) {
        let bundle = ctx.work().join("bundle");
        let o = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!(
                "{}:docker.io/library/hello:1.0",
                ctx.root().display()
            ))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/app/built.txt")).unwrap(),
            "built by kiln on Linux\n"
        );
    }
}

#[test]
fn run_steps_see_env_args_workdir_user_and_leave_no_sandbox_files_in_layers() {
    if !sandbox_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("ctx");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/data.txt"), "payload\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "ARG BASE=busybox\nFROM $BASE AS base\nARG V=default\nENV E=env-$V\nWORKDIR /w\nCOPY sub/ /copied/\nCOPY --chown=nobody:nogroup --chmod=600 sub/data.txt owned.txt\n\
         RUN echo \"$V $E $(pwd)\" > out.txt && stat -c '%U:%G %a' owned.txt >> out.txt && cat /copied/data.txt >> out.txt\n\
         RUN --network=none sh -c 'ip link | grep -c eth || true' > net.txt\n\
         USER nobody\nRUN id -un > /tmp/who\n\
         FROM base AS unused\nRUN exit 1\n\
         FROM base\nCMD cat /w/out.txt /w/net.txt /tmp/who\n",
    )
    .unwrap();
    let out = ctx
        .kiln()
        .args(["build", "--build-arg", "V=given", "-t", "t"])
        .arg(&dir)
        .run();
    out.ok();
    assert!(
        !out.stderr.contains("RUN exit 1"),
        "an unused stage ran: {}",
        out.stderr
    );
    let run = ctx.kiln().args(["run", "t"]).run();
    assert_eq!(
        run.ok(),
        "given env-given /w\nnobody:nogroup 600\npayload\n0\nnobody\n"
    );
    // /etc/hosts is bind-mounted by the sandbox, and /dev is a tmpfs: neither reaches a layer.
    let r = ctx
        .kiln()
        .args([
            "run",
            "-u",
            "root",
            "t",
            "sh",
            "-c",
            "grep -c localhost /etc/hosts",
        ])
        .run();
    assert_eq!(r.ok(), "2\n");
    let store = ctx.store();
    let reference: snapshotter::Reference = "t".parse().unwrap();
    let img = snapshotter::image::read_image(
        &store,
        &snapshotter::Store::resolve(&store, &reference)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    for l in &img.manifest.layers()[1..] {
        let d = snapshotter::Digest::try_from(l.digest()).unwrap();
        let blob = std::fs::read(ctx.root().join("blobs/sha256").join(d.hex())).unwrap();
        let mut a = tar_entries(&blob);
        a.retain(|p| {
            p.starts_with("dev/")
                || p.starts_with("proc/")
                || p == "etc/hosts"
                || p.starts_with("sys/")
        });
        assert!(a.is_empty(), "sandbox files leaked into a layer: {a:?}");
    }
}

fn tar_entries(gz: &[u8]) -> Vec<String> {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    // Parse ustar/GNU headers just enough to list names (long names are not used here).
    let mut names = Vec::new();
    let mut off = 0;
    while off + 512 <= raw.len() && raw[off] != 0 {
        let h = &raw[off..off + 512];
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&h[124..135]).trim_matches(|c: char| c == '\0' || c == ' '),
            8,
        )
        .unwrap_or(0);
        names.push(name);
        off += 512 + size.div_ceil(512) * 512;
    }
    names
}

#[test]
fn failures_are_one_line_with_file_line_col_and_exit_codes_follow_docker() {
    if !sandbox_available() {
        return;
    }
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    ctx.base_image();
    let dir = ctx.work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    for (dockerfile, want) in [
        (
            "FROM busybox\nRUN exit 3\n",
            "Dockerfile:2:1: process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3",
        ),
        (
            "FROM busybox\n  BOGUS x\n",
            "Dockerfile:2:3: unknown instruction \"BOGUS\"",
        ),
        (
            // Short names resolve against the default registry (the test registry, below).
            "FROM kt/nosuchimage\n",
            "Dockerfile:1:1: pull kt/nosuchimage: manifest REG/kt/nosuchimage:latest not found",
        ),
        (
            "FROM busybox\nCOPY missing.txt /\n",
            "Dockerfile:2:1: failed to compute cache key: \"missing.txt\" not found in the build context",
        ),
        (
            "RUN true\n",
            "Dockerfile:1:1: RUN before the first FROM (only ARG may come first)",
        ),
        (
            "FROM busybox AS a\nCOPY --from=a /x /y\n",
            "Dockerfile:2:1: circular dependency detected on stage: a",
        ),
        (
            "FROM busybox AS a\nCOPY --from=b /x /y\nFROM busybox AS b\nCOPY --from=a /x /y\n",
            "Dockerfile:2:1: circular dependency detected on stage: b",
        ),
        (
            "FROM busybox\nCOPY --chown=nosuchuser Dockerfile /x\n",
            "Dockerfile:2:1: unable to find user nosuchuser in /etc/passwd",
        ),
    ] {
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        let before = ctx
            .store_listing()
            .into_iter()
            .filter(|(p, _)| p == "index.json")
            .collect::<Vec<_>>();
        let out = ctx
            .kiln()
            .args(["--default-registry", &reg, "build", "-q", "-t", "broken"])
            .arg(&dir)
            .run();
        let err = out.fails();
        let want = want.replace("REG", &reg);
        assert_eq!(err.lines().next().unwrap(), format!("kiln: error: {want}"));
        if want.contains("BOGUS") {
            // Syntax errors show the line and a caret under the column.
            assert_eq!(
                err.lines().skip(1).collect::<Vec<_>>(),
                [" 2 |   BOGUS x", "   |   ^"],
                "{err}"
            );
        } else if want.contains("before the first FROM") {
            let context: Vec<&str> = err.lines().skip(1).collect();
            assert_eq!(context, [" 1 | RUN true", "   | ^"], "{err}");
        } else {
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let after = ctx
            .store_listing()
            .into_iter()
            .filter(|(p, _)| p == "index.json")
            .collect::<Vec<_>>();
        assert_eq!(
            before, after,
            "a failed build must not change the image names"
        );
    }
    let r = ctx
        .kiln()
        .args(["run", "busybox", "sh", "-c", "exit 7"])
        .run();
    assert_eq!(r.code, Some(7));
    // The command is PID 1 of its own pid namespace, as in Docker: it ignores a SIGKILL
    // sent from inside, while a child killed by it shows 128+9.
    let r = ctx
        .kiln()
        .args([
            "run",
            "busybox",
            "sh",
            "-c",
            "echo $$; sh -c 'kill -9 $$'; echo $?",
        ])
        .run();
    assert_eq!(r.ok(), "1\n137\n");
    let r = ctx.kiln().args(["run", "busybox", "no-such-program"]).run();
    assert_eq!(r.code, Some(127));
    assert!(
        r.stderr.contains("executable file not found in $PATH"),
        "{}",
        r.stderr
    );
}

#[test]
fn copy_snapshots_give_the_same_image_as_overlay() {
    if !sandbox_available() {
        return;
    }
    let dir = TestContext::new().work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nRUN mkdir -p /data && echo hi > /data/x && rm -rf /home && chmod 700 /tmp && ln -s /data/x /link\nRUN echo more >> /data/x && rm /link\nCMD [\"cat\", \"/data/x\"]\n",
    )
    .unwrap();
    let mut ids = Vec::new();
    for mode in ["overlay", "copy"] {
        let ctx = TestContext::new();
        ctx.kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["import", "-c", "CMD [\"sh\"]"])
            .arg(tests::busybox_rootfs_tar())
            .arg("busybox")
            .run()
            .ok();
        let out = ctx
            .kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("KILN_SNAPSHOTTER", mode)
            .args(["build", "-q", "-t", "t"])
            .arg(&dir)
            .run();
        ids.push(out.ok().trim().to_string());
        let run = ctx
            .kiln()
            .env("KILN_SNAPSHOTTER", mode)
            .args(["run", "t"])
            .run();
        assert_eq!(run.ok(), "hi\nmore\n", "{mode}");
        let gone = ctx
            .kiln()
            .env("KILN_SNAPSHOTTER", mode)
            .args(["run", "t", "ls", "/home"])
            .run();
        assert!(gone.code != Some(0), "{mode}: /home should be deleted");
    }
    assert_eq!(
        ids[0], ids[1],
        "overlay and copy snapshots must give the same image"
    );
}

#[test]
fn files_copied_from_a_stage_change_only_where_a_later_step_changes_them() {
    // COPY --from hard-links unchanged files from the stage's committed layer: a later write
    // to the copy must leave the stage's file, and every other copy of it, as it was.
    if !sandbox_available() {
        return;
    }
    let dir = TestContext::new().work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS build\nRUN mkdir /out && echo original > /out/f && echo keep > /out/g\n\
         FROM busybox AS edit\nCOPY --from=build /out /out\nRUN echo changed >> /out/f && chmod 600 /out/f && rm /out/g\n\
         FROM busybox\nCOPY --from=build /out /from-build\nCOPY --from=edit /out /from-edit\n\
         RUN cat /from-build/f /from-build/g /from-edit/f && stat -c %a /from-build/f /from-edit/f && ls /from-edit\n",
    )
    .unwrap();
    for mode in ["overlay", "copy"] {
        let ctx = TestContext::new();
        ctx.base_image();
        let out = ctx
            .kiln()
            .env("KILN_SNAPSHOTTER", mode)
            .args(["build", "--progress=plain", "-t", "t"])
            .arg(&dir)
            .run();
        out.ok();
        assert!(
            out.stderr
                .contains("original\nkeep\noriginal\nchanged\n644\n600\nf\n"),
            "{mode}: {}",
            out.stderr
        );
    }
}

#[test]
fn copy_from_stages_by_name_index_and_image() {
    if !sandbox_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("multi");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS build\nRUN mkdir -p /out/sub && echo bin > /out/app && echo s > /out/sub/f && chown 1:1 /out/app && rm -rf /home\n\
         FROM busybox AS unused\nRUN exit 1\n\
         FROM scratch\nCOPY --from=build /out/ /app/\nCOPY --from=0 /out/app /single\nCOPY --from=busybox /bin/busybox /bin/busybox\nCOPY --from=build --chown=2:3 /out/sub /owned/\n",
    )
    .unwrap();
    let out = ctx.kiln().args(["build", "-t", "m"]).arg(&dir).run();
    out.ok();
    assert!(!out.stderr.contains("RUN exit 1"), "{}", out.stderr);
    let q = |args: &[&str]| {
        ctx.kiln()
            .args(["run", "m"])
            .args(args)
            .run()
            .ok()
            .to_string()
    };
    assert_eq!(
        q(&["/bin/busybox", "cat", "/app/app", "/app/sub/f", "/single"]),
        "bin\ns\nbin\n"
    );
    assert_eq!(
        q(&[
            "/bin/busybox",
            "stat",
            "-c",
            "%u:%g",
            "/app/app",
            "/owned/f"
        ]),
        "1:1\n2:3\n"
    );
    // An unknown stage is an image to pull; absent there too, an error naming the line.
    if let Some(reg) = ctx.registry() {
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM busybox\nCOPY --from=nope /x /y\n",
        )
        .unwrap();
        let err = ctx
            .kiln()
            .args(["--default-registry", &reg, "build", "-q"])
            .arg(&dir)
            .run();
        assert_eq!(
            err.fails().trim_end(),
            format!(
                "kiln: error: Dockerfile:2:1: COPY --from=nope: pull nope: manifest {reg}/nope:latest not found"
            )
        );
    }
}

#[test]
fn outputs_iidfile_platform_args_and_unused_build_args() {
    if !sandbox_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nARG TARGETARCH\nARG TARGETPLATFORM\nRUN echo \"$TARGETARCH $TARGETPLATFORM\" > /platform\n",
    )
    .unwrap();
    let w = ctx.work();
    let out = ctx
        .kiln()
        .args([
            "build",
            "-t",
            "o",
            "--build-arg",
            "NOT_DECLARED=1",
            "--iidfile",
        ])
        .arg(w.join("iid"))
        .arg("--output")
        .arg(format!("type=local,dest={}", w.join("rootfs").display()))
        .arg("-o")
        .arg(format!("type=docker,dest={}", w.join("img.tar").display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", w.join("img.oci.tar").display()))
        .arg("-o")
        .arg(format!("type=tar,dest={}", w.join("rootfs.tar").display()))
        .arg(&dir)
        .run();
    let id = out.ok().trim().to_string();
    assert!(
        out.stderr
            .contains("[Warning] One or more build-args [\"NOT_DECLARED\"] were not consumed"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(w.join("iid")).unwrap(), id);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(
        std::fs::read_to_string(w.join("rootfs/platform")).unwrap(),
        format!("{arch} linux/{arch}\n")
    );
    assert!(w.join("rootfs/bin/busybox").is_file());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(w.join("rootfs.tar"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .any(|l| l.trim_start_matches("./") == "platform")
    );
    for archive in ["img.tar", "img.oci.tar"] {
        let other = TestContext::new();
        other
            .kiln()
            .args(["load", "-i"])
            .arg(w.join(archive))
            .run()
            .ok();
        let loaded: serde_json::Value =
            serde_json::from_str(other.kiln().args(["inspect", "o"]).run().ok()).unwrap();
        assert_eq!(loaded[0]["Id"], id.as_str(), "{archive}");
    }
    assert!(
        ctx.kiln()
            .args(["build", "-o", "type=zip,dest=x"])
            .arg(&dir)
            .run()
            .fails()
            .contains("unknown output type")
    );
}

#[test]
fn independent_stages_run_at_the_same_time() {
    if !sandbox_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("parallel");
    std::fs::create_dir_all(&dir).unwrap();
    // Two independent stages each record when their RUN started and ended (uptime, 10 ms
    // resolution) around a one-second sleep; the last stage takes both records.
    let stage = |name: &str| {
        format!(
            "FROM busybox AS {name}\nRUN cut -d' ' -f1 /proc/uptime > /start && sleep 1 && cut -d' ' -f1 /proc/uptime > /end\n"
        )
    };
    std::fs::write(
        dir.join("Dockerfile"),
        format!("{}{}FROM busybox\nCOPY --from=a /start /a.start\nCOPY --from=a /end /a.end\nCOPY --from=b /start /b.start\nCOPY --from=b /end /b.end\n", stage("a"), stage("b")),
    )
    .unwrap();
    let out = ctx.work().join("rootfs");
    ctx.kiln()
        .args(["build", "-q", "--output"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&dir)
        .run()
        .ok();
    let t = |f: &str| -> f64 {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (a0, a1, b0, b1) = (t("a.start"), t("a.end"), t("b.start"), t("b.end"));
    assert!(
        a0 < b1 && b0 < a1,
        "the stages did not overlap: a {a0}-{a1}, b {b0}-{b1}"
    );
}

/// How the root a process sees is mounted: its `/` line of mountinfo, "volatile" or "synced".
const ROOT_SYNC: &str =
    "grep ' / / ' /proc/self/mountinfo | grep -q volatile && echo volatile || echo synced";

#[test]
fn build_steps_and_rm_runs_mount_their_root_volatile_kept_containers_do_not() {
    if !sandbox_available() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("volatile");
    std::fs::create_dir_all(&dir).unwrap();
    // A step's upper becomes a layer or is thrown away: nothing in it has to survive a crash,
    // so its mount skips the sync at unmount (and fsync inside is a no-op; the step still
    // sees what it wrote, and so does the next step).
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM busybox\nRUN {{ {ROOT_SYNC}; }} > /step.txt && sync && head -c 3000000 /dev/zero > /big\nRUN wc -c < /big >> /step.txt\n"),
    )
    .unwrap();
    ctx.kiln()
        .args(["build", "-q", "-t", "v"])
        .arg(&dir)
        .run()
        .ok();
    assert_eq!(
        ctx.kiln()
            .args(["run", "--rm", "v", "cat", "/step.txt"])
            .run()
            .ok(),
        "volatile\n3000000\n"
    );
    assert_eq!(
        ctx.kiln()
            .args(["run", "--rm", "v", "sh", "-c", ROOT_SYNC])
            .run()
            .ok(),
        "volatile\n",
        "a --rm container is thrown away, as podman has it"
    );
    // A kept container can be looked into and copied from after it stops: synced.
    assert_eq!(
        ctx.kiln()
            .args(["run", "--name", "kept", "v", "sh", "-c"])
            .arg(format!("{ROOT_SYNC}; echo data > /kept.txt"))
            .run()
            .ok(),
        "synced\n"
    );
    let copied = ctx.work().join("kept.txt");
    ctx.kiln()
        .args(["cp", "kept:/kept.txt"])
        .arg(&copied)
        .run()
        .ok();
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), "data\n");
}
