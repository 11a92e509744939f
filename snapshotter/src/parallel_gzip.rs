//! Parallel gzip, the way pigz's independent-block mode is: the stream is cut into pieces
//! (1 MiB, or at tar entries for layers of copied files), each compressed on a worker thread
//! into a gzip member of its own, and the members written in order. The input is hashed on
//! the way (a layer's diffID) on a shared hashing thread ([`Lane`]), beside the blob's digest.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::compress::{Encoded, FinishWrite, expect_len};
use crate::gzip_member::{Member, make_member};
use crate::hash_lanes::Lane;
use crate::members::{Cut, MAX_MEMBER, MemberList, MemberSource, TarCutter, input_hash};

const GZIP_BLOCK: usize = 1 << 20;

type Job = (u64, Arc<Vec<u8>>);
/// A compressed member, with the SHA-256 of its input when members are listed.
type Done = (u64, Option<[u8; 32]>, Member);

/// Where members end, and what is kept about them.
pub(crate) enum Members {
    /// Every 1 MiB of input; no list.
    Fixed,
    /// At tar entry boundaries; listed, and taken from an earlier blob where they can be.
    ByEntry {
        cutter: TarCutter,
        earlier: Option<Arc<MemberSource>>,
        list: Vec<([u8; 32], u64)>,
    },
}

/// gzip in independent members (1 MiB of input, or cut at tar entries), compressed on
/// worker threads, written in order.
pub(crate) struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    next_seq: u64,
    written_seq: u64,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<io::Result<Done>>,
    pending: BTreeMap<u64, (Option<[u8; 32]>, Member)>,
    workers: Vec<JoinHandle<()>>,
    members: Members,
    /// Hashes the input, block by block in order.
    input_hash: Option<Lane>,
    input_len: u64,
}

impl<W: Write> ParallelGzip<W> {
    pub(crate) fn new(out: W, level: u32, threads: usize, members: Members) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (res_tx, res_rx) = sync_channel(threads * 4);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (listed, earlier) = match &members {
            Members::Fixed => (false, None),
            Members::ByEntry { earlier, .. } => (true, earlier.clone()),
        };
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = res_tx.clone();
                let earlier = earlier.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((seq, data)) = job else { return };
                        let hash = listed.then(|| input_hash(&data));
                        let r = make_member(level, &data, earlier.as_deref(), hash.as_ref())
                            .map(|c| (seq, hash, c));
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ParallelGzip {
            input_hash: Some(Lane::new(None)),
            input_len: 0,
            out,
            level,
            members,
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
        let block = Arc::new(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(GZIP_BLOCK),
        ));
        self.input_len += block.len() as u64;
        if let Some(lane) = &self.input_hash {
            lane.update(Arc::clone(&block) as _);
        }
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
        let (seq, hash, data) = self
            .results
            .recv()
            .map_err(|_| io::Error::other("gzip workers stopped"))??;
        self.pending.insert(seq, (hash, data));
        self.write_ready()
    }

    fn write_ready(&mut self) -> io::Result<()> {
        while let Some((hash, member)) = self.pending.remove(&self.written_seq) {
            member.write_to(&mut self.out)?;
            if let (Members::ByEntry { list, .. }, Some(hash)) = (&mut self.members, hash) {
                list.push((hash, member.len()));
            }
            self.written_seq += 1;
        }
        Ok(())
    }

    /// Fills members from a tar stream, ending them where [`TarCutter`] says.
    fn write_by_entry(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.buf.len() >= MAX_MEMBER {
                self.send_block()?;
            }
            let filled = self.buf.len();
            let Members::ByEntry { cutter, .. } = &mut self.members else {
                unreachable!("only called for members by entry")
            };
            let (cut, rest) = cutter.next(data, filled, MAX_MEMBER - filled);
            data = rest;
            match cut {
                Cut::Data(d) => self.buf.extend_from_slice(d),
                Cut::Header { header, cut } => {
                    if cut {
                        self.send_block()?;
                    }
                    self.buf.extend_from_slice(&header);
                }
                Cut::Partial => {}
            }
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        if matches!(self.members, Members::ByEntry { .. }) {
            self.write_by_entry(data)?;
            return Ok(n);
        }
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
    /// Reads straight into the block being filled (when members are not cut at entries),
    /// so a file's bytes are copied once on their way to the workers.
    fn write_from(&mut self, src: &mut dyn Read, len: u64) -> io::Result<()> {
        if matches!(self.members, Members::ByEntry { .. }) {
            let copied = io::copy(&mut src.take(len), self)?;
            return expect_len(copied, len);
        }
        let mut left = len;
        while left > 0 {
            let room = (GZIP_BLOCK - self.buf.len()) as u64;
            let want = room.min(left);
            let got = src.take(want).read_to_end(&mut self.buf)? as u64;
            left -= got;
            if self.buf.len() == GZIP_BLOCK {
                self.send_block()?;
            }
            if got < want {
                return expect_len(len - left, len);
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<Encoded> {
        if let Members::ByEntry { cutter, .. } = &mut self.members {
            // A header cut short (not a tar after all) still goes in.
            let partial = cutter.take_partial();
            self.buf.extend_from_slice(&partial);
        }
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
        self.out.flush()?;
        let input_digest = self
            .input_hash
            .take()
            .expect("hashing until finished")
            .finish();
        let members = match std::mem::replace(&mut self.members, Members::Fixed) {
            Members::Fixed => None,
            Members::ByEntry { list, .. } => Some(MemberList {
                level: self.level,
                members: list,
            }),
        };
        Ok(Encoded {
            input_digest,
            input_len: self.input_len,
            members,
        })
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        self.jobs = None;
        self.input_hash = None;
        // Workers exit once the job channel closes; results they still send are dropped.
        while self.results.try_recv().is_ok() {}
    }
}
