//! The build cache: unchanged rebuilds run nothing, touching is not changing, a changed file
//! re-runs exactly the steps after it, misses say why, and keys do not depend on where the
//! context lives.

use tests::TestContext;

fn context(ctx: &TestContext, name: &str) -> std::path::PathBuf {
    let dir = ctx.work().join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.txt"), "v1\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "n\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nARG VERSION=1\nRUN echo base-$VERSION > /base && date +%s%N > /stamp1\nCOPY src/ /app/\nRUN cat /app/main.txt > /out && date +%s%N > /stamp2\nCOPY notes.txt /\n",
    )
    .unwrap();
    dir
}

fn marks(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn rebuilds_hit_and_misses_explain_themselves() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = context(&ctx, "ctx");
    let build = |args: &[&str]| {
        ctx.kiln()
            .args(["build", "-t", "t"])
            .args(args)
            .arg(&dir)
            .run()
    };
    let first = build(&[]);
    first.ok();
    assert!(marks(&first.stderr).is_empty(), "{}", first.stderr);
    let stamp = |c: &TestContext| {
        c.kiln()
            .args(["run", "t", "cat", "/stamp1", "/stamp2"])
            .run()
            .ok()
            .to_string()
    };
    let before = stamp(&ctx);

    // Unchanged: every layer step is a hit, and nothing ran.
    let again = build(&[]);
    assert_eq!(marks(&again.stderr), ["CACHED"; 4], "{}", again.stderr);
    assert_eq!(stamp(&ctx), before);

    // Touching without changing is still a hit.
    filetime::set_file_mtime(dir.join("src/main.txt"), filetime::FileTime::now()).unwrap();
    assert_eq!(marks(&build(&[]).stderr), ["CACHED"; 4]);

    // Changing one file re-runs the COPY of it and what follows, and says why.
    std::fs::write(dir.join("src/main.txt"), "v2\n").unwrap();
    let changed = build(&[]);
    assert_eq!(
        marks(&changed.stderr),
        [
            "CACHED",
            "cache miss: src/main.txt changed",
            "cache miss: a step before it changed",
            "cache miss: a step before it changed"
        ],
        "{}",
        changed.stderr
    );
    assert_eq!(
        ctx.kiln().args(["run", "t", "cat", "/out"]).run().ok(),
        "v2\n"
    );

    // A build arg the first RUN uses.
    let arg = build(&["--build-arg", "VERSION=2"]);
    assert_eq!(
        marks(&arg.stderr)[0],
        "cache miss: VERSION changed",
        "{}",
        arg.stderr
    );

    // --no-cache runs everything.
    let none = build(&["--no-cache", "--build-arg", "VERSION=2"]);
    assert!(marks(&none.stderr).is_empty(), "{}", none.stderr);
}

#[test]
fn keys_do_not_depend_on_the_checkout() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let a = context(&ctx, "checkout-a");
    ctx.kiln().args(["build", "-t", "a"]).arg(&a).run().ok();
    // Another path, other mtimes: same content, so every step is a hit.
    let b = context(&ctx, "elsewhere/checkout-b");
    filetime::set_file_mtime(
        b.join("src/main.txt"),
        filetime::FileTime::from_unix_time(1_000_000, 0),
    )
    .unwrap();
    let out = ctx.kiln().args(["build", "-t", "b"]).arg(&b).run();
    assert_eq!(marks(&out.stderr), ["CACHED"; 4], "{}", out.stderr);
}

#[test]
fn dockerignore_shapes_copies_and_cache_keys() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("ignore");
    std::fs::create_dir_all(dir.join("secret")).unwrap();
    std::fs::write(dir.join("a.txt"), "a").unwrap();
    std::fs::write(dir.join("debug.log"), "noise").unwrap();
    std::fs::write(dir.join("secret/key"), "k").unwrap();
    std::fs::write(dir.join("secret/keep.txt"), "keep").unwrap();
    std::fs::write(
        dir.join(".dockerignore"),
        "*.log\nsecret\n!secret/keep.txt\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nCOPY . /app/\nCMD [\"find\", \"/app\", \"-type\", \"f\"]\n",
    )
    .unwrap();
    let build = || ctx.kiln().args(["build", "-t", "ig"]).arg(&dir).run();
    build().ok();
    let files = ctx.kiln().args(["run", "ig"]).run();
    let mut got: Vec<&str> = files.ok().lines().collect();
    got.sort();
    assert_eq!(
        got,
        [
            "/app/.dockerignore",
            "/app/Dockerfile",
            "/app/a.txt",
            "/app/secret/keep.txt"
        ]
    );
    // An ignored file does not count for the cache.
    std::fs::write(dir.join("debug.log"), "more noise").unwrap();
    assert_eq!(marks(&build().stderr), ["CACHED"]);
    // Copying an ignored file by name: it is not in the context.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nCOPY debug.log /\n").unwrap();
    let err = build();
    assert!(
        err.fails().contains(
            "\"debug.log\" not found in the build context (it is excluded by .dockerignore)"
        ),
        "{}",
        err.stderr
    );
    // <Dockerfile>.dockerignore beside the Dockerfile wins.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nCOPY debug.log /\n").unwrap();
    std::fs::write(dir.join("Dockerfile.dockerignore"), "secret\n").unwrap();
    build().ok();
}

#[test]
fn two_checkouts_give_byte_identical_manifests() {
    if !tests::builds_as_root() {
        return;
    }
    let make = |ctx: &TestContext, name: &str, age_secs: i64, owner: u32| {
        let dir = context(ctx, name);
        let t = filetime::FileTime::from_unix_time(
            filetime::FileTime::now().unix_seconds() - age_secs,
            0,
        );
        for f in ["src/main.txt", "notes.txt", "Dockerfile", "src"] {
            filetime::set_file_mtime(dir.join(f), t).unwrap();
            std::os::unix::fs::chown(dir.join(f), Some(owner), Some(owner)).unwrap();
        }
        // No step may print the time: the Dockerfile's RUNs write dates into files.
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM busybox\nARG VERSION=1\nRUN echo base-$VERSION > /base && mkdir -p /var/made\nCOPY src/ /app/\nRUN cat /app/main.txt > /out\nCOPY notes.txt /\n",
        )
        .unwrap();
        dir
    };
    let digest = |age: i64, owner: u32, name: &str| {
        let ctx = TestContext::new();
        let dir = make(&ctx, name, age, owner);
        let epoch = "1700000000";
        ctx.kiln()
            .env("SOURCE_DATE_EPOCH", epoch)
            .arg("import")
            .arg(tests::busybox_rootfs_tar())
            .arg("busybox")
            .run()
            .ok();
        ctx.kiln()
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["build", "-q", "-t", "r"])
            .arg(&dir)
            .run()
            .ok();
        let v: serde_json::Value =
            serde_json::from_str(ctx.kiln().args(["inspect", "r"]).run().ok()).unwrap();
        v[0]["Descriptor"]["digest"].as_str().unwrap().to_string()
    };
    let a = digest(10, 0, "one/checkout");
    let b = digest(5000, 1234, "another/place/checkout");
    assert_eq!(a, b, "same inputs, same manifest");
}

#[test]
fn no_cache_filter_runs_only_the_named_stages() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("stages");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS deps\nRUN cat /proc/sys/kernel/random/uuid > /deps\nFROM busybox AS app\nCOPY --from=deps /deps /deps\nRUN cat /proc/sys/kernel/random/uuid > /app\n",
    )
    .unwrap();
    let build = |args: &[&str]| {
        ctx.kiln()
            .args(["build", "-t", "t"])
            .args(args)
            .arg(&dir)
            .run()
    };
    build(&[]).ok();
    assert_eq!(marks(&build(&[]).stderr), ["CACHED"; 3]);
    let filtered = build(&["--no-cache-filter", "app"]);
    assert_eq!(
        marks(&filtered.stderr),
        [
            "CACHED",
            "cache skipped: --no-cache-filter",
            "cache skipped: --no-cache-filter"
        ],
        "{}",
        filtered.stderr
    );
    // By index, too; the skipped stage's new layer makes what depends on it miss.
    let by_index = build(&["--no-cache-filter", "0"]);
    assert_eq!(
        marks(&by_index.stderr)[0],
        "cache skipped: --no-cache-filter",
        "{}",
        by_index.stderr
    );
    assert!(
        marks(&by_index.stderr)[1].starts_with("cache miss"),
        "{}",
        by_index.stderr
    );
}

#[test]
fn contexts_and_dockerfiles_come_from_stdin() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    // A context tarball (gzip) on stdin, with -f naming a Dockerfile inside it.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("sub/Dockerfile", &b"FROM busybox\nCOPY hello.txt /\n"[..]),
        ("hello.txt", b"from the tarball\n"),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    ctx.kiln()
        .args(["build", "-q", "-t", "from-tar", "-f", "sub/Dockerfile", "-"])
        .stdin(gz.finish().unwrap())
        .run()
        .ok();
    let out = ctx
        .kiln()
        .args(["run", "--rm", "from-tar", "cat", "/hello.txt"])
        .run();
    assert_eq!(out.ok(), "from the tarball\n");
    // A Dockerfile on stdin: an empty context.
    ctx.kiln()
        .args(["build", "-q", "-t", "from-text", "-"])
        .stdin("FROM busybox\nLABEL src=stdin\n")
        .run()
        .ok();
    let v = ctx.kiln().args(["inspect", "from-text"]).run();
    assert!(v.ok().contains("\"src\": \"stdin\""), "{}", v.stdout);
    let e = ctx
        .kiln()
        .args(["build", "-q", "-"])
        .stdin("FROM busybox\nCOPY missing /\n")
        .run();
    assert!(
        e.fails()
            .contains("\"missing\" not found in the build context"),
        "{}",
        e.stderr
    );
}

#[test]
fn progress_json_reports_steps_logs_cache_and_a_summary() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("json");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nRUN echo hello from run\nENV A=1\n",
    )
    .unwrap();
    let events = |out: &tests::Output| -> Vec<serde_json::Value> {
        out.stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect()
    };
    let first = ctx
        .kiln()
        .args(["build", "--progress=json", "-t", "j"])
        .arg(&dir)
        .run();
    let id = first.ok().trim().to_string();
    let ev = events(&first);
    let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "step").count(),
        3,
        "{kinds:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e["type"] == "log" && e["line"] == "hello from run" && e["step"] == 2),
        "{ev:?}"
    );
    let done = ev.last().unwrap();
    assert_eq!(
        (done["type"].as_str(), done["image"].as_str()),
        (Some("done"), Some(id.as_str()))
    );
    assert_eq!(done["steps_run"], 2, "RUN and ENV ran");
    let again = ctx
        .kiln()
        .args(["build", "--progress=json", "-t", "j"])
        .arg(&dir)
        .run();
    let ev = events(&again);
    assert!(
        ev.iter().any(|e| e["type"] == "cached" && e["step"] == 2),
        "{ev:?}"
    );
    assert_eq!(ev.last().unwrap()["steps_cached"], 1);
    // Plain mode closes with a one-line summary.
    let plain = ctx
        .kiln()
        .args(["build", "--progress=plain", "-t", "j"])
        .arg(&dir)
        .run();
    assert!(
        plain
            .stderr
            .lines()
            .any(|l| l.starts_with("built in ") && l.contains("1 cached")),
        "{}",
        plain.stderr
    );
}

#[test]
fn explain_cache_and_build_arg_files() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let dir = ctx.work().join("explain");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nARG V\nRUN echo $V > /v\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let args = ctx.work().join("args.env");
    std::fs::write(&args, "# build args\nV=1\n\n").unwrap();
    let build = || {
        ctx.kiln()
            .args([
                "build",
                "--progress=plain",
                "--explain-cache",
                "-t",
                "e",
                "--build-arg-file",
            ])
            .arg(&args)
            .arg(&dir)
            .run()
    };
    let first = build();
    first.ok();
    assert!(first.stderr.contains("cache report:\n  [3] RUN echo $V > /v: ran: not in the cache\n  [4] COPY Dockerfile /: ran: not in the cache"), "{}", first.stderr);
    std::fs::write(&args, "V=2\n").unwrap();
    let second = build();
    assert!(second.stderr.contains("  [3] RUN echo $V > /v: ran: V changed\n  [4] COPY Dockerfile /: ran: a step before it changed"), "{}", second.stderr);
    let v = ctx.kiln().args(["run", "--rm", "e", "cat", "/v"]).run();
    assert_eq!(v.ok(), "2\n");
    // --build-arg wins over the file.
    ctx.kiln()
        .args([
            "build",
            "-q",
            "-t",
            "e",
            "--build-arg",
            "V=3",
            "--build-arg-file",
        ])
        .arg(&args)
        .arg(&dir)
        .run()
        .ok();
    assert_eq!(
        ctx.kiln()
            .args(["run", "--rm", "e", "cat", "/v"])
            .run()
            .ok(),
        "3\n"
    );
    let third = build();
    // Back to V=2: both layers come from the cache, whichever build made them last.
    assert!(
        third
            .stderr
            .contains("  [3] RUN echo $V > /v: CACHED\n  [4] COPY Dockerfile /: CACHED"),
        "{}",
        third.stderr
    );
}

/// A store with busybox imported under SOURCE_DATE_EPOCH: the same base in every such
/// store, so whole manifests can be compared between them.
fn store_with_base() -> TestContext {
    let c = TestContext::new();
    c.kiln()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("import")
        .arg(tests::busybox_rootfs_tar())
        .arg("busybox")
        .run()
        .ok();
    c
}

#[test]
fn a_copy_rerun_after_changes_equals_one_made_from_nothing() {
    // A re-run COPY hard-links the files that did not change from the previous build's
    // layer, and takes the gzip members of its blob whose input did not change. Its layer must still be the one a build from nothing makes of the same files:
    // new content (same size and mtime), a new mode and a new mtime all come out as they are.
    // (SOURCE_DATE_EPOCH makes the directories' mtimes the same in both builds; the touched
    // file's new mtime is older than it, so it shows in the layer.)
    if !tests::builds_as_root() {
        return;
    }
    let ctx = store_with_base();
    let dir = ctx.work().join("ctx");
    std::fs::create_dir_all(dir.join("src/sub")).unwrap();
    for (name, body) in [
        ("a", "aaaa\n"),
        ("b", "bbbb\n"),
        ("sub/c", "cccc\n"),
        ("d", "dddd\n"),
    ] {
        std::fs::write(dir.join("src").join(name), body).unwrap();
    }
    // Enough other files (6 MB) for several gzip members, between the changed ones.
    std::fs::create_dir_all(dir.join("src/many")).unwrap();
    for i in 0..600u64 {
        let body: String = (0..10_000u64)
            .map(|j| (b'a' + ((i * 31 + j * j * 7) % 26) as u8) as char)
            .collect();
        std::fs::write(dir.join(format!("src/many/{i:03}")), body).unwrap();
    }
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nCOPY src/ /app/\n").unwrap();
    let build = |c: &TestContext| {
        c.kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "-q", "-t", "t"])
            .arg(&dir)
            .run()
            .ok()
            .to_string()
    };
    // The COPY layer's diff ID, and the manifest digest (which names the gzip blobs).
    let copy_layer = |c: &TestContext| {
        let out = c.kiln().args(["inspect", "t"]).run();
        let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
        let layer = v[0]["RootFS"]["Layers"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|l| l.as_str())
            .unwrap()
            .to_string();
        (
            layer,
            v[0]["Descriptor"]["digest"].as_str().unwrap().to_string(),
        )
    };
    build(&ctx);
    let first = copy_layer(&ctx);

    let a = dir.join("src/a");
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&a).unwrap());
    std::fs::write(&a, "AAAA\n").unwrap();
    filetime::set_file_mtime(&a, mtime).unwrap();
    std::fs::set_permissions(
        dir.join("src/b"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    filetime::set_file_mtime(
        dir.join("src/sub/c"),
        filetime::FileTime::from_unix_time(1_600_000_000, 5),
    )
    .unwrap();
    build(&ctx);
    let rebuilt = copy_layer(&ctx);
    assert_ne!(rebuilt, first);
    // The two builds' member lists (see snapshotter::members) share all but the first and
    // the last member (the changed files are at both ends of the tar).
    let lists: Vec<Vec<String>> = std::fs::read_dir(ctx.root().join("cache/members"))
        .unwrap()
        .map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            text.lines().skip(1).map(str::to_string).collect()
        })
        .collect();
    assert_eq!(lists.len(), 2);
    let shared = lists[0].iter().filter(|m| lists[1].contains(m)).count();
    assert!(
        lists[1].len() >= 4 && shared + 2 >= lists[1].len(),
        "{shared} of {} members shared",
        lists[1].len()
    );
    let fresh = store_with_base();
    build(&fresh);
    let made = copy_layer(&fresh);
    assert_eq!(rebuilt.0, made.0, "the re-run COPY's layer differs");
    // Its gzip members taken from the earlier blob are the bytes compression would give.
    assert_eq!(
        rebuilt.1, made.1,
        "the re-run COPY's compressed layer differs"
    );
    let seen = ctx
        .kiln()
        .args(["run", "--rm", "t", "sh", "-c"])
        .arg("cat /app/a /app/sub/c /app/d && stat -c %a /app/b && stat -c %Y /app/sub/c")
        .run();
    assert_eq!(seen.ok(), "AAAA\ncccc\ndddd\n600\n1600000000\n");
    // The lists go with their blobs.
    ctx.kiln().args(["rmi", "t"]).run().ok();
    ctx.kiln().args(["system", "prune"]).run().ok();
    let left = std::fs::read_dir(ctx.root().join("cache/members"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "member lists outlived their blobs");
}

#[test]
fn stages_the_image_lacks_get_their_blobs_only_when_an_image_or_cache_needs_them() {
    // A build stage read only through COPY --from: its layers are hashed, not compressed
    // or stored. A later build that targets it (from the cache) writes the blobs then, and
    // gets the image a build from nothing gives; so does a cache exported with them.
    if !tests::builds_as_root() {
        return;
    }
    let ctx = store_with_base();
    let dir = ctx.work().join("ms");
    std::fs::create_dir_all(dir.join("src/many")).unwrap();
    std::fs::write(dir.join("src/x.txt"), "x\n").unwrap();
    // 3 MB in 40 files: a COPY layer of several gzip members (cut at entries, unlike a RUN
    // layer's), so its blob shows whether it was written as a COPY layer.
    for i in 0..40u64 {
        let body: String = (0..75_000u64)
            .map(|j| (b'a' + ((i * 31 + j * j * 7) % 26) as u8) as char)
            .collect();
        std::fs::write(dir.join(format!("src/many/{i:02}")), body).unwrap();
    }
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS build\nCOPY src/ /src/\n\
         RUN mkdir /out && cat /src/x.txt > /out/x && head -c 3000000 /dev/zero | tr '\\0' a > /out/big\n\
         FROM busybox\nCOPY --from=build /out /opt/\nRUN ls /opt > /opt/list\n",
    )
    .unwrap();
    let build = |c: &TestContext, extra: &[&str]| {
        c.kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "-q"])
            .args(extra)
            .arg(&dir)
            .run()
            .ok()
            .to_string()
    };
    let blobs = |c: &TestContext| -> std::collections::BTreeSet<String> {
        std::fs::read_dir(c.root().join("blobs/sha256"))
            .unwrap()
            .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
            .collect()
    };
    let manifest = |c: &TestContext, tag: &str| -> (String, Vec<String>) {
        let v: serde_json::Value =
            serde_json::from_str(c.kiln().args(["inspect", tag]).run().ok()).unwrap();
        let digest = v[0]["Descriptor"]["digest"].as_str().unwrap().to_string();
        let hex = digest.trim_start_matches("sha256:");
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(c.root().join("blobs/sha256").join(hex)).unwrap(),
        )
        .unwrap();
        let layers = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();
        (digest, layers)
    };
    build(&ctx, &["-t", "final"]);
    let before = blobs(&ctx);
    let seen = ctx
        .kiln()
        .args([
            "run",
            "--rm",
            "final",
            "sh",
            "-c",
            "cat /opt/x /opt/list && wc -c < /opt/big",
        ])
        .run();
    // (The shell makes /opt/list before ls runs.)
    assert_eq!(seen.ok(), "x\nbig\nlist\nx\n3000000\n");

    // Every step of the build stage is cached; its two layers get their blobs now.
    let out = ctx
        .kiln()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--progress=plain", "--target", "build", "-t", "b"])
        .arg(&dir)
        .run();
    out.ok();
    assert_eq!(marks(&out.stderr), ["CACHED"; 2], "{}", out.stderr);
    let (cached, layers) = manifest(&ctx, "b");
    let new: Vec<&String> = layers.iter().filter(|l| !before.contains(*l)).collect();
    assert_eq!(
        new.len(),
        2,
        "the build stage's blobs were written by the first build"
    );
    let fresh = store_with_base();
    build(&fresh, &["--target", "build", "-t", "b"]);
    assert_eq!(
        manifest(&fresh, "b").0,
        cached,
        "not the image a build from nothing makes"
    );

    // A cache exported with every stage carries those blobs too.
    let other = store_with_base();
    build(&other, &["-t", "final"]);
    let cache_dir = other.work().join("exported");
    build(
        &other,
        &[
            "-t",
            "final",
            "--cache-to",
            &format!("type=local,dest={},mode=max", cache_dir.display()),
        ],
    );
    let third = store_with_base();
    let out = third
        .kiln()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--progress=plain", "--target", "build", "-t", "b"])
        .arg("--cache-from")
        .arg(format!("type=local,src={}", cache_dir.display()))
        .arg(&dir)
        .run();
    out.ok();
    assert_eq!(marks(&out.stderr), ["CACHED"; 2], "{}", out.stderr);
    assert_eq!(manifest(&third, "b").0, cached);
}
