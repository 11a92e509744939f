//! Packs a step's root filesystem for the guest: the overlay lower directories (top-most
//! first, in the snapshotter's form: whiteouts as 0:0 character devices, opaque directories
//! marked by an xattr) merged as overlayfs would show them, written into a cpio archive. The
//! files' extended attributes, which cpio cannot hold, are listed for the guest to set.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use super::cpio::{CpioWriter, EntryMeta};
use super::protocol::Xattr;

fn meta_of(md: &fs::Metadata) -> EntryMeta {
    let rdev = md.rdev();
    EntryMeta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: u64::try_from(md.mtime()).unwrap_or(0),
        rdev: (
            u32::try_from(((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)).unwrap_or(0),
            u32::try_from(((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)).unwrap_or(0),
        ),
    }
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Writes the merged view of `lower` (top-most first) under `prefix` in `cpio`; adds the
/// extended attributes of what it packed to `xattrs`.
pub(crate) fn pack_merged<W: Write>(
    cpio: &mut CpioWriter<W>,
    lower: &[PathBuf],
    prefix: &str,
    xattrs: &mut Vec<Xattr>,
) -> io::Result<()> {
    let mut packer = Packer {
        cpio,
        links: HashMap::new(),
        xattrs,
    };
    let layers: Vec<PathBuf> = lower.to_vec();
    packer.dir(prefix.as_bytes(), &layers)
}

struct Packer<'a, W: Write> {
    cpio: &'a mut CpioWriter<W>,
    /// Hard-linked files already packed: (device, inode) to the cpio inode number.
    links: HashMap<(u64, u64), u32>,
    xattrs: &'a mut Vec<Xattr>,
}

impl<W: Write> Packer<'_, W> {
    /// Packs the directory that is `dirs` (its instances in the layers that merge into it,
    /// top-most first) as `name`, then its children.
    fn dir(&mut self, name: &[u8], dirs: &[PathBuf]) -> io::Result<()> {
        let top = match dirs.first() {
            Some(d) => fs::symlink_metadata(d)?,
            None => fs::symlink_metadata("/")?,
        };
        let mut meta = meta_of(&top);
        if dirs.is_empty() {
            meta = EntryMeta {
                mode: super::cpio::S_IFDIR | 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                rdev: (0, 0),
            };
        }
        self.cpio.special(name, &meta)?;
        if let Some(d) = dirs.first() {
            self.note_xattrs(name, d);
        }
        // Each child name's instances in the layers that merge here, top-most first.
        let mut children: BTreeMap<Vec<u8>, Vec<(PathBuf, fs::Metadata)>> = BTreeMap::new();
        for d in dirs {
            for entry in fs::read_dir(d)? {
                let entry = entry?;
                let path = entry.path();
                let md = fs::symlink_metadata(&path)?;
                children
                    .entry(entry.file_name().as_bytes().to_vec())
                    .or_default()
                    .push((path, md));
            }
        }
        for (child, instances) in children {
            // The top-most instance wins; a whiteout there hides the name.
            let (path, md) = &instances[0];
            if is_whiteout(md) {
                continue;
            }
            let mut full = name.to_vec();
            full.push(b'/');
            full.extend_from_slice(&child);
            if md.is_dir() {
                // Directories below merge into it until an opaque one, a whiteout or a
                // non-directory.
                let mut merged = Vec::new();
                for (p, m) in &instances {
                    if !m.is_dir() {
                        break;
                    }
                    merged.push(p.clone());
                    if crate::container::is_opaque(p) {
                        break;
                    }
                }
                self.dir(&full, &merged)?;
            } else {
                self.leaf(&full, path, md)?;
            }
        }
        Ok(())
    }

    fn note_xattrs(&mut self, name: &[u8], path: &Path) {
        for (key, value) in snapshotter::diff::layer_xattrs(path) {
            self.xattrs.push((name.to_vec(), key, value));
        }
    }

    fn leaf(&mut self, name: &[u8], path: &Path, md: &fs::Metadata) -> io::Result<()> {
        let meta = meta_of(md);
        if !md.file_type().is_socket() {
            self.note_xattrs(name, path);
        }
        let ft = md.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path)?;
            return self
                .cpio
                .symlink(name, &meta, target.as_os_str().as_bytes());
        }
        if ft.is_file() {
            let link = if md.nlink() > 1 {
                let key = (md.dev(), md.ino());
                match self.links.get(&key) {
                    Some(ino) => Some((*ino, false)),
                    None => {
                        let ino = self.cpio.new_inode();
                        self.links.insert(key, ino);
                        Some((ino, true))
                    }
                }
            } else {
                None
            };
            let data: Box<dyn io::Read> = if link.is_some_and(|(_, first)| !first) {
                Box::new(io::empty())
            } else {
                Box::new(fs::File::open(path)?)
            };
            return self.cpio.file(name, &meta, md.len(), data, link);
        }
        if ft.is_socket() {
            return Ok(());
        }
        self.cpio.special(name, &meta)
    }
}

/// Writes one regular file as `name`.
pub(crate) fn pack_file<W: Write>(
    cpio: &mut CpioWriter<W>,
    name: &[u8],
    md: &fs::Metadata,
    data: impl io::Read,
) -> io::Result<()> {
    cpio.file(name, &meta_of(md), md.len(), data, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layers with a whiteout, an opaque directory and a file over a directory merge as
    /// overlayfs shows them (checked by unpacking the archive with GNU cpio).
    #[test]
    fn layers_merge_as_overlayfs_shows_them() {
        let have_cpio = std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_ok();
        let root = nix::unistd::geteuid().is_root();
        if !have_cpio || !root {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but cpio or root is missing"
            );
            eprintln!("skipped: needs cpio and root (to make whiteouts)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (bottom, top) = (t.path().join("bottom"), t.path().join("top"));
        for (p, body) in [
            ("bottom/keep/a", "a"),
            ("bottom/gone/x", "x"),
            ("bottom/opaque/old", "old"),
            ("bottom/shadowed", "lower"),
            ("bottom/becomes-file/inner", "inner"),
            ("top/keep/b", "b"),
            ("top/opaque/new", "new"),
            ("top/shadowed", "upper"),
            ("top/becomes-file", "now a file"),
        ] {
            let p = t.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        nix::sys::stat::mknod(
            &top.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        xattr::set(top.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();

        let mut w = CpioWriter::new(Vec::new());
        pack_merged(&mut w, &[top, bottom], "lower", &mut Vec::new()).unwrap();
        let data = w.finish().unwrap();
        let out = t.path().join("out");
        fs::create_dir(&out).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-id", "--quiet"])
            .current_dir(&out)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        assert!(child.wait().unwrap().success());
        let mut found = Vec::new();
        let mut stack = vec![out.join("lower")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p
                    .strip_prefix(out.join("lower"))
                    .unwrap()
                    .display()
                    .to_string();
                if p.is_dir() {
                    stack.push(p);
                    found.push(format!("{rel}/"));
                } else {
                    found.push(format!("{rel}={}", fs::read_to_string(&p).unwrap()));
                }
            }
        }
        found.sort();
        assert_eq!(
            found,
            [
                "becomes-file=now a file",
                "keep/",
                "keep/a=a",
                "keep/b=b",
                "opaque/",
                "opaque/new=new",
                "shadowed=upper",
            ]
        );
    }
}
