//! Diff then apply reproduces a tree exactly: every file type, modes, owners, mtimes,
//! xattrs, hard links, long and non-UTF-8 names, empty directories, whiteouts and opaque dirs.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag, mknod};
use snapshotter::diff::{DiffOptions, write_layer};
use snapshotter::snapshot::{OPAQUE_XATTR, unpack_layer};
use snapshotter::{Digest, MemStore, Store};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn make_tree(d: &Path) {
    let root = is_root();
    fs::create_dir_all(d.join("etc/empty")).unwrap();
    fs::create_dir_all(d.join("opaque/inner")).unwrap();
    fs::write(d.join("etc/conf"), b"setting=1\n").unwrap();
    fs::set_permissions(d.join("etc/conf"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(d.join("bin-su"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(d.join("bin-su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(d.join("etc/conf"), d.join("etc/conf.link")).unwrap();
    std::os::unix::fs::symlink("../etc/conf", d.join("opaque/rel-link")).unwrap();
    std::os::unix::fs::symlink(format!("/{}", "t".repeat(150)), d.join("long-target")).unwrap();
    let long_dir = d.join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(90)), b"long").unwrap();
    fs::write(d.join(OsStr::from_bytes(b"caf\xe9-latin1")), b"bytes").unwrap();
    nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    xattr::set(d.join("etc/conf"), "user.kiln.test", b"value").unwrap();
    filetime::set_symlink_file_times(
        d.join("opaque/rel-link"),
        filetime::FileTime::from_unix_time(1_000_000, 0),
        filetime::FileTime::from_unix_time(1_000_000, 0),
    )
    .unwrap();
    if root {
        mknod(&d.join("deleted"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        xattr::set(d.join("opaque"), OPAQUE_XATTR, b"y").unwrap();
        std::os::unix::fs::lchown(d.join("etc/conf"), Some(1000), Some(2000)).unwrap();
        mknod(
            &d.join("etc/null-dev"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    } else {
        eprintln!(
            "not root: whiteouts, opaque dirs, owners and device nodes are left out of the tree"
        );
    }
    for (p, t) in [
        ("etc/conf", 1_500_000_000),
        ("etc/empty", 1_400_000_000),
        ("bin-su", 1_600_000_000),
    ] {
        filetime::set_file_mtime(d.join(p), filetime::FileTime::from_unix_time(t, 0)).unwrap();
    }
}

/// Everything observable about a tree, keyed by path bytes.
fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<Vec<u8>, String>,
        inodes: &mut BTreeMap<u64, Vec<u8>>,
    ) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let mut xs: Vec<String> = xattr::list(&p)
                .map(|l| l.map(|n| n.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            xs.sort();
            let xs: Vec<String> = xs
                .iter()
                .map(|n| format!("{n}={:?}", xattr::get(&p, n).ok().flatten()))
                .collect();
            let kind = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_fifo() {
                "fifo".into()
            } else if ft.is_char_device() {
                format!("char {}", md.rdev())
            } else {
                let first = inodes
                    .entry(md.ino())
                    .or_insert_with(|| rel.clone())
                    .clone();
                format!(
                    "file {} {:?} first={:?}",
                    md.len(),
                    Digest::of(&fs::read(&p).unwrap()),
                    String::from_utf8_lossy(&first)
                )
            };
            // A whiteout's time is not kept: markers get a fixed time in layers.
            let mtime = if ft.is_char_device() && md.rdev() == 0 {
                0
            } else {
                md.mtime()
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                md.mode() & 0o7777
            };
            out.insert(
                rel,
                format!(
                    "{kind} mode={mode:o} owner={}:{} mtime={mtime} xattrs={xs:?}",
                    md.uid(),
                    md.gid()
                ),
            );
            if ft.is_dir() {
                walk(root, &p, out, inodes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out, &mut BTreeMap::new());
    out
}

#[test]
fn diff_then_apply_reproduces_every_kind_of_entry() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let store = MemStore::new();
    let layer = write_layer(&store, src.path(), &DiffOptions::default()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let blob = store
        .open(&Digest::try_from(layer.descriptor.digest()).unwrap())
        .unwrap();
    unpack_layer(flate2::read::MultiGzDecoder::new(blob), dst.path()).unwrap();
    let (a, b) = (describe(src.path()), describe(dst.path()));
    for (k, v) in &a {
        assert_eq!(b.get(k), Some(v), "{}", String::from_utf8_lossy(k));
    }
    assert_eq!(
        a.len(),
        b.len(),
        "extra entries: {:?}",
        b.keys()
            .filter(|k| !a.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>()
    );
    // And the same layer again from the copy: byte-identical.
    let again = write_layer(&store, dst.path(), &DiffOptions::default()).unwrap();
    assert_eq!(again.diff_id, layer.diff_id);
}
