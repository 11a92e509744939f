//! Frames from the host on the console's input: the step's standard input (when the spec is
//! interactive), signals for its process and its terminal's size. A thread reads them from the moment the terminal
//! is raw; what comes before the step runs waits for it (input in a channel, signals in a
//! list).

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::AsRawFd as _;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::protocol::Frame;
use crate::sys;

/// The step's process once it runs, and the signals that came before it did.
struct Target {
    pid: Option<i32>,
    early: Vec<i32>,
}

static TARGET: Mutex<Target> = Mutex::new(Target {
    pid: None,
    early: Vec::new(),
});

/// Input for the step: bytes, then `None` at its end.
pub(crate) type StdinChunks = Receiver<Option<Vec<u8>>>;

/// Sets the console's input raw and starts the thread that reads frames from it; the step's
/// standard input arrives on the returned channel.
pub(crate) fn start(console: &str) -> Result<StdinChunks, String> {
    let tty = fs::File::open(console).map_err(|e| format!("open {console} for input: {e}"))?;
    sys::raw_input(tty.as_raw_fd()).map_err(|e| format!("set {console} raw: {e}"))?;
    let (tx, rx) = channel();
    std::thread::spawn(move || read_frames(tty, tx));
    Ok(rx)
}

fn read_frames(tty: fs::File, stdin: Sender<Option<Vec<u8>>>) {
    let mut reader = BufReader::new(tty);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        match Frame::decode(text) {
            Some(Frame::Stdin(data)) => {
                let _ = stdin.send(Some(data));
            }
            Some(Frame::StdinEnd) => {
                let _ = stdin.send(None);
            }
            Some(Frame::WindowSize(rows, cols)) => crate::terminal::resize(rows, cols),
            Some(Frame::Signal(sig)) => {
                let mut t = TARGET.lock().unwrap_or_else(|e| e.into_inner());
                match t.pid {
                    Some(pid) => sys::signal(pid, sig),
                    None => t.early.push(sig),
                }
            }
            _ => {}
        }
    }
}

/// The step's process has started as `pid`: signals go to it from now on (those that came
/// before are sent now).
pub(crate) fn step_started(pid: i32) {
    let mut t = TARGET.lock().unwrap_or_else(|e| e.into_inner());
    t.pid = Some(pid);
    for sig in std::mem::take(&mut t.early) {
        sys::signal(pid, sig);
    }
}

/// The step's process has ended: no more signals for its PID.
pub(crate) fn step_ended() {
    TARGET.lock().unwrap_or_else(|e| e.into_inner()).pid = None;
}

/// Copies the host's input into `pipe` (the step's standard input) on a thread of its own,
/// which a step that does not read cannot keep from signals; the pipe closes at the input's
/// end. Each chunk the step has taken is reported ([`Frame::StdinTaken`]): the host sends
/// no more than a window ahead, so input waiting here stays bounded and the console's input
/// never backs up behind it.
pub(crate) fn feed(chunks: StdinChunks, mut pipe: fs::File) {
    std::thread::spawn(move || {
        for chunk in chunks {
            match chunk {
                Some(data) if pipe.write_all(&data).is_ok() => {
                    crate::send(&Frame::StdinTaken(data.len() as u64));
                }
                _ => return,
            }
        }
    });
}
