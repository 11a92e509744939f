//! Compiles kiln's guest init (`src/bin/kiln-guest-init`) as a static executable for the
//! microVM's initramfs: a plain `rustc` call with `-C target-feature=+crt-static`, since
//! cargo cannot link one binary of a workspace statically and the rest dynamically.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/bin/kiln-guest-init";
    for f in ["main.rs", "sys.rs", "layer_tar.rs"] {
        println!("cargo:rerun-if-changed={src}/{f}");
    }
    println!("cargo:rerun-if-changed=src/vm/protocol.rs");
    println!("cargo:rerun-if-changed=src/container/user.rs");
    println!("cargo:rerun-if-changed=src/container/program.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--crate-name",
            "kiln_guest_init",
        ])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .arg(format!("{src}/main.rs"))
        .arg("-o")
        .arg(out.join("kiln-guest-init"))
        .status()
        .expect("run rustc for the guest init");
    assert!(status.success(), "the guest init did not compile");
}
