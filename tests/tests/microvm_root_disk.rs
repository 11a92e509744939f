//! Large roots go to the microVM on a disk (an ext4 image made from the merged layers) rather
//! than in its initramfs: the guest's memory stays free for the step, the files are the same
//! (contents, metadata, extended attributes), and a build's layers equal the container
//! backend's.

use std::process::Command;

use tests::vm::{assert_nothing_left, manifest_digest, vm_available};
use tests::{Output, TestContext};

const EPOCH: &str = "1700000000";

fn md5(path: &std::path::Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

fn run_vm(ctx: &TestContext, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = ctx.kiln().args(["run", "--rm", "--isolation", "vm"]);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.args(args).run()
}

#[test]
fn large_roots_go_on_a_disk() {
    if !vm_available() {
        return;
    }
    let ctx = TestContext::new();
    let base = ctx.base_image();
    // An image of 100 MB more than busybox: over the 64 MiB from which roots go on a disk.
    let dir = ctx.work().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 100000000 /dev/urandom > {}/big.bin",
            dir.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let sum = md5(&dir.join("big.bin"));
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {base}\nCOPY big.bin /data/big.bin\nRUN ln /data/big.bin /data/hard\n"),
    )
    .unwrap();
    ctx.kiln()
        .args(["build", "-q", "-t", "big:1"])
        .arg(&dir)
        .run()
        .ok();

    // 160 MiB of guest memory: the 100 MB root would not fit in it beside the kernel as an
    // initramfs; on its disk it takes none of it.
    let script = "md5sum /data/big.bin; stat -c '%h %i' /data/big.bin /data/hard; \
                  grep -c 'lowerdir=/kiln/rootdisk/root,' /proc/mounts";
    let out = run_vm(
        &ctx,
        &[],
        &["--vm-memory", "160m", "big:1", "sh", "-c", script],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    assert!(lines[0].starts_with(&sum), "{out:?}");
    // Hard links stay links.
    assert!(
        lines[1].starts_with("2 ") && lines[1] == lines[2],
        "{out:?}"
    );
    assert_eq!(lines[3], "1", "{out:?}");
    assert_nothing_left(&ctx);

    // Carried in the initramfs instead (threshold raised), the same run does not fit.
    let out = run_vm(
        &ctx,
        &[("KILN_VM_ROOT_DISK_MIN_MB", "100000")],
        &["--vm-memory", "160m", "big:1", "md5sum", "/data/big.bin"],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_nothing_left(&ctx);

    // A build on the large image: its RUN steps' roots are on disks, and the image equals the
    // container backend's.
    let app = ctx.work().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        "FROM big:1\nRUN chmod 600 /data/big.bin && echo more >> /etc/motd && rm /data/hard \
         && mkdir -p /made && touch /made/file\nRUN rm -r /made && echo x > /data/x\n",
    )
    .unwrap();
    let mut digests = Vec::new();
    for isolation in ["container", "vm"] {
        let tag = format!("app-{isolation}:1");
        ctx.kiln()
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .args(["build", "-q", "--no-cache", "--isolation", isolation])
            .args(["-t", &tag])
            .arg(&app)
            .run()
            .ok();
        digests.push(manifest_digest(&ctx, &tag));
    }
    assert_eq!(digests[0], digests[1]);
    assert_nothing_left(&ctx);
}
