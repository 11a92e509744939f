//! `kiln run --isolation vm` as a container: standard input, signals, detached runs; and the
//! image's extended attributes in the guest.

use std::path::Path;
use std::process::Command;

use tests::vm::{assert_nothing_left, vm_available};
use tests::{TestContext, wait_for};

const EPOCH: &str = "1700000000";

/// Runs kiln with a pseudo-terminal of 33 rows and 101 columns as its standard streams;
/// what it printed there.
fn on_terminal(ctx: &TestContext, args: &[&str]) -> String {
    use std::io::Read as _;
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let mut cmd = ctx.kiln().args(args).into_command();
    cmd.stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    child.wait().unwrap();
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

/// The MD5 of `data` as the host's `md5sum` prints it.
fn host_md5(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `script` in a detached VM container named `name` and waits for its first line
/// (`started`); its ID.
fn start_detached(ctx: &TestContext, name: &str, script: &str) -> String {
    let id = ctx
        .kiln()
        .args(["run", "-d", "--isolation", "vm", "--name", name])
        .arg(ctx.base_image())
        .args(["sh", "-c", script])
        .run()
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    wait_for("the VM container's first line", || {
        ctx.run_kiln(&["logs", name]).stdout == "started\n"
    });
    id
}

/// `kiln run -i` feeds the guest's standard input (any bytes, over many frames, then its
/// end); without `-i` the guest reads nothing; `-t` gives the step a terminal in the guest.
/// `-d` runs the VM under a monitor that `ps`, `logs`, `stop` and `kill` reach: `stop`'s
/// SIGTERM reaches the guest's process (its trap runs and sets the exit code), `kill` ends
/// the VM (137); `exec`, `top` and `cp` into a running VM say in one line why they cannot.
#[test]
fn vm_containers_take_input_and_signals_and_run_detached() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    let base = ctx.base_image();
    // The step starts with default signal actions: `yes` dies of SIGPIPE when `head` is done
    // (the init's runtime ignores SIGPIPE, which exec would otherwise pass on; the run then
    // never ended).
    let out = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm", "--vm-timeout", "90s"])
        .arg(base)
        .args([
            "sh",
            "-c",
            "yes | head -c 4; echo; grep SigIgn /proc/self/status",
        ])
        .run();
    assert_eq!(out.code, Some(0), "{out:?}");
    let ignored = out
        .stdout
        .strip_prefix("y\ny\n\nSigIgn:\t")
        .unwrap_or_else(|| panic!("{out:?}"));
    let mask = u64::from_str_radix(ignored.trim(), 16).unwrap();
    assert_eq!(mask & (1 << (13 - 1)), 0, "SIGPIPE ignored: {out:?}");
    let input: Vec<u8> = (0..6000u32).map(|i| (i * 7 % 256) as u8).collect();
    let out = ctx
        .kiln()
        .args(["run", "--rm", "-i", "--isolation", "vm"])
        .arg(base)
        .args(["sh", "-c", "md5sum; echo end"])
        .stdin(input.clone())
        .run();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{}end\n", host_md5(&input)), "{out:?}");
    let out = ctx
        .kiln()
        .args(["run", "--rm", "--isolation", "vm"])
        .arg(base)
        .args(["sh", "-c", "cat; echo end"])
        .stdin("not for the guest\n")
        .run();
    assert_eq!(out.stdout, "end\n", "{out:?}");
    // A step that leaves a large input unread ends as usual: the host sends only a window
    // ahead of what the step has taken.
    let out = ctx
        .kiln()
        .args(["run", "--rm", "-i", "--isolation", "vm"])
        .arg(base)
        .args(["sh", "-c", "echo ignored"])
        .stdin(vec![b'x'; 20 << 20])
        .run();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "ignored\n"),
        "{out:?}"
    );
    // -t: a terminal in the guest, from the step root's own /dev/pts (line ends are the
    // terminal's); with -i the input goes through it.
    let out = ctx
        .kiln()
        .args(["run", "--rm", "-t", "--isolation", "vm"])
        .arg(base)
        .args(["sh", "-c", "tty; test -t 0 && test -t 2 && echo all-a-tty"])
        .run();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "/dev/pts/0\r\nall-a-tty\r\n", "{out:?}");
    // On a terminal, the guest's has its size.
    let shown = on_terminal(
        &ctx,
        &[
            "run",
            "--rm",
            "-t",
            "--isolation",
            "vm",
            base,
            "stty",
            "size",
        ],
    );
    assert!(shown.contains("33 101\r\n"), "{shown:?}");
    let out = ctx
        .kiln()
        .args(["run", "--rm", "-i", "-t", "--isolation", "vm"])
        .arg(base)
        .args(["sh", "-c", "read line; echo \"got $line\"; exit 4"])
        .stdin("typed\n")
        .run();
    assert_eq!(out.code, Some(4), "{out:?}");
    assert!(out.stdout.contains("got typed\r\n"), "{out:?}");

    let id = start_detached(
        &ctx,
        "vmd",
        "trap 'echo got-term; exit 7' TERM; echo started; while true; do sleep 0.2; done",
    );
    let ps = ctx.run_kiln(&["ps"]);
    let row = ps.stdout.lines().find(|l| l.ends_with("vmd")).unwrap();
    assert!(row.starts_with(&id[..12]) && row.contains("Up "), "{row}");
    for (args, what) in [
        (vec!["exec", "vmd", "true"], "exec is not supported"),
        (vec!["top", "vmd"], "top is not supported"),
        (
            vec!["cp", "vmd:/etc/passwd", "-"],
            "cannot be reached while it runs",
        ),
    ] {
        let o = ctx.run_kiln(&args);
        assert!(o.one_error_line().contains(what), "{args:?}: {o:?}");
    }
    ctx.run_kiln(&["stop", "vmd"]).ok();
    assert_eq!(ctx.run_kiln(&["wait", "vmd"]).ok(), "7\n");
    assert_eq!(ctx.run_kiln(&["logs", "vmd"]).stdout, "started\ngot-term\n");
    ctx.run_kiln(&["rm", "vmd"]).ok();

    start_detached(
        &ctx,
        "vmk",
        "trap '' TERM INT; echo started; while true; do sleep 0.2; done",
    );
    ctx.run_kiln(&["kill", "vmk"]).ok();
    assert_eq!(ctx.run_kiln(&["wait", "vmk"]).ok(), "137\n");
    ctx.run_kiln(&["rm", "vmk"]).ok();
    assert_nothing_left(&ctx);
}

/// Appends one entry, owned by root, mtime 0.
fn add_entry(
    b: &mut tar::Builder<std::fs::File>,
    name: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    b.append_data(&mut h, name, data).unwrap();
}

/// A root of busybox with `/opt/cat`, a copy of it with the file capability
/// `cap_net_bind_service+ep`
/// (`security.capability`), and `/noted` with a `user.note` attribute.
fn write_xattr_rootfs(path: &Path) {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for dir in ["bin", "etc", "opt", "tmp"] {
        add_entry(&mut b, dir, tar::EntryType::Directory, 0o755, b"", None);
    }
    add_entry(
        &mut b,
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    );
    for applet in ["sh", "cat", "grep", "chmod", "echo"] {
        add_entry(
            &mut b,
            &format!("bin/{applet}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
    }
    add_entry(
        &mut b,
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
        None,
    );
    // VFS_CAP_REVISION_2 with the effective bit; permitted: CAP_NET_BIND_SERVICE (10).
    let cap: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])])
        .unwrap();
    add_entry(
        &mut b,
        "opt/cat",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    );
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"hello"[..])])
        .unwrap();
    add_entry(
        &mut b,
        "noted",
        tar::EntryType::Regular,
        0o644,
        b"hi\n",
        None,
    );
    b.into_inner().unwrap();
}

/// The image's files keep their extended attributes in the guest where its kernel can hold
/// them: a file capability works for a non-root user (root there has the container's
/// capabilities), and a step that copies the file up gives the container backend's layer,
/// attribute included. `user.*` ones, which this guest kernel's tmpfs refuses (Linux 6.6
/// added them), are named in a warning.
#[test]
fn vm_steps_see_the_images_extended_attributes() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    let rootfs = ctx.work().join("xattrs.tar");
    write_xattr_rootfs(&rootfs);
    ctx.kiln()
        .arg("import")
        .arg(&rootfs)
        .arg("xattrs:1")
        .run()
        .ok();
    let out = ctx
        .kiln()
        .args([
            "run",
            "--rm",
            "--isolation",
            "vm",
            "-u",
            "65534",
            "xattrs:1",
        ])
        .args([
            "sh",
            "-c",
            "/opt/cat /proc/self/status | grep CapEff; cat /proc/self/status | grep CapEff",
        ])
        .run();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout, "CapEff:\t0000000000000400\nCapEff:\t0000000000000000\n",
        "{out:?}"
    );
    assert!(out.stderr.contains("user.note on /lower/noted"), "{out:?}");
    // Root in the guest holds what root holds in a container: Docker's default set, less
    // CAP_MKNOD and CAP_NET_RAW.
    let caps: Vec<String> = ["container", "vm"]
        .iter()
        .map(|isolation| {
            ctx.kiln()
                .args(["run", "--rm", "--isolation", isolation, "xattrs:1"])
                .args(["grep", "^Cap[BEP]", "/proc/self/status"])
                .run()
                .ok()
                .to_string()
        })
        .collect();
    assert_eq!(caps[0], caps[1]);
    assert!(caps[0].contains("CapBnd:\t00000000a00405fb"), "{caps:?}");
    let dir = ctx.work().join("xattr-ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM xattrs:1\nRUN chmod 700 /opt/cat && echo changed > /new\n",
    )
    .unwrap();
    let mut ids = Vec::new();
    for isolation in ["container", "vm"] {
        let id = ctx
            .kiln()
            .args(["build", "-q", "--no-cache", "--isolation", isolation])
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .arg(&dir)
            .run()
            .ok()
            .trim()
            .to_string();
        ids.push(id);
    }
    assert_eq!(
        ids[0], ids[1],
        "the VM's layer differs from the container's"
    );
    assert_nothing_left(&ctx);
}
