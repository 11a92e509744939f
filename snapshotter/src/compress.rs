//! Layer compression: gzip (Docker's default) or zstd, both using every core, both giving
//! the same bytes on any machine for the same input.
//!
//! gzip is parallel the way pigz's independent-block mode is: the stream is cut into 1 MiB
//! pieces, each compressed on its own into a gzip member, and the members are written in
//! order. A multi-member gzip file is a valid gzip file (RFC 1952), which Go's, zlib's and
//! Python's readers all read whole. zstd uses the library's own worker threads, whose
//! output does not depend on how many workers there are.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use oci_spec::image::MediaType;
use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, ThreadedHashingWriter};
use crate::members::{MemberList, MemberSource, TarCutter};
use crate::parallel_gzip::{Members, ParallelGzip};

/// How layers are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip at a level 1-9 (default 6, as Go's `gzip.DefaultCompression`).
    Gzip(u32),
    /// zstd at a level 1-19 (default 3).
    Zstd(i32),
}

impl Default for LayerCompression {
    fn default() -> Self {
        LayerCompression::Gzip(6)
    }
}

impl LayerCompression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> MediaType {
        match self {
            LayerCompression::Gzip(_) => MediaType::ImageLayerGzip,
            LayerCompression::Zstd(_) => MediaType::ImageLayerZstd,
        }
    }
}

impl fmt::Display for LayerCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerCompression::Gzip(l) => write!(f, "gzip:{l}"),
            LayerCompression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

impl FromStr for LayerCompression {
    type Err = String;
    /// `gzip`, `gzip:9`, `zstd`, `zstd:19`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (
                n,
                Some(
                    l.parse::<i32>()
                        .map_err(|_| format!("invalid compression level in {s:?}"))?,
                ),
            ),
            None => (s, None),
        };
        match (name, level) {
            ("gzip", None) => Ok(LayerCompression::Gzip(6)),
            ("gzip", Some(l @ 1..=9)) => Ok(LayerCompression::Gzip(l as u32)),
            ("zstd", None) => Ok(LayerCompression::Zstd(3)),
            ("zstd", Some(l @ 1..=19)) => Ok(LayerCompression::Zstd(l)),
            ("gzip" | "zstd", Some(l)) => {
                Err(format!("compression level {l} is out of range for {name}"))
            }
            _ => Err(format!(
                "unknown compression {s:?} (gzip[:1-9] or zstd[:1-19])"
            )),
        }
    }
}

/// A writer that compresses, and must be finished to flush everything.
pub trait FinishWrite: Write + Send {
    /// Flushes the compressed stream to the end.
    fn finish(self: Box<Self>) -> io::Result<Encoded>;

    /// Writes exactly `len` bytes read from `src` (a file's data); fails if `src` ends first.
    fn write_from(&mut self, src: &mut dyn Read, len: u64) -> io::Result<()> {
        let copied = io::copy(&mut src.take(len), self)?;
        expect_len(copied, len)
    }
}

pub(crate) fn expect_len(copied: u64, len: u64) -> io::Result<()> {
    if copied == len {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("file ended after {copied} of {len} bytes (changed while read?)"),
    ))
}

/// What a finished encoder was given and kept.
#[derive(Debug)]
pub struct Encoded {
    /// The SHA-256 of the uncompressed input (a layer's diffID), computed on another thread
    /// while it was compressed.
    pub input_digest: Digest,
    /// The length of the uncompressed input.
    pub input_len: u64,
    /// The list of gzip members, when the encoder was asked to keep one.
    pub members: Option<MemberList>,
}

/// A compressing writer for `compression` over `out`.
pub fn encoder<'a, W: Write + Send + 'a>(
    compression: LayerCompression,
    out: W,
) -> io::Result<Box<dyn FinishWrite + 'a>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    Ok(match compression {
        LayerCompression::Gzip(level) => Box::new(ParallelGzip::new(
            out,
            level,
            threads as usize,
            Members::Fixed,
        )),
        LayerCompression::Zstd(level) => {
            let mut e = zstd::stream::write::Encoder::new(out, level)?;
            // At least one worker always, so the output is the same on every machine.
            e.multithread(threads.max(1))?;
            e.include_checksum(false)?;
            Box::new(ZstdWriter(ThreadedHashingWriter::new(e)))
        }
    })
}

/// A compressing writer for a layer of copied files: gzip members end at tar entry
/// boundaries, their list is kept (see [`crate::members`]), and members of an earlier blob of
/// the same COPY whose input did not change are taken from `earlier` instead of compressed.
/// zstd has no members: the same as [`encoder`].
pub fn copy_layer_encoder<'a, W: Write + Send + 'a>(
    compression: LayerCompression,
    out: W,
    earlier: Option<Arc<MemberSource>>,
) -> io::Result<Box<dyn FinishWrite + 'a>> {
    match compression {
        LayerCompression::Gzip(level) => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            Ok(Box::new(ParallelGzip::new(
                out,
                level,
                threads,
                Members::ByEntry {
                    cutter: TarCutter::default(),
                    earlier,
                    list: Vec::new(),
                },
            )))
        }
        LayerCompression::Zstd(_) => encoder(compression, out),
    }
}

/// A writer that only hashes what it is given (a layer's diffID, with nothing stored).
pub fn hash_only<'a>() -> Box<dyn FinishWrite + 'a> {
    Box::new(InputHash {
        hasher: Sha256::new(),
        len: 0,
    })
}

struct InputHash {
    hasher: Sha256,
    len: u64,
}

impl Write for InputHash {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FinishWrite for InputHash {
    fn finish(self: Box<Self>) -> io::Result<Encoded> {
        Ok(Encoded {
            input_digest: Digest::from_hasher(self.hasher),
            input_len: self.len,
            members: None,
        })
    }
}

struct ZstdWriter<'a, W: Write>(ThreadedHashingWriter<zstd::stream::write::Encoder<'a, W>>);

impl<W: Write + Send> Write for ZstdWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send> FinishWrite for ZstdWriter<'_, W> {
    fn finish(self: Box<Self>) -> io::Result<Encoded> {
        let (input_digest, input_len, encoder) = self.0.finish();
        encoder.finish()?.flush()?;
        Ok(Encoded {
            input_digest,
            input_len,
            members: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn data() -> Vec<u8> {
        (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 20) as u8 ^ (i % 7) as u8)
            .collect()
    }

    fn compress(c: LayerCompression, threads_hint: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = encoder(c, &mut out).unwrap();
        for chunk in data().chunks(threads_hint.len().max(1) * 7919) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap();
        out
    }

    #[test]
    fn parallel_gzip_is_valid_deterministic_gzip() {
        let a = compress(LayerCompression::Gzip(6), b"x");
        let b = compress(LayerCompression::Gzip(6), b"xyz");
        assert_eq!(
            a, b,
            "the output does not depend on how the input was written"
        );
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&a[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data());
        // And the same with a different number of workers.
        let mut one = Vec::new();
        let mut e: Box<dyn FinishWrite> =
            Box::new(ParallelGzip::new(&mut one, 6, 1, Members::Fixed));
        e.write_all(&data()).unwrap();
        e.finish().unwrap();
        assert_eq!(one, a);
        let mut empty = Vec::new();
        encoder(LayerCompression::Gzip(6), &mut empty)
            .unwrap()
            .finish()
            .unwrap();
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&empty[..])
            .read_to_string(&mut s)
            .unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn incompressible_blocks_are_stored_and_still_valid() {
        let random = crate::test_bytes::pseudo_random(7, 3 << 20);
        let mut out = Vec::new();
        let mut e = encoder(LayerCompression::Gzip(6), &mut out).unwrap();
        e.write_all(&random).unwrap();
        let encoded = e.finish().unwrap();
        assert_eq!(encoded.input_digest, Digest::of(&random));
        assert_eq!(encoded.input_len, random.len() as u64);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, random);
        assert!(
            out.len() < random.len() + random.len() / 100,
            "stored blocks add little"
        );
    }

    /// A tar of 1,000 text files of about 5 KiB, with file 300's body replaced by `middle`.
    fn tree_tar(middle: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..1000u32 {
            let body: Vec<u8> = if i == 300 {
                middle.to_vec()
            } else {
                (0..5000u32)
                    .map(|j| b"abcdefghij klmnop"[((i * 7 + j * j) % 17) as usize])
                    .collect()
            };
            let mut h = tar::Header::new_ustar();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("dir/file-{i:04}.txt"), &body[..])
                .unwrap();
        }
        b.into_inner().unwrap()
    }

    fn copy_layer(
        input: &[u8],
        earlier: Option<Arc<MemberSource>>,
        piece: usize,
    ) -> (Vec<u8>, MemberList) {
        let mut out = Vec::new();
        let mut e = copy_layer_encoder(LayerCompression::Gzip(6), &mut out, earlier).unwrap();
        for chunk in input.chunks(piece) {
            e.write_all(chunk).unwrap();
        }
        let list = e.finish().unwrap().members.expect("members are listed");
        (out, list)
    }

    #[test]
    fn copy_layers_take_unchanged_members_and_give_the_same_bytes() {
        let before = tree_tar(b"short");
        let after = tree_tar(&[b'x'; 20_000]);
        let (old_blob, old_list) = copy_layer(&before, None, 1 << 16);
        assert!(old_list.members.len() >= 3, "{}", old_list.members.len());
        // Where members end does not depend on how the stream was written.
        assert_eq!(
            copy_layer(&before, None, 777),
            (old_blob.clone(), old_list.clone())
        );

        let (fresh, fresh_list) = copy_layer(&after, None, 1 << 16);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&old_blob).unwrap();
        let source = Arc::new(MemberSource::new(file, &old_list));
        let (reused, reused_list) = copy_layer(&after, Some(source), 1 << 16);
        assert_eq!(reused, fresh, "taking members must not change a byte");
        assert_eq!(reused_list, fresh_list);
        // One file grew by 20 KB in the middle: every member but the one around it (which
        // the bigger file may split in two) is the same.
        let same = fresh_list
            .members
            .iter()
            .filter(|m| old_list.members.contains(m))
            .count();
        assert!(
            same + 2 >= fresh_list.members.len() && same >= 1,
            "{same} of {}",
            fresh_list.members.len()
        );
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&reused[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, after);
    }

    #[test]
    fn a_member_that_does_not_match_its_input_is_not_taken() {
        let input = tree_tar(b"short");
        let (blob, list) = copy_layer(&input, None, 1 << 16);
        // The list claims the members hold other input: their trailers say otherwise.
        let mut wrong = list.clone();
        wrong.members.rotate_left(1);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&blob).unwrap();
        let source = Arc::new(MemberSource::new(file, &wrong));
        let (out, _) = copy_layer(&input, Some(source), 1 << 16);
        assert_eq!(out, blob);
    }

    #[test]
    fn zstd_round_trips() {
        let z = compress(LayerCompression::Zstd(3), b"x");
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), data());
        assert_eq!(z, compress(LayerCompression::Zstd(3), b"xy"));
    }

    #[test]
    fn parses_compression_names() {
        assert_eq!(
            "zstd:19".parse::<LayerCompression>().unwrap(),
            LayerCompression::Zstd(19)
        );
        assert_eq!(
            "gzip".parse::<LayerCompression>().unwrap(),
            LayerCompression::Gzip(6)
        );
        assert!("zstd:30".parse::<LayerCompression>().is_err());
        assert!("lz4".parse::<LayerCompression>().is_err());
    }
}
