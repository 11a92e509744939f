//! One gzip member of a layer blob, made from one piece of the tar stream: taken from an
//! earlier blob when its input is the same, stored when deflate cannot shrink it, else
//! deflated at the layer's level.
//!
//! Members are whole buffers (a quarter to one MiB), so they are deflated by libdeflate, which
//! compresses a buffer in one call: at level 6 it took 1.16-1.24 s for the 116 MB tar of the
//! copy-many benchmark's files against zlib-rs's 1.58-1.80 s, at the same size (0.627 of the
//! input against 0.624). Its output depends only on the input, the level and libdeflate's
//! version (pinned in Cargo.lock), so builds stay reproducible.
//!
//! Stored members are written here rather than by zlib: a stored member is a fixed header,
//! the input in blocks of at most 65,535 bytes behind a 5-byte block header, and the CRC-32
//! and length of the input. Writing it straight into a buffer of its final size copies the
//! input once; going through the deflate stream copies it two or three times (window,
//! pending buffer, output), which on a 1 GiB layer of random data cost more than a second.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::Arc;

use libdeflater::{CompressionLvl, Compressor};

use crate::members::MemberSource;

/// Input bytes probed to decide whether a piece is worth deflating.
const PROBE: usize = 16 << 10;

/// The largest stored block (its length field is 16 bits).
const STORED_BLOCK: usize = 65_535;

/// Whether a piece looks like data that deflate cannot shrink (already compressed or
/// random): its first 16 KiB compressed quickly save less than 2%. Such pieces are stored
/// instead of searched for matches, which costs deflate most of its time and gains nothing.
/// The choice depends only on the bytes, so the output stays deterministic.
pub(crate) fn incompressible(piece: &[u8]) -> bool {
    if piece.len() < 4096 {
        return false;
    }
    let probe = &piece[..piece.len().min(PROBE)];
    let mut z = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(probe.len() + 64),
        flate2::Compression::fast(),
    );
    if z.write_all(probe).is_err() {
        return false;
    }
    z.finish()
        .is_ok_and(|out| out.len() * 100 > probe.len() * 98)
}

/// A member as a worker hands it over: its bytes, or the input it stores as it is.
pub(crate) enum Member {
    /// A deflated member, or one taken from an earlier blob.
    Bytes(Vec<u8>),
    /// `data` in stored blocks, with its CRC-32: [`Member::write_to`] writes the framing
    /// around slices of the input, so the input is copied once, into the blob, instead of
    /// first into a member of its own (0.14 s of CPU for a 1 GiB layer of random data).
    Stored { data: Arc<Vec<u8>>, crc: u32 },
}

/// The gzip header flate2 writes for level 0: no name, no mtime, "fastest" flag, OS unknown.
const STORED_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

impl Member {
    /// `data` as a stored member.
    pub(crate) fn stored(data: Arc<Vec<u8>>) -> Member {
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        Member::Stored {
            crc: crc.sum(),
            data,
        }
    }

    /// The member's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Member::Bytes(b) => b.len() as u64,
            Member::Stored { data, .. } => {
                let blocks = data.len().div_ceil(STORED_BLOCK).max(1);
                (STORED_HEADER.len() + blocks * 5 + data.len() + 8) as u64
            }
        }
    }

    /// Writes the member: for a stored one, the header, the blocks (the last marked final),
    /// then the CRC-32 and the length modulo 2^32.
    pub(crate) fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let (data, crc) = match self {
            Member::Bytes(b) => return out.write_all(b),
            Member::Stored { data, crc } => (data, *crc),
        };
        out.write_all(&STORED_HEADER)?;
        if data.is_empty() {
            out.write_all(&[1, 0, 0, 0xff, 0xff])?;
        }
        let mut chunks = data.chunks(STORED_BLOCK).peekable();
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let len = chunk.len() as u16;
            let n = (!len).to_le_bytes();
            let l = len.to_le_bytes();
            out.write_all(&[u8::from(last), l[0], l[1], n[0], n[1]])?;
            out.write_all(chunk)?;
        }
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&crc.to_le_bytes());
        trailer[4..].copy_from_slice(&(data.len() as u32).to_le_bytes());
        out.write_all(&trailer)
    }
}

/// A gzip member holding `data` in stored deflate blocks (see [`Member::write_to`]).
#[cfg(test)]
pub(crate) fn stored_member(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Member::stored(Arc::new(data.to_vec()))
        .write_to(&mut out)
        .expect("writing to a Vec");
    out
}

/// One member: taken from the earlier blob when it has this input (whose SHA-256 is
/// `hash`), stored when [`incompressible`], else deflated at `level`.
pub(crate) fn make_member(
    level: u32,
    data: &Arc<Vec<u8>>,
    earlier: Option<&MemberSource>,
    hash: Option<&[u8; 32]>,
) -> io::Result<Member> {
    if let (Some(source), Some(hash)) = (earlier, hash)
        && let Some(member) = source.take(level, data, hash)
    {
        return Ok(Member::Bytes(member));
    }
    if incompressible(data) {
        return Ok(Member::stored(Arc::clone(data)));
    }
    deflated_member(level, data).map(Member::Bytes)
}

thread_local! {
    /// Each worker thread's compressor (its tables are allocated once per thread and level).
    static COMPRESSOR: RefCell<Option<(u32, Compressor)>> = const { RefCell::new(None) };
}

/// A gzip member holding `data` deflated at `level` (libdeflate's gzip framing: no name, mtime
/// 0).
fn deflated_member(level: u32, data: &[u8]) -> io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((l, c)) if *l == level => c,
            _ => {
                let lvl = i32::try_from(level)
                    .ok()
                    .and_then(|l| CompressionLvl::new(l).ok())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("gzip level {level} is out of range"),
                        )
                    })?;
                &mut slot.insert((level, Compressor::new(lvl))).1
            }
        };
        let mut out = vec![0; compressor.gzip_compress_bound(data.len())];
        let len = compressor
            .gzip_compress(data, &mut out)
            .map_err(|e| io::Error::other(format!("deflate a layer piece: {e:?}")))?;
        out.truncate(len);
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn random(len: usize) -> Vec<u8> {
        crate::test_bytes::pseudo_random(0x9e37_79b9_7f4a_7c15, len)
    }

    fn gunzip(member: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(member)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn stored_members_are_gzip_that_reads_back() {
        for len in [
            0,
            1,
            STORED_BLOCK - 1,
            STORED_BLOCK,
            STORED_BLOCK + 1,
            3 * STORED_BLOCK,
            1 << 20,
        ] {
            let data = random(len);
            let member = stored_member(&data);
            assert_eq!(gunzip(&member), data, "length {len}");
            let blocks = len.div_ceil(STORED_BLOCK).max(1);
            assert_eq!(member.len(), 10 + 5 * blocks + len + 8, "length {len}");
        }
    }

    #[test]
    fn stored_members_are_what_zlib_writes_at_level_zero() {
        // The same bytes as flate2's level 0 (so either way gives one layer digest).
        let data = random(200_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(0));
        gz.write_all(&data).unwrap();
        let zlib = gz.finish().unwrap();
        assert_eq!(gunzip(&zlib), data);
        assert_eq!(&stored_member(&data)[..10], &zlib[..10], "header");
        assert_eq!(
            &stored_member(&data)[stored_member(&data).len() - 8..],
            &zlib[zlib.len() - 8..],
            "trailer"
        );
    }

    #[test]
    fn only_pieces_deflate_cannot_shrink_are_stored() {
        let text: Vec<u8> = (0..1u32 << 20)
            .map(|i| b"the quick brown fox "[(i % 20) as usize])
            .collect();
        assert!(incompressible(&random(1 << 20)));
        assert!(!incompressible(&text));
        assert!(!incompressible(&random(4000)), "small pieces are deflated");
        let bytes = |m: Member| {
            let mut out = Vec::new();
            m.write_to(&mut out).unwrap();
            assert_eq!(out.len() as u64, m.len());
            out
        };
        let member = make_member(6, &Arc::new(random(1 << 20)), None, None).unwrap();
        assert!(matches!(member, Member::Stored { .. }));
        assert_eq!(bytes(member), stored_member(&random(1 << 20)));
        let member = bytes(make_member(6, &Arc::new(text.clone()), None, None).unwrap());
        assert!(member.len() < text.len() / 100);
        assert_eq!(gunzip(&member), text);
    }
}
