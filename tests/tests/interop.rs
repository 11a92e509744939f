//! The store is an OCI image layout that other tools read: skopeo and umoci.

use std::process::Command;

use tests::{TestContext, have_program, require};

fn tool(name: &str) -> bool {
    require(name, have_program(name), &format!("apt-get install {name}"))
}

#[test]
fn skopeo_reads_an_imported_image() {
    if !tool("skopeo") {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let src = format!(
        "oci:{}:docker.io/library/busybox:latest",
        ctx.root().display()
    );
    let o = Command::new("skopeo")
        .args(["inspect", "--config", &src])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    // A full copy verifies every blob's digest on the way.
    let dest = ctx.work().join("copy");
    let o = Command::new("skopeo")
        .args(["copy", &src, &format!("oci:{}:copied", dest.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn umoci_unpacks_an_imported_image_to_the_same_files() {
    if !tool("umoci") {
        return;
    }
    let ctx = TestContext::new();
    ctx.base_image();
    let bundle = ctx.work().join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!(
            "{}:docker.io/library/busybox:latest",
            ctx.root().display()
        ))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = std::fs::read(bundle.join("rootfs/bin/busybox")).unwrap();
    assert_eq!(ours, std::fs::read("/bin/busybox").unwrap());
    let link = std::fs::read_link(bundle.join("rootfs/bin/sh")).unwrap();
    assert_eq!(link.to_str(), Some("/bin/busybox"));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["process"]["args"], serde_json::json!(["sh"]));
}

#[test]
fn the_ci_registry_answers() {
    let ctx = TestContext::new();
    if let Some(addr) = ctx.registry() {
        assert!(
            addr.starts_with("127.0.0.1:") || addr.starts_with("localhost:"),
            "registry must be on loopback: {addr}"
        );
    }
}
