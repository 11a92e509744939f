//! SHA-256 of big streams on shared hashing threads, two streams at a time per thread.
//!
//! A [`Lane`] is one stream's digest. Its producer hands it whole buffers ([`Lane::update`])
//! and gets on with its work; a hashing thread takes them from there. Each hashing thread
//! holds up to two lanes for preference (a new lane joins a thread that has one), and hashes
//! two lanes' blocks side by side on one core ([`crate::sha256_lanes::compress2`]), so a
//! layer's diffID and blob digest cost about the CPU time of one. A lane's buffers are
//! hashed in order; a lane never waits for another (one whose partner has nothing queued is
//! hashed alone), and a producer waits only while its own lane holds more than
//! [`QUEUED_MAX`] bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use crate::digest::Digest;
use crate::sha256_lanes::{H0, compress1, compress2};

/// Bytes a lane may hold unhashed before its producer waits.
const QUEUED_MAX: usize = 16 << 20;
/// Bytes of one lane hashed between two looks at the queues.
const STEP: usize = 1 << 20;

/// A buffer a lane hashes: the bytes it holds.
pub(crate) trait HashBuf: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl HashBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// One stream being hashed on a shared thread.
pub(crate) struct Lane {
    thread: Arc<HashThread>,
    id: u64,
    finished: bool,
}

struct HashThread {
    lanes: Mutex<Lanes>,
    /// The thread waits here for work.
    work: Condvar,
    /// Producers wait here for their lane to shrink or finish.
    progress: Condvar,
}

#[derive(Default)]
struct Lanes {
    by_id: BTreeMap<u64, LaneState>,
    next_id: u64,
    /// The lane picked last, so that the next pick starts after it (no lane starves).
    last_picked: u64,
}

struct LaneState {
    state: [u32; 8],
    /// Bytes of an unfinished block (fewer than 64).
    partial: Vec<u8>,
    len: u64,
    queue: VecDeque<Arc<dyn HashBuf>>,
    /// How far into the first queued buffer is hashed.
    offset: usize,
    queued: usize,
    busy: bool,
    /// Told once for every buffer the lane is done with.
    release: Option<Sender<()>>,
}

/// The threads, made on first use: one per two cores.
fn threads() -> &'static [Arc<HashThread>] {
    static THREADS: OnceLock<Vec<Arc<HashThread>>> = OnceLock::new();
    THREADS.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .max(1);
        (0..n)
            .map(|i| {
                let t = Arc::new(HashThread {
                    lanes: Mutex::new(Lanes::default()),
                    work: Condvar::new(),
                    progress: Condvar::new(),
                });
                let run = Arc::clone(&t);
                std::thread::Builder::new()
                    .name(format!("kiln-sha256-{i}"))
                    .spawn(move || run.serve())
                    .expect("start a hashing thread");
                t
            })
            .collect()
    })
}

impl Lane {
    /// A new stream; `release`, if given, is told each time a buffer is done with.
    pub(crate) fn new(release: Option<Sender<()>>) -> Lane {
        // Join a thread with one lane (the pair hashes together), else an idle one, else the
        // least busy.
        let count = |t: &Arc<HashThread>| t.lock().by_id.len();
        let thread = threads()
            .iter()
            .min_by_key(|t| match count(t) {
                1 => 0,
                0 => 1,
                n => n,
            })
            .expect("at least one hashing thread");
        let mut lanes = thread.lock();
        let id = lanes.next_id;
        lanes.next_id += 1;
        lanes.by_id.insert(
            id,
            LaneState {
                state: H0,
                partial: Vec::with_capacity(64),
                len: 0,
                queue: VecDeque::new(),
                offset: 0,
                queued: 0,
                busy: false,
                release,
            },
        );
        Lane {
            thread: Arc::clone(thread),
            id,
            finished: false,
        }
    }

    /// Queues `buf` to be hashed after everything given before; waits first while the lane
    /// holds more than [`QUEUED_MAX`] bytes.
    pub(crate) fn update(&self, buf: Arc<dyn HashBuf>) {
        let len = buf.bytes().len();
        if len == 0 {
            self.release(buf);
            return;
        }
        let t = &self.thread;
        let mut lanes = t.lock();
        while lanes.by_id[&self.id].queued >= QUEUED_MAX {
            lanes = t.progress.wait(lanes).unwrap_or_else(|p| p.into_inner());
        }
        let lane = lanes
            .by_id
            .get_mut(&self.id)
            .expect("a lane is there until dropped");
        lane.queue.push_back(buf);
        lane.queued += len;
        lane.len += len as u64;
        t.work.notify_one();
    }

    fn release(&self, buf: Arc<dyn HashBuf>) {
        drop(buf);
        let lanes = self.thread.lock();
        if let Some(tx) = &lanes.by_id[&self.id].release {
            let _ = tx.send(());
        }
    }

    /// The digest of everything given, once it is all hashed.
    pub(crate) fn finish(mut self) -> Digest {
        let mut lane = self.remove();
        self.finished = true;
        let len = lane.len;
        lane.partial.push(0x80);
        while lane.partial.len() % 64 != 56 {
            lane.partial.push(0);
        }
        lane.partial.extend_from_slice(&(len * 8).to_be_bytes());
        compress1(&mut lane.state, &lane.partial);
        let mut out = [0u8; 32];
        for (i, w) in lane.state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        Digest::from_sha256(out)
    }

    /// Takes the lane off its thread once nothing of it is queued or being hashed.
    fn remove(&self) -> LaneState {
        let t = &self.thread;
        let mut lanes = t.lock();
        loop {
            let lane = &lanes.by_id[&self.id];
            if lane.queued == 0 && !lane.busy {
                return lanes.by_id.remove(&self.id).expect("checked above");
            }
            lanes = t.progress.wait(lanes).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if !self.finished {
            // Abandoned (an error on the way): its buffers are still hashed and released.
            drop(self.remove());
        }
    }
}

/// One lane's share of a round: its next bytes, taken out of the lock.
struct Job {
    id: u64,
    buf: Arc<dyn HashBuf>,
    offset: usize,
    state: [u32; 8],
    partial: Vec<u8>,
}

impl Job {
    fn rest(&self) -> &[u8] {
        &self.buf.bytes()[self.offset..]
    }

    /// Completes a started block from the buffer.
    fn fill_partial(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let take = (64 - self.partial.len()).min(self.rest().len());
        let end = self.offset + take;
        self.partial
            .extend_from_slice(&self.buf.bytes()[self.offset..end]);
        self.offset = end;
        if self.partial.len() == 64 {
            compress1(&mut self.state, &self.partial);
            self.partial.clear();
        }
    }

    /// Whole blocks ready in the buffer, at most [`STEP`] bytes.
    fn whole(&self) -> usize {
        if !self.partial.is_empty() {
            return 0;
        }
        (self.rest().len() / 64 * 64).min(STEP)
    }

    /// Keeps the buffer's last bytes (less than a block) for the next buffer.
    fn keep_tail(&mut self) {
        let rest = self.rest().len();
        if rest > 0 && rest < 64 && self.partial.is_empty() {
            self.partial
                .extend_from_slice(&self.buf.bytes()[self.offset..]);
            self.offset += rest;
        }
    }
}

impl HashThread {
    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&self) {
        let mut lanes = self.lock();
        loop {
            let picked = lanes.pick();
            if picked.is_empty() {
                lanes = self.work.wait(lanes).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let mut jobs: Vec<Job> = picked
                .iter()
                .map(|&id| {
                    let lane = lanes.by_id.get_mut(&id).expect("picked lanes exist");
                    lane.busy = true;
                    Job {
                        id,
                        buf: Arc::clone(lane.queue.front().expect("picked lanes have work")),
                        offset: lane.offset,
                        state: lane.state,
                        partial: std::mem::take(&mut lane.partial),
                    }
                })
                .collect();
            drop(lanes);
            // A panic here would leave every producer of these lanes waiting for ever: end
            // the process loudly instead.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hash_round(&mut jobs)))
                .is_err()
            {
                eprintln!("kiln: the SHA-256 hashing thread failed");
                std::process::abort();
            }
            lanes = self.lock();
            for job in jobs {
                let lane = lanes.by_id.get_mut(&job.id).expect("busy lanes stay");
                lane.queued -= job.offset - lane.offset;
                lane.state = job.state;
                lane.partial = job.partial;
                lane.busy = false;
                if job.offset == job.buf.bytes().len() {
                    lane.queue.pop_front();
                    lane.offset = 0;
                    drop(job.buf);
                    if let Some(tx) = &lane.release {
                        let _ = tx.send(());
                    }
                } else {
                    lane.offset = job.offset;
                }
            }
            self.progress.notify_all();
        }
    }
}

impl Lanes {
    /// Up to two lanes with bytes queued, starting after the one picked last.
    fn pick(&mut self) -> Vec<u64> {
        let ready = |(id, l): (&u64, &LaneState)| (l.queued > 0 && !l.busy).then_some(*id);
        let after = self.by_id.range(self.last_picked + 1..).filter_map(ready);
        let before = self.by_id.range(..=self.last_picked).filter_map(ready);
        let picked: Vec<u64> = after.chain(before).take(2).collect();
        if let Some(&last) = picked.last() {
            self.last_picked = last;
        }
        picked
    }
}

/// Hashes the jobs' next bytes: two lanes' whole blocks side by side, as many as both have.
fn hash_round(jobs: &mut [Job]) {
    for job in jobs.iter_mut() {
        job.fill_partial();
    }
    match jobs {
        [a, b] if a.whole() > 0 && b.whole() > 0 => {
            let n = a.whole().min(b.whole());
            let (ao, bo) = (a.offset, b.offset);
            let (a_buf, b_buf) = (Arc::clone(&a.buf), Arc::clone(&b.buf));
            compress2(
                &mut a.state,
                &a_buf.bytes()[ao..ao + n],
                &mut b.state,
                &b_buf.bytes()[bo..bo + n],
            );
            a.offset += n;
            b.offset += n;
        }
        _ => {
            for job in jobs.iter_mut() {
                let n = job.whole();
                let at = job.offset;
                let buf = Arc::clone(&job.buf);
                compress1(&mut job.state, &buf.bytes()[at..at + n]);
                job.offset += n;
            }
        }
    }
    for job in jobs.iter_mut() {
        job.keep_tail();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        crate::test_bytes::pseudo_random(seed | 1, len)
    }

    /// Feeds `data` to a lane in pieces of the given sizes (cycled); returns how many.
    fn feed(lane: &Lane, data: &[u8], pieces: &[usize]) -> usize {
        let mut at = 0;
        let mut given = 0;
        for &p in pieces.iter().cycle() {
            if at >= data.len() {
                break;
            }
            let end = (at + p).min(data.len());
            lane.update(Arc::new(data[at..end].to_vec()));
            at = end;
            given += 1;
        }
        given
    }

    #[test]
    fn lanes_give_the_digest_of_their_bytes_whatever_the_pieces() {
        let data = bytes(3, 3 << 20 | 77);
        for (pieces, len) in [
            (&[1 << 20][..], data.len()),
            (&[1][..], 20_000),
            (&[63, 64, 65, 1000, 4096][..], data.len()),
            (&[5 << 20][..], data.len()),
        ] {
            let lane = Lane::new(None);
            feed(&lane, &data[..len], pieces);
            assert_eq!(lane.finish(), Digest::of(&data[..len]), "{pieces:?}");
        }
        let empty = Lane::new(None);
        empty.update(Arc::new(Vec::new()));
        assert_eq!(empty.finish(), Digest::of(b""));
    }

    #[test]
    fn lanes_fed_at_once_from_threads_each_get_their_own_digest() {
        let streams: Vec<Vec<u8>> = (0..5)
            .map(|i| bytes(i + 10, (i as usize + 1) * 700_001))
            .collect();
        std::thread::scope(|s| {
            for (i, data) in streams.iter().enumerate() {
                s.spawn(move || {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let lane = Lane::new(Some(tx));
                    let pieces = [[1 << 20, 333][i % 2], 4 << 20];
                    let given = feed(&lane, data, &pieces);
                    assert_eq!(lane.finish(), Digest::of(data), "stream {i}");
                    assert_eq!(rx.try_iter().count(), given, "every buffer released once");
                });
            }
        });
    }

    #[test]
    fn an_abandoned_lane_does_not_stop_the_others() {
        let data = bytes(7, 2 << 20);
        let dropped = Lane::new(None);
        dropped.update(Arc::new(data.clone()));
        let kept = Lane::new(None);
        kept.update(Arc::new(data.clone()));
        drop(dropped);
        assert_eq!(kept.finish(), Digest::of(&data));
    }
}
