//! The guest's kernel and the fixed part of its initramfs: kiln's static guest init and the
//! kernel modules it loads (virtio-mmio, virtio-blk, overlay), packed once per kernel and
//! guest init and kept by content.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::cpio::{CpioWriter, EntryMeta, S_IFCHR, S_IFDIR, S_IFREG};
use crate::SandboxError;

/// The static guest init, compiled by this crate's build script.
const GUEST_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-guest-init"));

/// The modules the guest loads, in load order (dependencies first), and whether they are
/// the disks of qemu's guests (virtio) or of the builtin VMM's (persistent memory), or for
/// both.
const MODULES: [(&str, Disks); 9] = [
    ("kernel/drivers/virtio/virtio_ring.ko", Disks::Virtio),
    ("kernel/drivers/virtio/virtio.ko", Disks::Virtio),
    ("kernel/drivers/virtio/virtio_mmio.ko", Disks::Virtio),
    ("kernel/drivers/block/virtio_blk.ko", Disks::Virtio),
    ("kernel/drivers/nvdimm/libnvdimm.ko", Disks::Pmem),
    ("kernel/drivers/nvdimm/nd_btt.ko", Disks::Pmem),
    ("kernel/drivers/nvdimm/nd_pmem.ko", Disks::Pmem),
    ("kernel/drivers/nvdimm/nd_e820.ko", Disks::Pmem),
    ("kernel/fs/overlayfs/overlay.ko", Disks::Both),
];

/// The modules a guest may load, relative to the kernel's modules directory (a test that
/// assembles a kernel tree needs them).
pub fn guest_modules() -> impl Iterator<Item = &'static str> {
    MODULES.iter().map(|(m, _)| *m)
}

/// Which guests need a module.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disks {
    Virtio,
    Pmem,
    Both,
}

/// A guest kernel and its modules.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    pub(crate) image: PathBuf,
    pub(crate) modules: PathBuf,
}

/// Finds the kernel: `explicit` (`--vm-kernel`), else `KILN_VM_KERNEL`, else the newest
/// `/boot/vmlinuz-*-cloud-amd64` (Debian's `linux-image-cloud-amd64`), else the newest
/// `/boot/vmlinuz-*`. Its modules are `/lib/modules/VERSION`, VERSION taken from the
/// file name, or `KILN_VM_MODULES`.
pub(crate) fn find_kernel(explicit: Option<&Path>) -> Result<Kernel, SandboxError> {
    let image = match explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KILN_VM_KERNEL").map(PathBuf::from))
    {
        Some(p) => p,
        None => {
            let mut found: Vec<PathBuf> = fs::read_dir("/boot")
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            found.retain(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            });
            found.sort();
            let cloud = found
                .iter()
                .rev()
                .find(|p| p.to_string_lossy().ends_with("-cloud-amd64"));
            cloud.or(found.last()).cloned().ok_or_else(|| {
                SandboxError::Unavailable(
                    "no guest kernel: install linux-image-cloud-amd64, or give one with --vm-kernel or KILN_VM_KERNEL".into(),
                )
            })?
        }
    };
    if !image.is_file() {
        return Err(SandboxError::Unavailable(format!(
            "guest kernel {} does not exist",
            image.display()
        )));
    }
    let modules = match std::env::var_os("KILN_VM_MODULES") {
        Some(m) => PathBuf::from(m),
        None => {
            let name = image.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let version = name.strip_prefix("vmlinuz-").unwrap_or(name);
            Path::new("/lib/modules").join(version)
        }
    };
    for (m, _) in MODULES {
        if !modules.join(m).is_file() {
            return Err(SandboxError::Unavailable(format!(
                "guest kernel module {} is missing (set KILN_VM_MODULES to the kernel's modules directory)",
                modules.join(m).display()
            )));
        }
    }
    Ok(Kernel { image, modules })
}

/// Paths of the modules a guest loads, inside the initramfs, in load order: for disks on
/// persistent memory (the builtin VMM's), or else on virtio.
pub(crate) fn module_paths(pmem: bool) -> Vec<String> {
    let wanted = if pmem { Disks::Pmem } else { Disks::Virtio };
    MODULES
        .iter()
        .enumerate()
        .filter(|(_, (_, disks))| *disks == wanted || *disks == Disks::Both)
        .map(|(i, (m, _))| packed_module_path(i, m))
        .collect()
}

/// Where the initramfs holds module `i` of [`MODULES`].
fn packed_module_path(i: usize, module: &str) -> String {
    let name = module.rsplit('/').next().unwrap_or(module);
    format!("/kiln/modules/{i}-{name}")
}

fn fixed_meta(mode: u32) -> EntryMeta {
    EntryMeta {
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        rdev: (0, 0),
    }
}

/// The fixed initramfs for `kernel` (guest init, modules, mount points, console), built
/// once into `cache` under its content digest; returns its path.
pub(crate) fn base_initramfs(kernel: &Kernel, cache: &Path) -> Result<PathBuf, SandboxError> {
    let io = |what: String| move |source| SandboxError::Io { what, source };
    let modules: Vec<Vec<u8>> = MODULES
        .iter()
        .map(|(m, _)| {
            let p = kernel.modules.join(m);
            fs::read(&p).map_err(io(format!("read {}", p.display())))
        })
        .collect::<Result<_, _>>()?;
    let mut hash = Sha256::new();
    hash.update(GUEST_INIT);
    for m in &modules {
        hash.update((m.len() as u64).to_le_bytes());
        hash.update(m);
    }
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let path = cache.join(format!("base-{}.cpio", &digest[..32]));
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(cache).map_err(io(format!("create {}", cache.display())))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache)
        .map_err(io(format!("create a file in {}", cache.display())))?;
    let write = |tmp: &mut tempfile::NamedTempFile| -> std::io::Result<()> {
        let mut w = CpioWriter::new(std::io::BufWriter::new(tmp.as_file_mut()));
        for d in [
            "dev",
            "proc",
            "sys",
            "run",
            "merged",
            "kiln",
            "kiln/modules",
        ] {
            w.special(d.as_bytes(), &fixed_meta(S_IFDIR | 0o755))?;
        }
        let mut console = fixed_meta(S_IFCHR | 0o600);
        console.rdev = (5, 1);
        w.special(b"dev/console", &console)?;
        w.file(
            b"init",
            &fixed_meta(S_IFREG | 0o755),
            GUEST_INIT.len() as u64,
            GUEST_INIT,
            None,
        )?;
        let paths = MODULES
            .iter()
            .enumerate()
            .map(|(i, (m, _))| packed_module_path(i, m));
        for (path, body) in paths.zip(&modules) {
            let name = path.trim_start_matches('/').as_bytes();
            w.file(
                name,
                &fixed_meta(S_IFREG | 0o644),
                body.len() as u64,
                &body[..],
                None,
            )?;
        }
        w.finish()?.flush()
    };
    write(&mut tmp).map_err(io(format!("write {}", path.display())))?;
    tmp.persist(&path).map_err(|e| SandboxError::Io {
        what: format!("write {}", path.display()),
        source: e.error,
    })?;
    Ok(path)
}

/// Whether `/dev/kvm` is hardware virtualization (VMX or SVM in the CPU flags), rather than
/// absent, or PVM or another emulating module (where qemu's KVM mode cannot run a stock
/// kernel).
pub fn hardware_kvm() -> bool {
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpu
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    has_flag
        && !Path::new("/sys/module/kvm_pvm").exists()
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}
