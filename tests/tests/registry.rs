//! Registries, end to end against Debian's `docker-registry` on 127.0.0.1: push and pull
//! checked by skopeo, digests kept across round trips, multi-platform indexes, htpasswd and
//! bearer-token auth with `kiln login`, a fault-injecting proxy, and bad input.

use std::process::Command;

use snapshotter::Store;
use snapshotter::image::read_image;
use tests::proxy::{BearerAuth, Proxy};
use tests::{RegistryServer, TestContext, have_program, require, write_htpasswd};

fn skopeo() -> bool {
    require("skopeo", have_program("skopeo"), "apt-get install skopeo")
}

/// `skopeo inspect` of a reference on a plain-HTTP registry, as JSON.
fn skopeo_inspect(reference: &str, raw: bool) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Names the base image `name` in `ctx`'s store.
fn base_as(ctx: &TestContext, name: &str) {
    let base = ctx.base_image();
    ctx.kiln().args(["tag", base, name]).run().ok();
}

fn repo_digest(ctx: &TestContext, name: &str) -> String {
    let out = ctx.kiln().args(["inspect", name]).run();
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    let rd = v[0]["RepoDigests"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no RepoDigests: {v}"));
    rd.split_once('@').unwrap().1.to_string()
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("kiln: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{stderr}");
    lines[0]
}

#[test]
fn kiln_push_is_what_skopeo_sees() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    if !skopeo() {
        return;
    }
    let name = format!("{reg}/kt/push-inspect:v1");
    base_as(&ctx, &name);
    let digest = ctx
        .kiln()
        .args(["push", "-q", &name])
        .run()
        .ok()
        .trim()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let seen = skopeo_inspect(&name, false);
    assert_eq!(seen["Digest"], digest);
    let store = ctx.store();
    let img = read_image(
        &store,
        &store.resolve(&name.parse().unwrap()).unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(img.descriptor.digest().to_string(), digest);
    let layers: Vec<String> = img
        .manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    assert_eq!(seen["Layers"], serde_json::json!(layers));
    // RepoDigests and `images --digests` show what the registry knows it by.
    assert_eq!(repo_digest(&ctx, &name), digest);
    let listing = ctx.kiln().args(["images", "--digests"]).run();
    assert!(listing.ok().contains(&digest), "{}", listing.stdout);
    // Pushing again uploads nothing.
    let again = ctx.kiln().args(["push", &name]).run();
    assert!(
        again.stderr.contains("already exists") && !again.stderr.contains("pushed\n"),
        "{}",
        again.stderr
    );
    // To another repository of the same registry: the blobs are mounted, not uploaded.
    let copy = format!("{reg}/kt/push-inspect-copy:v1");
    let mounted = ctx.kiln().args(["push", &name, &copy]).run();
    assert!(
        mounted.ok().is_empty() && mounted.stderr.contains("mounted from kt/push-inspect"),
        "{}",
        mounted.stderr
    );
    assert_eq!(skopeo_inspect(&copy, false)["Digest"], digest);
}

#[test]
fn large_layers_go_up_in_chunks_and_come_back_whole() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let proxy = Proxy::start(&reg, None);
    let dir = ctx.work().join("large");
    std::fs::create_dir_all(&dir).unwrap();
    // 40 MiB that gzip cannot shrink below the 32 MiB chunk size (xorshift noise).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..40 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("noise.bin"), &data).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY noise.bin /\n").unwrap();
    let name = format!("{}/kt/large:v1", proxy.addr);
    ctx.kiln()
        .args(["build", "-q", "-t", &name])
        .arg(&dir)
        .run()
        .ok();
    ctx.kiln().args(["push", "-q", &name]).run().ok();
    let patches = proxy
        .stats
        .patches
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        patches >= 2,
        "a 40 MiB layer goes up in PATCH chunks, saw {patches}"
    );
    let fresh = TestContext::new();
    fresh.kiln().args(["pull", "-q", &name]).run().ok();
    fresh.kiln().args(["system", "check"]).run().ok();
    let (a, b) = (ctx.store(), fresh.store());
    let r = name.parse().unwrap();
    let (ia, ib) = (
        a.resolve(&r).unwrap().unwrap(),
        b.resolve(&r).unwrap().unwrap(),
    );
    // Same manifest digest, so the same layer digest; `system check` re-hashed every blob.
    assert_eq!(ia.digest(), ib.digest());
}

#[test]
fn skopeo_push_then_kiln_pull_and_run() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    if !skopeo() {
        return;
    }
    let base = ctx.base_image();
    let archive = ctx.work().join("base.tar");
    ctx.kiln()
        .args(["save", "-o"])
        .arg(&archive)
        .arg(base)
        .run()
        .ok();
    let name = format!("{reg}/kt/from-skopeo:v1");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = skopeo_inspect(&name, false);

    let fresh = TestContext::new();
    let pulled = fresh.kiln().args(["pull", &name]).run();
    assert_eq!(pulled.ok().trim(), name);
    assert!(pulled.stderr.contains("pull complete"), "{}", pulled.stderr);
    assert_eq!(repo_digest(&fresh, &name), seen["Digest"].as_str().unwrap());
    let ran = fresh
        .kiln()
        .args(["run", "--rm", &name, "echo", "hello from the registry"])
        .run();
    assert_eq!(ran.ok().trim(), "hello from the registry");
    fresh.kiln().args(["system", "check"]).run().ok();
    // Pulling again downloads nothing.
    let again = fresh.kiln().args(["pull", &name]).run();
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("up to date"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_multi_layer_round_trip_keeps_every_digest() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    ctx.base_image();
    let dir = ctx.work().join("multi");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, size) in [(1, 10), (2, 300_000), (3, 2_000_000)] {
        let data: Vec<u8> = (0..size).map(|n: usize| (n * 7919 % 251) as u8).collect();
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nCOPY f1 /a/\nCOPY f2 /b/\nCOPY f3 /c/\nLABEL round=trip\n",
    )
    .unwrap();
    let name = format!("{reg}/kt/multi-layer:v1");
    ctx.kiln()
        .args(["build", "-q", "-t", &name])
        .arg(&dir)
        .run()
        .ok();
    let pushed = ctx
        .kiln()
        .args(["push", "-q", "--max-concurrent", "4", &name])
        .run()
        .ok()
        .trim()
        .to_string();

    let fresh = TestContext::new();
    fresh.kiln().args(["pull", "-q", &name]).run().ok();
    let (a, b) = (ctx.store(), fresh.store());
    let r = name.parse().unwrap();
    let ia = read_image(&a, &a.resolve(&r).unwrap().unwrap()).unwrap();
    let ib = read_image(&b, &b.resolve(&r).unwrap().unwrap()).unwrap();
    assert_eq!(ia.manifest.layers().len(), 4);
    assert_eq!(ib.descriptor.digest().to_string(), pushed);
    assert_eq!(ia.descriptor.digest(), ib.descriptor.digest());
    assert_eq!(ia.manifest.config().digest(), ib.manifest.config().digest());
    let digests = |m: &[oci_spec::image::Descriptor]| {
        m.iter().map(|l| l.digest().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(digests(ia.manifest.layers()), digests(ib.manifest.layers()));
    for l in ib.manifest.layers() {
        assert!(
            b.contains(&l.digest().to_string().parse().unwrap())
                .unwrap()
        );
    }
    let out = fresh
        .kiln()
        .args(["run", "--rm", &name, "wc", "-c", "/c/f3"])
        .run();
    assert!(out.ok().contains("2000000"), "{}", out.stdout);
}

#[test]
fn a_multi_platform_index_pulls_the_right_platform() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let tar = tests::busybox_rootfs_tar();
    let mut entries = Vec::new();
    for (platform, arch) in [("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64")] {
        let name = format!("{reg}/kt/multi-arch:{arch}");
        ctx.kiln()
            .args(["import", "--platform", platform])
            .arg(&tar)
            .arg(&name)
            .run()
            .ok();
        let digest = ctx
            .kiln()
            .args(["push", "-q", &name])
            .run()
            .ok()
            .trim()
            .to_string();
        let desc = ctx
            .store()
            .resolve(&name.parse().unwrap())
            .unwrap()
            .unwrap();
        let variant = if arch == "arm64" {
            r#","variant":"v8""#
        } else {
            ""
        };
        entries.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{},"platform":{{"os":"linux","architecture":"{arch}"{variant}}}}}"#,
            desc.size()
        ));
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    let put = Command::new("curl")
        .args([
            "-fsS",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
            "--data-binary",
        ])
        .arg(&index)
        .arg(format!("http://{reg}/v2/kt/multi-arch/manifests/multi"))
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let index_digest = snapshotter::Digest::of(index.as_bytes()).to_string();
    let name = format!("{reg}/kt/multi-arch:multi");

    for (platform, arch) in [(None, "amd64"), (Some("linux/arm64"), "arm64")] {
        let fresh = TestContext::new();
        let mut cmd = fresh.kiln().arg("pull");
        if let Some(p) = platform {
            cmd = cmd.args(["--platform", p]);
        }
        cmd.arg(&name).run().ok();
        let v: serde_json::Value =
            serde_json::from_str(fresh.kiln().args(["inspect", &name]).run().ok()).unwrap();
        assert_eq!(v[0]["Architecture"], arch, "{v}");
        // RepoDigests name the index, as Docker's do.
        assert_eq!(repo_digest(&fresh, &name), index_digest);
    }
    let fresh = TestContext::new();
    let e = fresh
        .kiln()
        .args(["pull", "--platform", "linux/s390x", &name])
        .run();
    let line = one_line(e.fails());
    assert!(
        line.contains("no image for platform linux/s390x") && line.contains("linux/arm64"),
        "{line}"
    );
}

#[test]
fn htpasswd_basic_auth_with_login_and_logout() {
    let ctx = TestContext::new();
    let htpasswd = ctx.work().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "wonderland");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
        htpasswd.display()
    );
    let Some(server) = RegistryServer::start(&auth) else {
        return;
    };
    let name = format!("{}/kt/private:v1", server.addr);
    base_as(&ctx, &name);
    let e = ctx.kiln().args(["push", &name]).run();
    assert!(
        one_line(e.fails()).contains("authentication required"),
        "{}",
        e.stderr
    );
    let e = ctx
        .kiln()
        .args(["login", "-u", "alice", "--password-stdin", &server.addr])
        .stdin("wrong\n")
        .run();
    assert!(
        one_line(e.fails()).contains("credentials rejected"),
        "{}",
        e.stderr
    );
    assert!(!ctx.docker_config().join("config.json").exists());
    let ok = ctx
        .kiln()
        .args(["login", "-u", "alice", "--password-stdin", &server.addr])
        .stdin("wonderland\n")
        .run();
    assert_eq!(ok.ok().trim(), "Login Succeeded");
    let cfg = std::fs::read_to_string(ctx.docker_config().join("config.json")).unwrap();
    assert!(
        cfg.contains(&server.addr) && cfg.contains("\"auth\""),
        "{cfg}"
    );
    let digest = ctx
        .kiln()
        .args(["push", "-q", &name])
        .run()
        .ok()
        .trim()
        .to_string();
    ctx.kiln().args(["rmi", &name]).run().ok();
    ctx.kiln().args(["pull", &name]).run().ok();
    assert_eq!(repo_digest(&ctx, &name), digest);
    ctx.kiln().args(["logout", &server.addr]).run().ok();
    ctx.kiln().args(["rmi", &name]).run().ok();
    let e = ctx.kiln().args(["pull", &name]).run();
    assert!(
        one_line(e.fails()).contains("authentication required"),
        "{}",
        e.stderr
    );
}

#[test]
fn bearer_token_flow_with_login() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let proxy = Proxy::start(&reg, Some(BearerAuth::new("bob", "builder")));
    let name = format!("{}/kt/bearer:v1", proxy.addr);
    base_as(&ctx, &name);
    let e = ctx.kiln().args(["push", &name]).run();
    assert!(one_line(e.fails()).contains(&proxy.addr), "{}", e.stderr);
    let e = ctx
        .kiln()
        .args(["login", "-u", "bob", "--password-stdin", &proxy.addr])
        .stdin("nope\n")
        .run();
    assert!(
        one_line(e.fails()).contains("incorrect username or password"),
        "{}",
        e.stderr
    );
    ctx.kiln()
        .args(["login", "-u", "bob", "--password-stdin", &proxy.addr])
        .stdin("builder\n")
        .run()
        .ok();
    let before = proxy
        .auth
        .as_ref()
        .unwrap()
        .tokens_issued
        .load(std::sync::atomic::Ordering::SeqCst);
    let digest = ctx
        .kiln()
        .args(["push", "-q", &name])
        .run()
        .ok()
        .trim()
        .to_string();
    let issued = proxy
        .auth
        .as_ref()
        .unwrap()
        .tokens_issued
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    let requests = proxy
        .stats
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    // One token for the push scope, reused for every blob and the manifest.
    assert!(
        issued <= 2 && requests > 6,
        "tokens {issued} for {requests} requests"
    );
    ctx.kiln().args(["rmi", &name]).run().ok();
    ctx.kiln().args(["pull", &name]).run().ok();
    assert_eq!(repo_digest(&ctx, &name), digest);
}

/// Pushes the base image straight to the registry as `repo:v1` and returns the name of the
/// same image seen through `proxy`.
fn published(ctx: &TestContext, reg: &str, proxy: &Proxy, repo: &str) -> String {
    let direct = format!("{reg}/{repo}:v1");
    base_as(ctx, &direct);
    ctx.kiln().args(["push", "-q", &direct]).run().ok();
    format!("{}/{repo}:v1", proxy.addr)
}

#[test]
fn pulls_survive_dropped_truncated_corrupted_and_refused_downloads() {
    use std::sync::atomic::Ordering::SeqCst;
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let proxy = Proxy::start(&reg, None);
    let name = published(&ctx, &reg, &proxy, "kt/faulty-pull");
    proxy.faults.drop_blob_mid_body.store(1, SeqCst);
    proxy.faults.truncate_blob.store(1, SeqCst);
    proxy.faults.flip_blob_byte.store(1, SeqCst);
    proxy.faults.unavailable.store(2, SeqCst);
    let fresh = TestContext::new();
    let out = fresh
        .kiln()
        .args(["pull", "--max-concurrent", "1", &name])
        .run();
    out.ok();
    assert!(out.stderr.contains("retrying"), "{}", out.stderr);
    for f in [
        &proxy.faults.drop_blob_mid_body,
        &proxy.faults.truncate_blob,
        &proxy.faults.flip_blob_byte,
        &proxy.faults.unavailable,
    ] {
        assert_eq!(f.load(SeqCst), 0, "every fault fired");
    }
    fresh.kiln().args(["system", "check"]).run().ok();
    let ran = fresh
        .kiln()
        .args(["run", "--rm", &name, "echo", "intact"])
        .run();
    assert_eq!(ran.ok().trim(), "intact");
}

#[test]
fn pushes_survive_server_errors_and_dropped_uploads() {
    use std::sync::atomic::Ordering::SeqCst;
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    if !skopeo() {
        return;
    }
    let proxy = Proxy::start(&reg, None);
    let name = format!("{}/kt/faulty-push:v1", proxy.addr);
    base_as(&ctx, &name);
    proxy.faults.unavailable.store(2, SeqCst);
    proxy.faults.internal_error.store(1, SeqCst);
    proxy.faults.drop_upload.store(1, SeqCst);
    let out = ctx.kiln().args(["push", "-q", &name]).run();
    let digest = out.ok().trim().to_string();
    assert_eq!(proxy.faults.drop_upload.load(SeqCst), 0);
    let seen = skopeo_inspect(&format!("{reg}/kt/faulty-push:v1"), false);
    assert_eq!(seen["Digest"], digest);
}

#[test]
fn lasting_faults_fail_in_one_line_and_store_nothing() {
    use std::sync::atomic::Ordering::SeqCst;
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let proxy = Proxy::start(&reg, None);
    let name = published(&ctx, &reg, &proxy, "kt/broken");
    let fresh = TestContext::new();
    fresh.kiln().arg("images").run().ok();
    // The store's contents; gc.lock is the lock file every pull takes, not content.
    let listing = || -> Vec<(String, u64)> {
        fresh
            .store_listing()
            .into_iter()
            .filter(|(p, _)| p != "gc.lock")
            .collect()
    };
    let before = listing();
    let cases: [(&std::sync::atomic::AtomicU32, &str); 4] = [
        (&proxy.faults.flip_blob_byte, "does not match its digest"),
        (&proxy.faults.internal_error, "unexpected status 500"),
        (&proxy.faults.drop_blob_mid_body, "broke off"),
        (&proxy.faults.schema1_manifest, "unsupported manifest type"),
    ];
    for (fault, message) in cases {
        fault.store(u32::MAX, SeqCst);
        let e = fresh.kiln().args(["pull", &name]).run();
        let line = one_line(e.fails());
        assert!(line.contains(message), "{line}");
        fault.store(0, SeqCst);
        fresh.kiln().args(["system", "check"]).run().ok();
        // Nothing else changed, except that whole blobs that downloaded and verified before
        // the failure may stay (they make the next attempt shorter); each must match its name.
        for (path, _) in listing().into_iter().filter(|e| !before.contains(e)) {
            let hex = path
                .strip_prefix("blobs/sha256/")
                .unwrap_or_else(|| panic!("after {message}: new file {path}"));
            let bytes = std::fs::read(fresh.root().join(&path)).unwrap();
            assert_eq!(
                snapshotter::Digest::of(&bytes).hex(),
                hex,
                "after {message}: {path} is corrupt"
            );
        }
        assert!(
            fresh
                .kiln()
                .args(["images", "-q"])
                .run()
                .ok()
                .trim()
                .is_empty(),
            "after {message}: an image was named"
        );
    }
}

#[test]
fn bad_input_is_one_clear_line() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let missing = format!("{reg}/kt/never-pushed:v9");
    let any = format!("{reg}/x");
    let cases = [
        (
            vec!["pull", "127.0.0.1:5000/Not-Lower"],
            "invalid reference",
        ),
        (
            vec!["pull", "no-such-registry.invalid/x:1"],
            "unknown registry host no-such-registry.invalid",
        ),
        (vec!["pull", &missing], "not found"),
        (vec!["push", "no-such-local-image:1"], "no such image"),
        (vec!["pull", "--platform", "linux", &any], "--platform"),
    ];
    for (args, message) in cases {
        let e = ctx.kiln().args(&args).run();
        let line = one_line(e.fails());
        assert!(line.contains(message), "{args:?}: {line}");
    }
}

#[test]
fn search_lists_catalog_matches_and_build_pulls_its_base() {
    let ctx = TestContext::new();
    let Some(reg) = ctx.registry() else { return };
    let name = format!("{reg}/kt/searchable-base:v1");
    base_as(&ctx, &name);
    ctx.kiln().args(["push", "-q", &name]).run().ok();
    let out = ctx
        .kiln()
        .args([
            "search",
            "--list-tags",
            "--format",
            "json",
            &format!("{reg}/searchable"),
        ])
        .run();
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(v[0]["name"], format!("{reg}/kt/searchable-base"));
    assert_eq!(v[0]["tags"], serde_json::json!(["v1"]));
    assert!(out.stderr.contains("/v2/_catalog"), "{}", out.stderr);
    // A build on a fresh store pulls FROM (a short name, through --default-registry) and
    // pushes its result with --push.
    let fresh = TestContext::new();
    let dir = fresh.work().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM kt/searchable-base:v1\nLABEL built=here\n",
    )
    .unwrap();
    let built = format!("{reg}/kt/built-on-pulled:v1");
    let out = fresh
        .kiln()
        .args(["--default-registry", &reg, "build", "--push", "-t", &built])
        .arg(&dir)
        .run();
    out.ok();
    assert!(out.stderr.contains("pull complete"), "{}", out.stderr);
    let again = TestContext::new();
    let ran = again
        .kiln()
        .args(["run", "--rm", &built, "echo", "pulled by run"])
        .run();
    assert_eq!(ran.ok().trim(), "pulled by run");
}
