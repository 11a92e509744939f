//! `RUN --mount` end to end: bind (context, another stage, writable), cache (kept between
//! builds), tmpfs, secret (file and env) and ssh; mount points leave no trace in the layers.

use tests::TestContext;

#[test]
fn run_mounts_of_every_type() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("ctx");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/in.txt"), "bound\n").unwrap();
    std::fs::write(ctx.work().join("token"), "s3cret").unwrap();
    let agent = ctx.work().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS tools\n\
         RUN echo from-stage > /stage.txt\n\
         FROM busybox\n\
         RUN --mount=type=bind,source=data,target=/mnt/data cat /mnt/data/in.txt > /out-bind\n\
         RUN --mount=type=bind,from=tools,source=/stage.txt,target=/s.txt cat /s.txt > /out-from\n\
         RUN --mount=type=bind,target=/ctx,rw touch /ctx/scribble && ls /ctx > /out-rw\n\
         RUN --mount=type=bind,target=/ro ! touch /ro/scribble 2>/dev/null && echo refused > /out-ro\n\
         RUN --mount=type=cache,target=/cache/t,id=tcache echo x >> /cache/t/log && wc -l < /cache/t/log > /out-cache\n\
         RUN --mount=type=tmpfs,target=/scratch grep -q ' /scratch tmpfs ' /proc/mounts && echo tmpfs > /out-tmpfs\n\
         RUN --mount=type=secret,id=token test \"$(cat /run/secrets/token)\" = s3cret && echo file > /out-secret\n\
         RUN --mount=type=secret,id=token,env=TOKEN test \"$TOKEN\" = s3cret && echo env > /out-secret-env\n\
         RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo agent > /out-ssh\n",
    )
    .unwrap();
    let build = |extra: &[&str], out: &str| {
        let rootfs = ctx.work().join(out);
        ctx.kiln()
            .args(["build", "-q", "--secret"])
            .arg(format!(
                "id=token,src={}",
                ctx.work().join("token").display()
            ))
            .arg("--ssh")
            .arg(format!("default={}", agent.display()))
            .args(extra)
            .arg("--output")
            .arg(format!("type=local,dest={}", rootfs.display()))
            .arg(&dir)
            .run()
            .ok();
        rootfs
    };
    let root = build(&[], "rootfs1");
    let read = |root: &std::path::Path, p: &str| {
        std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    assert_eq!(read(&root, "out-bind"), "bound\n");
    assert_eq!(read(&root, "out-from"), "from-stage\n");
    assert!(read(&root, "out-rw").contains("scribble"));
    assert!(
        !dir.join("scribble").exists(),
        "writes to an rw bind are thrown away"
    );
    assert_eq!(read(&root, "out-ro"), "refused\n");
    assert_eq!(read(&root, "out-cache").trim(), "1");
    assert_eq!(read(&root, "out-tmpfs"), "tmpfs\n");
    assert_eq!(read(&root, "out-secret"), "file\n");
    assert_eq!(read(&root, "out-secret-env"), "env\n");
    assert_eq!(read(&root, "out-ssh"), "agent\n");
    for stub in [
        "mnt/data",
        "s.txt",
        "ctx",
        "ro",
        "cache",
        "scratch",
        "run/secrets",
        "run/buildkit",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(stub)).is_err(),
            "mount point /{stub} left in the image"
        );
    }
    // The cache mount outlives the build.
    let root = build(&["--no-cache"], "rootfs2");
    assert_eq!(read(&root, "out-cache").trim(), "2");

    // A required secret that was not given: one line naming the line.
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=secret,id=absent,required cat /run/secrets/absent\n",
    )
    .unwrap();
    let e = ctx.kiln().args(["build", "-q"]).arg(&dir).run();
    let first = e.fails().lines().next().unwrap().to_string();
    assert!(
        first.starts_with("kiln: error: Dockerfile:2:1: secret absent is required"),
        "{first}"
    );
}
