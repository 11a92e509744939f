//! The step's pseudo-terminal (`kiln run -t`): made in the step's own devpts instance (its
//! `/dev/pts`), so that inside the root `tty` names it; the step's standard streams are its
//! slave, the init reads and writes its master, and window sizes from the host reach it.

use std::fs;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sys;

const O_NOCTTY: i32 = 0o400;

/// The master of the step's terminal, for window sizes.
static MASTER: Mutex<Option<fs::File>> = Mutex::new(None);

/// A new pseudo-terminal of `size` (rows, columns; 0 0: unknown) in the devpts instance
/// mounted at `pts`: its master, and its slave's path.
pub(crate) fn open(pts: &Path, size: (u16, u16)) -> Result<(fs::File, PathBuf), String> {
    let master = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOCTTY)
        .open(pts.join("ptmx"))
        .map_err(|e| format!("open a pseudo-terminal: {e}"))?;
    let n = sys::unlock_pty(master.as_raw_fd())
        .map_err(|e| format!("unlock the pseudo-terminal: {e}"))?;
    if size != (0, 0) {
        sys::set_window_size(master.as_raw_fd(), size.0, size.1)
            .map_err(|e| format!("size the pseudo-terminal: {e}"))?;
    }
    let kept = master
        .try_clone()
        .map_err(|e| format!("duplicate the terminal: {e}"))?;
    *MASTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
    Ok((master, pts.join(n.to_string())))
}

/// The slave at `path`, opened without making it this process's controlling terminal: the
/// init holds it until the step has ended, so the master reads EOF (EIO) only then, also when
/// the step never got to open it.
pub(crate) fn hold_slave(path: &Path) -> Result<fs::File, String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOCTTY)
        .open(path)
        .map_err(|e| format!("open the terminal {}: {e}", path.display()))
}

/// In the forked child: a new session whose controlling terminal is the slave at `path`,
/// which becomes its standard input, output and error.
pub(crate) fn attach(path: &Path) -> std::io::Result<()> {
    let slave = fs::OpenOptions::new().read(true).write(true).open(path)?;
    sys::take_terminal(slave.as_raw_fd())?;
    for fd in 0..3 {
        sys::duplicate_to(slave.as_raw_fd(), fd)?;
    }
    Ok(())
}

/// The host's terminal changed size: so does the step's.
pub(crate) fn resize(rows: u16, cols: u16) {
    if let Some(m) = MASTER.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let _ = sys::set_window_size(m.as_raw_fd(), rows, cols);
    }
}

/// The step has ended: its master is about to close.
pub(crate) fn forget() {
    MASTER.lock().unwrap_or_else(|e| e.into_inner()).take();
}
