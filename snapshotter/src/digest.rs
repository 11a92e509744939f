//! Content digests (`sha256:<hex>`) and readers/writers that compute them on the fly.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::StoreError;
use crate::hash_lanes::Lane;

/// A content digest in the OCI form `sha256:<64 lower-case hex digits>`.
///
/// Only sha256 is supported, as in Docker and every registry kiln talks to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(h: Sha256) -> Self {
        Digest {
            hex: hex::encode(h.finalize()),
        }
    }

    /// The digest whose SHA-256 bytes these are.
    pub(crate) fn from_sha256(bytes: [u8; 32]) -> Self {
        Digest {
            hex: hex::encode(bytes),
        }
    }

    /// The 64 hex digits, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker images` shows IDs.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StoreError::InvalidDigest(s.to_string());
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Converts between kiln's [`Digest`] and the oci-spec type used in descriptors.
impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> Self {
        // A Digest is always a well-formed sha256 digest, which oci-spec accepts.
        oci_spec::image::Digest::from_str(&d.to_string()).expect("sha256 digest is valid")
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = StoreError;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, StoreError> {
        d.to_string().parse()
    }
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The digest and length of everything read so far, and the inner reader.
    pub fn finish(self) -> (Digest, u64, R) {
        (Digest::from_hasher(self.hasher), self.count, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts every byte written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The digest and length of everything written so far, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (Digest::from_hasher(self.hasher), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// [`HashingWriter`] with the hashing on a shared hashing thread ([`Lane`]), for big streams
/// where the writing thread has other work (a zstd layer's tar): bytes are batched and
/// handed over.
pub struct ThreadedHashingWriter<W> {
    inner: W,
    pending: Vec<u8>,
    lane: Lane,
    count: u64,
}

const HASH_BATCH: usize = 1 << 20;

impl<W: Write> ThreadedHashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        ThreadedHashingWriter {
            inner,
            pending: Vec::with_capacity(HASH_BATCH),
            lane: Lane::new(None),
            count: 0,
        }
    }

    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(HASH_BATCH));
        self.lane.update(std::sync::Arc::new(batch));
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(mut self) -> (Digest, u64, W) {
        self.hand_over();
        (self.lane.finish(), self.count, self.inner)
    }
}

impl<W: Write> Write for ThreadedHashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        self.count += n as u64;
        if self.pending.len() >= HASH_BATCH {
            self.hand_over();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threaded_hashing_matches_plain_hashing() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut t = ThreadedHashingWriter::new(Vec::new());
        for chunk in data.chunks(7777) {
            t.write_all(chunk).unwrap();
        }
        let (d, n, out) = t.finish();
        assert_eq!((d, n), (Digest::of(&data), data.len() as u64));
        assert_eq!(out, data);
    }

    #[test]
    fn digest_of_empty_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_rejects_malformed_digests() {
        for bad in [
            "",
            "sha256:",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} should be rejected");
        }
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d, Digest::of(b""));
    }

    #[test]
    fn hashing_reader_and_writer_agree_with_digest_of() {
        let data = b"kiln layers are content addressed".repeat(1000);
        let mut r = HashingReader::new(&data[..]);
        let mut out = Vec::new();
        io::copy(&mut r, &mut out).unwrap();
        let (d, n, _) = r.finish();
        assert_eq!((d.clone(), n), (Digest::of(&data), data.len() as u64));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (d2, n2, inner) = w.finish();
        assert_eq!((d2, n2), (d, n));
        assert_eq!(inner, data);
    }
}
