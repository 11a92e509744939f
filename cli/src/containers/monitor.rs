//! Supervising one container from start to end: its streams into the log (and the
//! terminal, in the foreground), its first process's PID for the other commands, how it
//! ended, and `--rm`.
//!
//! A foreground `kiln run` supervises in its own process; `kiln run -d` starts
//! `kiln __kiln-container-monitor ROOT ID` in a new session and returns.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use nix::sys::signal::{SigSet, Signal};
use vm_sandbox::{RunIo, tty};

use super::logs::{LogWriter, pump};
use super::{Container, Containers, ExitRecord, now_rfc3339, process_start_time, write_atomically};

/// The first argument that makes the `kiln` binary a detached container's monitor.
pub(crate) const MONITOR_ARG: &str = "__kiln-container-monitor";

/// Where the container's streams go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attach {
    /// Only to the log (`run -d`).
    Detached,
    /// To the log and to this process's stdout/stderr; stdin passed on with `-i`.
    Foreground { interactive: bool },
}

/// `kiln __kiln-container-monitor ROOT ID`: a detached container's supervisor.
pub(crate) fn monitor_main(root: &Path, id: &str) -> anyhow::Result<i32> {
    let _ = nix::unistd::setsid();
    let containers = Containers::open(root)?;
    let ctr = containers.find(id)?;
    let rec = supervise(root, &containers, &ctr, Attach::Detached)?;
    Ok(rec.code())
}

/// Runs the container to its end and records how it ended.
pub(crate) fn supervise(
    root: &Path,
    containers: &Containers,
    ctr: &Container,
    attach: Attach,
) -> anyhow::Result<ExitRecord> {
    let me = std::process::id() as i32;
    let start = process_start_time(me).unwrap_or(0);
    write_atomically(&ctr.dir.join("monitor"), format!("{me} {start}").as_bytes())?;
    write_atomically(&ctr.dir.join("started"), now_rfc3339().as_bytes())?;
    let log = LogWriter::open(&ctr.log_path())?;
    let sandbox = crate::commands::sandbox(root)?;
    let rootfs = ctr.rootfs();
    let spec = &ctr.config.spec;

    let mut pumps = Vec::new();
    let mut terminal = None;
    // A microVM makes the step's terminal in the guest (its output comes back as stdout);
    // here the caller's terminal goes raw, and its size is followed.
    let mut vm_window = None;
    if spec.tty && ctr.config.vm.is_some() {
        let stdin_tty =
            attach != Attach::Detached && nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
        if stdin_tty {
            vm_window = Some(Arc::new(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("duplicate stdin")?,
            ));
            if matches!(attach, Attach::Foreground { .. }) {
                terminal = RawTerminal::enter();
            }
        }
    }
    let io = if spec.tty && ctr.config.vm.is_none() {
        let (io, session) = start_terminal(attach, Some(log.clone()))?;
        pumps.push(session.pump);
        terminal = session.raw;
        io
    } else {
        let stdin = match attach {
            Attach::Foreground { interactive: true } => Some(Arc::new(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("duplicate stdin")?,
            )),
            _ => None,
        };
        let mut ends = Vec::new();
        for stream in ["stdout", "stderr"] {
            let (r, w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create a pipe")?;
            let log2 = log.clone();
            let echo = attach != Attach::Detached;
            pumps.push(std::thread::spawn(move || {
                let mut out: Box<dyn Write> = if stream == "stdout" {
                    Box::new(std::io::stdout())
                } else {
                    Box::new(std::io::stderr())
                };
                pump(
                    File::from(r),
                    stream,
                    Some(&log2),
                    echo.then_some(out.as_mut()),
                );
            }));
            ends.push(Arc::new(w));
        }
        let stderr = ends.pop().expect("two pipes");
        let stdout = ends.pop().expect("two pipes");
        RunIo::Fds {
            stdin,
            stdout,
            stderr,
        }
    };

    // Terminal signals are the container's (the helper forwards them); this process waits.
    let mut blocked = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        blocked.add(s);
    }
    let _ = blocked.thread_block();
    let outcome = match &ctr.config.vm {
        Some(vm) => {
            // The VM's run catches them and passes them to the guest's process.
            vm_sandbox::MicroVmSandbox::new(vm.options(), root.join("vm")).run_container(
                &rootfs,
                spec,
                io,
                Some(&ctr.pid_path()),
                vm_window,
            )
        }
        None => sandbox.run_recording_pid(&rootfs, spec, io, Some(&ctr.pid_path())),
    };
    for p in pumps {
        let _ = p.join();
    }
    drop(terminal);
    let rec = match outcome {
        Ok(o) => ExitRecord {
            status: Some(o.status),
            error: None,
            finished: now_rfc3339(),
        },
        Err(e) => ExitRecord {
            status: None,
            error: Some(e.to_string()),
            finished: now_rfc3339(),
        },
    };
    ctr.record_exit(&rec)?;
    if ctr.config.auto_remove {
        ctr.remove(containers)?;
    }
    Ok(rec)
}

/// A pseudo-terminal between the container and the caller.
pub(crate) struct TerminalSession {
    /// Copies the terminal's output (to the log, and the caller's stdout when attached).
    pub(crate) pump: std::thread::JoinHandle<()>,
    /// The caller's terminal, raw while attached.
    pub(crate) raw: Option<RawTerminal>,
}

/// Opens a pseudo-terminal for a container (or an exec'd process): the size of the caller's
/// terminal, which goes raw and passes keystrokes on with `interactive`.
pub(crate) fn start_terminal(
    attach: Attach,
    log: Option<Arc<LogWriter>>,
) -> anyhow::Result<(RunIo, TerminalSession)> {
    let stdin_tty =
        attach != Attach::Detached && nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let size = if stdin_tty {
        tty::window_size(std::io::stdin())
    } else {
        None
    };
    let (master, slave) = tty::open_pty(size).context("open a pseudo-terminal")?;
    let master = Arc::new(master);
    let mut raw = None;
    if let Attach::Foreground { interactive } = attach {
        if stdin_tty {
            raw = RawTerminal::enter();
            // Keeps the container's terminal the size of ours.
            let master = master.clone();
            tty::watch_window_size(std::io::stdin(), size, move |ws| {
                if let Some(ws) = ws {
                    let _ = tty::set_window_size(master.as_fd(), ws);
                }
                true
            });
        }
        if interactive {
            forward_stdin(master.clone());
        }
    }
    let reader = File::from(master.try_clone().context("duplicate the terminal")?);
    let echo = attach != Attach::Detached;
    let pump = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        pump(
            reader,
            "stdout",
            log.as_deref(),
            echo.then_some(&mut out as &mut dyn Write),
        );
    });
    let slave = Arc::new(slave);
    let io = RunIo::Fds {
        stdin: Some(slave.clone()),
        stdout: slave.clone(),
        stderr: slave,
    };
    Ok((io, TerminalSession { pump, raw }))
}

/// The caller's terminal in raw mode until dropped.
pub(crate) struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let saved = tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Copies this process's stdin to the container's terminal (a detached thread: it ends with
/// the process).
fn forward_stdin(master: Arc<OwnedFd>) {
    std::thread::spawn(move || {
        let Ok(fd) = master.try_clone() else { return };
        let mut to = File::from(fd);
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}
