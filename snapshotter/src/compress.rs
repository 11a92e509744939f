//! Layer compression: gzip (Docker's default) or zstd, both using every core, both giving
//! the same bytes on any machine for the same input.
//!
//! gzip is parallel the way pigz's independent-block mode is: the stream is cut into 1 MiB
//! pieces, each compressed on its own into a gzip member, and the members are written in
//! order. A multi-member gzip file is a valid gzip file (RFC 1952), which Go's, zlib's and
//! Python's readers all read whole. zstd uses the library's own worker threads, whose
//! output does not depend on how many workers there are.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use oci_spec::image::MediaType;

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
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// A compressing writer for `compression` over `out`.
pub fn encoder<'a, W: Write + Send + 'a>(
    compression: LayerCompression,
    out: W,
) -> io::Result<Box<dyn FinishWrite + 'a>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    Ok(match compression {
        LayerCompression::Gzip(level) => Box::new(ParallelGzip::new(out, level, threads as usize)),
        LayerCompression::Zstd(level) => {
            let mut e = zstd::stream::write::Encoder::new(out, level)?;
            // At least one worker always, so the output is the same on every machine.
            e.multithread(threads.max(1))?;
            e.include_checksum(false)?;
            Box::new(ZstdWriter(e))
        }
    })
}

struct ZstdWriter<'a, W: Write>(zstd::stream::write::Encoder<'a, W>);

impl<W: Write + Send> Write for ZstdWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send> FinishWrite for ZstdWriter<'_, W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.flush()
    }
}

const GZIP_BLOCK: usize = 1 << 20;

/// Whether a block looks like data that deflate cannot shrink (already compressed or random):
/// its first 64 KiB compressed quickly save less than 2%. Such blocks are stored instead of
/// searched for matches, which costs deflate most of its time and gains nothing. The choice
/// depends only on the bytes, so the output stays deterministic.
fn incompressible(block: &[u8]) -> bool {
    let probe = &block[..block.len().min(64 << 10)];
    if probe.len() < 4096 {
        return false;
    }
    let mut z = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(probe.len()),
        flate2::Compression::fast(),
    );
    if z.write_all(probe).is_err() {
        return false;
    }
    z.finish()
        .is_ok_and(|out| out.len() * 100 > probe.len() * 98)
}

type Job = (u64, Vec<u8>);

/// gzip in independent 1 MiB members, compressed on worker threads, written in order.
struct ParallelGzip<W: Write> {
    out: W,
    buf: Vec<u8>,
    next_seq: u64,
    written_seq: u64,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<io::Result<(u64, Vec<u8>)>>,
    pending: BTreeMap<u64, Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
}

impl<W: Write> ParallelGzip<W> {
    fn new(out: W, level: u32, threads: usize) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (res_tx, res_rx) = sync_channel(threads * 4);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = res_tx.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((seq, data)) = job else { return };
                        let level = if incompressible(&data) { 0 } else { level };
                        let mut gz = flate2::write::GzEncoder::new(
                            Vec::with_capacity(data.len() / 2),
                            flate2::Compression::new(level),
                        );
                        let r = gz
                            .write_all(&data)
                            .and_then(|_| gz.finish())
                            .map(|c| (seq, c));
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ParallelGzip {
            out,
            buf: Vec::with_capacity(GZIP_BLOCK),
            next_seq: 0,
            written_seq: 0,
            jobs: Some(job_tx),
            results: res_rx,
            pending: BTreeMap::new(),
            workers,
        }
    }

    fn send_block(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(GZIP_BLOCK));
        let seq = self.next_seq;
        self.next_seq += 1;
        // Keep the number of blocks in flight bounded: drain results while the queue is full.
        let mut job = Some((seq, block));
        while let Some(j) = job.take() {
            match self.jobs.as_ref().expect("open").try_send(j) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(j)) => {
                    job = Some(j);
                    self.receive_one()?;
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    return Err(io::Error::other("gzip workers stopped"));
                }
            }
        }
        self.write_ready()
    }

    fn receive_one(&mut self) -> io::Result<()> {
        let (seq, data) = self
            .results
            .recv()
            .map_err(|_| io::Error::other("gzip workers stopped"))??;
        self.pending.insert(seq, data);
        self.write_ready()
    }

    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(data) = self.pending.remove(&self.written_seq) {
            self.out.write_all(&data)?;
            self.written_seq += 1;
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (GZIP_BLOCK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == GZIP_BLOCK {
                self.send_block()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send> FinishWrite for ParallelGzip<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        // An empty stream still gets one (empty) member, so it is valid gzip.
        if !self.buf.is_empty() || self.next_seq == 0 {
            self.send_block()?;
        }
        while self.written_seq < self.next_seq {
            self.receive_one()?;
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.out.flush()
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        self.jobs = None;
        // Workers exit once the job channel closes; results they still send are dropped.
        while self.results.try_recv().is_ok() {}
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
        let mut e: Box<dyn FinishWrite> = Box::new(ParallelGzip::new(&mut one, 6, 1));
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
        let mut x: u64 = 7;
        let random: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(incompressible(&random[..1 << 20]));
        assert!(!incompressible(&data()[..1 << 20]));
        let mut out = Vec::new();
        let mut e = encoder(LayerCompression::Gzip(6), &mut out).unwrap();
        e.write_all(&random).unwrap();
        e.finish().unwrap();
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
