//! Helpers for the microVM tests: whether this host can run them, and what a run may not
//! leave behind.

use std::path::PathBuf;
use std::process::Command;

use crate::{TestContext, builds_as_root, have_program, require, wait_for};

/// qemu and a guest kernel are here (a printed skip otherwise, a failure under `CI=true`).
pub fn vm_available() -> bool {
    let kernel = std::env::var_os("KILN_VM_KERNEL").is_some()
        || std::fs::read_dir("/boot").is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        });
    builds_as_root()
        && require(
            "qemu",
            have_program("qemu-system-x86_64"),
            "apt-get install qemu-system-x86",
        )
        && require(
            "guest kernel",
            kernel,
            "apt-get install linux-image-cloud-amd64",
        )
}

/// What a VM run may leave behind: qemu processes started for this store, run directories,
/// mounts.
pub fn assert_nothing_left(ctx: &TestContext) {
    let root = ctx.root();
    let marker = root.join("vm").display().to_string();
    wait_for("the test's qemu processes to end", || {
        let out = Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        out.stdout.is_empty()
    });
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join("vm/runs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(runs.is_empty(), "run directories left: {runs:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root.display().to_string()),
        "mounts left under {}",
        root.display()
    );
}

/// The manifest digest of image `tag` in the test's store (`kiln inspect`).
pub fn manifest_digest(ctx: &TestContext, tag: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(ctx.kiln().args(["inspect", tag]).run().ok())
        .expect("inspect prints JSON");
    v[0]["Descriptor"]["digest"]
        .as_str()
        .expect("a manifest digest")
        .to_string()
}
