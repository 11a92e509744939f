//! The host's side of a guest's serial console, whichever VMM runs it: each line is a frame
//! ([`Frame`]) for the step's streams or the run's report, or a line of the guest kernel's,
//! kept for error messages.

use std::io::Write;

use super::console_input::InputHandle;
use super::protocol::Frame;

/// What the guest reported, and how the VM ended.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) exited: Option<i32>,
    pub(crate) killed: Option<(i32, bool)>,
    pub(crate) failed: Option<String>,
    pub(crate) output: Option<u64>,
    pub(crate) mounts: Option<u64>,
    /// The guest kernel's last console lines.
    pub(crate) kernel_log: Vec<String>,
    /// The guest kernel's panic line, kept apart: the register dump and call trace after it
    /// can push it out of `kernel_log`.
    pub(crate) panic: Option<String>,
    pub(crate) timed_out: bool,
    /// The VMM was killed from outside (`SIGKILL`, as `kiln kill` does to a VM container).
    pub(crate) killed_from_outside: bool,
    /// The VMM's own error output.
    pub(crate) vmm_errors: String,
}

const KERNEL_LOG_LINES: usize = 40;

/// Reads a guest's console: the step's output goes to its streams as it arrives.
pub(crate) struct ConsoleReader {
    pub(crate) report: Report,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    to_guest: InputHandle,
    /// A line not ended yet (for [`ConsoleReader`] as a byte sink).
    partial: Vec<u8>,
}

impl ConsoleReader {
    pub(crate) fn new(
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
        to_guest: InputHandle,
    ) -> Self {
        ConsoleReader {
            report: Report::default(),
            stdout,
            stderr,
            to_guest,
            partial: Vec::new(),
        }
    }

    /// One console line, without its newline.
    pub(crate) fn line(&mut self, text: &[u8]) {
        let report = &mut self.report;
        match Frame::decode(text) {
            Some(Frame::Stdout(d)) => {
                let _ = self.stdout.write_all(&d).and_then(|()| self.stdout.flush());
            }
            Some(Frame::Stderr(d)) => {
                let _ = self.stderr.write_all(&d).and_then(|()| self.stderr.flush());
            }
            Some(Frame::Exited(code)) => report.exited = Some(code),
            Some(Frame::Killed { signal, oom }) => report.killed = Some((signal, oom)),
            Some(Frame::Failed(m)) => report.failed = Some(m),
            Some(Frame::Output(n)) => report.output = Some(n),
            Some(Frame::Mounts(n)) => report.mounts = Some(n),
            Some(f @ (Frame::Ready | Frame::StdinTaken(_))) => self.to_guest.guest_said(&f),
            Some(Frame::Stdin(_) | Frame::StdinEnd | Frame::Signal(_) | Frame::WindowSize(..)) => {}
            None => {
                let t = String::from_utf8_lossy(text).trim_end().to_string();
                tracing::debug!(target: "kiln::guest_kernel", "{t}");
                if report.panic.is_none() && t.contains("Kernel panic") {
                    report.panic = Some(t.clone());
                }
                if !t.is_empty() {
                    if report.kernel_log.len() == KERNEL_LOG_LINES {
                        report.kernel_log.remove(0);
                    }
                    report.kernel_log.push(t);
                }
            }
        }
    }

    /// The report, once the console has ended (a last unended line counts as a line).
    pub(crate) fn finish(mut self) -> Report {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last);
        }
        self.report
    }
}

/// Console bytes as they come from an emulated serial port.
impl Write for ConsoleReader {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
            } else {
                self.partial.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
