//! Snapshots: each layer unpacked once into a directory keyed by its chain ID, in overlayfs
//! form (whiteouts as 0:0 character devices, opaque directories marked with
//! `trusted.overlay.opaque`), so a chain can be stacked as overlay lower directories.
//!
//! ```text
//! ROOT/snapshots/CHAINHEX/     one layer's files, ready to be an overlay lowerdir
//! ROOT/snapshots/tmp/          layers being unpacked and active (writable) snapshots
//! ```

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, HashingReader};
use crate::error::{IoContext, Result, StoreError};
use crate::layer::decompressed;
use crate::store::Store;

/// The overlayfs xattr that makes a directory hide what lower layers have under it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The same xattr for overlay mounts inside a user namespace (mount option `userxattr`),
/// where `trusted.*` is out of reach.
pub const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Whether a directory is marked opaque (either xattr).
pub fn is_opaque(dir: &Path) -> bool {
    [OPAQUE_XATTR, USER_OPAQUE_XATTR]
        .iter()
        .any(|x| xattr::get(dir, x).ok().flatten().as_deref() == Some(b"y"))
}

/// Marks a directory opaque with the xattr this process's overlay mounts read: `trusted.*`
/// as root, `user.*` where that is out of reach (rootless, in a user namespace, where
/// overlay is mounted with `userxattr`).
pub fn mark_opaque(dir: &Path) -> Result<()> {
    if nix::unistd::geteuid().is_root() && xattr::set(dir, OPAQUE_XATTR, b"y").is_ok() {
        return Ok(());
    }
    xattr::set(dir, USER_OPAQUE_XATTR, b"y").at("mark opaque", dir)
}

/// The chain ID of a layer on top of `parent` (OCI image spec): the ID of a stack of layers.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
    }
}

/// How a chain of layers becomes a root filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootMode {
    /// A kernel overlayfs mount over the layer directories (fast, nothing copied).
    Overlay,
    /// The layers copied into one directory, the changes found by comparison afterwards
    /// ([`crate::copyfs`]); for hosts without overlayfs.
    Copy,
}

impl RootMode {
    /// `KILN_SNAPSHOTTER=overlay|copy` if set, else overlay where the kernel has it.
    pub fn detect() -> RootMode {
        match std::env::var("KILN_SNAPSHOTTER").as_deref() {
            Ok("copy") => RootMode::Copy,
            Ok("overlay") => RootMode::Overlay,
            _ if fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")) => {
                RootMode::Overlay
            }
            _ => RootMode::Copy,
        }
    }
}

/// The snapshot directories under a store root.
#[derive(Clone, Debug)]
pub struct Snapshots {
    dir: PathBuf,
}

/// A writable snapshot being filled (a RUN step's upper directory, a COPY's new files).
/// Dropped without [`Snapshots::commit`], it is removed.
#[derive(Debug)]
pub struct Active {
    dir: PathBuf,
    /// Where new and changed files go (the overlay upper directory).
    pub upper: PathBuf,
    /// Overlayfs's work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// In [`RootMode::Copy`]: the directory holding the whole root, where the step runs.
    pub direct_root: Option<PathBuf>,
}

impl Active {
    /// After a step ran: in copy mode, compares the root with the layers it came from and
    /// writes the changes to `upper` (overlay mode needs nothing: the mount wrote them there).
    pub fn collect_changes(&self, lower_top_first: &[PathBuf]) -> Result<()> {
        match &self.direct_root {
            Some(root) => crate::copyfs::diff_dirs(lower_top_first, root, &self.upper),
            None => Ok(()),
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.dir.exists() {
            remove_in_background(&self.dir);
        }
    }
}

/// Renames `dir` aside and deletes it on a thread of its own. A step's overlay work directory
/// can take milliseconds to delete while the kernel is still unmounting it; the next step
/// need not wait for that ([`finish_removals`] does, at the end). What a killed process
/// leaves is under `snapshots/tmp`, which `kiln system prune` empties.
fn remove_in_background(dir: &Path) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = dir.with_file_name(format!("trash-{name}"));
    let doomed = if fs::rename(dir, &trash).is_ok() {
        trash
    } else {
        dir.to_path_buf()
    };
    let spawned = std::thread::Builder::new().name("remove".into()).spawn({
        let doomed = doomed.clone();
        move || {
            let _ = fs::remove_dir_all(&doomed);
        }
    });
    match spawned {
        Ok(handle) => REMOVALS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle),
        Err(_) => {
            let _ = fs::remove_dir_all(&doomed);
        }
    }
}

/// Deletions still running on their threads.
static REMOVALS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits for the snapshots dropped so far to be deleted (call before exiting).
pub fn finish_removals() {
    let pending = std::mem::take(&mut *REMOVALS.lock().unwrap_or_else(|p| p.into_inner()));
    for h in pending {
        let _ = h.join();
    }
}

impl Snapshots {
    /// Opens (creating) the snapshot area under the store root.
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("snapshots");
        fs::create_dir_all(dir.join("tmp")).at("create directory", dir.join("tmp"))?;
        // Snapshots are unrelated trees: ext4 should spread them (see `placement`).
        crate::placement::mark_top_directory(&dir);
        crate::placement::mark_top_directory(&dir.join("tmp"));
        Ok(Snapshots { dir })
    }

    /// The directory of a `RUN --mount=type=cache` with this id (kept between builds, next
    /// to the snapshots under the store root).
    pub fn cache_mount_dir(&self, id: &str) -> PathBuf {
        let parent = self.dir.parent().unwrap_or(&self.dir);
        parent
            .join("cache-mounts")
            .join(Digest::of(id.as_bytes()).hex())
    }

    /// Where the layer with this chain ID is (or would be) unpacked.
    pub fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.dir.join(chain.hex())
    }

    /// Unpacks `layer` (whose chain ID is `chain`) unless it already is; returns its directory.
    pub fn ensure_layer(
        &self,
        store: &dyn Store,
        chain: &Digest,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf> {
        let dest = self.layer_dir(chain);
        if dest.exists() {
            return Ok(dest);
        }
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.dir.join("tmp"))
            .at("create directory in", self.dir.join("tmp"))?;
        let digest = Digest::try_from(layer.digest())?;
        let fs_dir = tmp.path().join("fs");
        fs::create_dir(&fs_dir).at("create directory", &fs_dir)?;
        let blob = VerifyingReader::new(store.open(&digest)?, digest.clone());
        let mut plain = HashingReader::new(decompressed(blob)?);
        unpack_layer(&mut plain, &fs_dir)
            // The tar may end before the stream does (padding): all of it is the diffID's,
            // and reading to the end is also what checks the blob's digest.
            .and_then(|()| {
                io::copy(&mut plain, &mut io::sink())
                    .map_err(|e| StoreError::InvalidLayer(format!("read: {e}")))
            })
            .map_err(|e| match e {
                StoreError::InvalidLayer(m) => {
                    StoreError::InvalidLayer(format!("layer {digest}: {m}"))
                }
                e => e,
            })?;
        let (actual, _, _) = plain.finish();
        if actual != *diff_id {
            // Another image naming this diffID must not get this content under its chain.
            return Err(StoreError::InvalidLayer(format!(
                "layer {digest}: its content has diffID {actual}, the image config says {diff_id}"
            )));
        }
        self.publish(&fs_dir, &dest)?;
        Ok(dest)
    }

    /// Unpacks every layer of an image (bottom first) unless already unpacked; returns the
    /// chain IDs and directories, bottom first.
    pub fn ensure_image(
        &self,
        store: &dyn Store,
        image: &crate::image::StoredImage,
    ) -> Result<Vec<(Digest, PathBuf)>> {
        let layers = image.manifest.layers();
        let diff_ids = &image.config.rootfs.diff_ids;
        if layers.len() != diff_ids.len() {
            return Err(StoreError::InvalidLayer(format!(
                "image {} has {} layers but {} diff_ids",
                image.descriptor.digest(),
                layers.len(),
                diff_ids.len()
            )));
        }
        let mut out: Vec<(Digest, PathBuf)> = Vec::new();
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let diff_id: Digest = diff_id.parse()?;
            let chain = chain_id(out.last().map(|(c, _)| c), &diff_id);
            let dir = self.ensure_layer(store, &chain, layer, &diff_id)?;
            out.push((chain, dir));
        }
        Ok(out)
    }

    /// A new empty writable snapshot.
    pub fn prepare(&self) -> Result<Active> {
        let tmp = self.dir.join("tmp");
        let dir = tempfile::Builder::new()
            .prefix("active-")
            .tempdir_in(&tmp)
            .at("create directory in", &tmp)?
            .keep();
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&upper, &work] {
            fs::create_dir(d).at("create directory", d)?;
        }
        Ok(Active {
            dir,
            upper,
            work,
            direct_root: None,
        })
    }

    /// A writable root over `lower_top_first`: an empty upper directory for an overlay
    /// mount, or (copy mode) a directory holding a copy of the whole tree.
    pub fn prepare_root(&self, lower_top_first: &[PathBuf], mode: RootMode) -> Result<Active> {
        let mut active = self.prepare()?;
        if mode == RootMode::Copy {
            let root = active.dir.join("root");
            fs::create_dir(&root).at("create directory", &root)?;
            let bottom_first: Vec<PathBuf> = lower_top_first.iter().rev().cloned().collect();
            crate::copyfs::materialize(&bottom_first, &root)?;
            active.direct_root = Some(root);
        }
        Ok(active)
    }

    /// Keeps an active snapshot's upper directory as the layer with chain ID `chain`.
    pub fn commit(&self, active: Active, chain: &Digest) -> Result<PathBuf> {
        let dest = self.layer_dir(chain);
        self.publish(&active.upper, &dest)?;
        Ok(dest)
    }

    /// Renames a finished directory into place; another process may have won the race with
    /// the same content, which is as good.
    fn publish(&self, from: &Path, dest: &Path) -> Result<()> {
        match fs::rename(from, dest) {
            Ok(()) => Ok(()),
            Err(_) if dest.exists() => Ok(()),
            Err(e) => Err(e).at("rename into place", dest),
        }
    }
}

/// Unpacks a layer tar into `dest` in overlay form: `.wh.NAME` becomes a 0:0 character
/// device, `.wh..wh..opq` marks its directory opaque.
///
/// Nothing is ever written outside `dest`: names with `..` are refused, absolute names are
/// taken relative to `dest`, parent directories are created one by one and a parent that is
/// a symlink is followed only while it stays inside `dest`, hard links must point inside,
/// and overlay xattrs in the tar (`trusted.overlay.*`, `user.overlay.*`) are dropped so a
/// layer cannot steer the overlay mount.
pub fn unpack_layer(input: impl Read, dest: &Path) -> Result<()> {
    let bad = |why: String| StoreError::InvalidLayer(why);
    let root = fs::canonicalize(dest).at("resolve", dest)?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Directory mtimes change as entries land in them: set them once everything is in.
    let mut dir_times: Vec<(std::path::PathBuf, u64)> = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("read tar: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("read tar: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("bad path: {e}")))?
            .into_owned();
        let rel = contained_path(&raw)
            .ok_or_else(|| bad(format!("entry {} escapes the layer root", raw.display())))?;
        let Some(name) = rel.file_name().map(|n| n.to_owned()) else {
            continue;
        };
        let parent = safe_parent(&root, rel.parent().unwrap_or(Path::new("")))
            .map_err(|why| bad(format!("entry {}: {why}", raw.display())))?;
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            let hidden = std::ffi::OsStr::from_bytes(hidden);
            if hidden.as_bytes() == b".wh..opq" {
                mark_opaque(&parent)?;
                continue;
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(bad(format!("whiteout {} names no file", raw.display())));
            }
            let target = parent.join(hidden);
            if let Ok(md) = fs::symlink_metadata(&target) {
                if md.is_dir() {
                    crate::gc::remove_tree(&target)?;
                } else {
                    fs::remove_file(&target).at("remove", &target)?;
                }
            }
            make_whiteout(&target)?;
            continue;
        }
        if entry.header().entry_type().is_hard_link() {
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let inside =
                contained_path(&link).filter(|l| !link.is_absolute() && !l.as_os_str().is_empty());
            let Some(link_rel) = inside else {
                return Err(bad(format!(
                    "hard link {} points outside the layer ({})",
                    raw.display(),
                    link.display()
                )));
            };
            let src = root.join(&link_rel);
            let real = fs::canonicalize(&src).map_err(|_| {
                bad(format!(
                    "hard link {} points at a missing file {}",
                    raw.display(),
                    link.display()
                ))
            })?;
            if !real.starts_with(&root) {
                return Err(bad(format!(
                    "hard link {} points outside the layer ({})",
                    raw.display(),
                    link.display()
                )));
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            make_special(&entry, &parent.join(&name))
                .map_err(|e| bad(format!("entry {}: {e}", raw.display())))?;
            continue;
        }
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .flatten()
                .filter_map(|e| {
                    Some((
                        e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string(),
                        e.value_bytes().to_vec(),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        if kind.is_dir() {
            dir_times.push((parent.join(&name), entry.header().mtime().unwrap_or(0)));
        }
        if !entry
            .unpack_in(&root)
            .map_err(|e| bad(format!("unpack {}: {e}", raw.display())))?
        {
            return Err(bad(format!("entry {} was refused", raw.display())));
        }
        let target = parent.join(&name);
        for (k, v) in xattrs {
            if k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.") {
                tracing::warn!(path = %raw.display(), xattr = %k, "dropped an overlay xattr from a layer");
                continue;
            }
            if let Err(e) = xattr::set(&target, &k, &v) {
                tracing::warn!(path = %raw.display(), xattr = %k, error = %e, "could not set an xattr");
            }
        }
    }
    for (dir, mtime) in dir_times.iter().rev() {
        let t = filetime::FileTime::from_unix_time(*mtime as i64, 0);
        filetime::set_file_times(dir, t, t).at("set the mtime of", dir)?;
    }
    Ok(())
}

/// Creates a device node or fifo (the tar crate writes them as empty files). Device nodes
/// need privileges; without them the entry is skipped with a warning, as rootless Docker does.
fn make_special<R: Read>(
    entry: &tar::Entry<'_, R>,
    target: &Path,
) -> std::result::Result<(), String> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let h = entry.header();
    let kind = h.entry_type();
    let flag = if kind.is_fifo() {
        SFlag::S_IFIFO
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    let mode = h.mode().map_err(|e| e.to_string())? & 0o7777;
    let dev = makedev(
        u64::from(h.device_major().ok().flatten().unwrap_or(0)),
        u64::from(h.device_minor().ok().flatten().unwrap_or(0)),
    );
    if let Ok(md) = fs::symlink_metadata(target) {
        if md.is_dir() {
            crate::gc::remove_tree(target).map_err(|e| e.to_string())?;
        } else {
            fs::remove_file(target).map_err(|e| e.to_string())?;
        }
    }
    match mknod(target, flag, Mode::from_bits_truncate(mode), dev) {
        Ok(()) => {}
        Err(nix::errno::Errno::EPERM) if flag != SFlag::S_IFIFO => {
            tracing::warn!(path = %target.display(), "skipped a device node: creating it needs privileges");
            return Ok(());
        }
        Err(e) => return Err(format!("mknod: {e}")),
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    if nix::unistd::geteuid().is_root() {
        let uid = h.uid().map_err(|e| e.to_string())? as u32;
        let gid = h.gid().map_err(|e| e.to_string())? as u32;
        std::os::unix::fs::lchown(target, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let mtime = filetime::FileTime::from_unix_time(h.mtime().unwrap_or(0) as i64, 0);
    filetime::set_symlink_file_times(target, mtime, mtime).map_err(|e| e.to_string())?;
    Ok(())
}

/// Creates an overlay whiteout (a 0:0 character device; unprivileged users may make these on
/// Linux 5.8 and later).
pub(crate) fn make_whiteout(target: &Path) -> Result<()> {
    nix::sys::stat::mknod(
        target,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .map_err(std::io::Error::from)
    .at("create whiteout", target)
}

/// `path` relative to the root: leading `/` and `.` dropped; `None` if it climbs with `..`.
fn contained_path(path: &Path) -> Option<std::path::PathBuf> {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => return None,
            _ => {}
        }
    }
    Some(out)
}

/// Creates `rel` under `root` one directory at a time, following a symlink only when it
/// resolves inside `root`; returns the directory.
fn safe_parent(root: &Path, rel: &Path) -> std::result::Result<std::path::PathBuf, String> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                let real = fs::canonicalize(&cur)
                    .map_err(|e| format!("{} does not resolve: {e}", cur.display()))?;
                if !real.starts_with(root) || !real.is_dir() {
                    return Err(format!(
                        "its directory {} leads outside the layer",
                        cur.strip_prefix(root).unwrap_or(&cur).display()
                    ));
                }
                cur = real;
            }
            Ok(_) => {
                return Err(format!(
                    "{} is not a directory",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                ));
            }
            Err(_) => fs::create_dir(&cur).map_err(|e| format!("create {}: {e}", cur.display()))?,
        }
    }
    Ok(cur)
}

/// Checks a blob's digest as it is read; a mismatch is an error at the end of the stream.
struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
}

impl<R: Read> VerifyingReader<R> {
    fn new(inner: R, expected: Digest) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            expected,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
            if actual != self.expected.hex() {
                return Err(std::io::Error::other(format!(
                    "blob {} is corrupt (content hashes to sha256:{actual})",
                    self.expected
                )));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
