//! Layers: compression detection, importing a tar stream as a layer blob, and unpacking a
//! layer onto a directory.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path};

use oci_spec::image::{Descriptor, DescriptorBuilder};

use crate::compress::{FinishWrite, LayerCompression, encoder};
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::Store;

/// How a tar stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// Recognizes the compression from the first bytes of a stream (its magic number).
    ///
    /// Formats kiln does not read yet give an error that names them.
    pub fn detect(head: &[u8]) -> Result<Compression> {
        let unsupported = |name: &str| {
            Err(StoreError::InvalidLayer(format!(
                "{name}-compressed input is not supported yet (decompress it first)"
            )))
        };
        match head {
            [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
            [b'B', b'Z', b'h', ..] => unsupported("bzip2"),
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => unsupported("xz"),
            _ => Ok(Compression::None),
        }
    }

    /// Wraps a reader of compressed data in the matching decoder.
    pub fn decoder<'a>(self, r: impl BufRead + Send + 'a) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(r)
                    .map_err(|e| StoreError::Stream("start zstd decoder", e))?,
            ),
        })
    }
}

/// A layer in the store: its blob's descriptor and the digest of its uncompressed tar.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The compressed blob.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar (the image config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
}

/// Opens a possibly compressed stream, detecting its compression by content.
pub fn decompressed<'a>(input: impl Read + Send + 'a) -> Result<Box<dyn Read + Send + 'a>> {
    let mut buffered = BufReader::with_capacity(1 << 20, input);
    let head = buffered
        .fill_buf()
        .map_err(|e| StoreError::Stream("read input", e))?;
    Compression::detect(head)?.decoder(buffered)
}

/// Copies everything read from `inner` into `sink` as well.
struct Tee<R, W> {
    inner: R,
    sink: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn bad_tar(why: impl std::fmt::Display) -> StoreError {
    // The tar crate quotes whole headers in some messages; keep the first clause only.
    let why = why.to_string();
    let why = why.split(" when getting").next().unwrap_or(&why);
    let why: String = why.chars().take(120).collect();
    StoreError::InvalidLayer(format!("not a valid tar archive: {why}"))
}

/// Stores a tar stream (plain, gzip or zstd, detected by content) as a gzip layer blob.
pub fn import_tar(store: &dyn Store, input: impl Read + Send) -> Result<Layer> {
    import_tar_as(store, input, LayerCompression::default())
}

/// Stores a tar stream (plain, gzip or zstd, detected by content) as a layer blob compressed
/// with `compression`.
///
/// The stream is checked entry by entry while it is hashed and compressed, in one pass:
/// malformed headers, truncated entries and paths that climb out of the root are rejected,
/// and then nothing is published. The diffID is the digest of the exact uncompressed bytes.
pub fn import_tar_as(
    store: &dyn Store,
    input: impl Read + Send,
    compression: LayerCompression,
) -> Result<Layer> {
    let plain = decompressed(input)?;
    let mut blob = store.writer()?;
    let diff_id = check_and_compress(
        plain,
        encoder(compression, &mut blob).map_err(|e| StoreError::Stream("start compressor", e))?,
    )?;
    let (digest, compressed_size) = blob.commit(None)?;
    Ok(Layer {
        descriptor: DescriptorBuilder::default()
            .media_type(compression.media_type())
            .digest(&digest)
            .size(compressed_size)
            .build()
            .expect("descriptor fields are set"),
        diff_id,
    })
}

/// Reads the tar through `plain`, checking each entry, while `sink` compresses the bytes;
/// returns the diffID.
fn check_and_compress<R: Read>(plain: R, sink: Box<dyn FinishWrite + '_>) -> Result<Digest> {
    let mut archive = tar::Archive::new(Tee { inner: plain, sink });
    let mut entries_seen = 0u64;
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(|e| {
            // The tar crate's text can quote raw header bytes: log it, keep the message clean.
            tracing::debug!(error = %e, "tar header rejected");
            if entries_seen == 0 {
                bad_tar("no tar header at the start of the input")
            } else {
                bad_tar(format!("corrupt header after entry {entries_seen}"))
            }
        })?;
        let path = entry.path().map_err(bad_tar)?.into_owned();
        check_entry_path(&path)?;
        let expected = entry.size();
        let copied = io::copy(&mut entry, &mut io::sink()).map_err(bad_tar)?;
        if copied != expected {
            return Err(bad_tar(format!(
                "entry {} is truncated ({copied} of {expected} bytes)",
                path.display()
            )));
        }
        entries_seen += 1;
    }
    let mut tee = archive.into_inner();
    // The end-of-archive blocks (and any padding) belong to the layer's bytes too.
    io::copy(&mut tee, &mut io::sink()).map_err(bad_tar)?;
    // The compressor hashed every byte the archive read (the diffID).
    let encoded = tee
        .sink
        .finish()
        .map_err(|e| StoreError::Stream("compress layer", e))?;
    if encoded.input_len == 0 {
        return Err(bad_tar("the input is empty"));
    }
    let diff_id = encoded.input_digest;
    tracing::debug!(entries = entries_seen, bytes = encoded.input_len, %diff_id, "layer read");
    Ok(diff_id)
}

/// Rejects absolute-looking paths that climb above the root with `..`.
fn check_entry_path(path: &Path) -> Result<()> {
    let mut depth: i64 = 0;
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(bad_tar(format!(
                "entry {} escapes the root",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
        // Enough varied data that compressed output spans several chunks.
        let big: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "big", &big[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn every_compression_gives_the_same_diff_id() {
        let tar = sample_tar();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let store = MemStore::new();
        let mut blobs = Vec::new();
        for input in [&tar, &gz, &zst] {
            let layer = import_tar(&store, &input[..]).unwrap();
            assert_eq!(layer.diff_id, Digest::of(&tar));
            let d = Digest::try_from(layer.descriptor.digest()).unwrap();
            let blob = store.read_verified(&d).unwrap();
            assert_eq!(gunzip(&blob), tar, "the blob holds the exact tar bytes");
            blobs.push(d);
        }
        assert!(
            blobs.windows(2).all(|w| w[0] == w[1]),
            "same bytes, same blob: {blobs:?}"
        );
    }

    #[test]
    fn rejects_garbage_empty_truncated_and_escaping_input() {
        let store = MemStore::new();
        let err = |input: &[u8]| import_tar(&store, input).unwrap_err().to_string();
        assert!(err(b"").contains("empty"));
        assert!(err(&[b'x'; 1024]).contains("not a valid tar archive"));
        let tar = sample_tar();
        assert!(err(&tar[..512 + 2]).contains("truncated"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        assert!(err(&gz[..gz.len() / 2]).contains("not a valid tar archive"));
        assert!(err(b"BZh91AY&SY").contains("bzip2"));

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        // set_path refuses "..", so write the name field directly.
        h.as_old_mut().name[..11].copy_from_slice(b"../../evil\0");
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        assert!(err(&b.into_inner().unwrap()).contains("escapes the root"));
        // Nothing was published by any of the failures.
        assert!(store.images().unwrap().is_empty());
    }
}
