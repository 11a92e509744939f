//! The copy-based snapshotter, for hosts without overlayfs: a chain of layer directories is
//! copied into one plain directory (whiteouts and opaque directories applied), a step runs
//! in that directory, and [`diff_dirs`] compares the result with the layers to produce the
//! same overlay-form upper directory an overlay mount would have left.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::gc::remove_tree;
use crate::snapshot::{is_opaque, make_whiteout, mark_opaque};

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Copies one entry (not recursing into directories) with its metadata.
fn copy_entry(
    src: &Path,
    md: &fs::Metadata,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let ft = md.file_type();
    if let Ok(old) = fs::symlink_metadata(dst)
        && !(old.is_dir() && ft.is_dir())
    {
        remove_tree(dst)?;
    }
    if ft.is_dir() {
        if !dst.is_dir() {
            fs::create_dir(dst).at("create directory", dst)?;
        }
    } else if ft.is_symlink() {
        let t = fs::read_link(src).at("read link", src)?;
        std::os::unix::fs::symlink(&t, dst).at("create symlink", dst)?;
    } else if ft.is_file() {
        if md.nlink() > 1
            && let Some(first) = links.get(&(md.dev(), md.ino()))
        {
            return fs::hard_link(first, dst).at("link", dst);
        }
        fs::copy(src, dst).at("copy", src)?;
        if md.nlink() > 1 {
            links.insert((md.dev(), md.ino()), dst.to_path_buf());
        }
    } else {
        let kind = if ft.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else if ft.is_block_device() {
            nix::sys::stat::SFlag::S_IFBLK
        } else if ft.is_fifo() {
            nix::sys::stat::SFlag::S_IFIFO
        } else {
            return Ok(());
        };
        nix::sys::stat::mknod(
            dst,
            kind,
            nix::sys::stat::Mode::from_bits_truncate(md.mode()),
            md.rdev(),
        )
        .map_err(std::io::Error::from)
        .at("create node", dst)?;
    }
    copy_metadata(src, md, dst)
}

fn copy_metadata(src: &Path, md: &fs::Metadata, dst: &Path) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid())).at("chown", dst)?;
    }
    if !md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .at("chmod", dst)?;
        for name in xattr::list(src).into_iter().flatten() {
            let n = name.to_string_lossy();
            if n.starts_with("trusted.overlay.") || n.starts_with("user.overlay.") {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &name) {
                let _ = xattr::set(dst, &name, &v);
            }
        }
    }
    let t = filetime::FileTime::from_last_modification_time(md);
    filetime::set_symlink_file_times(dst, t, t).at("set times of", dst)?;
    Ok(())
}

/// Builds the merged tree of `layers_bottom_first` in `dest` (which must be empty).
pub fn materialize(layers_bottom_first: &[PathBuf], dest: &Path) -> Result<()> {
    let mut dir_times: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    for layer in layers_bottom_first {
        let mut links = HashMap::new();
        apply_dir(layer, dest, &mut links, &mut dir_times)?;
    }
    // Directory times last: copying into a directory changes its mtime.
    // (A later layer may have removed or replaced a directory; only the ones left count.)
    for (dst, md) in dir_times.iter().rev() {
        if fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
            let t = filetime::FileTime::from_last_modification_time(md);
            filetime::set_file_times(dst, t, t).at("set times of", dst)?;
        }
    }
    Ok(())
}

fn apply_dir(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
    dir_times: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<()> {
    let mut names: Vec<OsString> = fs::read_dir(src)
        .at("read directory", src)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let s = src.join(&name);
        let d = dst.join(&name);
        let md = fs::symlink_metadata(&s).at("stat", &s)?;
        if is_whiteout(&md) {
            if fs::symlink_metadata(&d).is_ok() {
                remove_tree(&d)?;
            }
            continue;
        }
        if md.is_dir() && is_opaque(&s) && d.exists() {
            remove_tree(&d)?;
        }
        copy_entry(&s, &md, &d, links)?;
        if md.is_dir() {
            dir_times.push((d.clone(), md));
            apply_dir(&s, &d, links, dir_times)?;
        }
    }
    Ok(())
}

/// What the layers show at `rel`: the entry of the top-most layer that has it, unless a
/// whiteout or an opaque directory above hides it.
pub fn merged_lookup(layers_top_first: &[PathBuf], rel: &Path) -> Option<(PathBuf, fs::Metadata)> {
    for layer in layers_top_first {
        // An opaque or whited-out ancestor in this layer hides the lower layers.
        let mut hidden = false;
        let mut cur = layer.clone();
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(md) if is_whiteout(&md) => return None,
                Ok(md) if i + 1 == comps.len() => return Some((cur, md)),
                Ok(md) if md.is_dir() => {
                    if is_opaque(&cur) {
                        hidden = true;
                    }
                }
                Ok(_) => return None,
                Err(_) => break,
            }
        }
        if hidden {
            return None;
        }
    }
    None
}

/// The names in the merged lower directory `rel`.
pub fn merged_names(layers_top_first: &[PathBuf], rel: &Path) -> Vec<OsString> {
    let mut seen: BTreeMap<OsString, bool> = BTreeMap::new();
    for layer in layers_top_first {
        let dir = layer.join(rel);
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let whiteout = e.metadata().is_ok_and(|m| is_whiteout(&m));
                seen.entry(e.file_name()).or_insert(!whiteout);
            }
            if is_opaque(&dir) {
                break;
            }
        }
        if fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            break;
        }
    }
    seen.into_iter()
        .filter(|(_, present)| *present)
        .map(|(n, _)| n)
        .collect()
}

fn same(a: &fs::Metadata, b: &fs::Metadata, pa: &Path, pb: &Path) -> bool {
    let base = a.file_type() == b.file_type()
        && a.mode() == b.mode()
        && a.uid() == b.uid()
        && a.gid() == b.gid()
        && (a.is_dir()
            || (a.size() == b.size()
                && a.mtime() == b.mtime()
                && a.mtime_nsec() == b.mtime_nsec()));
    if !base {
        return false;
    }
    if a.file_type().is_symlink() {
        return fs::read_link(pa).ok() == fs::read_link(pb).ok();
    }
    if a.file_type().is_char_device() || a.file_type().is_block_device() {
        return a.rdev() == b.rdev();
    }
    true
}

/// Compares `new_root` with the layers and writes what changed to `upper` in overlay form:
/// new and changed entries copied, deleted ones as 0:0 whiteouts, a directory that replaced
/// a non-directory marked opaque.
pub fn diff_dirs(layers_top_first: &[PathBuf], new_root: &Path, upper: &Path) -> Result<()> {
    let mut links = HashMap::new();
    diff_rec(layers_top_first, new_root, upper, Path::new(""), &mut links)
}

fn diff_rec(
    layers: &[PathBuf],
    new_root: &Path,
    upper: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = new_root.join(rel);
    let mut names: Vec<OsString> = fs::read_dir(&dir)
        .at("read directory", &dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in &names {
        let r = rel.join(name);
        let p = new_root.join(&r);
        let md = fs::symlink_metadata(&p).at("stat", &p)?;
        let lower = merged_lookup(layers, &r);
        let unchanged = lower
            .as_ref()
            .is_some_and(|(lp, lmd)| same(&md, lmd, &p, lp));
        if md.is_dir() {
            let was_dir = lower.as_ref().is_some_and(|(_, l)| l.is_dir());
            if !unchanged || !was_dir {
                ensure_parents(new_root, upper, rel)?;
                copy_entry(&p, &md, &upper.join(&r), links)?;
                if !was_dir && lower.is_some() {
                    mark_opaque(&upper.join(&r))?;
                }
            }
            diff_rec(layers, new_root, upper, &r, links)?;
        } else if !unchanged {
            ensure_parents(new_root, upper, rel)?;
            copy_entry(&p, &md, &upper.join(&r), links)?;
        }
    }
    // Deleted: in the layers, not in the new tree.
    for name in merged_names(layers, rel) {
        if !names.contains(&name) {
            ensure_parents(new_root, upper, rel)?;
            make_whiteout(&upper.join(rel).join(&name))?;
        }
    }
    Ok(())
}

/// Creates `rel`'s directories in `upper` with the new tree's metadata.
fn ensure_parents(new_root: &Path, upper: &Path, rel: &Path) -> Result<()> {
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let u = upper.join(&cur);
        if !u.exists() {
            fs::create_dir(&u).at("create directory", &u)?;
            let src = new_root.join(&cur);
            let md = fs::symlink_metadata(&src).at("stat", &src)?;
            copy_metadata(&src, &md, &u)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn materialize_then_diff_finds_exactly_the_changes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: whiteouts and opaque xattrs need root here");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
        fs::create_dir_all(l1.join("etc/keep")).unwrap();
        fs::write(l1.join("etc/a"), "a").unwrap();
        fs::write(l1.join("etc/gone"), "x").unwrap();
        fs::write(l1.join("etc/keep/k"), "k").unwrap();
        fs::create_dir_all(l2.join("etc")).unwrap();
        nix::sys::stat::mknod(
            &l2.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        fs::write(l2.join("etc/b"), "b").unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        materialize(&[l1.clone(), l2.clone()], &root).unwrap();
        assert!(!root.join("etc/gone").exists());
        assert_eq!(fs::read_to_string(root.join("etc/b")).unwrap(), "b");
        // A step: change a, delete b, add c, remove a directory.
        fs::write(root.join("etc/a"), "changed").unwrap();
        fs::remove_file(root.join("etc/b")).unwrap();
        fs::write(root.join("etc/c"), "c").unwrap();
        fs::remove_dir_all(root.join("etc/keep")).unwrap();
        let upper = t.path().join("upper");
        fs::create_dir(&upper).unwrap();
        diff_dirs(&[l2, l1], &root, &upper).unwrap();
        let mut got: Vec<String> = Vec::new();
        for e in fs::read_dir(upper.join("etc")).unwrap().flatten() {
            let md = e.metadata().unwrap();
            got.push(format!(
                "{}{}",
                e.file_name().to_string_lossy(),
                if is_whiteout(&md) { " (whiteout)" } else { "" }
            ));
        }
        got.sort();
        assert_eq!(got, ["a", "b (whiteout)", "c", "keep (whiteout)"]);
    }
}
