//! `kiln import`: compressions, stdin, `--change`, and bad input leaving the store unchanged.

use std::io::Write;

use snapshotter::image::read_image;
use snapshotter::{Digest, Reference, Store};
use tests::{TestContext, busybox_rootfs_tar};

fn rootfs() -> Vec<u8> {
    std::fs::read(busybox_rootfs_tar()).unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn image(ctx: &TestContext, name: &str) -> snapshotter::image::StoredImage {
    let store = ctx.store();
    let r: Reference = name.parse().unwrap();
    let d = store
        .resolve(&r)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} not in store"));
    read_image(&store, &d).unwrap()
}

#[test]
fn plain_gzip_and_zstd_files_give_the_same_layer() {
    let ctx = TestContext::new();
    let tar = rootfs();
    let inputs = [
        ("plain.tar", tar.clone()),
        ("x.tar.gz", gzip(&tar)),
        ("x.tar.zst", zstd::encode_all(&tar[..], 3).unwrap()),
    ];
    let mut ids = Vec::new();
    for (i, (file, bytes)) in inputs.iter().enumerate() {
        let path = ctx.work().join(file);
        std::fs::write(&path, bytes).unwrap();
        let out = ctx
            .kiln()
            .arg("import")
            .arg(&path)
            .arg(format!("img:{i}"))
            .run();
        let id = out.ok().trim().to_string();
        assert!(
            id.parse::<Digest>().is_ok(),
            "import prints the image ID: {id:?}"
        );
        let img = image(&ctx, &format!("img:{i}"));
        assert_eq!(img.id().to_string(), id);
        assert_eq!(
            img.config.rootfs.diff_ids,
            [Digest::of(&tar).to_string()],
            "{file}"
        );
        assert_eq!(
            img.config.history[0].comment.as_deref(),
            Some(format!("Imported from {}", path.display()).as_str())
        );
        ids.push(img.manifest.layers()[0].digest().to_string());
    }
    // The stored blob is the same gzip whatever the input's compression.
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}

#[test]
fn stdin_with_changes_message_and_platform() {
    let ctx = TestContext::new();
    let out = ctx
        .kiln()
        .args(["import", "-m", "from stdin", "--platform", "linux/arm64/v8"])
        .args([
            "--change",
            "ENV PATH=/bin A=1",
            "--change",
            "ENV B=$A-$PATH",
        ])
        .args([
            "-c",
            "CMD [\"sh\", \"-c\", \"echo hi\"]",
            "-c",
            "ENTRYPOINT /init",
        ])
        .args([
            "-c",
            "WORKDIR /srv",
            "-c",
            "WORKDIR app",
            "-c",
            "USER 1000:1000",
        ])
        .args([
            "-c",
            "LABEL org.example.a=b \"with space\"=\"yes it is\"",
            "-c",
            "EXPOSE 80 53/udp",
        ])
        .args([
            "-c",
            "VOLUME /data",
            "-c",
            "STOPSIGNAL SIGINT",
            "-",
            "stdin/app:v1",
        ])
        .stdin(gzip(&rootfs()))
        .run();
    out.ok();
    let img = image(&ctx, "stdin/app:v1");
    let c = &img.config.config;
    assert_eq!(c.env.as_deref().unwrap(), ["PATH=/bin", "A=1", "B=1-/bin"]);
    // CMD came first in this import, so ENTRYPOINT keeps it.
    assert_eq!(c.cmd.as_deref().unwrap(), ["sh", "-c", "echo hi"]);
    assert_eq!(c.entrypoint.as_deref().unwrap(), ["/bin/sh", "-c", "/init"]);
    assert_eq!(c.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    let labels = c.labels.as_ref().unwrap();
    assert_eq!(
        (
            labels["org.example.a"].as_str(),
            labels["with space"].as_str()
        ),
        ("b", "yes it is")
    );
    assert_eq!(
        c.exposed_ports.as_ref().unwrap().keys().collect::<Vec<_>>(),
        ["53/udp", "80/tcp"]
    );
    assert!(c.volumes.as_ref().unwrap().contains_key("/data"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(img.config.history[0].comment.as_deref(), Some("from stdin"));
    assert_eq!(
        (
            img.config.architecture.as_str(),
            img.config.variant.as_deref()
        ),
        ("arm64", Some("v8"))
    );
    // `images` shows it under its familiar name.
    let list = ctx.kiln().arg("images").run();
    assert!(
        list.ok()
            .lines()
            .any(|l| l.starts_with("stdin/app") && l.contains("v1")),
        "{}",
        list.stdout
    );
}

#[test]
fn source_date_epoch_makes_imports_reproducible() {
    let a = TestContext::new();
    let b = TestContext::new();
    let id = |ctx: &TestContext| {
        ctx.kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("import")
            .arg(busybox_rootfs_tar())
            .arg("r")
            .run()
            .ok()
            .to_string()
    };
    assert_eq!(id(&a), id(&b));
    assert_eq!(
        image(&a, "r").config.created.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
}

#[test]
fn bad_input_gives_one_line_and_changes_nothing() {
    let ctx = TestContext::new();
    ctx.base_image();
    let before = ctx.store_listing();
    let tar = rootfs();
    let gz = gzip(&tar);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text",
            b"this is not a tarball\n".repeat(40),
            "not a valid tar archive",
        ),
        ("empty", Vec::new(), "the input is empty"),
        ("truncated tar", tar[..tar.len() / 2].to_vec(), "truncated"),
        (
            "truncated gzip",
            gz[..gz.len() / 2].to_vec(),
            "not a valid tar archive",
        ),
        (
            "xz",
            b"\xfd7zXZ\x00garbage".to_vec(),
            "xz-compressed input is not supported",
        ),
    ];
    for (what, bytes, want) in cases {
        let err = ctx
            .kiln()
            .args(["import", "-", "busybox:latest"])
            .stdin(bytes)
            .run();
        let msg = err.fails();
        assert_eq!(msg.lines().count(), 1, "{what}: one line expected: {msg:?}");
        assert!(
            msg.starts_with("kiln: error: ") && msg.contains(want),
            "{what}: {msg}"
        );
        assert_eq!(ctx.store_listing(), before, "{what}: the store changed");
    }
    for (args, want) in [
        (
            vec!["import", "-c", "RUN rm -rf /", "-", "x"],
            "RUN is not a valid change command",
        ),
        (
            vec!["import", "-c", "ENV", "-", "x"],
            "--change #1:1:1: ENV requires at least one argument",
        ),
        (vec!["import", "-", "Bad:Name"], "invalid reference"),
        (
            vec!["import", "/does/not/exist", "x"],
            "open /does/not/exist",
        ),
        (
            vec!["import", "--platform", "linux", "-", "x"],
            "invalid platform",
        ),
    ] {
        let err = ctx.kiln().args(&args).stdin(gz.clone()).run();
        let msg = err.fails();
        assert_eq!(msg.lines().count(), 1, "{args:?}: {msg:?}");
        assert!(msg.contains(want), "{args:?}: {msg}");
        assert_eq!(ctx.store_listing(), before, "{args:?}: the store changed");
    }
    // The original image is intact and its blobs verify.
    let img = image(&ctx, "busybox:latest");
    let store = ctx.store();
    let layer = Digest::try_from(img.manifest.layers()[0].digest()).unwrap();
    store.read_verified(&layer).unwrap();
}

#[test]
fn global_options_kiln_root_and_debug_logging() {
    let ctx = TestContext::new();
    let other = ctx.work().join("other-store");
    // KILN_ROOT chooses the store when --root is absent.
    let out = std::process::Command::new(tests::kiln_bin())
        .env("KILN_ROOT", &other)
        .args(["-D", "import"])
        .arg(busybox_rootfs_tar())
        .arg("via-env")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(other.join("oci-layout").is_file());
    // -D turns on debug logs (on stderr), here the store choice and the layer summary.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEBUG") && stderr.contains("layer read"),
        "{stderr}"
    );
    let quiet = ctx.kiln().args(["--log-level", "error", "images"]).run();
    assert!(!quiet.stderr.contains("DEBUG"));
    assert!(
        ctx.kiln()
            .args(["--log-level", "bogus[", "images"])
            .run()
            .code
            == Some(0)
    );
}
