//! COPY from the build context into a new snapshot's upper directory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Ownership and mode applied to copied files.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CopyAttrs {
    /// `--chown` (uid, gid); default root.
    pub(crate) owner: Option<(u32, u32)>,
    /// `--chmod` (octal or symbolic).
    pub(crate) mode: Option<crate::chmod::ModeSpec>,
}

/// Resolves a COPY source inside the context, refusing paths that climb out of it.
pub(crate) fn context_path(context: &Path, src: &str) -> Result<PathBuf, String> {
    let mut out = context.to_path_buf();
    let mut depth = 0usize;
    for c in Path::new(src).components() {
        match c {
            Component::Normal(n) => {
                out.push(n);
                depth += 1;
            }
            Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
            }
            // `..` at the top stays at the top, as BuildKit does.
            Component::ParentDir
            | Component::RootDir
            | Component::CurDir
            | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

pub(crate) use vm_sandbox::scoped_path;

use crate::copy_tree::{apply_attrs, copy_dir_contents, copy_entry, make_dir};

/// Decides whether a context path is left out (`.dockerignore`): true for a file that is
/// excluded, or a directory that is excluded with nothing below it re-included.
pub(crate) type Excluded<'a> = &'a dyn Fn(&Path, bool) -> bool;

/// Where copies go: the new layer's directory, over the layers below it (top-most first),
/// whose directories keep their metadata when a copy passes through them.
#[derive(Clone, Copy)]
pub(crate) struct Dest<'a> {
    pub(crate) upper: &'a Path,
    pub(crate) lower: &'a [PathBuf],
    /// The same COPY's layer from the previous build, when there is one.
    pub(crate) previous: Option<PreviousCopy<'a>>,
}

impl<'a> Dest<'a> {
    /// A destination with nothing below it.
    pub(crate) fn bare(upper: &'a Path) -> Self {
        Dest {
            upper,
            lower: &[],
            previous: None,
        }
    }
}

/// The layer the same COPY made in the previous build, and which context files (relative
/// paths) have the same mode and content digest now.
#[derive(Clone, Copy)]
pub(crate) struct PreviousCopy<'a> {
    pub(crate) upper: &'a Path,
    pub(crate) context: &'a Path,
    pub(crate) unchanged: &'a std::collections::HashSet<String>,
}

impl PreviousCopy<'_> {
    /// Hard-links `target` to the file the previous build put at the same place, when the
    /// source did not change (same mode and digest) and the copy would have the same owner,
    /// mode and mtime. That file is in a committed layer, which never changes; later steps
    /// write through overlayfs's copy-up.
    pub(crate) fn link(
        &self,
        dest: &Dest<'_>,
        src: &Path,
        md: &fs::Metadata,
        target: &Path,
        attrs: CopyAttrs,
    ) -> bool {
        let Ok(rel) = src.strip_prefix(self.context) else {
            return false;
        };
        if !md.is_file() || !self.unchanged.contains(rel.to_string_lossy().as_ref()) {
            return false;
        }
        let Ok(in_layer) = target.strip_prefix(dest.upper) else {
            return false;
        };
        let old = self.upper.join(in_layer);
        let Ok(old_md) = fs::symlink_metadata(&old) else {
            return false;
        };
        let mode = md.permissions().mode() & 0o7777;
        let mode = attrs.mode.map_or(mode, |m| m.apply(mode, false));
        let same = old_md.is_file()
            && old_md.len() == md.len()
            && (old_md.mtime(), old_md.mtime_nsec()) == (md.mtime(), md.mtime_nsec())
            && old_md.permissions().mode() & 0o7777 == mode
            && copy_owner(attrs) == Some((old_md.uid(), old_md.gid()));
        same && fs::symlink_metadata(target).is_err() && fs::hard_link(&old, target).is_ok()
    }
}

/// The owner a copied file gets (see `apply_attrs`); `None` where the copy would fail.
fn copy_owner(attrs: CopyAttrs) -> Option<(u32, u32)> {
    if nix::unistd::geteuid().is_root() {
        Some(attrs.owner.unwrap_or((0, 0)))
    } else if attrs.owner.is_none_or(|o| o == (0, 0)) {
        Some((
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ))
    } else {
        None
    }
}

/// Copies `src` (file, symlink or directory contents) to `to` under the destination,
/// creating parents as BuildKit does: a directory the layers below have keeps its mode and
/// owner; a new one is 0755 and owned by the `--chown` user.
pub(crate) fn copy_into(
    dest: &Dest<'_>,
    src: &Path,
    to: &str,
    attrs: CopyAttrs,
    excluded: Excluded<'_>,
) -> Result<(), String> {
    let target = dest.upper.join(to.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        ensure_dir(dest, parent, attrs.owner)?;
    }
    let md = fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if md.is_dir() {
        // The directory's contents go in; the target itself is made like a parent.
        let made = !target.exists() && !in_lower(dest, &target);
        ensure_dir(dest, &target, attrs.owner)?;
        copy_dir_contents(dest, src, &target, attrs, excluded)?;
        // A directory this copy made takes the source's mtime, as BuildKit does.
        if made {
            keep_mtime(&target, &md)?;
        }
        Ok(())
    } else if dest
        .previous
        .is_some_and(|p| p.link(dest, src, &md, &target, attrs))
    {
        Ok(())
    } else {
        copy_entry(src, &target, attrs)
    }
}

/// Copies `src` (a path inside a stage or image, given by its layer directories, top-most
/// first) to `dest` under `upper`. Files keep their owners unless `--chown` says otherwise.
pub(crate) fn copy_from_layers(
    layers: &[PathBuf],
    src: &Path,
    dest: &Dest<'_>,
    to: &str,
    attrs: CopyAttrs,
) -> Result<(), String> {
    let target = dest.upper.join(to.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        ensure_dir(dest, parent, attrs.owner)?;
    }
    let source_dir = snapshotter::copyfs::merged_lookup(layers, src).filter(|(_, md)| md.is_dir());
    if let Some((_, md)) = source_dir {
        let made = !target.exists() && !in_lower(dest, &target);
        ensure_dir(dest, &target, attrs.owner)?;
        for name in snapshotter::copyfs::merged_names(layers, src) {
            copy_layered(
                layers,
                &src.join(&name),
                &target.join(&name),
                attrs,
                dest.lower,
            )?;
        }
        if made {
            keep_mtime(&target, &md)?;
        }
        return Ok(());
    }
    copy_layered(layers, src, &target, attrs, dest.lower)
}

fn copy_layered(
    layers: &[PathBuf],
    rel: &Path,
    target: &Path,
    attrs: CopyAttrs,
    below: &[PathBuf],
) -> Result<(), String> {
    let (path, md) = snapshotter::copyfs::merged_lookup(layers, rel)
        .ok_or_else(|| format!("/{} not found", rel.display()))?;
    // Owners come along (rootless: the files are all "root" already, as the user's own).
    let owner = attrs.owner.or_else(|| {
        nix::unistd::geteuid()
            .is_root()
            .then(|| (md.uid(), md.gid()))
    });
    let keep_owner = CopyAttrs {
        owner,
        mode: attrs.mode,
    };
    if md.is_dir() {
        make_dir(target, &md, keep_owner)?;
        for name in snapshotter::copyfs::merged_names(layers, rel) {
            copy_layered(layers, &rel.join(&name), &target.join(&name), attrs, below)?;
        }
        keep_mtime(target, &md)
    } else if link_unchanged(&path, &md, target, keep_owner, below) {
        Ok(())
    } else {
        copy_entry(&path, target, keep_owner)
    }
}

/// Hard-links a regular file from a committed layer instead of copying it, when the copy
/// would be the same file: same owner, mode and mtime, no extended attributes, no other
/// link to it yet, and its layer not below the destination (where one inode would show at
/// two paths of one root filesystem). Committed layer directories never change, and a
/// later step that writes the file goes through overlayfs's copy-up, so the two paths never
/// diverge. The layer tar is the same either way: one path of an inode is a regular entry.
fn link_unchanged(
    src: &Path,
    md: &fs::Metadata,
    target: &Path,
    attrs: CopyAttrs,
    below: &[PathBuf],
) -> bool {
    if !md.is_file() || md.nlink() != 1 || below.iter().any(|l| src.starts_with(l)) {
        return false;
    }
    let mode = md.permissions().mode() & 0o7777;
    if copy_owner(attrs) != Some((md.uid(), md.gid()))
        || attrs.mode.is_some_and(|m| m.apply(mode, false) != mode)
    {
        return false;
    }
    if xattr::list(src).map_or(true, |mut names| names.next().is_some()) {
        return false;
    }
    // Replacing an existing entry is left to the copy, which checks what it replaces.
    fs::symlink_metadata(target).is_err() && fs::hard_link(src, target).is_ok()
}

/// Makes the directory `to` (and its parents) in the destination; returns its path.
pub(crate) fn prepare_dir(
    dest: &Dest<'_>,
    to: &str,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, String> {
    let dir = dest.upper.join(to.trim_start_matches('/'));
    ensure_dir(dest, &dir, owner)?;
    Ok(dir)
}

/// Makes `dir` (inside `dest.upper`) and its parents: like the layers below when they have
/// it, else 0755 owned by `owner` (root by default).
fn ensure_dir(dest: &Dest<'_>, dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    if dir == dest.upper || dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent() {
        ensure_dir(dest, p, owner)?;
    }
    fs::create_dir(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let rel = dir.strip_prefix(dest.upper).unwrap_or(dir);
    let below = snapshotter::copyfs::merged_lookup(dest.lower, rel).filter(|(_, md)| md.is_dir());
    let (mode, ids) = match &below {
        Some((_, md)) => (md.permissions().mode() & 0o7777, (md.uid(), md.gid())),
        None => (0o755, owner.unwrap_or((0, 0))),
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(dir, Some(ids.0), Some(ids.1))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    if let Some((_, md)) = below {
        let _ = filetime::set_file_mtime(dir, filetime::FileTime::from_last_modification_time(&md));
    }
    Ok(())
}

/// Whether the layers below the destination have `dir` (a path inside `dest.upper`).
fn in_lower(dest: &Dest<'_>, dir: &Path) -> bool {
    let rel = dir.strip_prefix(dest.upper).unwrap_or(dir);
    snapshotter::copyfs::merged_lookup(dest.lower, rel).is_some()
}

/// Gives a copied directory its source's mtime, once everything inside it is in place: the
/// layer then does not depend on when the build ran.
pub(crate) fn keep_mtime(dir: &Path, source: &fs::Metadata) -> Result<(), String> {
    filetime::set_file_mtime(dir, filetime::FileTime::from_last_modification_time(source))
        .map_err(|e| format!("set mtime of {}: {e}", dir.display()))
}

/// Applies `--chown`/`--chmod` to everything under `dir` (an unpacked archive), keeping
/// mtimes.
pub(crate) fn restamp_tree(dir: &Path, attrs: CopyAttrs) -> Result<(), String> {
    let md = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    apply_attrs(dir, &md, attrs, md.is_dir())?;
    if md.is_dir() {
        for e in fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            restamp_tree(&e.path(), attrs)?;
        }
    }
    Ok(())
}

/// Reads a file as the stacked layers show it (top-most first), honouring whiteouts.
pub(crate) fn read_through_layers(layers_top_first: &[PathBuf], rel: &str) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for dir in layers_top_first {
        let p = dir.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => return None,
            Ok(m) if m.is_file() => return fs::read_to_string(&p).ok(),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_paths_cannot_escape() {
        let c = Path::new("/ctx");
        assert_eq!(context_path(c, "a/b").unwrap(), Path::new("/ctx/a/b"));
        assert_eq!(
            context_path(c, "../../etc/passwd").unwrap(),
            Path::new("/ctx/etc/passwd")
        );
        assert_eq!(
            context_path(c, "/abs/./x/../y").unwrap(),
            Path::new("/ctx/abs/y")
        );
    }

    #[test]
    fn copies_directory_contents_with_attrs() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("d/e")).unwrap();
        fs::write(src.path().join("d/e/f"), b"x").unwrap();
        fs::write(src.path().join("top"), b"t").unwrap();
        let upper = tempfile::tempdir().unwrap();
        let attrs = CopyAttrs {
            owner: None,
            mode: Some(crate::chmod::ModeSpec::Octal(0o600)),
        };
        let none = |_: &Path, _: bool| false;
        let dest = Dest::bare(upper.path());
        copy_into(&dest, &src.path().join("d"), "/app/", attrs, &none).unwrap();
        copy_into(&dest, &src.path().join("top"), "/app/renamed", attrs, &none).unwrap();
        assert_eq!(fs::read(upper.path().join("app/e/f")).unwrap(), b"x");
        assert_eq!(fs::read(upper.path().join("app/renamed")).unwrap(), b"t");
        let mode = fs::metadata(upper.path().join("app/e/f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn copies_from_layers_link_only_files_that_come_out_the_same() {
        let work = tempfile::tempdir().unwrap();
        let layer = work.path().join("layer");
        fs::create_dir_all(layer.join("out/bin")).unwrap();
        fs::write(layer.join("out/bin/app"), b"binary").unwrap();
        fs::write(layer.join("out/notes"), b"text").unwrap();
        fs::set_permissions(layer.join("out/bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let copy = |upper: &Path, below: &[PathBuf], attrs: CopyAttrs| {
            fs::create_dir_all(upper).unwrap();
            let dest = Dest {
                upper,
                lower: below,
                previous: None,
            };
            copy_from_layers(
                std::slice::from_ref(&layer),
                Path::new("out"),
                &dest,
                "/opt/app",
                attrs,
            )
            .unwrap();
        };

        // Same owner, mode and mtime: the new layer shares the committed file's inode.
        let linked = work.path().join("linked");
        copy(&linked, &[], CopyAttrs::default());
        assert_eq!(
            ino(&linked.join("opt/app/bin/app")),
            ino(&layer.join("out/bin/app"))
        );
        assert_eq!(fs::read(linked.join("opt/app/notes")).unwrap(), b"text");

        // Already linked once: copied, so one inode never spreads across many layers.
        let again = work.path().join("again");
        copy(&again, &[], CopyAttrs::default());
        assert_ne!(
            ino(&again.join("opt/app/bin/app")),
            ino(&layer.join("out/bin/app"))
        );

        // --chmod that changes the mode: a copy, and the committed file keeps its mode.
        let fresh = work.path().join("fresh-layer");
        fs::create_dir_all(fresh.join("out")).unwrap();
        fs::write(fresh.join("out/f"), b"f").unwrap();
        let chmod = work.path().join("chmod");
        fs::create_dir_all(&chmod).unwrap();
        let attrs = CopyAttrs {
            owner: None,
            mode: Some(crate::chmod::ModeSpec::Octal(0o600)),
        };
        let dest = Dest::bare(&chmod);
        copy_from_layers(
            std::slice::from_ref(&fresh),
            Path::new("out"),
            &dest,
            "/x",
            attrs,
        )
        .unwrap();
        assert_ne!(ino(&chmod.join("x/f")), ino(&fresh.join("out/f")));
        assert_eq!(
            fs::metadata(chmod.join("x/f")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::metadata(fresh.join("out/f")).unwrap().nlink(), 1);

        // The source layer below the destination: a copy, not one inode at two paths.
        let stacked = work.path().join("stacked");
        fs::create_dir_all(&stacked).unwrap();
        let dest = Dest {
            upper: &stacked,
            lower: std::slice::from_ref(&fresh),
            previous: None,
        };
        copy_from_layers(
            std::slice::from_ref(&fresh),
            Path::new("out"),
            &dest,
            "/y",
            CopyAttrs::default(),
        )
        .unwrap();
        assert_ne!(ino(&stacked.join("y/f")), ino(&fresh.join("out/f")));
    }
}
