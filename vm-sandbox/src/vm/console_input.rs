//! What goes into a guest on its console's input (qemu's stdin): the caller's standard input
//! for an interactive run, and the signals meant for the step's process. Frames wait until
//! the guest reports [`Frame::Ready`] (its terminal raw); nothing is sent before, since the
//! guest's terminal would echo it.
//!
//! [`SignalForwarder`] catches the signals a container gets (`kiln stop`, `kill`, the
//! terminal's Ctrl-C) in the process that runs the VM, for the guest's process instead of
//! this one.

use std::fs;
use std::io::{Read as _, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use super::protocol::Frame;
use crate::SandboxError;

/// The bytes of standard input one frame carries.
const STDIN_CHUNK: usize = 1024;

/// What a run sends into its guest.
#[derive(Default)]
pub(crate) struct GuestInput {
    /// The step's standard input (the guest gives it `/dev/null` without).
    pub(crate) stdin: Option<Arc<OwnedFd>>,
    /// Signals for the step's process.
    pub(crate) signals: Option<Receiver<i32>>,
    /// The caller's terminal, whose size the step's terminal follows (checked five times a
    /// second).
    pub(crate) window: Option<Arc<OwnedFd>>,
}

/// How many bytes of standard input may be on their way to the guest, not yet taken by the
/// step: the window [`Frame::StdinTaken`] reopens. Without it a step that does not read its
/// input would have the rest pile up in the guest and the console's input back up, with
/// signals behind it.
const STDIN_WINDOW: u64 = 256 << 10;

/// Bytes of standard input the guest may still be sent.
#[derive(Default)]
struct Credit {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Credit {
    /// Waits until `n` bytes may go; false once the run has ended.
    fn take(&self, n: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 < n && !s.1 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.1 {
            return false;
        }
        s.0 -= n;
        true
    }

    fn give(&self, n: u64) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 += n;
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

/// The console reader's side of a run's input: what the guest says about it goes here.
/// Dropped when the guest's output ends, which stops the input threads.
pub(crate) struct InputHandle {
    frames: Sender<Frame>,
    credit: Arc<Credit>,
    done: Arc<AtomicBool>,
}

impl InputHandle {
    /// A frame from the guest about its input: [`Frame::Ready`] or [`Frame::StdinTaken`].
    pub(crate) fn guest_said(&self, frame: &Frame) {
        match frame {
            Frame::Ready => {
                let _ = self.frames.send(Frame::Ready);
            }
            Frame::StdinTaken(n) => self.credit.give(*n),
            _ => {}
        }
    }
}

impl Drop for InputHandle {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        self.credit.close();
    }
}

/// Starts the threads that feed `to` (the console's input: qemu's stdin, or the builtin
/// VMM's serial port). The writer ends when every source has
/// ended or qemu has gone; the thread reading the caller's standard input ends with its input,
/// the run, or the process.
pub(crate) fn start(input: GuestInput, mut to: impl Write + Send + 'static) -> InputHandle {
    let (tx, rx) = channel::<Frame>();
    let credit = Arc::new(Credit::default());
    credit.give(STDIN_WINDOW);
    let done = Arc::new(AtomicBool::new(false));
    if let Some(fd) = input.stdin {
        let tx = tx.clone();
        let credit = credit.clone();
        std::thread::spawn(move || {
            let Ok(fd) = fd.try_clone() else {
                let _ = tx.send(Frame::StdinEnd);
                return;
            };
            let mut from = fs::File::from(fd);
            let mut buf = vec![0u8; STDIN_CHUNK];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !credit.take(n as u64)
                            || tx.send(Frame::Stdin(buf[..n].to_vec())).is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Frame::StdinEnd);
        });
    }
    if let Some(signals) = input.signals {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for sig in signals {
                if tx.send(Frame::Signal(sig)).is_err() {
                    return;
                }
            }
        });
    }
    if let Some(term) = input.window {
        let tx = tx.clone();
        let done = done.clone();
        let initial = crate::tty::window_size(&*term);
        crate::tty::watch_window_size(term, initial, move |ws| match ws {
            _ if done.load(Ordering::SeqCst) => false,
            Some(ws) => tx.send(Frame::WindowSize(ws.ws_row, ws.ws_col)).is_ok(),
            None => true,
        });
    }
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let mut ready = false;
        for frame in rx {
            if frame == Frame::Ready {
                ready = true;
                for f in held.drain(..) {
                    if write_frame(&mut to, &f).is_err() {
                        return;
                    }
                }
            } else if ready {
                if write_frame(&mut to, &frame).is_err() {
                    return;
                }
            } else {
                held.push(frame);
            }
        }
    });
    InputHandle {
        frames: tx,
        credit,
        done,
    }
}

fn write_frame(to: &mut impl Write, frame: &Frame) -> std::io::Result<()> {
    to.write_all(&frame.encode())?;
    to.flush()
}

/// The signals a container's process gets through the process running its VM.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The write end of the forwarder's pipe, for the signal handler (-1: none).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `byte` lives for the call.
        #[allow(unsafe_code)]
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1)
        };
    }
}

/// While it lives, [`FORWARDED`] signals to this process are caught and passed to the
/// receiver [`SignalForwarder::install`] returns, instead of ending the process. One at a time
/// per process.
pub(crate) struct SignalForwarder {
    previous: Vec<(Signal, SigAction)>,
    /// The calling thread's signal mask before (the caller may have blocked these).
    mask: Option<SigSet>,
    write: Option<OwnedFd>,
}

impl SignalForwarder {
    pub(crate) fn install() -> Result<(SignalForwarder, Receiver<i32>), SandboxError> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SandboxError::Setup(format!("create a signal pipe: {e}")))?;
        use std::os::fd::AsRawFd as _;
        SIGNAL_PIPE.store(write.as_raw_fd(), Ordering::SeqCst);
        let mut forwarder = SignalForwarder {
            previous: Vec::new(),
            mask: None,
            write: Some(write),
        };
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in FORWARDED {
            // SAFETY: the handler only loads an atomic and calls write(2), both
            // async-signal-safe.
            #[allow(unsafe_code)]
            let old = unsafe { sigaction(sig, &action) }
                .map_err(|e| SandboxError::Setup(format!("catch {sig}: {e}")))?;
            forwarder.previous.push((sig, old));
        }
        let mut unblock = SigSet::empty();
        for sig in FORWARDED {
            unblock.add(sig);
        }
        forwarder.mask = unblock
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK)
            .ok();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut from = fs::File::from(read);
            let mut byte = [0u8; 1];
            while let Ok(1) = from.read(&mut byte) {
                if tx.send(i32::from(byte[0])).is_err() {
                    return;
                }
            }
        });
        Ok((forwarder, rx))
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        // The mask first: a signal that comes between the two then waits, blocked, instead of
        // meeting a default action the caller had blocked it from.
        if let Some(mask) = self.mask.take() {
            let _ = mask.thread_set_mask();
        }
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: puts back the action that was there before install.
            #[allow(unsafe_code)]
            let _ = unsafe { sigaction(sig, &old) };
        }
        SIGNAL_PIPE.store(-1, Ordering::SeqCst);
        // Closing the write end ends the reading thread, and with it the receiver's sender.
        self.write.take();
    }
}
