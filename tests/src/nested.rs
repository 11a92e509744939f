//! A machine with hardware virtualization for the builtin VMM's Linux boots, on hosts whose
//! own /dev/kvm cannot boot Linux (PVM, ../shared/design/microvm.md): qemu's software
//! emulation (TCG) offers AMD's SVM with `-cpu max`, and Debian's cloud kernel, booted there
//! with its `kvm_amd` module, gives a /dev/kvm on which kiln's builtin VMM boots its guests.
//! Slow (an emulated CPU running a virtualized one: 10-15 s a guest), but a real Linux boot
//! through the builtin VMM's whole path.
//!
//! [`NestedMachine::run`] boots it with a copy of a kiln store, the kiln binary and the
//! guest kernel, runs a shell script there (busybox `sh`, `/kiln` on `PATH` as `kiln`,
//! `/tmp/store` the store, on a tmpfs) and returns what the script printed and its exit code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{have_program, kiln_bin, require};

/// The host kernel modules the machine loads for /dev/kvm and kiln's overlay snapshots.
const MACHINE_MODULES: [&str; 4] = [
    "kernel/virt/lib/irqbypass.ko",
    "kernel/arch/x86/kvm/kvm.ko",
    "kernel/arch/x86/kvm/kvm-amd.ko",
    "kernel/fs/overlayfs/overlay.ko",
];

/// What a script printed in the machine, and how it exited.
#[derive(Debug)]
pub struct NestedOutput {
    /// Its standard output and error, together.
    pub output: String,
    /// Its exit code (`None`: the machine did not finish it).
    pub code: Option<i32>,
    /// The machine's console around it (kernel lines), for failure messages.
    pub console: String,
}

/// A machine to boot, and the files it gets.
pub struct NestedMachine {
    dir: tempfile::TempDir,
    kernel: PathBuf,
}

impl NestedMachine {
    /// Prepares the machine's root with `store` copied to `/store` (which the machine copies
    /// to `/tmp/store`, a tmpfs, as it boots); `None` (a printed skip, a failure under
    /// `CI=true`) without qemu, cpio, mke2fs or a cloud kernel with the modules.
    pub fn new(store: &Path) -> Option<NestedMachine> {
        let kernel = std::fs::read_dir("/boot")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-cloud-amd64"))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .max();
        let version = kernel
            .as_ref()
            .map(|k| k.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string());
        let modules = version.as_ref().map(|v| Path::new("/lib/modules").join(v));
        let have_modules = modules.as_ref().is_some_and(|m| {
            MACHINE_MODULES
                .iter()
                .copied()
                .chain(vm_sandbox::vm::guest_modules())
                .all(|p| m.join(p).is_file())
        });
        let ready = require(
            "qemu",
            have_program("qemu-system-x86_64"),
            "apt-get install qemu-system-x86",
        ) && require("cpio", have_program("cpio"), "apt-get install cpio")
            && require(
                "mke2fs",
                Path::new("/usr/sbin/mke2fs").is_file(),
                "apt-get install e2fsprogs",
            )
            && require(
                "a cloud kernel with KVM modules",
                have_modules,
                "apt-get install linux-image-cloud-amd64",
            );
        if !ready {
            return None;
        }
        let (kernel, version, modules) = (kernel?, version?, modules?);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["bin", "proc", "sys", "dev", "tmp", "mod", "boot", "lib64"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        copy(Path::new("/bin/busybox"), &root.join("bin/busybox"));
        copy(
            &kernel,
            &root.join("boot").join(kernel.file_name().unwrap()),
        );
        for m in vm_sandbox::vm::guest_modules() {
            copy(
                &modules.join(m),
                &root.join("lib/modules").join(&version).join(m),
            );
        }
        for m in MACHINE_MODULES {
            let name = Path::new(m).file_name().unwrap();
            copy(&modules.join(m), &root.join("mod").join(name));
        }
        let kiln = kiln_bin();
        // kiln makes a large root's disk image with e2fsprogs' mke2fs (busybox's has no -d).
        let mke2fs = Path::new("/usr/sbin/mke2fs");
        copy(mke2fs, &root.join("usr/sbin/mke2fs"));
        for lib in shared_libraries(&kiln)
            .into_iter()
            .chain(shared_libraries(mke2fs))
        {
            copy(&lib, &root.join(lib.strip_prefix("/").unwrap()));
        }
        let stripped = Command::new("strip")
            .arg("-o")
            .arg(root.join("kiln"))
            .arg(&kiln)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            copy(&kiln, &root.join("kiln"));
        }
        let status = Command::new("cp")
            .arg("-a")
            .arg(store)
            .arg(root.join("store"))
            .status()
            .unwrap();
        assert!(status.success(), "copy the store");
        Some(NestedMachine { dir, kernel })
    }

    /// Copies `from` (a file or directory) to `to` (a path inside the machine).
    pub fn add(&self, from: &Path, to: &str) {
        let dest = self
            .dir
            .path()
            .join("root")
            .join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success(), "copy {} into the machine", from.display());
    }

    /// Boots the machine, runs `script` there, powers it off.
    pub fn run(&self, script: &str, timeout: Duration) -> NestedOutput {
        let root = self.dir.path().join("root");
        let version = &self.kernel.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..];
        std::fs::write(root.join("script.sh"), script).unwrap();
        let init = format!(
            r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
cp -a /store /tmp/store
for m in irqbypass kvm kvm-amd overlay; do insmod /mod/$m.ko; done
ln -s /kiln /bin/kiln
export PATH=/usr/sbin:/bin KILN_VM_KERNEL=/boot/vmlinuz-{version} CI=
cd /tmp
echo ==KILN-NESTED-OUTPUT==
sh /script.sh 2>&1
echo "==KILN-NESTED-RC=$?=="
poweroff -f
"#
        );
        std::fs::write(root.join("init"), init).unwrap();
        Command::new("chmod")
            .args(["+x"])
            .arg(root.join("init"))
            .status()
            .unwrap();
        let cpio = self.dir.path().join("machine.cpio");
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . | cpio -o -H newc --quiet > {}",
                root.display(),
                cpio.display()
            ))
            .status()
            .unwrap();
        assert!(status.success(), "pack the machine's initramfs");
        let append = format!(
            "console=ttyS0 quiet loglevel=1 panic=-1 reboot=t {}",
            vm_sandbox::vm::host_tsc_khz()
                .map(|k| format!("tsc_early_khz={k}"))
                .unwrap_or_default()
        );
        let out = Command::new("timeout")
            .arg(timeout.as_secs().to_string())
            .args([
                "qemu-system-x86_64",
                "-M",
                "microvm,accel=tcg",
                "-cpu",
                "max",
            ])
            .args([
                "-m",
                "3072",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
            ])
            .args(["-no-reboot", "-serial", "stdio", "-kernel"])
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&cpio)
            .arg("-append")
            .arg(append)
            .output()
            .unwrap();
        let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        let (output, code) = match console.split_once("==KILN-NESTED-OUTPUT==\n") {
            Some((_, rest)) => match rest.rsplit_once("==KILN-NESTED-RC=") {
                Some((output, rc)) => (
                    output.to_string(),
                    rc.split('=').next().and_then(|c| c.parse().ok()),
                ),
                None => (rest.to_string(), None),
            },
            None => (String::new(), None),
        };
        // Without an exit code (the machine was stopped at the timeout), what it printed
        // shows how far it got.
        NestedOutput {
            output,
            code,
            console: format!("{console}{}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// The shared libraries `binary` loads (from `ldd`), the loader among them.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}
