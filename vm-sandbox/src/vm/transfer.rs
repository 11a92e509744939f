//! What goes into a guest besides its kernel and fixed initramfs, and what comes back: the
//! run's part of the initramfs (the spec, copies of bind sources, the merged root unless it
//! goes on a disk) and the writable mounts' contents, written back to their host directories.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::protocol::{self, GuestSpec};
use super::{cpio, io, rootfs};
use crate::SandboxError;

/// Replaces the contents of each writable mount's host directory with what the guest left in
/// it: the tar of `len` bytes on `disk`, mount `N` under `N/`, unpacked into `scratch` first.
pub(super) fn sync_back(
    disk: &std::path::Path,
    len: u64,
    scratch: &std::path::Path,
    writable: &[(usize, PathBuf)],
) -> Result<(), SandboxError> {
    let f = fs::File::open(disk).map_err(io("read the mounts disk"))?;
    fs::create_dir_all(scratch).map_err(io("create a scratch directory"))?;
    snapshotter::snapshot::unpack_layer(std::io::Read::take(f, len), scratch)
        .map_err(|e| SandboxError::Setup(format!("read back the writable mounts: {e}")))?;
    for (n, host) in writable {
        let from = scratch.join(n.to_string());
        let sync = || -> std::io::Result<()> {
            for e in fs::read_dir(host)? {
                let p = e?.path();
                if fs::symlink_metadata(&p)?.is_dir() {
                    fs::remove_dir_all(&p)?;
                } else {
                    fs::remove_file(&p)?;
                }
            }
            if from.is_dir() {
                for e in fs::read_dir(&from)? {
                    let e = e?;
                    match fs::rename(e.path(), host.join(e.file_name())) {
                        Ok(()) => {}
                        // Another filesystem: copy what is left, keeping owners and modes.
                        Err(err) if err.kind() == std::io::ErrorKind::CrossesDevices => {
                            let copied = std::process::Command::new("cp")
                                .arg("-a")
                                .arg(from.join("."))
                                .arg(host)
                                .status()?;
                            if !copied.success() {
                                return Err(std::io::Error::other(format!("cp -a: {copied}")));
                            }
                            break;
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
            Ok(())
        };
        sync().map_err(io(format!("write back the mount {}", host.display())))?;
    }
    Ok(())
}

/// This run's part of the initramfs: the spec, copies of bind sources, the merged root.
pub(super) fn write_run_part<W: Write>(
    w: &mut cpio::CpioWriter<W>,
    guest: &GuestSpec,
    copies: &[(PathBuf, String)],
    lower: &[PathBuf],
) -> std::io::Result<()> {
    let meta = |mode| cpio::EntryMeta {
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        rdev: (0, 0),
    };
    let spec = guest.encode();
    w.file(
        protocol::SPEC_PATH.trim_start_matches('/').as_bytes(),
        &meta(cpio::S_IFREG | 0o600),
        spec.len() as u64,
        &spec[..],
        None,
    )?;
    if !copies.is_empty() {
        w.special(b"kiln/binds", &meta(cpio::S_IFDIR | 0o755))?;
        w.special(b"kiln/rw", &meta(cpio::S_IFDIR | 0o755))?;
    }
    let mut xattrs = Vec::new();
    for (source, inside) in copies {
        let name = inside.trim_start_matches('/');
        let md = fs::metadata(source)?;
        if md.is_dir() {
            rootfs::pack_merged(w, std::slice::from_ref(source), name, &mut xattrs)?;
        } else {
            let f = fs::File::open(source)?;
            rootfs::pack_file(w, name.as_bytes(), &md, f)?;
        }
    }
    rootfs::pack_merged(w, lower, "lower", &mut xattrs)?;
    if !xattrs.is_empty() {
        let list = protocol::encode_xattrs(&xattrs);
        w.file(
            protocol::XATTRS_PATH.trim_start_matches('/').as_bytes(),
            &meta(cpio::S_IFREG | 0o600),
            list.len() as u64,
            &list[..],
            None,
        )?;
    }
    Ok(())
}
