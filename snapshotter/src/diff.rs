//! Layer diff: a snapshot's upper directory (overlay form) becomes a deterministic OCI layer.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::image::DescriptorBuilder;

use crate::compress::{
    Encoded, FinishWrite, LayerCompression, copy_layer_encoder, encoder, hash_only,
};
use crate::digest::Digest;
use crate::error::{IoContext, Result, StoreError};
use crate::layer::Layer;
use crate::members::{MemberList, MemberSource};
use crate::snapshot::is_opaque;
use crate::store::Store;

/// How layer tars are written.
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Clamp every mtime to at most this (seconds since the epoch): `SOURCE_DATE_EPOCH`.
    pub clamp_mtime: Option<u64>,
    /// How the blob is compressed.
    pub compression: LayerCompression,
    /// Rootless: the host uid and gid that stand for root in the layer (the user namespace
    /// maps this one id to 0, so files on disk owned by it are root's in the image).
    pub root_owner: Option<(u32, u32)>,
    /// A layer of copied files: gzip members end at tar entries and are listed (see
    /// [`crate::members`]), and those of this earlier blob whose input is unchanged are
    /// taken from it.
    pub copied_files: Option<Option<std::sync::Arc<MemberSource>>>,
}

impl DiffOptions {
    /// Options from the environment (`SOURCE_DATE_EPOCH`).
    pub fn from_env() -> Self {
        DiffOptions {
            clamp_mtime: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
            compression: LayerCompression::default(),
            copied_files: None,
            root_owner: (!nix::unistd::geteuid().is_root()).then(|| {
                (
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw(),
                )
            }),
        }
    }
}

/// Writes the upper directory `upper` as a layer blob (compressed as `opts` says) into the
/// store.
///
/// Entries are sorted by name; owners are numeric with empty user and group names; no atime
/// or ctime; hardlinked files are stored once and linked; overlay whiteouts become `.wh.`
/// entries and opaque directories get `.wh..wh..opq`; names and link targets longer than the
/// ustar fields, and xattrs, go in PAX headers.
pub fn write_layer(store: &dyn Store, upper: &Path, opts: &DiffOptions) -> Result<Layer> {
    write_layer_listing_members(store, upper, opts).map(|(layer, _)| layer)
}

/// The diffID and tar length [`write_layer`] would give `upper`, with nothing compressed or
/// stored: the same tar stream, only hashed.
pub fn layer_diff_id(upper: &Path, opts: &DiffOptions) -> Result<(Digest, u64)> {
    let encoded = write_tar(upper, opts, hash_only())?;
    Ok((encoded.input_digest, encoded.input_len))
}

/// Writes the layer tar of `upper` into `sink` (which hashes it) and finishes it.
fn write_tar(upper: &Path, opts: &DiffOptions, sink: Box<dyn FinishWrite + '_>) -> Result<Encoded> {
    let mut tar = tar::Builder::new(sink);
    tar.follow_symlinks(false);
    let mut w = Walker {
        tar: &mut tar,
        opts,
        links: HashMap::new(),
    };
    w.dir(upper, Path::new(""))?;
    tar.into_inner()
        .and_then(|sink| sink.finish())
        .map_err(|e| StoreError::Stream("write layer", e))
}

/// [`write_layer`], returning too the list of gzip members of a layer of copied files
/// (`opts.copied_files`).
pub fn write_layer_listing_members(
    store: &dyn Store,
    upper: &Path,
    opts: &DiffOptions,
) -> Result<(Layer, Option<MemberList>)> {
    let mut blob = store.writer()?;
    let (diff_id, members) = {
        let compressed = match &opts.copied_files {
            Some(earlier) => copy_layer_encoder(opts.compression, &mut blob, earlier.clone()),
            None => encoder(opts.compression, &mut blob),
        }
        .map_err(|e| StoreError::Stream("start compressor", e))?;
        // One pass: the compressor hashes the tar (diffID) on its way in, and the blob
        // writer hashes the compressed bytes.
        let encoded = write_tar(upper, opts, compressed)?;
        (encoded.input_digest, encoded.members)
    };
    let (digest, size) = blob.commit(None)?;
    let layer = Layer {
        descriptor: DescriptorBuilder::default()
            .media_type(opts.compression.media_type())
            .digest(&digest)
            .size(size)
            .build()
            .expect("descriptor fields are set"),
        diff_id,
    };
    Ok((layer, members))
}

struct Walker<'a, 'w> {
    tar: &'a mut tar::Builder<Box<dyn FinishWrite + 'w>>,
    opts: &'a DiffOptions,
    /// (dev, inode) of multiply-linked files already written, and their path.
    links: HashMap<(u64, u64), PathBuf>,
}

/// The header of a `.wh.` marker: an empty root-owned file with a fixed time, so a layer does
/// not depend on when a deletion happened.
fn marker_header() -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h
}

/// Xattrs kept in layers: everything but overlayfs's own bookkeeping.
/// The extended attributes of `path` that belong in a layer (overlayfs's own left out),
/// sorted by name.
pub fn layer_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .filter_map(|n| n.into_string().ok())
        .filter(|n| !n.starts_with("trusted.overlay.") && !n.starts_with("user.overlay."))
        .filter_map(|n| xattr::get(path, &n).ok().flatten().map(|v| (n, v)))
        .collect();
    out.sort();
    out
}

impl Walker<'_, '_> {
    fn header(&self, md: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(md.mode() & 0o7777);
        let (uid, gid) = match self.opts.root_owner {
            Some((ru, rg)) => (
                if md.uid() == ru { 0 } else { md.uid() },
                if md.gid() == rg { 0 } else { md.gid() },
            ),
            None => (md.uid(), md.gid()),
        };
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        let mtime = md.mtime().max(0) as u64;
        h.set_mtime(self.opts.clamp_mtime.map_or(mtime, |c| mtime.min(c)));
        h.set_size(0);
        h
    }

    /// Writes one entry: a PAX header first when the name or link target does not fit the
    /// ustar fields or there are xattrs, then the ustar header and the data.
    fn put(
        &mut self,
        h: &mut tar::Header,
        path: &Path,
        link: Option<&Path>,
        xattrs: &[(String, Vec<u8>)],
        data: impl io::Read,
    ) -> Result<()> {
        self.put_header(h, path, link, xattrs)?;
        self.tar
            .append(h, data)
            .map_err(|e| StoreError::Stream("write layer entry", e))
    }

    /// Writes the PAX header an entry needs, and fills in the ustar header's names and
    /// checksum.
    fn put_header(
        &mut self,
        h: &mut tar::Header,
        path: &Path,
        link: Option<&Path>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let err = |e| StoreError::Stream("write layer entry", e);
        let name = path.as_os_str().as_bytes();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if name.len() > 100 {
            pax.push(("path".into(), name.to_vec()));
        }
        if let Some(l) = link
            && l.as_os_str().len() > 100
        {
            pax.push(("linkpath".into(), l.as_os_str().as_bytes().to_vec()));
        }
        for (k, v) in xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            self.tar
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(err)?;
        }
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name = [0; 100];
        old.name[..n].copy_from_slice(&name[..n]);
        if let Some(l) = link {
            let lb = l.as_os_str().as_bytes();
            let n = lb.len().min(100);
            old.linkname = [0; 100];
            old.linkname[..n].copy_from_slice(&lb[..n]);
        }
        h.set_cksum();
        Ok(())
    }

    /// [`Self::put`] for a regular file of `h.size()` bytes: the data goes to the compressor
    /// straight from the file (exactly that much of it), then the padding to a 512-byte block.
    fn put_file(
        &mut self,
        h: &mut tar::Header,
        path: &Path,
        xattrs: &[(String, Vec<u8>)],
        mut file: fs::File,
    ) -> Result<()> {
        let err = |e| StoreError::Stream("write layer entry", e);
        let size = h.size().map_err(err)?;
        self.put_header(h, path, None, xattrs)?;
        let w = self.tar.get_mut();
        w.write_all(h.as_bytes()).map_err(err)?;
        w.write_from(&mut file, size).map_err(err)?;
        let pad = (512 - size % 512) % 512;
        w.write_all(&[0; 512][..pad as usize]).map_err(err)
    }

    fn dir(&mut self, dir: &Path, rel: &Path) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .at("read directory", dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .at("read directory", dir)?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let md = fs::symlink_metadata(&path).at("stat", &path)?;
            let ft = md.file_type();
            if ft.is_char_device() && md.rdev() == 0 {
                let mut wh = std::ffi::OsString::from(".wh.");
                wh.push(&name);
                let mut h = marker_header();
                self.put(&mut h, &rel.with_file_name(wh), None, &[], io::empty())?;
            } else if ft.is_dir() {
                let mut h = self.header(&md, tar::EntryType::Directory);
                let mut dir_name = rel.clone().into_os_string();
                dir_name.push("/");
                self.put(
                    &mut h,
                    Path::new(&dir_name),
                    None,
                    &layer_xattrs(&path),
                    io::empty(),
                )?;
                if is_opaque(&path) {
                    let mut h = marker_header();
                    self.put(&mut h, &rel.join(".wh..wh..opq"), None, &[], io::empty())?;
                }
                self.dir(&path, &rel)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).at("read link", &path)?;
                let mut h = self.header(&md, tar::EntryType::Symlink);
                self.put(&mut h, &rel, Some(&target), &[], io::empty())?;
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    let key = (md.dev(), md.ino());
                    if let Some(first) = self.links.get(&key).cloned() {
                        let mut h = self.header(&md, tar::EntryType::Link);
                        self.put(&mut h, &rel, Some(&first), &[], io::empty())?;
                        continue;
                    }
                    self.links.insert(key, rel.clone());
                }
                let mut h = self.header(&md, tar::EntryType::Regular);
                h.set_size(md.len());
                let f = fs::File::open(&path).at("open", &path)?;
                let xattrs = layer_xattrs(&path);
                self.put_file(&mut h, &rel, &xattrs, f)?;
            } else {
                let kind = if ft.is_char_device() {
                    tar::EntryType::Char
                } else if ft.is_block_device() {
                    tar::EntryType::Block
                } else if ft.is_fifo() {
                    tar::EntryType::Fifo
                } else {
                    // Sockets are not kept in layers, as in Docker.
                    continue;
                };
                let mut h = self.header(&md, kind);
                let rdev = md.rdev();
                let _ = h.set_device_major(nix::sys::stat::major(rdev) as u32);
                let _ = h.set_device_minor(nix::sys::stat::minor(rdev) as u32);
                self.put(&mut h, &rel, None, &[], io::empty())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::OPAQUE_XATTR;
    use crate::snapshot::unpack_layer;
    use crate::store::MemStore;
    use std::io::Read;

    fn can_make_whiteouts() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("etc/conf.d")).unwrap();
        fs::write(dir.join("etc/hello"), b"hi").unwrap();
        fs::hard_link(dir.join("etc/hello"), dir.join("etc/hello2")).unwrap();
        std::os::unix::fs::symlink("/etc/hello", dir.join("link")).unwrap();
        fs::write(dir.join(format!("long-{}", "x".repeat(150))), b"long").unwrap();
        if can_make_whiteouts() {
            let wh = dir.join("etc/gone");
            nix::sys::stat::mknod(
                &wh,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .unwrap();
            xattr::set(dir.join("etc/conf.d"), OPAQUE_XATTR, b"y").unwrap();
        }
    }

    #[test]
    fn hashing_a_layer_gives_the_diff_id_writing_it_does() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        fs::write(dir.path().join("big"), vec![7u8; 3 << 20]).unwrap();
        for copied_files in [None, Some(None)] {
            let opts = DiffOptions {
                copied_files,
                ..DiffOptions::default()
            };
            let store = MemStore::new();
            let layer = write_layer(&store, dir.path(), &opts).unwrap();
            let (diff_id, len) = layer_diff_id(dir.path(), &opts).unwrap();
            assert_eq!(diff_id, layer.diff_id);
            assert_eq!(len % 512, 0);
            assert!(len > 3 << 20);
        }
    }

    fn entries(store: &MemStore, layer: &Layer) -> Vec<(String, tar::EntryType)> {
        let d = Digest::try_from(layer.descriptor.digest()).unwrap();
        let mut raw = Vec::new();
        flate2::read::MultiGzDecoder::new(store.open(&d).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(Digest::of(&raw), layer.diff_id);
        let mut a = tar::Archive::new(&raw[..]);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn layers_are_sorted_linked_and_whiteouts_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let store = MemStore::new();
        let layer = write_layer(&store, dir.path(), &DiffOptions::default()).unwrap();
        let got = entries(&store, &layer);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        // Depth-first, each directory's children in name order (a whiteout sorts under the
        // name it hides), as Docker and BuildKit write layers.
        let long = format!("long-{}", "x".repeat(150));
        let expected: Vec<&str> = if can_make_whiteouts() {
            vec![
                "etc/",
                "etc/conf.d/",
                "etc/conf.d/.wh..wh..opq",
                "etc/.wh.gone",
                "etc/hello",
                "etc/hello2",
                "link",
                &long,
            ]
        } else {
            vec![
                "etc/",
                "etc/conf.d/",
                "etc/hello",
                "etc/hello2",
                "link",
                &long,
            ]
        };
        assert_eq!(names, expected);
        assert!(
            got.contains(&("etc/hello2".into(), tar::EntryType::Link)),
            "{got:?}"
        );
        assert!(got.contains(&("link".into(), tar::EntryType::Symlink)));
        assert!(names.iter().any(|n| n.len() > 150), "long names survive");
        if can_make_whiteouts() {
            assert!(names.contains(&"etc/.wh.gone"), "{names:?}");
            assert!(names.contains(&"etc/conf.d/.wh..wh..opq"), "{names:?}");
            // And back: unpacking restores the overlay form.
            let out = tempfile::tempdir().unwrap();
            let d = Digest::try_from(layer.descriptor.digest()).unwrap();
            unpack_layer(
                flate2::read::MultiGzDecoder::new(store.open(&d).unwrap()),
                out.path(),
            )
            .unwrap();
            let md = fs::symlink_metadata(out.path().join("etc/gone")).unwrap();
            assert!(md.file_type().is_char_device() && md.rdev() == 0);
            assert_eq!(
                xattr::get(out.path().join("etc/conf.d"), OPAQUE_XATTR)
                    .unwrap()
                    .as_deref(),
                Some(&b"y"[..])
            );
            assert_eq!(fs::read(out.path().join("etc/hello2")).unwrap(), b"hi");
            let again = write_layer(&store, out.path(), &DiffOptions::default()).unwrap();
            assert_eq!(
                again.diff_id, layer.diff_id,
                "unpack then diff is the identity"
            );
        }
    }

    #[test]
    fn clamped_mtimes_make_layers_reproducible() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        tree(b.path());
        let store = MemStore::new();
        let opts = DiffOptions {
            clamp_mtime: Some(1_000_000),
            ..Default::default()
        };
        let la = write_layer(&store, a.path(), &opts).unwrap();
        let lb = write_layer(&store, b.path(), &opts).unwrap();
        assert_eq!(la.diff_id, lb.diff_id);
        assert_eq!(la.descriptor.digest(), lb.descriptor.digest());
    }
}
