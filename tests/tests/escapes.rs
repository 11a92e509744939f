//! What a Dockerfile cannot reach: host files through symlinks in the context, paths outside
//! the destination in ADD archives; and many builds at once on one store.

use std::os::unix::fs::symlink;
use std::process::Command;

use tests::{TestContext, require};

#[test]
fn context_symlinks_do_not_reach_host_files() {
    let ctx = TestContext::new();
    let dir = ctx.work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    symlink("/etc", dir.join("hostetc")).unwrap();
    symlink("/etc/passwd", dir.join("hostpasswd")).unwrap();
    symlink("../../../../../../etc/passwd", dir.join("climb")).unwrap();
    for (src, dest) in [
        ("hostetc/passwd", "/a"),
        ("hostpasswd", "/b"),
        ("climb", "/c"),
        ("host*/passwd", "/d/"),
    ] {
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM scratch\nCOPY {src} {dest}\n"),
        )
        .unwrap();
        let out = ctx.work().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let r = ctx
            .kiln()
            .args(["build", "-q", "--output"])
            .arg(format!("type=local,dest={}", out.display()))
            .arg(&dir)
            .run();
        // Either an error (the path does not exist inside the context) or nothing copied:
        // never the host's /etc/passwd.
        let copied = walk(&out);
        assert!(
            !copied.iter().any(|c| c.contains("root:x:0:0")),
            "{src}: host file copied: {}",
            r.stderr
        );
        if r.code != Some(0) {
            assert!(
                r.stderr.contains("not found in the build context"),
                "{src}: {}",
                r.stderr
            );
        }
    }
    // A link to a file inside the context is followed, as BuildKit follows it.
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/passwd"), "context copy\n").unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY hostpasswd /b\n").unwrap();
    let out = ctx.work().join("out2");
    ctx.kiln()
        .args(["build", "-q", "--output"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&dir)
        .run()
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("b")).unwrap(),
        "context copy\n"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else if let Ok(s) = std::fs::read_to_string(&p) {
                out.push(s);
            }
        }
    }
    out
}

#[test]
fn add_archives_cannot_write_outside_their_destination() {
    let ctx = TestContext::new();
    let dir = ctx.work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = ctx.work().join("escaped");
    // An archive with `..` paths, an absolute path and a symlink to climb through.
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        // Raw names, so the tar crate does not clean them on the way in.
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let rel = format!("../../../../../..{}", marker.display());
    add(&mut b, &rel, b"dotdot");
    add(&mut b, "ok.txt", b"fine");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    b.append_link(&mut h, "out", ctx.work()).unwrap();
    add(&mut b, "out/escaped", b"through a link");
    std::fs::write(dir.join("evil.tar"), b.into_inner().unwrap()).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nADD evil.tar /x/\n").unwrap();
    let out = ctx.work().join("rootfs");
    let r = ctx
        .kiln()
        .args(["build", "-q", "--output"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&dir)
        .run();
    assert!(
        !marker.exists(),
        "the archive wrote outside the build: {}",
        r.stderr
    );
    if r.code == Some(0) {
        assert_eq!(
            std::fs::read_to_string(out.join("x/ok.txt")).unwrap(),
            "fine"
        );
    } else {
        assert!(
            r.stderr.starts_with("kiln: error: Dockerfile:2:1:"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn eight_builds_at_once_share_one_store() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let mut children = Vec::new();
    for i in 0..8 {
        let dir = ctx.work().join(format!("b{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("common.txt"), "shared\n").unwrap();
        // The first two steps are the same in every build (shared cache entries and layers).
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM busybox\nCOPY common.txt /\nRUN echo common > /c\nRUN echo {i} > /i\n"),
        )
        .unwrap();
        let mut cmd = ctx
            .kiln()
            .args(["build", "-q", "-t", &format!("par{i}")])
            .arg(&dir)
            .into_command();
        children.push((
            i,
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        ));
    }
    // A prune alongside.
    let prune = ctx.kiln().args(["system", "prune"]).run();
    assert_eq!(prune.code, Some(0), "{}", prune.stderr);
    for (i, c) in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "build {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..8 {
        let r = ctx
            .kiln()
            .args(["run", "--rm", &format!("par{i}"), "cat", "/c", "/i"])
            .run();
        assert_eq!(r.ok(), format!("common\n{i}\n"));
    }
    ctx.kiln().args(["system", "check"]).run().ok();
}

/// Two pushes of one image to one name at the same time (with a prune alongside): both
/// succeed with the same digest, and the registry serves an image that pulls back whole.
#[test]
fn two_pushes_of_one_image_at_once() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    ctx.base_image();
    let dir = ctx.work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.bin"), vec![7u8; 8 << 20]).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nCOPY big.bin /\nRUN echo pushed > /p\n",
    )
    .unwrap();
    ctx.kiln()
        .args(["build", "-q", "-t", "twice"])
        .arg(&dir)
        .run()
        .ok();
    let dest = format!("{reg}/concurrency/twice:{}", std::process::id());
    let pushes: Vec<_> = (0..2)
        .map(|_| {
            ctx.kiln()
                .args(["push", "-q", "twice", &dest])
                .into_command()
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let prune = ctx.kiln().args(["system", "prune"]).run();
    assert_eq!(prune.code, Some(0), "{}", prune.stderr);
    let digests: Vec<String> = pushes
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "push: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
    assert!(digests[0].starts_with("sha256:"), "{digests:?}");
    let other = TestContext::new();
    other.kiln().args(["pull", "-q", &dest]).run().ok();
    assert_eq!(
        other
            .kiln()
            .args(["run", "--rm", &dest, "cat", "/p"])
            .run()
            .ok(),
        "pushed\n"
    );
    other.kiln().args(["system", "check"]).run().ok();
    ctx.kiln().args(["system", "check"]).run().ok();
}

#[test]
fn a_full_disk_fails_in_one_line_and_leaves_a_usable_store() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    // The store on a 24 MiB tmpfs; the context holds a 32 MiB file to COPY.
    let root = ctx.work().join("small-root");
    std::fs::create_dir_all(&root).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&root)
        .status()
        .unwrap();
    if !require("tmpfs", mounted.success(), "mounting a tmpfs needs root") {
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(root.clone());
    let kiln = || {
        let mut c = Command::new(tests::kiln_bin());
        c.env_remove("KILN_ROOT").arg("--root").arg(&root);
        c
    };
    let tar = tests::busybox_rootfs_tar();
    let ok = kiln()
        .args(["import"])
        .arg(&tar)
        .arg("busybox:latest")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = ctx.work().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let noise: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("big.bin"), noise).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nCOPY big.bin /\n").unwrap();
    let out = kiln()
        .args(["build", "-q", "-t", "big"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].to_lowercase().contains("no space left on device"),
        "{err}"
    );
    // Consistent, and usable once there is room again.
    let check = kiln().args(["system", "check"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    std::fs::write(dir.join("big.bin"), "small now\n").unwrap();
    let again = kiln()
        .args(["build", "-q", "-t", "big"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn sigkill_during_build_pull_push_and_rmi_leaves_a_consistent_store() {
    if !tests::builds_as_root() {
        return;
    }
    let reference = TestContext::new();
    let Some(reg) = reference.registry() else {
        return;
    };
    // The same base on both "machines", to the byte (its history dates too).
    let base = |c: &TestContext| {
        c.kiln()
            .env("SOURCE_DATE_EPOCH", "0")
            .args(["import", "--change", r#"CMD ["sh"]"#])
            .arg(tests::busybox_rootfs_tar())
            .arg("busybox:latest")
            .run()
            .ok();
    };
    base(&reference);
    let dir = reference.work().join("killme");
    std::fs::create_dir_all(&dir).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: Vec<u8> = (0..24u32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("noise.bin"), noise).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nCOPY noise.bin /\nRUN cp /noise.bin /copy.bin\n",
    )
    .unwrap();
    let build = |c: &TestContext| {
        c.kiln()
            .env("SOURCE_DATE_EPOCH", "0")
            .args(["build", "-q", "--no-cache", "-t", "k:1"])
            .arg(&dir)
            .run()
            .ok()
            .trim()
            .to_string()
    };
    let want = build(&reference);
    let remote = format!("{reg}/kt/kill:1");
    reference.kiln().args(["tag", "k:1", &remote]).run().ok();
    reference.kiln().args(["push", "-q", &remote]).run().ok();

    let victim = TestContext::new();
    base(&victim);
    let mut seed: u64 = 7;
    for i in 0..24 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_millis((seed >> 33) % 1500);
        let mut cmd = Command::new(tests::kiln_bin());
        cmd.env("SOURCE_DATE_EPOCH", "0")
            .arg("--root")
            .arg(victim.root());
        match i % 4 {
            0 => {
                cmd.args(["build", "-q", "--no-cache", "-t", "k:1"])
                    .arg(&dir);
            }
            1 => {
                cmd.args(["pull", "-q", &remote]);
            }
            2 => {
                cmd.args(["push", "-q", &remote, &format!("{reg}/kt/kill-victim:{i}")]);
            }
            _ => {
                cmd.args(["rmi", "-f", &remote]);
            }
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let check = victim.kiln().args(["system", "check"]).run();
        assert_eq!(
            check.code,
            Some(0),
            "iteration {i} (killed after {delay:?}): {}",
            check.stdout
        );
    }
    // An uninterrupted build now gives the same image as on the other machine.
    assert_eq!(build(&victim), want);
}
