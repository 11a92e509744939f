//! Rootless: an unprivileged user builds and runs images (a user namespace mapping that user
//! to root, overlay with `userxattr`), and the layers it writes are owned by root.
//!
//! As root (CI), the test creates the user `kilntest` and runs kiln as that user.

use std::path::Path;
use std::process::Command;

use tests::{busybox_rootfs_tar, kiln_bin, require, workspace_dir};

const USER: &str = "kilntest";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

fn userns_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|v| v.trim() != "0")
}

/// Runs kiln as the unprivileged user (or as ourselves when we are not root).
fn kiln_as_user(root: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--"]).arg(kiln_bin());
        c
    } else {
        Command::new(kiln_bin())
    };
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .env_remove("KILN_ROOT");
    cmd.output().unwrap()
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn an_unprivileged_user_builds_and_runs() {
    if !require(
        "user namespaces",
        userns_allowed(),
        "user.max_user_namespaces is 0",
    ) {
        return;
    }
    if is_root() {
        let exists = Command::new("id")
            .arg(USER)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let made = Command::new("useradd")
                .args(["-m", USER])
                .status()
                .is_ok_and(|s| s.success());
            if !require("useradd", made, "cannot create the unprivileged test user") {
                return;
            }
        }
    }
    // A world-writable scratch directory the user can reach.
    let dir = tempfile::Builder::new()
        .prefix("kiln-rootless-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let tar = dir.path().join("busybox.tar");
    std::fs::copy(busybox_rootfs_tar(), &tar).unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    for f in ["Dockerfile", "hello.sh"] {
        std::fs::copy(workspace_dir().join("examples/hello").join(f), ctx.join(f)).unwrap();
    }
    for p in [&tar, &ctx, &ctx.join("Dockerfile"), &ctx.join("hello.sh")] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let store = dir.path().join("store");
    ok(&kiln_as_user(
        &store,
        &[
            "import",
            "-c",
            "CMD [\"sh\"]",
            tar.to_str().unwrap(),
            "busybox",
        ],
    ));
    ok(&kiln_as_user(
        &store,
        &["build", "-q", "-t", "hello", ctx.to_str().unwrap()],
    ));
    assert_eq!(
        ok(&kiln_as_user(&store, &["run", "hello"])),
        "hello from a kiln-built image\nbuilt by kiln on Linux\n"
    );
    // Inside, the user is root; with subordinate ranges (useradd grants them), the other
    // ids are those ranges.
    let name = if is_root() {
        USER.to_string()
    } else {
        std::env::var("USER").unwrap_or_default()
    };
    let granted = |f: &str| {
        std::fs::read_to_string(f)
            .is_ok_and(|t| t.lines().any(|l| l.starts_with(&format!("{name}:"))))
    };
    let mapped =
        granted("/etc/subuid") && granted("/etc/subgid") && tests::have_program("newuidmap");
    let id = ok(&kiln_as_user(
        &store,
        &[
            "run",
            "busybox",
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map",
        ],
    ));
    let lines: Vec<&str> = id.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(lines.len(), if mapped { 3 } else { 2 }, "{id}");
    // The layers the user wrote are root's, not the user's.
    let listing = |store: &Path| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for b in {}/blobs/sha256/*; do tar -tzvf $b --numeric-owner 2>/dev/null; done",
                store.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = listing(&store);
    assert!(text.contains("app/built.txt"), "{text}");
    for line in text.lines() {
        assert!(
            line.split_whitespace().nth(1).is_some_and(|o| o == "0/0"),
            "not root-owned: {line}"
        );
    }
    if !mapped {
        // Without subordinate ids only root exists inside: a clear error for another user.
        let o = kiln_as_user(&store, &["run", "-u", "nobody", "busybox", "id"]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("subordinate ids"), "{err}");
        return;
    }
    // With them, a non-root USER runs as itself, and a step's files keep their owners in the
    // layer, as with root.
    assert_eq!(
        ok(&kiln_as_user(
            &store,
            &["run", "--rm", "-u", "nobody", "busybox", "id"]
        )),
        "uid=65534(nobody) gid=65534(nogroup)\n"
    );
    let multi = dir.path().join("multi");
    std::fs::create_dir(&multi).unwrap();
    std::fs::write(
        multi.join("Dockerfile"),
        "FROM busybox\nRUN mkdir /owned && touch /owned/f && chown -R 1234:5678 /owned\nUSER nobody\nRUN touch /tmp/by-nobody\n",
    )
    .unwrap();
    std::fs::set_permissions(&multi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        multi.join("Dockerfile"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let multi_store = dir.path().join("multi-store");
    ok(&kiln_as_user(
        &multi_store,
        &[
            "import",
            "-c",
            "CMD [\"sh\"]",
            tar.to_str().unwrap(),
            "busybox",
        ],
    ));
    ok(&kiln_as_user(
        &multi_store,
        &["build", "-q", "-t", "multi", multi.to_str().unwrap()],
    ));
    let text = listing(&multi_store);
    assert!(
        text.lines()
            .any(|l| l.contains("1234/5678") && l.ends_with("owned/f")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("65534/65534") && l.ends_with("tmp/by-nobody")),
        "{text}"
    );
    // And the containers of such images can be removed again.
    ok(&kiln_as_user(
        &multi_store,
        &[
            "run",
            "--name",
            "c",
            "multi",
            "sh",
            "-c",
            "mkdir -p /tmp/d/e && touch /tmp/d/e/f && chmod 700 /tmp/d",
        ],
    ));
    ok(&kiln_as_user(&multi_store, &["rm", "c"]));
}
