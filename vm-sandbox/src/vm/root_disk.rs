//! A large root filesystem goes to the guest as a disk instead of in the initramfs, so that
//! it does not take the guest's memory (an initramfs is unpacked into RAM) nor the time to
//! unpack it there: an ext4 image (no journal; ext4 is built into the guest kernel) made by
//! `mke2fs -d` from the image's layers merged by a read-only overlay mount on the host, with
//! owners, modes, times, hard links, special files and extended attributes as they are
//! (`user.*` ones too). The root is the image's `root/` directory, so that mke2fs's
//! `lost+found` stays out of it. The guest mounts it read-only as the overlay's lower layer;
//! qemu attaches it read-only, the builtin VMM maps it copy-on-write.
//!
//! Roots of at least [`DEFAULT_MIN_BYTES`] (`KILN_VM_ROOT_DISK_MIN_MB` to change it) go this
//! way; the overlay mount needs privileges and mke2fs comes from e2fsprogs: without either,
//! the initramfs carries them.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SandboxError;

/// The size from which a root goes on a disk.
pub(crate) const DEFAULT_MIN_BYTES: u64 = 64 << 20;

/// The threshold: `KILN_VM_ROOT_DISK_MIN_MB` or [`DEFAULT_MIN_BYTES`].
pub(crate) fn min_bytes() -> u64 {
    std::env::var("KILN_VM_ROOT_DISK_MIN_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_MIN_BYTES, |mb| mb << 20)
}

/// What the layers hold, roughly (shadowed files counted too): bytes in 4 KiB blocks and
/// entries.
fn footprint(lower: &[PathBuf]) -> (u64, u64) {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut stack: Vec<PathBuf> = lower.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            entries += 1;
            bytes += md.len().div_ceil(4096) * 4096;
            if md.is_dir() {
                bytes += 4096;
                stack.push(e.path());
            }
        }
    }
    (bytes, entries)
}

/// The root as a disk image at `image`, when it is large enough and this process may mount
/// overlays; `None` to carry it in the initramfs.
pub(crate) fn make(lower: &[PathBuf], image: &Path) -> Result<Option<()>, SandboxError> {
    let (bytes, entries) = footprint(lower);
    if lower.is_empty() || bytes < min_bytes() {
        return Ok(None);
    }
    let scratch = image.with_extension("d");
    let tree = scratch.join("root");
    let empty = scratch.join("empty");
    let io = |what: &str| {
        let what = what.to_string();
        move |source| SandboxError::Io { what, source }
    };
    fs::create_dir_all(&tree).map_err(io("create the root disk's scratch directory"))?;
    fs::create_dir_all(&empty).map_err(io("create the root disk's scratch directory"))?;
    // A read-only overlay needs two lower layers at least: an empty one goes at the bottom.
    let mut layers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    layers.push(empty.display().to_string());
    let options = format!("lowerdir={}", layers.join(":"));
    // Blocks for the data, the directories and the inode tables, with room to spare.
    let size_kib = ((bytes + entries * 256) / 1024 * 11 / 10 + 16 * 1024).next_multiple_of(4096);
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0"])
        .args(["-b", "4096", "-I", "256", "-E", "root_owner=0:0"])
        .arg("-N")
        .arg((entries + 1024).to_string())
        .arg("-d")
        .arg(&scratch)
        .arg(image)
        .arg(format!("{size_kib}k"));
    // The merged view is mounted in mke2fs's own mount namespace: it goes away with mke2fs,
    // also when kiln is killed meanwhile.
    let tree_for_child = tree.clone();
    // SAFETY: between fork and exec the closure makes system calls only (unshare, mount);
    // the strings it passes were made before the fork.
    #[allow(unsafe_code)]
    unsafe {
        mke2fs.pre_exec(move || {
            use nix::mount::{MsFlags, mount};
            let none: Option<&str> = None;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
            mount(
                Some("overlay"),
                &tree_for_child,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(options.as_str()),
            )?;
            Ok(())
        });
    }
    let made = mke2fs.output();
    let _ = fs::remove_dir_all(&scratch);
    match made {
        Ok(o) if o.status.success() => Ok(Some(())),
        Ok(o) => Err(SandboxError::Setup(format!(
            "make the root disk with mke2fs: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        // No mke2fs, or no privileges for the mount namespace or the overlay.
        Err(e) => {
            tracing::debug!("no root disk ({e}); the initramfs carries the root");
            let _ = fs::remove_file(image);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_counts_blocks_and_entries() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/a"), vec![1u8; 5000]).unwrap();
        fs::write(d.path().join("b"), b"x").unwrap();
        let (bytes, entries) = footprint(&[d.path().to_path_buf()]);
        assert_eq!(entries, 3);
        // a: 8192, b: 4096, sub: a block for its entries and its size rounded up.
        assert!(
            (8192 + 4096 + 4096..=8192 + 4096 + 8192).contains(&bytes),
            "{bytes}"
        );
    }
}
