//! `kiln run` with its flags and the container commands (`ps`, `logs`, `top`, `cp`, `exec`,
//! `stop`, `kill`, `wait`, `rm`), end to end, as root and as an unprivileged user. Terminals,
//! failures and leftovers are in `container_failures.rs`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::{TestContext, builds_as_root, wait_for};

fn ctx_root() -> Option<TestContext> {
    builds_as_root().then(TestContext::new)
}

fn write(ctx: &TestContext, name: &str, text: &str) -> String {
    let p = ctx.work().join(name);
    std::fs::write(&p, text).unwrap();
    ctx.give(&p);
    p.to_string_lossy().into_owned()
}

fn run_flags(ctx: &TestContext) {
    let img = ctx.base_image();
    // Exit code and both streams; --rm leaves nothing behind.
    let o = ctx.run_kiln(&[
        "run",
        "--rm",
        img,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.code, Some(3), "{o:?}");
    assert_eq!(o.stdout, "out\n");
    assert!(o.stderr.contains("err"), "{o:?}");
    assert_eq!(ctx.run_kiln(&["ps", "-a", "-q"]).ok(), "");

    // -e, --env-file, -w, -u, --hostname.
    let env_file = write(ctx, "env.list", "# comment\nB=from-file\n\nC=3\n");
    let user = if ctx.maps_all_users() {
        "nobody"
    } else {
        "root"
    };
    let o = ctx.run_kiln(&[
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
    ]);
    assert_eq!(
        o.ok(),
        format!("1 from-file override\n/made/here\n{user}\nbox1\n")
    );
    // --entrypoint replaces the image's and drops its CMD.
    assert_eq!(
        ctx.run_kiln(&["run", "--rm", "--entrypoint", "echo", img, "hi"])
            .ok(),
        "hi\n"
    );
    // --network none: loopback only.
    let net = ctx.run_kiln(&[
        "run",
        "--rm",
        "--network",
        "none",
        img,
        "cat",
        "/proc/net/dev",
    ]);
    let ifaces: Vec<&str> = net
        .ok()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{net:?}");
    // --read-only, with a tmpfs where writes are allowed.
    let o = ctx.run_kiln(&["run", "--rm", "--read-only", img, "touch", "/file"]);
    assert!(o.fails().contains("Read-only file system"), "{o:?}");
    ctx.run_kiln(&[
        "run",
        "--rm",
        "--read-only",
        "--mount",
        "type=tmpfs,target=/scratch,tmpfs-size=1048576",
        img,
        "sh",
        "-c",
        "touch /scratch/ok && df /scratch | tail -1",
    ])
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
    // --isolation: container works (vm has its own tests, microvm.rs), others are refused in
    // one line.
    ctx.run_kiln(&["run", "--rm", "--isolation", "container", img, "true"])
        .ok();
    let o = ctx.run_kiln(&["run", "--rm", "--isolation", "hyperv", img, "true"]);
    assert!(o.one_error_line().contains("unknown isolation"), "{o:?}");
}

fn volumes(ctx: &TestContext) {
    let img = ctx.base_image();
    let vol = ctx.work().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from host\n").unwrap();
    ctx.give(&vol);
    let v = vol.to_string_lossy();
    let o = ctx.run_kiln(&[
        "run",
        "--rm",
        "-v",
        &format!("{v}:/data"),
        img,
        "sh",
        "-c",
        "cat /data/in; echo new > /data/out",
    ]);
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
        let o = ctx.run_kiln(&args);
        assert!(o.fails().contains("Read-only file system"), "{o:?}");
        assert!(o.stdout.contains("from host"));
    }
    assert_eq!(
        std::fs::read_to_string(vol.join("in")).unwrap(),
        "from host\n"
    );
    // A named volume outlives its containers.
    ctx.run_kiln(&[
        "run",
        "--rm",
        "-v",
        "cache:/v",
        img,
        "sh",
        "-c",
        "echo kept > /v/f",
    ])
    .ok();
    assert_eq!(
        ctx.run_kiln(&["run", "--rm", "-v", "cache:/v", img, "cat", "/v/f"])
            .ok(),
        "kept\n"
    );
    // An anonymous volume goes with `rm -v`.
    ctx.run_kiln(&[
        "run", "--name", "anon", "-v", "/anon", img, "touch", "/anon/f",
    ])
    .ok();
    let volumes_dir = ctx.root().join("volumes");
    let count = || std::fs::read_dir(&volumes_dir).unwrap().count();
    assert_eq!(count(), 2);
    assert_eq!(ctx.run_kiln(&["rm", "-v", "anon"]).ok(), "anon\n");
    assert_eq!(count(), 1);
}

/// Waits until the container printed `ready`: its shell has set its traps (a signal without
/// a handler is ignored by a PID 1).
fn ready(ctx: &TestContext, name: &str) {
    wait_for("the container's traps", || {
        ctx.run_kiln(&["logs", name]).stdout.contains("ready")
    });
}

fn detached(ctx: &TestContext) {
    let img = ctx.base_image();
    let script = "echo one; echo two >&2; trap 'echo got-term; exit 7' TERM; \
                  while true; do sleep 0.1; done";
    let id = ctx
        .run_kiln(&["run", "-d", "--name", "svc", img, "sh", "-c", script])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    // ps: running ones by default, -q, --format json, -a.
    let ps = ctx.run_kiln(&["ps"]);
    assert!(ps.ok().starts_with("CONTAINER ID"), "{ps:?}");
    let row = ps.stdout.lines().find(|l| l.ends_with("svc")).unwrap();
    assert!(row.starts_with(&id[..12]) && row.contains("Up "), "{row}");
    assert_eq!(ctx.run_kiln(&["ps", "-q"]).ok(), format!("{}\n", &id[..12]));
    let json: serde_json::Value =
        serde_json::from_str(ctx.run_kiln(&["ps", "--format", "json"]).ok().trim()).unwrap();
    assert_eq!(json["Names"], "svc");
    assert_eq!(json["State"], "running");
    // logs: by name and by ID prefix; stderr stays stderr; --tail; -t.
    wait_for("output", || {
        ctx.run_kiln(&["logs", "svc"]).stdout == "one\n"
    });
    let o = ctx.run_kiln(&["logs", &id[..8]]);
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("one\n", "two\n"));
    // The two streams are logged as they come, so either line may be the last.
    let o = ctx.run_kiln(&["logs", "--tail", "1", "svc"]);
    assert_eq!(o.stdout.len() + o.stderr.len(), 4, "{o:?}");
    let o = ctx.run_kiln(&["logs", "-t", "svc"]);
    assert!(
        o.ok().starts_with("20") && o.stdout.contains("Z one"),
        "{o:?}"
    );
    // top: the container's processes only, with ps options.
    let top = ctx.run_kiln(&["top", "svc"]);
    let lines: Vec<&str> = top.ok().lines().collect();
    assert!(lines[0].contains("PID"), "{top:?}");
    assert!(lines.iter().any(|l| l.contains("sh -c")), "{top:?}");
    assert!(lines.len() <= 4, "host processes listed: {top:?}");
    let top = ctx.run_kiln(&["top", "svc", "-o", "pid,comm"]);
    assert!(top.ok().starts_with("    PID COMMAND") || top.stdout.contains("PID COMMAND"));
    // exec with -e, -w, -u; -i; exit codes; a missing program.
    let o = ctx.run_kiln(&[
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
    ]);
    assert_eq!(o.code, Some(5));
    assert_eq!(o.stdout, "bar\n/tmp\n0\n");
    let o = ctx
        .kiln()
        .args(["exec", "-i", "svc", "cat"])
        .stdin("to exec\n")
        .run();
    assert_eq!(o.ok(), "to exec\n");
    let o = ctx.run_kiln(&["exec", "svc", "nosuchprogram"]);
    assert_eq!(o.code, Some(127));
    assert!(
        o.one_error_line()
            .contains(r#"exec: "nosuchprogram": executable file not found"#)
    );
    // The exec'd process is in the container's PID namespace.
    let ps = ctx.run_kiln(&["exec", "svc", "ps", "-o", "pid,args"]);
    assert!(ps.ok().contains("sh -c echo one"), "{ps:?}");

    // cp both ways while it runs, and a tar stream out.
    let host_file = write(ctx, "hostfile", "host data\n");
    ctx.run_kiln(&["cp", &host_file, "svc:/tmp/"]).ok();
    assert_eq!(
        ctx.run_kiln(&["exec", "svc", "cat", "/tmp/hostfile"]).ok(),
        "host data\n"
    );
    ctx.run_kiln(&["cp", &host_file, "svc:/renamed"]).ok();
    assert_eq!(
        ctx.run_kiln(&["exec", "svc", "cat", "/renamed"]).ok(),
        "host data\n"
    );
    let out = ctx.work().join("passwd.out");
    ctx.run_kiln(&["cp", "svc:/etc/passwd", out.to_str().unwrap()])
        .ok();
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("root:"));
    let dir_out = ctx.work().join("outdir");
    std::fs::create_dir(&dir_out).unwrap();
    ctx.give(&dir_out);
    ctx.run_kiln(&["cp", "svc:/etc", dir_out.to_str().unwrap()])
        .ok();
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
        ctx.run_kiln(&["exec", "svc", "cat", "/tmp/streamed.txt"])
            .ok(),
        "stream\n"
    );
    // A missing source is one line.
    ctx.run_kiln(&["cp", "svc:/no/such", out.to_str().unwrap()])
        .one_error_line();

    // logs -f follows until the container ends; stop sends the stop signal first.
    let follow = ctx
        .kiln()
        .args(["logs", "-f", "svc"])
        .into_command()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(ctx.run_kiln(&["rm", "svc"]).fails().lines().count(), 1);
    assert_eq!(ctx.run_kiln(&["stop", "-t", "5", "svc"]).ok(), "svc\n");
    let followed = follow.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "one\ngot-term\n");
    assert_eq!(ctx.run_kiln(&["wait", "svc"]).ok(), "7\n");
    let ps = ctx.run_kiln(&["ps", "-a"]);
    assert!(ps.ok().contains("Exited (7)"), "{ps:?}");
    assert_eq!(ctx.run_kiln(&["ps", "-q"]).ok(), "");
    // cp works on the stopped container too, both ways.
    ctx.run_kiln(&["cp", "svc:/renamed", out.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "host data\n");
    ctx.run_kiln(&["cp", &host_file, "svc:/after-stop"]).ok();
    let o = ctx
        .kiln()
        .args(["cp", "svc:/after-stop", "-"])
        .into_command()
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("host data"));
    ctx.run_kiln(&["exec", "svc", "true"]).one_error_line();
    assert_eq!(ctx.run_kiln(&["rm", "svc"]).ok(), "svc\n");
    ctx.run_kiln(&["logs", "svc"]).one_error_line();

    // kill: SIGKILL by default, -s for another; stop escalates to SIGKILL; rm -f.
    ctx.run_kiln(&["run", "-d", "--name", "k1", img, "sleep", "300"])
        .ok();
    assert_eq!(ctx.run_kiln(&["kill", "k1"]).ok(), "k1\n");
    assert_eq!(ctx.run_kiln(&["wait", "k1"]).ok(), "137\n");
    ctx.run_kiln(&["kill", "k1"]).one_error_line();
    ctx.run_kiln(&[
        "run",
        "-d",
        "--name",
        "k2",
        "--stop-signal",
        "USR1",
        img,
        "sh",
        "-c",
        "trap 'exit 42' USR1; echo ready; while true; do sleep 0.1; done",
    ])
    .ok();
    // stop sends --stop-signal first; the handler ends the container before any SIGKILL.
    let t = Instant::now();
    ready(ctx, "k2");
    assert_eq!(ctx.run_kiln(&["stop", "-t", "20", "k2"]).ok(), "k2\n");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(ctx.run_kiln(&["wait", "k2"]).ok(), "42\n");
    // kill -s sends the signal named; an image's STOPSIGNAL is what stop sends by default.
    let dir = ctx.work().join("stopsignal");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {img}\nSTOPSIGNAL SIGUSR2\nCMD [\"sh\", \"-c\", \"trap 'exit 43' USR2; trap 'exit 44' HUP; echo ready; while true; do sleep 0.1; done\"]\n"
        ),
    )
    .unwrap();
    ctx.give(&dir);
    ctx.run_kiln(&["build", "-q", "-t", "stopsig", dir.to_str().unwrap()])
        .ok();
    ctx.run_kiln(&["run", "-d", "--name", "k5", "stopsig"]).ok();
    ready(ctx, "k5");
    assert_eq!(ctx.run_kiln(&["stop", "k5"]).ok(), "k5\n");
    assert_eq!(ctx.run_kiln(&["wait", "k5"]).ok(), "43\n");
    ctx.run_kiln(&["run", "-d", "--name", "k6", "stopsig"]).ok();
    ready(ctx, "k6");
    assert_eq!(ctx.run_kiln(&["kill", "-s", "HUP", "k6"]).ok(), "k6\n");
    assert_eq!(ctx.run_kiln(&["wait", "k6"]).ok(), "44\n");
    ctx.run_kiln(&["rm", "k5", "k6"]).ok();
    ctx.run_kiln(&["run", "-d", "--name", "k3", img, "sleep", "300"])
        .ok();
    let t = Instant::now();
    // PID 1 ignores SIGTERM without a handler: stop waits -t seconds, then kills.
    assert_eq!(ctx.run_kiln(&["stop", "-t", "1", "k3"]).ok(), "k3\n");
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(ctx.run_kiln(&["wait", "k3"]).ok(), "137\n");
    ctx.run_kiln(&["run", "-d", "--name", "k4", img, "sleep", "300"])
        .ok();
    assert_eq!(ctx.run_kiln(&["rm", "-f", "k4"]).ok(), "k4\n");
    // Names are unique; a removed name is free again.
    ctx.run_kiln(&["run", "--name", "k1", img, "true"])
        .one_error_line();
    ctx.run_kiln(&["rm", "k1", "k2", "k3"]).ok();
    ctx.run_kiln(&["run", "--rm", "--name", "k1", img, "true"])
        .ok();
    // -d with --rm: gone after it ends.
    ctx.run_kiln(&["run", "-d", "--rm", "--name", "gone", img, "true"])
        .ok();
    wait_for("--rm removal", || {
        ctx.run_kiln(&["ps", "-a", "-q"]).stdout.is_empty()
    });
}

fn all(ctx: &TestContext) {
    run_flags(ctx);
    volumes(ctx);
    detached(ctx);
}

#[test]
fn container_commands_as_root() {
    if let Some(ctx) = ctx_root() {
        all(&ctx);
    }
}

#[test]
fn container_commands_as_an_unprivileged_user() {
    if let Some(ctx) = TestContext::unprivileged() {
        all(&ctx);
    }
}
