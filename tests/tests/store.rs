//! The image commands and the store against real tools: skopeo and umoci read what kiln
//! saves, kiln loads what skopeo writes, and the store survives SIGKILL.

use std::process::Command;

use tests::{TestContext, busybox_rootfs_tar, have_program, require};

fn tools() -> bool {
    require(
        "skopeo and umoci",
        have_program("skopeo") && have_program("umoci"),
        "apt-get install skopeo umoci",
    )
}

fn run_tool(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn saved_archives_are_read_by_skopeo_and_umoci() {
    if !tools() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let w = ctx.work();
    let docker = w.join("img.docker.tar");
    let oci = w.join("img.oci.tar");
    ctx.kiln()
        .args(["save", "-o"])
        .arg(&docker)
        .arg("busybox")
        .run()
        .ok();
    ctx.kiln()
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&oci)
        .arg("busybox")
        .run()
        .ok();
    let inspect: serde_json::Value = serde_json::from_str(&run_tool(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", docker.display())),
    ))
    .unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    run_tool(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", oci.display())),
    );
    // umoci reads layouts: unpack the oci-archive's layout and the image inside it.
    let layout = w.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    run_tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&oci)
            .arg("-C")
            .arg(&layout),
    );
    let bundle = w.join("bundle");
    run_tool(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!(
                "{}:docker.io/library/busybox:latest",
                layout.display()
            ))
            .arg(&bundle),
    );
    // The unpacked rootfs has exactly the files of the tarball the image came from.
    let listed = run_tool(Command::new("tar").arg("-tf").arg(busybox_rootfs_tar()));
    let mut want: Vec<String> = listed
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    want.sort();
    let got_out = run_tool(
        Command::new("find")
            .arg(".")
            .arg("-mindepth")
            .arg("1")
            .current_dir(bundle.join("rootfs")),
    );
    let mut got: Vec<String> = got_out
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(
        std::fs::read(bundle.join("rootfs/bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
}

#[test]
fn skopeo_copies_into_the_store_and_archives_from_skopeo_load() {
    if !tools() {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let root = ctx.root().display().to_string();
    // skopeo writes straight into the store's OCI layout.
    run_tool(Command::new("skopeo").args([
        "copy",
        &format!("oci:{root}:docker.io/library/busybox:latest"),
        &format!("oci:{root}:docker.io/library/copied:1"),
    ]));
    let images = ctx.kiln().arg("images").run();
    assert!(
        images
            .ok()
            .lines()
            .any(|l| l.starts_with("copied ") && l.contains(" 1 ")),
        "{}",
        images.stdout
    );
    if std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay"))
        && nix_is_root()
    {
        assert_eq!(
            ctx.kiln()
                .args(["run", "copied:1", "echo", "runs"])
                .run()
                .ok(),
            "runs\n"
        );
    }
    // Archives written by skopeo (docker-archive and oci-archive, plain and gzip) load.
    let w = ctx.work();
    let da = w.join("skopeo.docker.tar");
    let oa = w.join("skopeo.oci.tar");
    run_tool(Command::new("skopeo").args([
        "copy",
        &format!("oci:{root}:docker.io/library/busybox:latest"),
        &format!("docker-archive:{}:example/from-docker:2", da.display()),
    ]));
    run_tool(Command::new("skopeo").args([
        "copy",
        &format!("oci:{root}:docker.io/library/busybox:latest"),
        &format!("oci-archive:{}:docker.io/example/from-oci:3", oa.display()),
    ]));
    let other = TestContext::new();
    assert_eq!(
        other.kiln().args(["load", "-i"]).arg(&da).run().ok(),
        "Loaded image: example/from-docker:2\n"
    );
    assert_eq!(
        other.kiln().args(["load", "-i"]).arg(&oa).run().ok(),
        "Loaded image: example/from-oci:3\n"
    );
    let gz = w.join("skopeo.docker.tar.gz");
    run_tool(Command::new("sh").arg("-c").arg(format!(
        "gzip -c {} > {}",
        da.display(),
        gz.display()
    )));
    let third = TestContext::new();
    assert_eq!(
        third
            .kiln()
            .args(["load"])
            .stdin(std::fs::read(&gz).unwrap())
            .run()
            .ok(),
        "Loaded image: example/from-docker:2\n"
    );
    // The image ID survives the trip.
    let id = |c: &TestContext, n: &str| {
        c.kiln()
            .args(["images", "-q", "--no-trunc"])
            .run()
            .ok()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
            + n
    };
    assert_eq!(id(&ctx, ""), id(&third, ""));
    other.kiln().args(["system", "check"]).run().ok();
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

#[test]
fn tag_rmi_inspect_history_check_and_prune() {
    let ctx = TestContext::new();
    ctx.base_image();
    ctx.kiln().args(["tag", "busybox", "mine:v1"]).run().ok();
    let inspect: serde_json::Value =
        serde_json::from_str(ctx.kiln().args(["inspect", "mine:v1"]).run().ok()).unwrap();
    assert_eq!(
        inspect[0]["RepoTags"],
        serde_json::json!(["busybox:latest", "mine:v1"])
    );
    assert_eq!(inspect[0]["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    let id = inspect[0]["Id"].as_str().unwrap().to_string();
    // By ID prefix too; and an ID with two names needs -f.
    let short = &id[7..19];
    assert!(ctx.kiln().args(["inspect", short]).run().ok().contains(&id));
    assert!(
        ctx.kiln()
            .args(["rmi", short])
            .run()
            .fails()
            .contains("must be forced")
    );
    let history = ctx.kiln().args(["history", "mine:v1"]).run();
    assert!(history.ok().starts_with("IMAGE"), "{}", history.stdout);
    assert_eq!(
        ctx.kiln().args(["rmi", "mine:v1"]).run().ok(),
        "Untagged: mine:v1\n"
    );
    let json = ctx.kiln().args(["images", "--format", "json"]).run();
    let rows: Vec<serde_json::Value> = json
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["Repository"], "busybox");
    // Corrupt a blob: check fails; --repair drops the broken image; prune then frees the rest.
    ctx.kiln().args(["system", "check"]).run().ok();
    let store = ctx.store();
    let img = snapshotter::image::read_image(
        &store,
        &snapshotter::Store::resolve(&store, &"busybox".parse().unwrap())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let blob = ctx
        .root()
        .join("blobs/sha256")
        .join(&img.manifest.layers()[0].digest().to_string()[7..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let check = ctx.kiln().args(["system", "check"]).run();
    assert_eq!(check.code, Some(1), "{}", check.stdout);
    assert!(check.stdout.contains("is corrupt"), "{}", check.stdout);
    ctx.kiln().args(["system", "check", "--repair"]).run().ok();
    ctx.kiln().args(["system", "check"]).run().ok();
    assert!(ctx.kiln().args(["images", "-q"]).run().ok().is_empty());
    let pruned = ctx.kiln().args(["system", "prune"]).run();
    assert!(
        pruned.ok().contains("Deleted blob: sha256:"),
        "{}",
        pruned.stdout
    );
    assert_eq!(
        std::fs::read_dir(ctx.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn sigkill_during_load_and_import_leaves_a_consistent_store() {
    let ctx = TestContext::new();
    // A big enough input that a kill lands mid-write: busybox plus 40 MB of noise.
    let w = ctx.work();
    let noise_dir = w.join("noise");
    std::fs::create_dir_all(noise_dir.join("data")).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..40 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(noise_dir.join("data/noise"), &noise).unwrap();
    let big = w.join("big.tar");
    run_tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&big)
            .arg("-C")
            .arg(&noise_dir)
            .arg("."),
    );
    ctx.kiln()
        .args(["import"])
        .arg(&big)
        .arg("big:1")
        .run()
        .ok();
    let archive = w.join("big.docker.tar");
    ctx.kiln()
        .args(["save", "-o"])
        .arg(&archive)
        .arg("big:1")
        .run()
        .ok();
    let victim = TestContext::new();
    let mut seed: u64 = 42;
    for i in 0..30 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_millis((seed >> 33) % 900);
        let mut cmd = Command::new(tests::kiln_bin());
        cmd.arg("--root").arg(victim.root());
        if i % 2 == 0 {
            cmd.args(["load", "-i"]).arg(&archive);
        } else {
            cmd.arg("import").arg(&big).arg(format!("imp:{i}"));
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let check = victim.kiln().args(["system", "check"]).run();
        assert_eq!(
            check.code,
            Some(0),
            "iteration {i} (killed after {delay:?}): {}",
            check.stdout
        );
    }
    // The next load works, and gives the same image ID.
    victim.kiln().args(["load", "-i"]).arg(&archive).run().ok();
    let ids = |c: &TestContext| c.kiln().args(["inspect", "big:1"]).run().ok().to_string();
    let a: serde_json::Value = serde_json::from_str(&ids(&ctx)).unwrap();
    let b: serde_json::Value = serde_json::from_str(&ids(&victim)).unwrap();
    assert_eq!(a[0]["Id"], b[0]["Id"]);
    victim.kiln().args(["system", "prune"]).run().ok();
    victim.kiln().args(["system", "check"]).run().ok();
    assert!(
        !victim
            .kiln()
            .args(["system", "check"])
            .run()
            .stdout
            .contains("leftover")
    );
}

#[test]
fn zstd_layers_build_import_and_export() {
    let ctx = TestContext::new();
    let out = ctx
        .kiln()
        .args(["import", "--compression", "zstd:9"])
        .arg(busybox_rootfs_tar())
        .arg("z:1")
        .run();
    out.ok();
    let inspect: serde_json::Value =
        serde_json::from_str(ctx.kiln().args(["inspect", "z:1"]).run().ok()).unwrap();
    let store = ctx.store();
    let desc = snapshotter::Store::resolve(&store, &"z:1".parse().unwrap())
        .unwrap()
        .unwrap();
    let img = snapshotter::image::read_image(&store, &desc).unwrap();
    assert_eq!(
        img.manifest.layers()[0].media_type().to_string(),
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert!(inspect[0]["Id"].as_str().unwrap().starts_with("sha256:"));
    // The same tree with gzip has the same diffID (compression does not change content).
    ctx.kiln()
        .arg("import")
        .arg(busybox_rootfs_tar())
        .arg("g:1")
        .run()
        .ok();
    let g: serde_json::Value =
        serde_json::from_str(ctx.kiln().args(["inspect", "g:1"]).run().ok()).unwrap();
    assert_eq!(g[0]["RootFS"], inspect[0]["RootFS"]);
    // layer create prints a descriptor for a directory.
    let dir = ctx.work().join("tree");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("a/b"), "x").unwrap();
    let d: serde_json::Value = serde_json::from_str(
        ctx.kiln()
            .args(["layer", "create", "--compression", "zstd"])
            .arg(&dir)
            .run()
            .ok(),
    )
    .unwrap();
    assert_eq!(
        d["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert!(
        ctx.root()
            .join("blobs/sha256")
            .join(&d["digest"].as_str().unwrap()[7..])
            .is_file()
    );
    assert!(
        ctx.kiln()
            .args(["import", "--compression", "lz4", "-", "x"])
            .stdin(Vec::new())
            .run()
            .fails()
            .contains("unknown compression")
    );
}
