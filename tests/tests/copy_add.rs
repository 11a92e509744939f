//! COPY and ADD semantics end to end: wildcards, `--exclude`, `--parents`, heredoc sources,
//! symbolic `--chmod`, ADD of local archives (by content), of URLs (with `--checksum`,
//! against a loopback server) and of git repositories (`#ref:subdir`), and RUN heredocs.
//! Each build's root filesystem is exported (`--output type=local`) and inspected.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use snapshotter::Store as _;
use tests::http_server::StaticServer;
use tests::{TestContext, have_program, require};

/// Builds `dockerfile` with `files` in the context; returns the exported root filesystem.
fn build(ctx: &TestContext, name: &str, dockerfile: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = ctx.work().join(name);
    for (f, data) in files {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    let out = ctx.work().join(format!("{name}-rootfs"));
    ctx.kiln()
        .args(["build", "-q", "--output"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&dir)
        .run()
        .ok();
    out
}

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn mode(root: &Path, p: &str) -> u32 {
    std::fs::symlink_metadata(root.join(p.trim_start_matches('/')))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn exists(root: &Path, p: &str) -> bool {
    std::fs::symlink_metadata(root.join(p.trim_start_matches('/'))).is_ok()
}

#[test]
fn wildcards_exclude_and_parents() {
    let ctx = TestContext::new();
    let files: &[(&str, &[u8])] = &[
        ("a.txt", b"a"),
        ("b.txt", b"b"),
        ("c.md", b"c"),
        ("src/x.rs", b"x"),
        ("src/y.rs", b"y"),
        ("src/deep/z.rs", b"z"),
        ("docs/one.md", b"1"),
        ("docs/two.txt", b"2"),
        ("docs/sub/three.md", b"3"),
    ];
    let root = build(
        &ctx,
        "wild",
        "FROM scratch\n\
         COPY *.txt /w/\n\
         COPY src/*.rs /rs/\n\
         COPY [ab].txt /one/\n\
         COPY --exclude=*.md docs/ /docs/\n\
         COPY --exclude=**/*.md --exclude=*.txt docs /docs2/\n\
         COPY --parents src/deep/z.rs /p/\n\
         COPY --parents ./src/./deep/z.rs /pivot/\n\
         COPY nothing* /none/\n\
         COPY --link a.txt /linked/\n",
        files,
    );
    assert_eq!(
        (read(&root, "/w/a.txt"), read(&root, "/w/b.txt")),
        ("a".into(), "b".into())
    );
    assert!(!exists(&root, "/w/c.md"));
    assert_eq!(read(&root, "/rs/x.rs"), "x");
    assert!(exists(&root, "/rs/y.rs") && !exists(&root, "/rs/deep"));
    assert!(exists(&root, "/one/a.txt") && exists(&root, "/one/b.txt"));
    assert!(exists(&root, "/docs/two.txt") && !exists(&root, "/docs/one.md"));
    // `*.md` is relative to the copied directory, so it does not reach sub/.
    assert!(exists(&root, "/docs/sub/three.md"));
    assert!(
        !exists(&root, "/docs2/sub/three.md")
            && !exists(&root, "/docs2/two.txt")
            && exists(&root, "/docs2/sub")
    );
    assert_eq!(read(&root, "/p/src/deep/z.rs"), "z");
    assert_eq!(read(&root, "/pivot/deep/z.rs"), "z");
    assert!(
        !exists(&root, "/none"),
        "a wildcard matching nothing copies nothing"
    );
    // --link makes the layer independent of what is below; the result is the same.
    assert_eq!(read(&root, "/linked/a.txt"), "a");
}

#[test]
fn heredoc_sources_and_symbolic_chmod() {
    let ctx = TestContext::new();
    let root = build(
        &ctx,
        "heredoc",
        "FROM scratch\n\
         ARG NAME=world\n\
         COPY <<EOF /etc/greeting\nhello $NAME \"quoted\" \\$NAME\nEOF\n\
         COPY <<'EOF' /etc/raw\nhello $NAME\nEOF\n\
         COPY <<one.txt <<two.txt /many/\nfirst\none.txt\nsecond\ntwo.txt\n\
         COPY --chmod=u+x,go-w f /m/f\n\
         COPY --chmod=a=rX d /m/d/\n\
         COPY --chmod=0640 f /m/octal\n",
        &[("f", b"f"), ("d/x", b"x"), ("d/sub/y", b"y")],
    );
    assert_eq!(
        read(&root, "/etc/greeting"),
        "hello world \"quoted\" $NAME\n"
    );
    assert_eq!(read(&root, "/etc/raw"), "hello $NAME\n");
    assert_eq!(
        mode(&root, "/etc/raw"),
        0o664,
        "heredoc files are 0664, as BuildKit makes them"
    );
    assert_eq!(
        (read(&root, "/many/one.txt"), read(&root, "/many/two.txt")),
        ("first\n".into(), "second\n".into())
    );
    // The context file is 0644 as written here.
    assert_eq!(mode(&root, "/m/f"), 0o744);
    assert_eq!(mode(&root, "/m/d/x"), 0o444);
    assert_eq!(mode(&root, "/m/d/sub"), 0o555);
    assert_eq!(mode(&root, "/m/octal"), 0o640);
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn add_unpacks_local_archives_by_content() {
    use std::io::Write as _;
    let ctx = TestContext::new();
    let plain = tar_of(&[("pkg/readme", b"inside"), ("pkg/bin/tool", b"tool")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let root = build(
        &ctx,
        "archives",
        "FROM scratch\n\
         ADD plain.tar /plain/\n\
         ADD data.bin /gz\n\
         ADD pkg.tar.zst /zst/\n\
         ADD fake.tar.gz /fake/\n\
         ADD --chmod=0755 --unpack=false plain.tar /kept/\n",
        &[
            ("plain.tar", &plain),
            ("data.bin", &gz),
            ("pkg.tar.zst", &zst),
            ("fake.tar.gz", b"not an archive"),
        ],
    );
    for dir in ["/plain", "/gz", "/zst"] {
        assert_eq!(read(&root, &format!("{dir}/pkg/readme")), "inside", "{dir}");
        assert_eq!(mode(&root, &format!("{dir}/pkg/bin/tool")), 0o640, "{dir}");
    }
    assert_eq!(read(&root, "/fake/fake.tar.gz"), "not an archive");
    assert!(exists(&root, "/kept/plain.tar") && mode(&root, "/kept/plain.tar") == 0o755);
}

#[test]
fn add_downloads_urls_and_checks_checksums() {
    let ctx = TestContext::new();
    let served = ctx.work().join("served");
    std::fs::create_dir_all(served.join("files")).unwrap();
    std::fs::write(served.join("files/tool.sh"), "#!/bin/sh\necho tool\n").unwrap();
    let plain = tar_of(&[("inner", b"x")]);
    std::fs::write(served.join("files/bundle.tar"), &plain).unwrap();
    let server = StaticServer::start(served);
    let sum = snapshotter::Digest::of(b"#!/bin/sh\necho tool\n");
    let url = format!("{}/files/tool.sh", server.url);
    let dockerfile = format!(
        "FROM scratch\nADD --checksum={sum} {url} /opt/\nADD {url} /opt/renamed\nADD {}/files/bundle.tar /b/\n",
        server.url
    );
    let root = build(&ctx, "urls", &dockerfile, &[]);
    assert_eq!(read(&root, "/opt/tool.sh"), "#!/bin/sh\necho tool\n");
    assert_eq!(
        mode(&root, "/opt/tool.sh"),
        0o600,
        "downloads are 0600, as Docker makes them"
    );
    let mtime = std::fs::metadata(root.join("opt/tool.sh"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        784_111_777,
        "Last-Modified"
    );
    assert!(exists(&root, "/opt/renamed"));
    assert!(
        exists(&root, "/b/bundle.tar"),
        "remote archives are not unpacked"
    );

    let bad = format!(
        "FROM scratch\nADD --checksum=sha256:{} {url} /opt/\n",
        "0".repeat(64)
    );
    let dir = ctx.work().join("badsum");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), bad).unwrap();
    let out = ctx.kiln().args(["build", "-q"]).arg(&dir).run();
    let err = out.fails();
    assert!(
        err.starts_with("kiln: error: Dockerfile:2:1:") && err.contains("checksum mismatch"),
        "{err}"
    );
    let missing = format!("FROM scratch\nADD {}/files/absent /x\n", server.url);
    std::fs::write(dir.join("Dockerfile"), missing).unwrap();
    let err = ctx.kiln().args(["build", "-q"]).arg(&dir).run();
    assert!(err.fails().contains("404"), "{}", err.stderr);
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn add_git_repositories_at_a_ref_and_subdir() {
    if !require("git", have_program("git"), "apt-get install git") {
        return;
    }
    let ctx = TestContext::new();
    let work = ctx.work().join("repo-work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("top.txt"), "v1 top\n").unwrap();
    std::fs::write(work.join("sub/inner.txt"), "v1 inner\n").unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "v1"]);
    git(&work, &["tag", "v1"]);
    std::fs::write(work.join("top.txt"), "v2 top\n").unwrap();
    git(&work, &["commit", "-q", "-am", "v2"]);
    let served = ctx.work().join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(
        &served,
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
    );
    git(&served.join("repo.git"), &["update-server-info"]);
    let server = StaticServer::start(served);
    let dockerfile = format!(
        "FROM scratch\nADD {u}/repo.git#v1 /v1/\nADD {u}/repo.git#main:sub /main-sub/\nADD {u}/repo.git /head/\nADD --keep-git-dir=true {u}/repo.git#v1 /git-kept/\n",
        u = server.url
    );
    let root = build(&ctx, "git", &dockerfile, &[]);
    assert_eq!(read(&root, "/v1/top.txt"), "v1 top\n");
    assert_eq!(read(&root, "/main-sub/inner.txt"), "v1 inner\n");
    assert!(!exists(&root, "/main-sub/top.txt"));
    assert_eq!(read(&root, "/head/top.txt"), "v2 top\n");
    assert!(!exists(&root, "/v1/.git"), "no .git without --keep-git-dir");
    assert!(
        exists(&root, "/git-kept/.git/HEAD"),
        "--keep-git-dir keeps it"
    );
}

#[test]
fn run_heredocs_follow_buildkit() {
    let ctx = TestContext::new();
    if !tests::builds_as_root() {
        return;
    }
    ctx.base_image();
    let root = build(
        &ctx,
        "runheredoc",
        "FROM busybox\n\
         RUN <<EOF\necho one > /h1\necho two >> /h1\nEOF\n\
         RUN <<EOF\n#!/bin/sh\necho \"script $0\" > /h2\nEOF\n\
         RUN cat <<EOF > /h3\nhome is $HOME\nEOF\n\
         RUN <<-EOF sh\n\techo tabs stripped > /h4\n\tEOF\n",
        &[],
    );
    assert_eq!(read(&root, "/h1"), "one\ntwo\n");
    assert_eq!(read(&root, "/h2"), "script /dev/pipes/EOF\n");
    assert_eq!(read(&root, "/h3"), "home is /root\n");
    assert_eq!(read(&root, "/h4"), "tabs stripped\n");
    assert!(
        !exists(&root, "/dev/pipes"),
        "heredoc scripts stay out of the layers"
    );
}

#[test]
fn onbuild_triggers_run_in_the_child_and_stop_there() {
    let ctx = TestContext::new();
    let parent = ctx.work().join("parent");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::write(
        parent.join("Dockerfile"),
        "FROM scratch\nONBUILD ENV FROM_TRIGGER=yes\nONBUILD COPY trig.txt /trig/\nLABEL role=parent\n",
    )
    .unwrap();
    ctx.kiln()
        .args(["build", "-q", "-t", "onbuild-parent"])
        .arg(&parent)
        .run()
        .ok();
    let v: serde_json::Value =
        serde_json::from_str(ctx.kiln().args(["inspect", "onbuild-parent"]).run().ok()).unwrap();
    assert_eq!(
        v[0]["Config"]["OnBuild"],
        serde_json::json!(["ENV FROM_TRIGGER=yes", "COPY trig.txt /trig/"])
    );
    // ONBUILD lives in Docker's config format, which the image then uses...
    let desc = ctx
        .store()
        .resolve(&"onbuild-parent".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        desc.media_type().to_string(),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // ...unless OCI is asked for: then it is left out, with a warning.
    let oci = ctx
        .kiln()
        .args(["build", "-t", "onbuild-oci", "--format", "oci"])
        .arg(&parent)
        .run();
    assert!(
        oci.stderr.contains("not part of the OCI image format"),
        "{}",
        oci.stderr
    );
    let v: serde_json::Value =
        serde_json::from_str(ctx.kiln().args(["inspect", "onbuild-oci"]).run().ok()).unwrap();
    assert!(v[0]["Config"]["OnBuild"].is_null(), "{v}");
    let desc = ctx
        .store()
        .resolve(&"onbuild-oci".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        desc.media_type().to_string(),
        "application/vnd.oci.image.manifest.v1+json"
    );

    let root = build(
        &ctx,
        "child",
        "FROM onbuild-parent\nCOPY own.txt /\n",
        &[
            ("trig.txt", b"from the child's context"),
            ("own.txt", b"own"),
        ],
    );
    assert_eq!(read(&root, "/trig/trig.txt"), "from the child's context");
    let child = ctx.work().join("child");
    ctx.kiln()
        .args(["build", "-q", "-t", "onbuild-child"])
        .arg(&child)
        .run()
        .ok();
    let v: serde_json::Value =
        serde_json::from_str(ctx.kiln().args(["inspect", "onbuild-child"]).run().ok()).unwrap();
    assert!(
        v[0]["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("FROM_TRIGGER=yes")),
        "{v}"
    );
    assert!(
        v[0]["Config"]["OnBuild"].is_null() || v[0]["Config"]["OnBuild"] == serde_json::json!([]),
        "{v}"
    );
    // A trigger that fails names itself and the FROM line.
    let broken = ctx.work().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("Dockerfile"), "FROM onbuild-parent\n").unwrap();
    let err = ctx.kiln().args(["build", "-q"]).arg(&broken).run();
    let line = err.fails().lines().next().unwrap().to_string();
    assert!(
        line.starts_with("kiln: error: Dockerfile:1:1: ONBUILD COPY trig.txt /trig/:")
            && line.contains("not found"),
        "{line}"
    );
}
