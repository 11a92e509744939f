//! Copying files and directory trees into a layer directory with COPY's attributes
//! (`--chown`, `--chmod`, kept mtimes). A directory's contents are copied in three passes:
//! one walk makes the directories and lists the files, the files are copied on every core,
//! then each copied directory takes its source's mtime.
//!
//! A regular file is copied through its open descriptors (create, `copy_file_range`, owner,
//! mode, mtime): two path lookups per file instead of seven, which is most of the time of a
//! COPY of many small files.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::copy::{CopyAttrs, Dest, Excluded, keep_mtime};

/// Fewer files than this are copied on the calling thread.
const PARALLEL_FROM: usize = 64;

/// A file to copy: its source, its target, and the source's metadata.
type FileJob = (PathBuf, PathBuf, fs::Metadata);

pub(crate) fn make_dir(target: &Path, md: &fs::Metadata, attrs: CopyAttrs) -> Result<(), String> {
    if !target.is_dir() {
        fs::create_dir(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    }
    apply_attrs(target, md, attrs, true)
}

/// Copies what the directory `src` holds into `dest` (which exists), leaving out what
/// `excluded` says; copied subdirectories keep their sources' mtimes.
pub(crate) fn copy_dir_contents(
    layer: &Dest<'_>,
    src: &Path,
    dest: &Path,
    attrs: CopyAttrs,
    excluded: Excluded<'_>,
) -> Result<(), String> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    make_dirs(src, dest, attrs, excluded, &mut files, &mut dirs)?;
    copy_files(layer, &files, attrs)?;
    for (dir, md) in &dirs {
        keep_mtime(dir, md)?;
    }
    Ok(())
}

/// Walks `src` in name order: makes each subdirectory under `dest` and lists it in `dirs`,
/// and lists every other entry in `files`.
fn make_dirs(
    src: &Path,
    dest: &Path,
    attrs: CopyAttrs,
    excluded: Excluded<'_>,
    files: &mut Vec<FileJob>,
    dirs: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<(), String> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(|e| format!("read {}: {e}", src.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read {}: {e}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let to = dest.join(e.file_name());
        let md = fs::symlink_metadata(&from).map_err(|e| format!("{}: {e}", from.display()))?;
        if excluded(&from, md.is_dir()) {
            continue;
        }
        if md.is_dir() {
            make_dir(&to, &md, attrs)?;
            make_dirs(&from, &to, attrs, excluded, files, dirs)?;
            dirs.push((to, md));
        } else {
            files.push((from, to, md));
        }
    }
    Ok(())
}

/// Copies (or links from the previous build's layer) every listed file, on as many threads
/// as there are cores; the first error stops the others.
fn copy_files(layer: &Dest<'_>, files: &[FileJob], attrs: CopyAttrs) -> Result<(), String> {
    let one = |(from, to, md): &FileJob| {
        if layer
            .previous
            .is_some_and(|p| p.link(layer, from, md, to, attrs))
        {
            return Ok(());
        }
        copy_known_entry(from, to, md, attrs)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if files.len() < PARALLEL_FROM || threads < 2 {
        return files.iter().try_for_each(one);
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(job) = files.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    if let Err(e) = one(job) {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies one file or symlink to `dest`, replacing a file already there.
pub(crate) fn copy_entry(src: &Path, dest: &Path, attrs: CopyAttrs) -> Result<(), String> {
    let md = fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if dest.is_dir() && !md.is_dir() {
        return Err(format!(
            "cannot copy file {} over directory {}",
            src.display(),
            dest.display()
        ));
    }
    let _ = fs::remove_file(dest);
    if md.file_type().is_symlink() {
        let t = fs::read_link(src).map_err(|e| format!("{}: {e}", src.display()))?;
        symlink(&t, dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
    } else {
        fs::copy(src, dest).map_err(|e| format!("copy {}: {e}", src.display()))?;
    }
    apply_attrs(dest, &md, attrs, false)
}

/// [`copy_entry`] for an entry whose metadata is known: a regular file that is not in the
/// way of anything is copied through its descriptors.
fn copy_known_entry(
    src: &Path,
    dest: &Path,
    md: &fs::Metadata,
    attrs: CopyAttrs,
) -> Result<(), String> {
    if !md.is_file() {
        return copy_entry(src, dest, attrs);
    }
    let (owner, mode) = owner_and_mode(md, attrs, false)?;
    let mut from = fs::File::open(src).map_err(|e| format!("copy {}: {e}", src.display()))?;
    let mut to = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
    {
        Ok(f) => f,
        // Something is there already (an earlier source of this COPY): the general way.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return copy_entry(src, dest, attrs);
        }
        Err(e) => return Err(format!("create {}: {e}", dest.display())),
    };
    let fail = |what: &str, e: io::Error| format!("{what} {}: {e}", dest.display());
    io::copy(&mut from, &mut to).map_err(|e| format!("copy {}: {e}", src.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&to, Some(uid), Some(gid)).map_err(|e| fail("chown", e))?;
    }
    to.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| fail("chmod", e))?;
    let mtime = md.modified().map_err(|e| fail("read mtime of", e))?;
    to.set_modified(mtime).map_err(|e| fail("set mtime of", e))
}

/// The owner to give a copy (`None`: leave it, as an unprivileged process must) and its mode.
/// Copied files belong to root unless `--chown` says otherwise; without privileges the
/// default can't be applied here (rootless builds do it inside the user namespace).
fn owner_and_mode(
    md: &fs::Metadata,
    attrs: CopyAttrs,
    is_dir: bool,
) -> Result<(Option<(u32, u32)>, u32), String> {
    let (uid, gid) = attrs.owner.unwrap_or((0, 0));
    let root = nix::unistd::geteuid().is_root();
    if attrs.owner.is_some_and(|o| o != (0, 0)) && !root {
        return Err(format!(
            "--chown to {uid}:{gid} needs root: rootless builds map only root for now"
        ));
    }
    let old = md.permissions().mode() & 0o7777;
    let mode = attrs.mode.map_or(old, |m| m.apply(old, is_dir));
    Ok((root.then_some((uid, gid)), mode))
}

pub(crate) fn apply_attrs(
    path: &Path,
    md: &fs::Metadata,
    attrs: CopyAttrs,
    is_dir: bool,
) -> Result<(), String> {
    let (owner, mode) = owner_and_mode(md, attrs, is_dir)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    if md.file_type().is_symlink() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    if !is_dir {
        let mtime = filetime::FileTime::from_last_modification_time(md);
        filetime::set_file_mtime(path, mtime)
            .map_err(|e| format!("set mtime of {}: {e}", path.display()))?;
    }
    Ok(())
}
