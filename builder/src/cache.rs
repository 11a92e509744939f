//! The build cache: each layer-making step (RUN, COPY) has a content-addressed key, and a
//! miss can say why.
//!
//! A step's key is the sha256 of its [`StepInputs`] in canonical JSON: the chain ID of the
//! layers below it, the instruction as it will run (expanded), the environment, working
//! directory, user and network it runs with, and for COPY the content of its sources (path
//! relative to the context, mode and sha256 of each file; never mtimes, owners or where the
//! context lives). Keys are machine-independent.
//!
//! ```text
//! ROOT/cache/keys/KEYHEX        the layer a key made (descriptor, diffID)
//! ROOT/cache/last/SLOTHEX       the inputs a step had in the last build (for miss reasons)
//! ROOT/cache/files.json         stat -> content digest of context files (skips re-hashing)
//! ROOT/cache/members/BLOBHEX    the gzip members of a COPY layer's blob (for the next build
//!                               of that COPY to take the unchanged ones; snapshotter::members)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};
use snapshotter::Digest;

/// Everything a layer-making step depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInputs {
    /// Chain ID of the layers below (or `scratch`).
    pub parent: String,
    /// The instruction as it runs (RUN: the argv; COPY: sources, destination and flags).
    pub instruction: String,
    /// Environment the step sees (RUN), including build args.
    pub env: Vec<String>,
    /// Working directory, user, network.
    pub context: Vec<String>,
    /// COPY: `relative/path` -> `mode:sha256` (or `dir:mode`, `link:target`).
    pub files: BTreeMap<String, String>,
    /// The build's `SOURCE_DATE_EPOCH` (its layers' mtimes are clamped to it); left out of
    /// the key when unset, so keys from before it was part of them still match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
}

impl StepInputs {
    /// The cache key.
    pub fn key(&self) -> Digest {
        Digest::of(&serde_json::to_vec(self).expect("inputs serialize"))
    }
}

/// Why a step missed, compared with what it had in the previous build.
pub fn explain_miss(prev: Option<&StepInputs>, now: &StepInputs) -> String {
    let Some(prev) = prev else {
        return "not built before".into();
    };
    if prev.parent != now.parent {
        return "a step before it changed".into();
    }
    if prev.instruction != now.instruction {
        return "the instruction changed".into();
    }
    if prev.source_date_epoch != now.source_date_epoch {
        return "SOURCE_DATE_EPOCH changed".into();
    }
    let pairs = |v: &[String]| -> BTreeMap<String, String> {
        v.iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .unwrap_or((kv.clone(), String::new()))
            })
            .collect()
    };
    let (a, b) = (pairs(&prev.env), pairs(&now.env));
    for k in a.keys().chain(b.keys()) {
        if a.get(k) != b.get(k) {
            return format!("{k} changed");
        }
    }
    if prev.context != now.context {
        return "its working directory, user or network changed".into();
    }
    for (path, digest) in &now.files {
        match prev.files.get(path) {
            None => return format!("{path} was added"),
            Some(d) if d != digest => return format!("{path} changed"),
            _ => {}
        }
    }
    if let Some(path) = prev.files.keys().find(|p| !now.files.contains_key(*p)) {
        return format!("{path} was removed");
    }
    "its layer is no longer in the store".into()
}

/// A cached result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The layer blob.
    pub layer: Descriptor,
    /// Its diffID.
    pub diff_id: String,
}

/// The cache directory of a store.
pub struct Cache {
    dir: PathBuf,
    /// By absolute path (hashed: 20,000 long paths with long common prefixes made an ordered
    /// map's comparisons a tenth of an unchanged rebuild).
    files: HashMap<String, FileStamp>,
    files_dirty: bool,
}

/// What a context file looked like when it was last hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    digest: String,
}

impl FileStamp {
    /// Whether `md` is the stat this stamp was taken from.
    fn matches(&self, md: &fs::Metadata) -> bool {
        let now = stamp(md, String::new());
        (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
            == (now.dev, now.ino, now.size, now.mtime_ns, now.ctime_ns)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Cache {
    /// Opens the cache under a store root.
    pub fn open(root: &Path) -> Cache {
        let dir = root.join("cache");
        let files = fs::read(dir.join("files.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Cache {
            dir,
            files,
            files_dirty: false,
        }
    }

    /// The entry for a key, if any.
    pub fn get(&self, key: &Digest) -> Option<CacheEntry> {
        let bytes = fs::read(self.dir.join("keys").join(key.hex())).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records what a key made.
    pub fn put(&self, key: &Digest, entry: &CacheEntry) -> std::io::Result<()> {
        write_atomic(
            &self.dir.join("keys").join(key.hex()),
            &serde_json::to_vec(entry).expect("entry serializes"),
        )
    }

    /// The gzip members of a COPY layer's blob (see `snapshotter::members`), if listed.
    pub fn members(&self, blob: &Digest) -> Option<snapshotter::members::MemberList> {
        let root = self.dir.parent()?;
        let text = fs::read_to_string(snapshotter::members::list_path(root, blob)).ok()?;
        snapshotter::members::MemberList::parse(&text)
    }

    /// Lists a COPY layer blob's gzip members for the next build of that COPY.
    pub fn save_members(
        &self,
        blob: &Digest,
        list: &snapshotter::members::MemberList,
    ) -> std::io::Result<()> {
        let root = self.dir.parent().expect("the cache is inside a store root");
        write_atomic(
            &snapshotter::members::list_path(root, blob),
            list.to_text().as_bytes(),
        )
    }

    /// The blob written for a layer first made without one (see [`crate::unwritten`]), by
    /// diffID and compression.
    pub fn written_blob(&self, diff_id: &Digest, compression: &str) -> Option<Descriptor> {
        let path = self
            .dir
            .join("written")
            .join(format!("{}-{compression}", diff_id.hex()));
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    /// Remembers the blob written for a layer first made without one.
    pub fn save_written_blob(
        &self,
        diff_id: &Digest,
        compression: &str,
        blob: &Descriptor,
    ) -> std::io::Result<()> {
        write_atomic(
            &self
                .dir
                .join("written")
                .join(format!("{}-{compression}", diff_id.hex())),
            &serde_json::to_vec(blob).expect("descriptors serialize"),
        )
    }

    /// The inputs the step in `slot` had last time.
    pub fn last_inputs(&self, slot: &Digest) -> Option<StepInputs> {
        serde_json::from_slice(&fs::read(self.dir.join("last").join(slot.hex())).ok()?).ok()
    }

    /// Remembers a step's inputs for the next build's explanations.
    pub fn save_inputs(&self, slot: &Digest, inputs: &StepInputs) -> std::io::Result<()> {
        write_atomic(
            &self.dir.join("last").join(slot.hex()),
            &serde_json::to_vec(inputs).expect("inputs serialize"),
        )
    }

    /// Content digests of files (with their metadata), re-hashed only when their stat
    /// changed: the others come from the cache; those are read on every core.
    fn file_digests(&mut self, files: &[(PathBuf, fs::Metadata)]) -> std::io::Result<Vec<String>> {
        let mut digests: Vec<Option<String>> = files
            .iter()
            .map(|(path, md)| {
                let s = self.files.get(path.to_string_lossy().as_ref())?;
                s.matches(md).then(|| s.digest.clone())
            })
            .collect();
        let missing: Vec<usize> = (0..files.len()).filter(|&i| digests[i].is_none()).collect();
        let hashed = hash_files(files, &missing)?;
        for (i, digest) in missing.into_iter().zip(hashed) {
            let (path, md) = &files[i];
            self.files.insert(
                path.to_string_lossy().into_owned(),
                stamp(md, digest.clone()),
            );
            self.files_dirty = true;
            digests[i] = Some(digest);
        }
        Ok(digests
            .into_iter()
            .map(|d| d.expect("every file hashed"))
            .collect())
    }

    /// Hashes a COPY source (a file or a whole directory) into `out`, keyed by paths relative
    /// to `base` (the context root).
    pub fn hash_source(
        &mut self,
        base: &Path,
        src: &Path,
        out: &mut BTreeMap<String, String>,
        excluded: &dyn Fn(&Path, bool) -> bool,
    ) -> std::io::Result<()> {
        let mut files = Vec::new();
        walk_source(base, src, out, excluded, &mut files)?;
        let digests = self.file_digests(&files)?;
        for ((path, md), digest) in files.iter().zip(digests) {
            let mode = md.permissions().mode() & 0o7777;
            out.insert(relative(base, path), format!("{mode:o}:{digest}"));
        }
        Ok(())
    }

    /// Saves the file-hash cache (at the end of a build).
    pub fn flush(&self) {
        if self.files_dirty {
            let _ = write_atomic(
                &self.dir.join("files.json"),
                &serde_json::to_vec(&self.files).expect("stamps serialize"),
            );
        }
    }
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// What the file-hash cache keeps about a file: its stat, and its content digest.
fn stamp(md: &fs::Metadata, digest: String) -> FileStamp {
    FileStamp {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
        digest,
    }
}

/// Puts a source's symlinks and directories (with their modes) in `out`, and lists its
/// files, in name order, leaving out what `excluded` says.
fn walk_source(
    base: &Path,
    src: &Path,
    out: &mut BTreeMap<String, String>,
    excluded: &dyn Fn(&Path, bool) -> bool,
    files: &mut Vec<(PathBuf, fs::Metadata)>,
) -> std::io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    walk_entry(base, src.to_path_buf(), md, out, excluded, files)
}

/// [`walk_source`] from one entry whose metadata is known. Entries below a directory are
/// stat'ed relative to it (`DirEntry::metadata`: no walk of the whole path per file, which
/// was a third of an unchanged rebuild's time over 20,000 files).
fn walk_entry(
    base: &Path,
    path: PathBuf,
    md: fs::Metadata,
    out: &mut BTreeMap<String, String>,
    excluded: &dyn Fn(&Path, bool) -> bool,
    files: &mut Vec<(PathBuf, fs::Metadata)>,
) -> std::io::Result<()> {
    let mode = md.permissions().mode() & 0o7777;
    if md.file_type().is_symlink() {
        let target = fs::read_link(&path)?;
        out.insert(relative(base, &path), format!("link:{}", target.display()));
    } else if md.is_dir() {
        out.insert(relative(base, &path), format!("dir:{mode:o}"));
        let mut names: Vec<_> = fs::read_dir(&path)?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            if excluded(&p, e.file_type()?.is_dir()) {
                continue;
            }
            let md = e.metadata()?;
            walk_entry(base, p, md, out, excluded, files)?;
        }
    } else {
        files.push((path, md));
    }
    Ok(())
}

/// The SHA-256 of each file `files[i]` for `i` in `which`, in that order; read on up to four
/// threads when there are many.
fn hash_files(files: &[(PathBuf, fs::Metadata)], which: &[usize]) -> std::io::Result<Vec<String>> {
    let hash = |i: &usize| -> std::io::Result<String> {
        let mut f = fs::File::open(&files[*i].0)?;
        let mut h = snapshotter::HashingReader::new(&mut f);
        std::io::copy(&mut h, &mut std::io::sink())?;
        Ok(h.finish().0.to_string())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if which.len() < 64 || threads < 2 {
        return which.iter().map(hash).collect();
    }
    // Contiguous shares, so each thread reads files of the same directories.
    let share = which.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = which
            .chunks(share)
            .map(|part| s.spawn(move || part.iter().map(hash).collect::<Vec<_>>()))
            .collect();
        let mut all = Vec::with_capacity(which.len());
        for w in workers {
            for r in w.join().expect("hashing threads do not panic") {
                all.push(r?);
            }
        }
        Ok(all)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_location_and_mtime_but_not_content_or_mode() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for d in [a.path(), b.path()] {
            fs::create_dir_all(d.join("src")).unwrap();
            fs::write(d.join("src/main.rs"), "fn main() {}").unwrap();
        }
        filetime::set_file_mtime(
            b.path().join("src/main.rs"),
            filetime::FileTime::from_unix_time(1, 0),
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut cache = Cache::open(root.path());
        let inputs = |cache: &mut Cache, d: &Path| {
            let mut files = BTreeMap::new();
            cache
                .hash_source(d, &d.join("src"), &mut files, &|_, _| false)
                .unwrap();
            StepInputs {
                parent: "p".into(),
                instruction: "COPY src /app".into(),
                files,
                ..Default::default()
            }
        };
        let ia = inputs(&mut cache, a.path());
        assert_eq!(ia.key(), inputs(&mut cache, b.path()).key());
        fs::write(b.path().join("src/main.rs"), "fn main() { changed }").unwrap();
        let ib = inputs(&mut cache, b.path());
        assert_ne!(ia.key(), ib.key());
        assert_eq!(explain_miss(Some(&ia), &ib), "src/main.rs changed");
        fs::set_permissions(
            a.path().join("src/main.rs"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(inputs(&mut cache, a.path()).key(), ia.key(), "modes count");
        let mut env = ia.clone();
        env.env = vec!["VERSION=2".into()];
        assert_eq!(explain_miss(Some(&ia), &env), "VERSION changed");
    }
}
