//! Containers with a terminal (`run -it`, `exec -it` under `script`), their failures (one
//! line each, Docker's exit codes) and what they leave behind (nothing, even when kiln is
//! killed), as root and as an unprivileged user.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use tests::{TestContext, builds_as_root, have_program, kiln_bin, require, wait_for};

fn ctx_root() -> Option<TestContext> {
    builds_as_root().then(TestContext::new)
}

/// Under `script`, so kiln's stdin is a real terminal of a known size.
fn terminal(ctx: &TestContext) {
    if !require(
        "script",
        have_program("script"),
        "util-linux's script is missing",
    ) {
        return;
    }
    let img = ctx.base_image();
    let kiln = format!("{} --root {}", kiln_bin().display(), ctx.root().display());
    let prefix = if ctx.rootless() && nix::unistd::geteuid().is_root() {
        format!("runuser -u {} -- ", tests::TEST_USER)
    } else {
        String::new()
    };
    let run_script = |cmd: &str, input: &str| {
        let mut child = Command::new("script")
            .args([
                "-qec",
                &format!("stty rows 33 cols 111; {prefix}{cmd}"),
                "/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut si = child.stdin.take().unwrap();
        si.write_all(input.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        drop(si);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).replace('\r', ""),
        )
    };
    let (code, out) = run_script(
        &format!("{kiln} run --rm -it {img} sh -c 'stty size; test -t 0 && test -t 1 && echo tty'"),
        "",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("33 111\ntty\n"), "{out:?}");
    let (code, out) = run_script(
        &format!("{kiln} run --rm -it {img} sh"),
        "echo typed-$((40+2))\nexit 6\n",
    );
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("typed-42"), "{out:?}");
    // exec -it into a running container.
    ctx.run_kiln(&["run", "-d", "--name", "term", img, "sleep", "300"])
        .ok();
    let (code, out) = run_script(
        &format!("{kiln} exec -it term sh -c 'stty size; test -t 0 && echo tty'"),
        "",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("33 111\ntty\n"), "{out:?}");
    ctx.run_kiln(&["rm", "-f", "term"]).ok();
}

fn failures(ctx: &TestContext) {
    let img = ctx.base_image();
    let o = ctx.run_kiln(&["run", "127.0.0.1:9/missing:1", "true"]);
    assert!(o.code != Some(0));
    assert!(o.stderr.contains("missing"), "{o:?}");
    let o = ctx.run_kiln(&["run", "--rm", img, "nosuchprogram"]);
    assert_eq!(o.code, Some(127), "{o:?}");
    assert!(
        o.one_error_line()
            .contains(r#"exec: "nosuchprogram": executable file not found in $PATH"#)
    );
    let o = ctx.run_kiln(&["run", "--rm", "-u", "nosuchuser", img, "true"]);
    assert_eq!(o.code, Some(125));
    assert!(
        o.one_error_line()
            .contains("unable to find user nosuchuser")
    );
    for bad in [
        vec!["-v", "relative/dir:/x"],
        vec!["-v", "/tmp:relative"],
        vec!["-v", "/tmp:/x:rx"],
        vec!["--mount", "type=bind,source=/no/such/dir,target=/x"],
        vec!["--mount", "type=nfs,target=/x"],
        vec!["--env-file", "/no/such/file"],
        vec!["--network", "bridge"],
        vec!["--stop-signal", "SIGNOPE"],
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend(bad.iter().copied());
        args.extend([img, "true"]);
        let o = ctx.run_kiln(&args);
        assert!(o.code != Some(0), "{bad:?}");
        o.one_error_line();
    }
    ctx.run_kiln(&["logs", "nosuchcontainer"]).one_error_line();
    ctx.run_kiln(&["exec", "nosuchcontainer", "true"])
        .one_error_line();
    // An image a container uses cannot be removed by name without -f.
    ctx.run_kiln(&["run", "--name", "user", img, "true"]).ok();
    ctx.run_kiln(&["rmi", img]).one_error_line();
    ctx.run_kiln(&["rm", "user"]).ok();
}

/// No mount, process or scratch directory survives a run, even one whose kiln was killed.
fn nothing_left_behind(ctx: &TestContext, tag: &str) {
    let img = ctx.base_image();
    let marker = format!("sleep 31{tag}");
    let mut child = ctx
        .kiln()
        .args(["run", "--name", "killed", img, "sh", "-c", &marker])
        .into_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The container's own process: its whole command line, not kiln's, which contains it.
    let processes = |pattern: &str| {
        let o = Command::new("pgrep")
            .args(["-f", &format!("^{pattern}$")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    wait_for("the container to start", || processes(&marker) > 0);
    // As root, the kiln process is the child; as the user, runuser's child is.
    let _ = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("{} --root {}", kiln_bin().display(), ctx.root().display()),
        ])
        .status();
    let _ = child.wait();
    wait_for("the container to die with its kiln", || {
        processes(&marker) == 0
    });
    let ps = ctx.run_kiln(&["ps", "-a"]);
    assert!(ps.ok().contains("Exited (255)"), "{ps:?}");
    ctx.run_kiln(&["rm", "killed"]).ok();
    // Another run sweeps the dead run's scratch directory.
    ctx.run_kiln(&["run", "--rm", img, "true"]).ok();
    let root = ctx.root();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_text = root.to_string_lossy();
    assert!(
        !mounts.contains(root_text.as_ref()),
        "mounts left under {root_text}: {mounts}"
    );
    let left: Vec<_> = std::fs::read_dir(root.join("sandbox"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch directories left: {left:?}");
    assert_eq!(ctx.run_kiln(&["ps", "-a", "-q"]).ok(), "");
    let containers: Vec<_> = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "names")
        .collect();
    assert!(containers.is_empty(), "{containers:?}");
    assert!(
        Path::new(&root)
            .join("containers/names")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

fn all(ctx: &TestContext, tag: &str) {
    terminal(ctx);
    failures(ctx);
    nothing_left_behind(ctx, tag);
}

#[test]
fn terminals_failures_and_leftovers_as_root() {
    if let Some(ctx) = ctx_root() {
        all(&ctx, "1");
    }
}

#[test]
fn terminals_failures_and_leftovers_as_an_unprivileged_user() {
    if let Some(ctx) = TestContext::unprivileged() {
        all(&ctx, "2");
    }
}
