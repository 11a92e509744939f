//! Reading a big blob ahead of its consumer, on a thread of its own: a push uploads (or an
//! unpack decompresses) one piece while the next comes off the disk. A blob that was just
//! written with direct I/O (see `blob_file`) is not in the page cache, and a single thread
//! that alternates between waiting for the disk and sending made a 1 GiB push about 1.2 s
//! slower cold than warm here.

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, sync_channel};

/// Bytes per read on the reading thread.
const PIECE: usize = 4 << 20;
/// Pieces read but not yet consumed, at most.
const AHEAD: usize = 4;
/// Smaller blobs are read directly: one or two reads, no thread.
const THRESHOLD: u64 = 16 << 20;

/// `file` (of `len` bytes) as a reader that reads ahead when the blob is big.
pub(super) fn reader(file: File, len: u64) -> Box<dyn Read + Send> {
    if len < THRESHOLD {
        return Box::new(file);
    }
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(AHEAD);
    std::thread::spawn(move || {
        let mut file = file;
        loop {
            let mut piece = Vec::with_capacity(PIECE);
            match (&mut file).take(PIECE as u64).read_to_end(&mut piece) {
                Ok(0) => return,
                Ok(_) => {
                    // The consumer went away (dropped the reader): stop reading.
                    if tx.send(Ok(piece)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    Box::new(ReadAhead {
        pieces: rx,
        current: Vec::new(),
        at: 0,
        ended: false,
    })
}

struct ReadAhead {
    pieces: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            match self.pieces.recv() {
                Ok(Ok(piece)) => {
                    self.current = piece;
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                // The reading thread is done: the file ended.
                Err(_) => self.ended = true,
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_files_read_the_same_through_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(THRESHOLD as usize + 3 * PIECE + 12_345))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let mut r = reader(File::open(&path).unwrap(), data.len() as u64);
        let mut back = Vec::new();
        let mut buf = vec![0u8; 100_003];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert!(
            back == data,
            "read back {} bytes, other than written",
            back.len()
        );
        // A reader dropped half way stops its thread (the test ends without hanging).
        let mut r = reader(File::open(&path).unwrap(), data.len() as u64);
        r.read_exact(&mut buf).unwrap();
        drop(r);
    }
}
