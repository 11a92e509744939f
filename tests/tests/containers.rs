//! `kiln run` with its flags and the container commands (`ps`, `logs`, `top`, `cp`, `exec`,
//! `stop`, `kill`, `wait`, `rm`), end to end, as root and as an unprivileged user.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{Output, TestContext, builds_as_root, have_program, kiln_bin, require};

fn ctx_root() -> Option<TestContext> {
    builds_as_root().then(TestContext::new)
}

/// Runs `kiln` with the given arguments.
fn k(ctx: &TestContext, args: &[&str]) -> Output {
    ctx.kiln().args(args).run()
}

fn write(ctx: &TestContext, name: &str, text: &str) -> String {
    let p = ctx.work().join(name);
    std::fs::write(&p, text).unwrap();
    ctx.give(&p);
    p.to_string_lossy().into_owned()
}

fn one_line_error(o: &Output) -> &str {
    let err = o.fails();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

fn run_flags(ctx: &TestContext) {
    let img = ctx.base_image();
    // Exit code and both streams; --rm leaves nothing behind.
    let o = k(
        ctx,
        &[
            "run",
            "--rm",
            img,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(o.code, Some(3), "{o:?}");
    assert_eq!(o.stdout, "out\n");
    assert!(o.stderr.contains("err"), "{o:?}");
    assert_eq!(k(ctx, &["ps", "-a", "-q"]).ok(), "");

    // -e, --env-file, -w, -u, --hostname.
    let env_file = write(ctx, "env.list", "# comment\nB=from-file\n\nC=3\n");
    let user = if ctx.maps_all_users() {
        "nobody"
    } else {
        "root"
    };
    let o = k(
        ctx,
        &[
            "run",
            "--rm",
            "-e",
            "A=1",
            "--env-file",
            &env_file,
            "-e",
            "C=override",
            "-w",
            "/made/here",
            "-u",
            user,
            "--hostname",
            "box1",
            img,
            "sh",
            "-c",
            "echo $A $B $C; pwd; id -un; hostname",
        ],
    );
    assert_eq!(
        o.ok(),
        format!("1 from-file override\n/made/here\n{user}\nbox1\n")
    );
    // --entrypoint replaces the image's and drops its CMD.
    assert_eq!(
        k(ctx, &["run", "--rm", "--entrypoint", "echo", img, "hi"]).ok(),
        "hi\n"
    );
    // --network none: loopback only.
    let net = k(
        ctx,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            img,
            "cat",
            "/proc/net/dev",
        ],
    );
    let ifaces: Vec<&str> = net
        .ok()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{net:?}");
    // --read-only, with a tmpfs where writes are allowed.
    let o = k(ctx, &["run", "--rm", "--read-only", img, "touch", "/file"]);
    assert!(o.fails().contains("Read-only file system"), "{o:?}");
    k(
        ctx,
        &[
            "run",
            "--rm",
            "--read-only",
            "--mount",
            "type=tmpfs,target=/scratch,tmpfs-size=1048576",
            img,
            "sh",
            "-c",
            "touch /scratch/ok && df /scratch | tail -1",
        ],
    )
    .ok();
    // -i passes stdin; without it the container's stdin is empty.
    let o = ctx
        .kiln()
        .args(["run", "--rm", "-i", img, "cat"])
        .stdin("piped in\n")
        .run();
    assert_eq!(o.ok(), "piped in\n");
    let o = ctx
        .kiln()
        .args(["run", "--rm", img, "cat"])
        .stdin("ignored\n")
        .run();
    assert_eq!(o.ok(), "");
    // --isolation: container works, vm is refused in one line until the microVM lands.
    k(
        ctx,
        &["run", "--rm", "--isolation", "container", img, "true"],
    )
    .ok();
    one_line_error(&k(ctx, &["run", "--rm", "--isolation", "vm", img, "true"]));
}

fn volumes(ctx: &TestContext) {
    let img = ctx.base_image();
    let vol = ctx.work().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from host\n").unwrap();
    ctx.give(&vol);
    let v = vol.to_string_lossy();
    let o = k(
        ctx,
        &[
            "run",
            "--rm",
            "-v",
            &format!("{v}:/data"),
            img,
            "sh",
            "-c",
            "cat /data/in; echo new > /data/out",
        ],
    );
    assert_eq!(o.ok(), "from host\n");
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "new\n");
    // :ro and --mount readonly refuse writes.
    for flag in [
        vec!["-v".to_string(), format!("{v}:/data:ro")],
        vec![
            "--mount".to_string(),
            format!("type=bind,source={v},target=/data,readonly"),
        ],
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend(flag.iter().map(String::as_str));
        args.extend([img, "sh", "-c", "cat /data/in && echo x > /data/in"]);
        let o = k(ctx, &args);
        assert!(o.fails().contains("Read-only file system"), "{o:?}");
        assert!(o.stdout.contains("from host"));
    }
    assert_eq!(
        std::fs::read_to_string(vol.join("in")).unwrap(),
        "from host\n"
    );
    // A named volume outlives its containers.
    k(
        ctx,
        &[
            "run",
            "--rm",
            "-v",
            "cache:/v",
            img,
            "sh",
            "-c",
            "echo kept > /v/f",
        ],
    )
    .ok();
    assert_eq!(
        k(ctx, &["run", "--rm", "-v", "cache:/v", img, "cat", "/v/f"]).ok(),
        "kept\n"
    );
    // An anonymous volume goes with `rm -v`.
    k(
        ctx,
        &[
            "run", "--name", "anon", "-v", "/anon", img, "touch", "/anon/f",
        ],
    )
    .ok();
    let volumes_dir = ctx.root().join("volumes");
    let count = || std::fs::read_dir(&volumes_dir).unwrap().count();
    assert_eq!(count(), 2);
    assert_eq!(k(ctx, &["rm", "-v", "anon"]).ok(), "anon\n");
    assert_eq!(count(), 1);
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn detached(ctx: &TestContext) {
    let img = ctx.base_image();
    let script = "echo one; echo two >&2; trap 'echo got-term; exit 7' TERM; \
                  while true; do sleep 0.1; done";
    let id = k(
        ctx,
        &["run", "-d", "--name", "svc", img, "sh", "-c", script],
    )
    .ok()
    .trim()
    .to_string();
    assert_eq!(id.len(), 64, "{id}");
    // ps: running ones by default, -q, --format json, -a.
    let ps = k(ctx, &["ps"]);
    assert!(ps.ok().starts_with("CONTAINER ID"), "{ps:?}");
    let row = ps.stdout.lines().find(|l| l.ends_with("svc")).unwrap();
    assert!(row.starts_with(&id[..12]) && row.contains("Up "), "{row}");
    assert_eq!(k(ctx, &["ps", "-q"]).ok(), format!("{}\n", &id[..12]));
    let json: serde_json::Value =
        serde_json::from_str(k(ctx, &["ps", "--format", "json"]).ok().trim()).unwrap();
    assert_eq!(json["Names"], "svc");
    assert_eq!(json["State"], "running");
    // logs: by name and by ID prefix; stderr stays stderr; --tail; -t.
    wait_for("output", || k(ctx, &["logs", "svc"]).stdout == "one\n");
    let o = k(ctx, &["logs", &id[..8]]);
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("one\n", "two\n"));
    // The two streams are logged as they come, so either line may be the last.
    let o = k(ctx, &["logs", "--tail", "1", "svc"]);
    assert_eq!(o.stdout.len() + o.stderr.len(), 4, "{o:?}");
    let o = k(ctx, &["logs", "-t", "svc"]);
    assert!(
        o.ok().starts_with("20") && o.stdout.contains("Z one"),
        "{o:?}"
    );
    // top: the container's processes only, with ps options.
    let top = k(ctx, &["top", "svc"]);
    let lines: Vec<&str> = top.ok().lines().collect();
    assert!(lines[0].contains("PID"), "{top:?}");
    assert!(lines.iter().any(|l| l.contains("sh -c")), "{top:?}");
    assert!(lines.len() <= 4, "host processes listed: {top:?}");
    let top = k(ctx, &["top", "svc", "-o", "pid,comm"]);
    assert!(top.ok().starts_with("    PID COMMAND") || top.stdout.contains("PID COMMAND"));
    // exec with -e, -w, -u; -i; exit codes; a missing program.
    let o = k(
        ctx,
        &[
            "exec",
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "-u",
            "root",
            "svc",
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; exit 5",
        ],
    );
    assert_eq!(o.code, Some(5));
    assert_eq!(o.stdout, "bar\n/tmp\n0\n");
    let o = ctx
        .kiln()
        .args(["exec", "-i", "svc", "cat"])
        .stdin("to exec\n")
        .run();
    assert_eq!(o.ok(), "to exec\n");
    let o = k(ctx, &["exec", "svc", "nosuchprogram"]);
    assert_eq!(o.code, Some(127));
    assert!(one_line_error(&o).contains(r#"exec: "nosuchprogram": executable file not found"#));
    // The exec'd process is in the container's PID namespace.
    let ps = k(ctx, &["exec", "svc", "ps", "-o", "pid,args"]);
    assert!(ps.ok().contains("sh -c echo one"), "{ps:?}");

    // cp both ways while it runs, and a tar stream out.
    let host_file = write(ctx, "hostfile", "host data\n");
    k(ctx, &["cp", &host_file, "svc:/tmp/"]).ok();
    assert_eq!(
        k(ctx, &["exec", "svc", "cat", "/tmp/hostfile"]).ok(),
        "host data\n"
    );
    k(ctx, &["cp", &host_file, "svc:/renamed"]).ok();
    assert_eq!(
        k(ctx, &["exec", "svc", "cat", "/renamed"]).ok(),
        "host data\n"
    );
    let out = ctx.work().join("passwd.out");
    k(ctx, &["cp", "svc:/etc/passwd", out.to_str().unwrap()]).ok();
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("root:"));
    let dir_out = ctx.work().join("outdir");
    std::fs::create_dir(&dir_out).unwrap();
    ctx.give(&dir_out);
    k(ctx, &["cp", "svc:/etc", dir_out.to_str().unwrap()]).ok();
    assert!(dir_out.join("etc/passwd").is_file());
    let tar_out = ctx
        .kiln()
        .args(["cp", "svc:/etc/group", "-"])
        .into_command()
        .output()
        .unwrap();
    assert!(tar_out.status.success());
    let mut archive = tar::Archive::new(&tar_out.stdout[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["group"]);
    // A tar stream in.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(7);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "streamed.txt", &b"stream\n"[..])
        .unwrap();
    let bytes = b.into_inner().unwrap();
    ctx.kiln()
        .args(["cp", "-", "svc:/tmp"])
        .stdin(bytes)
        .run()
        .ok();
    assert_eq!(
        k(ctx, &["exec", "svc", "cat", "/tmp/streamed.txt"]).ok(),
        "stream\n"
    );
    // A missing source is one line.
    one_line_error(&k(ctx, &["cp", "svc:/no/such", out.to_str().unwrap()]));

    // logs -f follows until the container ends; stop sends the stop signal first.
    let follow = ctx
        .kiln()
        .args(["logs", "-f", "svc"])
        .into_command()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(k(ctx, &["rm", "svc"]).fails().lines().count(), 1);
    assert_eq!(k(ctx, &["stop", "-t", "5", "svc"]).ok(), "svc\n");
    let followed = follow.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "one\ngot-term\n");
    assert_eq!(k(ctx, &["wait", "svc"]).ok(), "7\n");
    let ps = k(ctx, &["ps", "-a"]);
    assert!(ps.ok().contains("Exited (7)"), "{ps:?}");
    assert_eq!(k(ctx, &["ps", "-q"]).ok(), "");
    // cp works on the stopped container too, both ways.
    k(ctx, &["cp", "svc:/renamed", out.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "host data\n");
    k(ctx, &["cp", &host_file, "svc:/after-stop"]).ok();
    let o = ctx
        .kiln()
        .args(["cp", "svc:/after-stop", "-"])
        .into_command()
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("host data"));
    one_line_error(&k(ctx, &["exec", "svc", "true"]));
    assert_eq!(k(ctx, &["rm", "svc"]).ok(), "svc\n");
    one_line_error(&k(ctx, &["logs", "svc"]));

    // kill: SIGKILL by default, -s for another; stop escalates to SIGKILL; rm -f.
    k(ctx, &["run", "-d", "--name", "k1", img, "sleep", "300"]).ok();
    assert_eq!(k(ctx, &["kill", "k1"]).ok(), "k1\n");
    assert_eq!(k(ctx, &["wait", "k1"]).ok(), "137\n");
    one_line_error(&k(ctx, &["kill", "k1"]));
    k(
        ctx,
        &[
            "run",
            "-d",
            "--name",
            "k2",
            "--stop-signal",
            "USR1",
            img,
            "sh",
            "-c",
            "trap 'exit 42' USR1; while true; do sleep 0.1; done",
        ],
    )
    .ok();
    assert_eq!(k(ctx, &["kill", "-s", "USR1", "k2"]).ok(), "k2\n");
    assert_eq!(k(ctx, &["wait", "k2"]).ok(), "42\n");
    k(ctx, &["run", "-d", "--name", "k3", img, "sleep", "300"]).ok();
    let t = Instant::now();
    // PID 1 ignores SIGTERM without a handler: stop waits -t seconds, then kills.
    assert_eq!(k(ctx, &["stop", "-t", "1", "k3"]).ok(), "k3\n");
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(k(ctx, &["wait", "k3"]).ok(), "137\n");
    k(ctx, &["run", "-d", "--name", "k4", img, "sleep", "300"]).ok();
    assert_eq!(k(ctx, &["rm", "-f", "k4"]).ok(), "k4\n");
    // Names are unique; a removed name is free again.
    one_line_error(&k(ctx, &["run", "--name", "k1", img, "true"]));
    k(ctx, &["rm", "k1", "k2", "k3"]).ok();
    k(ctx, &["run", "--rm", "--name", "k1", img, "true"]).ok();
    // -d with --rm: gone after it ends.
    k(ctx, &["run", "-d", "--rm", "--name", "gone", img, "true"]).ok();
    wait_for("--rm removal", || {
        k(ctx, &["ps", "-a", "-q"]).stdout.is_empty()
    });
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
    k(ctx, &["run", "-d", "--name", "term", img, "sleep", "300"]).ok();
    let (code, out) = run_script(
        &format!("{kiln} exec -it term sh -c 'stty size; test -t 0 && echo tty'"),
        "",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("33 111\ntty\n"), "{out:?}");
    k(ctx, &["rm", "-f", "term"]).ok();
}

fn failures(ctx: &TestContext) {
    let img = ctx.base_image();
    let o = k(ctx, &["run", "127.0.0.1:9/missing:1", "true"]);
    assert!(o.code != Some(0));
    assert!(o.stderr.contains("missing"), "{o:?}");
    let o = k(ctx, &["run", "--rm", img, "nosuchprogram"]);
    assert_eq!(o.code, Some(127), "{o:?}");
    assert!(
        one_line_error(&o).contains(r#"exec: "nosuchprogram": executable file not found in $PATH"#)
    );
    let o = k(ctx, &["run", "--rm", "-u", "nosuchuser", img, "true"]);
    assert_eq!(o.code, Some(125));
    assert!(one_line_error(&o).contains("unable to find user nosuchuser"));
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
        let o = k(ctx, &args);
        assert!(o.code != Some(0), "{bad:?}");
        one_line_error(&o);
    }
    one_line_error(&k(ctx, &["logs", "nosuchcontainer"]));
    one_line_error(&k(ctx, &["exec", "nosuchcontainer", "true"]));
    // An image a container uses cannot be removed by name without -f.
    k(ctx, &["run", "--name", "user", img, "true"]).ok();
    one_line_error(&k(ctx, &["rmi", img]));
    k(ctx, &["rm", "user"]).ok();
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
    let ps = k(ctx, &["ps", "-a"]);
    assert!(ps.ok().contains("Exited (255)"), "{ps:?}");
    k(ctx, &["rm", "killed"]).ok();
    // Another run sweeps the dead run's scratch directory.
    k(ctx, &["run", "--rm", img, "true"]).ok();
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
    assert_eq!(k(ctx, &["ps", "-a", "-q"]).ok(), "");
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
    run_flags(ctx);
    volumes(ctx);
    detached(ctx);
    terminal(ctx);
    failures(ctx);
    nothing_left_behind(ctx, tag);
}

#[test]
fn container_commands_as_root() {
    if let Some(ctx) = ctx_root() {
        all(&ctx, "1");
    }
}

#[test]
fn container_commands_as_an_unprivileged_user() {
    if let Some(ctx) = TestContext::unprivileged() {
        all(&ctx, "2");
    }
}
