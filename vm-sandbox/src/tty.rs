//! Pseudo-terminals for `kiln run -t` and `kiln exec -t`: open a pair, read and set the
//! window size, make a terminal the controlling one. The `ioctl`s live here so that the
//! CLI needs no `unsafe`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

pub use nix::pty::Winsize;

#[allow(missing_docs, unreachable_pub)]
mod sys {
    use super::Winsize;
    nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, Winsize);
    nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, Winsize);
    nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);
}
use sys::{tiocgwinsz, tiocsctty, tiocswinsz};

/// A new pseudo-terminal pair, `(master, slave)`, with the given window size.
pub fn open_pty(size: Option<Winsize>) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let pair = nix::pty::openpty(size.as_ref(), None)?;
    Ok((pair.master, pair.slave))
}

/// The window size of the terminal `fd`, if it is one.
pub fn window_size(fd: impl AsFd) -> Option<Winsize> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into `ws`, which lives for the call; the
    // descriptor is borrowed and open.
    #[allow(unsafe_code)]
    let r = unsafe { tiocgwinsz(fd.as_fd().as_raw_fd(), &mut ws) };
    r.ok().map(|_| ws)
}

/// Sets the window size of the terminal `fd` (the master side; the kernel tells the
/// foreground process group with `SIGWINCH`).
pub fn set_window_size(fd: impl AsFd, ws: &Winsize) -> std::io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from `ws`, a valid reference for the
    // call; the descriptor is borrowed and open.
    #[allow(unsafe_code)]
    let r = unsafe { tiocswinsz(fd.as_fd().as_raw_fd(), ws) };
    r.map(|_| ()).map_err(std::io::Error::from)
}

/// Watches the size of the terminal `term` on a thread of its own, five times a second:
/// `tick` gets the new size when it changed since the last look (or since `initial`), `None`
/// otherwise, and returns false to stop watching.
pub fn watch_window_size<T: AsFd + Send + 'static>(
    term: T,
    initial: Option<Winsize>,
    mut tick: impl FnMut(Option<&Winsize>) -> bool + Send + 'static,
) {
    let key = |ws: &Option<Winsize>| ws.as_ref().map(|w| (w.ws_row, w.ws_col));
    std::thread::spawn(move || {
        let mut last = key(&initial);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = window_size(&term);
            let changed = key(&now) != last;
            last = key(&now);
            if !tick(now.as_ref().filter(|_| changed)) {
                return;
            }
        }
    });
}

/// Makes the terminal on `fd` the controlling terminal of the calling process, which must
/// lead a new session (`setsid`).
pub(crate) fn make_controlling(fd: impl AsFd) -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal from another session);
    // no memory is passed.
    #[allow(unsafe_code)]
    let r = unsafe { tiocsctty(fd.as_fd().as_raw_fd(), 0) };
    r.map(|_| ()).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_keeps_its_window_size() {
        let ws = Winsize {
            ws_row: 33,
            ws_col: 111,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let (master, slave) = open_pty(Some(ws)).unwrap();
        let got = window_size(&slave).unwrap();
        assert_eq!((got.ws_row, got.ws_col), (33, 111));
        set_window_size(
            &master,
            &Winsize {
                ws_row: 40,
                ws_col: 90,
                ..ws
            },
        )
        .unwrap();
        let got = window_size(&slave).unwrap();
        assert_eq!((got.ws_row, got.ws_col), (40, 90));
        // A pipe is not a terminal.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(window_size(&r).is_none());
    }
}
