//! The build cache shared through a registry (`--cache-to`, `--cache-from`): two store roots
//! stand for two CI machines and one loopback registry for the shared cache.

use std::sync::atomic::Ordering::SeqCst;

use snapshotter::Store as _;
use tests::TestContext;
use tests::proxy::Proxy;

fn marks(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// A context whose Dockerfile has an intermediate stage and a final stage over `base`.
fn context(ctx: &TestContext, base: &str) -> std::path::PathBuf {
    let dir = ctx.work().join("app");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.txt"), "v1\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {base} AS deps\nRUN cat /proc/sys/kernel/random/uuid > /deps-id && cat /proc/sys/kernel/random/uuid > /deps-only\nFROM {base}\nCOPY --from=deps /deps-id /deps-id\nCOPY src/ /src/\nRUN cat /proc/sys/kernel/random/uuid > /final-id && cat /src/main.txt > /out\n"
        ),
    )
    .unwrap();
    dir
}

fn run_cat(ctx: &TestContext, image: &str, file: &str) -> String {
    ctx.kiln()
        .args(["run", "--rm", image, "cat", file])
        .run()
        .ok()
        .to_string()
}

#[test]
fn a_second_machine_builds_from_the_registry_cache() {
    if !tests::builds_as_root() {
        return;
    }
    let a = TestContext::new();
    let Some(reg) = a.registry() else { return };
    let base = format!("{reg}/kt/cache-base:1");
    let b0 = a.base_image();
    a.kiln().args(["tag", b0, &base]).run().ok();
    a.kiln().args(["push", "-q", &base]).run().ok();
    let dir = context(&a, &base);
    let cache_max = format!("type=registry,ref={reg}/kt/buildcache:max,mode=max");
    let cache_min = format!("type=registry,ref={reg}/kt/buildcache:min,mode=min");
    a.kiln()
        .args([
            "build",
            "-q",
            "-t",
            "app",
            "--cache-to",
            &cache_max,
            "--cache-to",
            &cache_min,
        ])
        .arg(&dir)
        .run()
        .ok();
    let a_final = run_cat(&a, "app", "/final-id");
    let a_deps = run_cat(&a, "app", "/deps-id");
    // The final image's layers (the intermediate stage's layer is not among them: it also
    // holds /deps-only, which the final stage does not copy).
    let deps_layer = {
        let store = a.store();
        let img = snapshotter::image::read_image(
            &store,
            &store.resolve(&"app".parse().unwrap()).unwrap().unwrap(),
        )
        .unwrap();
        let base_layers = 1;
        let final_layers: Vec<String> = img
            .manifest
            .layers()
            .iter()
            .map(|l| l.digest().to_string())
            .collect();
        assert_eq!(final_layers.len(), base_layers + 3);
        final_layers
    };

    // Machine B: an empty store, the cache through a counting proxy.
    let b = TestContext::new();
    let proxy = Proxy::start(&reg, None);
    let from_max = format!("type=registry,ref={}/kt/buildcache:max", proxy.addr);
    let out = b
        .kiln()
        .args([
            "build",
            "--progress=plain",
            "-t",
            "app",
            "--cache-from",
            &from_max,
        ])
        .arg(&dir)
        .run();
    out.ok();
    assert_eq!(marks(&out.stderr), ["CACHED"; 4], "{}", out.stderr);
    assert_eq!(run_cat(&b, "app", "/final-id"), a_final, "no RUN ran on B");
    assert_eq!(run_cat(&b, "app", "/deps-id"), a_deps);
    let blob_gets: Vec<String> = proxy
        .stats
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET ") && l.contains("/blobs/sha256:"))
        .cloned()
        .collect();
    // Only the final image's own layers (the base came by FROM from the registry itself)
    // and the cache document; never the intermediate stage's layer.
    let fetched_layers = blob_gets
        .iter()
        .filter(|l| deps_layer.iter().any(|d| l.ends_with(d.as_str())))
        .count();
    assert_eq!(fetched_layers, 3, "{blob_gets:#?}");
    assert_eq!(
        blob_gets.len(),
        4,
        "3 layers and the cache document: {blob_gets:#?}"
    );
    assert!(proxy.stats.requests.load(SeqCst) > 0);
    // Nothing else came but the cache document: never the intermediate stage's layer.
    let deps_only = b
        .kiln()
        .args(["run", "--rm", "app", "ls", "/deps-only"])
        .run();
    assert_ne!(deps_only.code, Some(0), "the final image has no /deps-only");

    // A changed source file re-runs only what depends on it.
    std::fs::write(dir.join("src/main.txt"), "v2\n").unwrap();
    let changed = b
        .kiln()
        .args([
            "build",
            "--progress=plain",
            "-t",
            "app",
            "--cache-from",
            &from_max,
        ])
        .arg(&dir)
        .run();
    let m = marks(&changed.stderr);
    assert_eq!(
        m.iter().filter(|x| *x == "CACHED").count(),
        2,
        "{}",
        changed.stderr
    );
    assert_eq!(run_cat(&b, "app", "/out"), "v2\n");

    // mode=min: the intermediate stage's step is not in the cache.
    std::fs::write(dir.join("src/main.txt"), "v1\n").unwrap();
    let c = TestContext::new();
    let from_min = format!("type=registry,ref={reg}/kt/buildcache:min");
    let min = c
        .kiln()
        .args([
            "build",
            "--progress=plain",
            "-t",
            "app",
            "--cache-from",
            &from_min,
        ])
        .arg(&dir)
        .run();
    min.ok();
    let lines: Vec<&str> = min.stderr.lines().collect();
    let deps_run = lines
        .iter()
        .position(|l| l.contains("RUN cat /proc/sys/kernel/random/uuid > /deps-id"))
        .unwrap();
    assert_ne!(
        lines.get(deps_run + 1).map(|l| l.trim()),
        Some("CACHED"),
        "{}",
        min.stderr
    );
    assert_ne!(run_cat(&c, "app", "/deps-id"), a_deps);
}

#[test]
fn missing_or_foreign_caches_are_warnings() {
    if !tests::builds_as_root() {
        return;
    }
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let b0 = ctx.base_image();
    let not_a_cache = format!("{reg}/kt/not-a-cache:1");
    ctx.kiln().args(["tag", b0, &not_a_cache]).run().ok();
    ctx.kiln().args(["push", "-q", &not_a_cache]).run().ok();
    let dir = ctx.work().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nRUN echo ok > /ok\n").unwrap();
    for from in [
        format!("{reg}/kt/no-such-cache:1"),
        not_a_cache.clone(),
        "type=local,src=/nonexistent/cache".into(),
    ] {
        let out = ctx
            .kiln()
            .args([
                "build",
                "--progress=plain",
                "-t",
                "w",
                "--cache-from",
                &from,
            ])
            .arg(&dir)
            .run();
        out.ok();
        assert!(
            out.stderr.contains("[Warning] --cache-from")
                && out.stderr.contains("building without it"),
            "{from}: {}",
            out.stderr
        );
    }
    // A local directory cache round-trips too.
    let cache_dir = ctx.work().join("cache-dir");
    ctx.kiln()
        .args(["build", "-q", "-t", "w", "--cache-to"])
        .arg(format!("type=local,dest={}", cache_dir.display()))
        .arg(&dir)
        .run()
        .ok();
    let fresh = TestContext::new();
    fresh.base_image();
    let out = fresh
        .kiln()
        .args(["build", "--progress=plain", "-t", "w", "--cache-from"])
        .arg(format!("type=local,src={}", cache_dir.display()))
        .arg(&dir)
        .run();
    out.ok();
    assert_eq!(marks(&out.stderr), ["CACHED"], "{}", out.stderr);
}

#[test]
fn an_inline_cache_rides_in_the_pushed_image() {
    if !tests::builds_as_root() {
        return;
    }
    let a = TestContext::new();
    let Some(reg) = a.registry() else { return };
    let base = format!("{reg}/kt/cache-base-inline:1");
    let b0 = a.base_image();
    a.kiln().args(["tag", b0, &base]).run().ok();
    a.kiln().args(["push", "-q", &base]).run().ok();
    let dir = a.work().join("inline");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), "f\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {base}\nCOPY f.txt /\nRUN cat /proc/sys/kernel/random/uuid > /id\n"),
    )
    .unwrap();
    let image = format!("{reg}/kt/inline-app:1");
    a.kiln()
        .args([
            "build",
            "-q",
            "-t",
            &image,
            "--cache-to",
            "type=inline",
            "--push",
        ])
        .arg(&dir)
        .run()
        .ok();
    let id = run_cat(&a, &image, "/id");
    let b = TestContext::new();
    let out = b
        .kiln()
        .args([
            "build",
            "--progress=plain",
            "-t",
            "b",
            "--cache-from",
            &image,
        ])
        .arg(&dir)
        .run();
    out.ok();
    assert_eq!(marks(&out.stderr), ["CACHED"; 2], "{}", out.stderr);
    assert_eq!(run_cat(&b, "b", "/id"), id);
}
