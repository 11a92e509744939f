//! Gzip members a later layer can take over unchanged.
//!
//! A COPY layer's tar is cut into gzip members at entry boundaries chosen by each entry alone
//! (a hash of its name against its size, `TarCutter`), so the same run of files gives the
//! same member wherever it sits in the stream, and a change moves only the members around it. The list of members (the SHA-256 of each one's input and its compressed
//! length, `MemberList`) is kept beside the layer; when the same COPY runs again after some
//! of its files changed, the members whose input is the same are copied from the earlier
//! blob (`MemberSource`) instead of being compressed again. A taken member is checked
//! against its gzip trailer (CRC-32 and length of the new input) before it is used, and
//! deflate is deterministic, so the blob has the bytes a fresh compression would give.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;

use sha2::{Digest as _, Sha256};

/// No cut before a member has this much input.
const MIN_MEMBER: usize = 64 << 10;
/// The input a member has on average: an entry of `n` bytes ends one with a chance of
/// `n / TARGET_MEMBER`, decided by a hash of its name.
const TARGET_MEMBER: u64 = 256 << 10;
/// A member never has more input than this (cut inside a large file's data).
pub(crate) const MAX_MEMBER: usize = 1 << 20;

/// A gzip blob's members in order: the SHA-256 of each one's uncompressed input and its
/// compressed length, with the compression level they were made at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberList {
    /// The gzip level the members were made at.
    pub level: u32,
    /// Per member: the SHA-256 of its input and its compressed length.
    pub members: Vec<([u8; 32], u64)>,
}

/// v4: members deflated by libdeflate (a list from before holds zlib's members, which a
/// fresh build would not make the same: it is not read, so outputs stay reproducible).
const HEADER: &str = "kiln-gzip-members v4 level ";

impl MemberList {
    /// The list as text: a header line, then `HEX LENGTH` per member.
    pub fn to_text(&self) -> String {
        let mut s = format!("{HEADER}{}\n", self.level);
        for (hash, len) in &self.members {
            for b in hash {
                s.push_str(&format!("{b:02x}"));
            }
            s.push_str(&format!(" {len}\n"));
        }
        s
    }

    /// Reads [`MemberList::to_text`]'s form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let level = lines.next()?.strip_prefix(HEADER)?.parse().ok()?;
        let members = lines
            .map(|line| {
                let (hex, len) = line.split_once(' ')?;
                if hex.len() != 64 {
                    return None;
                }
                let mut hash = [0u8; 32];
                for (i, b) in hash.iter_mut().enumerate() {
                    *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some((hash, len.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(MemberList { level, members })
    }
}

/// The members of an earlier blob, found by the SHA-256 of their input.
pub struct MemberSource {
    blob: File,
    level: u32,
    by_input: HashMap<[u8; 32], (u64, u64)>,
}

impl fmt::Debug for MemberSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberSource({} members)", self.by_input.len())
    }
}

impl MemberSource {
    /// The members `list` describes, in the blob file `blob`.
    pub fn new(blob: File, list: &MemberList) -> Self {
        let mut offset = 0;
        let mut by_input = HashMap::new();
        for (hash, len) in &list.members {
            by_input.entry(*hash).or_insert((offset, *len));
            offset += len;
        }
        MemberSource {
            blob,
            level: list.level,
            by_input,
        }
    }

    /// The earlier member made at `level` from input `data` (whose SHA-256 is `hash`), when
    /// there is one and its gzip header and trailer agree with `data`.
    pub(crate) fn take(&self, level: u32, data: &[u8], hash: &[u8; 32]) -> Option<Vec<u8>> {
        if level != self.level {
            return None;
        }
        let &(offset, len) = self.by_input.get(hash)?;
        // Stored blocks add 5 bytes per 64 KiB; a real member is never much larger.
        if len < 18 || len > data.len() as u64 + data.len() as u64 / 100 + 1024 {
            return None;
        }
        let mut member = vec![0; len as usize];
        self.blob.read_exact_at(&mut member, offset).ok()?;
        let n = member.len();
        let crc = u32::from_le_bytes(member[n - 8..n - 4].try_into().ok()?);
        let size = u32::from_le_bytes(member[n - 4..].try_into().ok()?);
        let mut want = flate2::Crc::new();
        want.update(data);
        (member[..3] == [0x1f, 0x8b, 8] && crc == want.sum() && size == data.len() as u32)
            .then_some(member)
    }
}

/// Where the member list of the blob `blob` is kept in the store at `root` (the builder
/// writes it there; [`crate::gc::collect`] removes it with the blob).
pub fn list_path(root: &std::path::Path, blob: &crate::Digest) -> std::path::PathBuf {
    root.join("cache/members").join(blob.hex())
}

/// The SHA-256 of a member's input.
pub(crate) fn input_hash(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Follows a tar stream's entries so members can end where an entry begins.
#[derive(Default)]
pub(crate) struct TarCutter {
    /// Stream offset of the next byte.
    pos: u64,
    /// Stream offset of the next header.
    next_header: u64,
    /// A header being collected across writes.
    header: Vec<u8>,
    /// The entry before the next header ends a member.
    cut_after: bool,
}

/// What to do with the next bytes of the stream.
pub(crate) enum Cut<'a> {
    /// Bytes of an entry's data (or the end-of-archive padding): append them.
    Data(&'a [u8]),
    /// A whole header: end the member here first when `cut`, then append it.
    Header { header: Vec<u8>, cut: bool },
    /// Part of a header, kept until the rest comes.
    Partial,
}

impl TarCutter {
    /// Takes the next piece of `data` (at most `room` bytes of entry data), given that the
    /// member being filled holds `filled` bytes; returns it and the rest of `data`.
    pub(crate) fn next<'a>(
        &mut self,
        data: &'a [u8],
        filled: usize,
        room: usize,
    ) -> (Cut<'a>, &'a [u8]) {
        if self.pos < self.next_header {
            let take = (data.len() as u64)
                .min(self.next_header - self.pos)
                .min(room as u64) as usize;
            self.pos += take as u64;
            return (Cut::Data(&data[..take]), &data[take..]);
        }
        let take = (512 - self.header.len()).min(data.len());
        self.header.extend_from_slice(&data[..take]);
        let rest = &data[take..];
        if self.header.len() < 512 {
            return (Cut::Partial, rest);
        }
        let header = std::mem::take(&mut self.header);
        let cut = self.cut_after && filled >= MIN_MEMBER;
        let span = 512 + entry_size(&header).div_ceil(512) * 512;
        self.pos += 512;
        self.next_header = self.pos + span - 512;
        self.cut_after = name_hash(&header) % TARGET_MEMBER < span;
        (Cut::Header { header, cut }, rest)
    }
}

impl TarCutter {
    /// The bytes of a header still being collected (at the end of the stream).
    pub(crate) fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.header)
    }
}

/// The size field of a tar header: octal digits, or base-256 when its top bit is set.
fn entry_size(header: &[u8]) -> u64 {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        return field[1..]
            .iter()
            .fold(0u64, |n, &b| n.saturating_mul(256).saturating_add(b as u64));
    }
    field
        .iter()
        .filter(|b| (b'0'..=b'7').contains(b))
        .fold(0u64, |n, &b| {
            n.saturating_mul(8).saturating_add((b - b'0') as u64)
        })
}

/// A hash of a header's name field, so where members end depends on the files' names:
/// FNV-1a, then MurmurHash3's finalizer. (FNV-1a alone is no good taken modulo a power of
/// two: its low bits barely change between names that differ in their last characters, so
/// `many/00` to `many/39` all fell on one side of the threshold and never ended a member.)
fn name_hash(header: &[u8]) -> u64 {
    let h = header[..100]
        .iter()
        .take_while(|&&b| b != 0)
        .fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_at_the_end_end_members_about_as_often_as_their_sizes_say() {
        // 100 entries of a quarter of the target size: about 25 should end a member (FNV-1a
        // alone gave 10).
        let ends = (0..100)
            .filter(|i| {
                let mut header = [0u8; 512];
                let name = format!("src/many/{i:02}");
                header[..name.len()].copy_from_slice(name.as_bytes());
                name_hash(&header) % TARGET_MEMBER < TARGET_MEMBER / 4
            })
            .count();
        assert!((16..40).contains(&ends), "{ends} of 100");
    }

    #[test]
    fn member_lists_round_trip_as_text() {
        let list = MemberList {
            level: 6,
            members: vec![([7; 32], 1234), ([0xab; 32], 5)],
        };
        assert_eq!(MemberList::parse(&list.to_text()), Some(list));
        assert_eq!(MemberList::parse("something else\n"), None);
        assert_eq!(MemberList::parse(&format!("{HEADER}6\nzz 1\n")), None);
    }

    #[test]
    fn sizes_come_from_octal_and_base_256_fields() {
        let mut h = [0u8; 512];
        h[124..135].copy_from_slice(b"00000001750");
        assert_eq!(entry_size(&h), 0o1750);
        let mut big = [0u8; 512];
        big[124] = 0x80;
        big[130] = 1;
        assert_eq!(entry_size(&big), 1 << 40);
        assert_eq!(entry_size(&[0u8; 512]), 0);
    }
}
