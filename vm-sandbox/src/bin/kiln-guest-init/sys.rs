//! The few C library calls the guest init needs beyond `std`, declared by hand: the init is
//! compiled by a plain `rustc` call (to link it statically), so it has no crates.

use std::ffi::{CString, c_char, c_int, c_long, c_ulong, c_void};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

pub(crate) const MS_RDONLY: c_ulong = 1;
pub(crate) const MS_NOSUID: c_ulong = 2;
pub(crate) const MS_NODEV: c_ulong = 4;
pub(crate) const MS_NOEXEC: c_ulong = 8;
pub(crate) const MS_REMOUNT: c_ulong = 32;
pub(crate) const MS_BIND: c_ulong = 4096;
pub(crate) const MS_STRICTATIME: c_ulong = 1 << 24;
const MNT_DETACH: c_int = 2;
const S_IFCHR: u32 = 0o020000;
const SYS_FINIT_MODULE: c_long = 313;
const O_CLOEXEC: c_int = 0o2000000;
const RB_POWER_OFF: c_int = 0x4321_fedc_u32 as c_int;
pub(crate) const SIGKILL: c_int = 9;

unsafe extern "C" {
    fn mount(
        src: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn umount2(target: *const c_char, flags: c_int) -> c_int;
    fn mknod(path: *const c_char, mode: u32, dev: u64) -> c_int;
    fn syscall(n: c_long, ...) -> c_long;
    fn fork() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn setgroups(n: usize, list: *const u32) -> c_int;
    fn setgid(gid: u32) -> c_int;
    fn setuid(uid: u32) -> c_int;
    fn sethostname(name: *const c_char, len: usize) -> c_int;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char)
    -> c_int;
    fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    fn dup2(from: c_int, to: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
    fn iopl(level: c_int) -> c_int;
    fn reboot(cmd: c_int) -> c_int;
    fn sync();
    fn lgetxattr(
        path: *const c_char,
        name: *const c_char,
        value: *mut c_void,
        size: usize,
    ) -> isize;
    fn llistxattr(path: *const c_char, list: *mut c_char, size: usize) -> isize;
    fn lsetxattr(
        path: *const c_char,
        name: *const c_char,
        value: *const c_void,
        size: usize,
        flags: c_int,
    ) -> c_int;
    fn tcdrain(fd: c_int) -> c_int;
    fn prctl(option: c_int, ...) -> c_int;
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    fn setsid() -> c_int;
    fn clock_gettime(clock: c_int, time: *mut Timespec) -> c_int;
    fn clock_settime(clock: c_int, time: *const Timespec) -> c_int;
    #[link_name = "signal"]
    fn set_signal_action(sig: c_int, handler: usize) -> usize;
    fn tcgetattr(fd: c_int, termios: *mut Termios) -> c_int;
    fn tcsetattr(fd: c_int, when: c_int, termios: *const Termios) -> c_int;
}

/// `struct timespec` on x86-64.
#[repr(C)]
#[derive(Default)]
struct Timespec {
    seconds: i64,
    nanos: i64,
}

/// Sets the real-time clock to `(seconds, nanos)` since the epoch if it is behind that.
pub(crate) fn clock_at_least(seconds: u64, nanos: u32) -> Result<(), String> {
    let mut now = Timespec::default();
    // SAFETY: `now` is a valid timespec to write for the call.
    check(unsafe { clock_gettime(0, &mut now) }).map_err(|e| format!("read the clock: {e}"))?;
    let wanted = Timespec {
        seconds: i64::try_from(seconds).map_err(|_| "the host's clock is out of range")?,
        nanos: i64::from(nanos),
    };
    if (now.seconds, now.nanos) >= (wanted.seconds, wanted.nanos) {
        return Ok(());
    }
    // SAFETY: `wanted` is a valid timespec, read for the call; clock 0 is CLOCK_REALTIME.
    check(unsafe { clock_settime(0, &wanted) }).map_err(|e| format!("set the clock: {e}"))
}

/// glibc's `struct termios` on x86-64 (`NCCS` is 32).
#[repr(C)]
struct Termios {
    iflag: u32,
    oflag: u32,
    cflag: u32,
    lflag: u32,
    line: u8,
    cc: [u8; 32],
    ispeed: u32,
    ospeed: u32,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path holds a NUL byte"))
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::other(format!("{s:?} holds a NUL byte")))
}

fn check(rc: c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2); `src` and `data` may be absent.
pub(crate) fn mount_fs(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let err = |e: io::Error| format!("mount {}: {e}", target.display());
    let src = src.map(cstr).transpose().map_err(err)?;
    let fstype = fstype.map(cstr).transpose().map_err(err)?;
    let data = data.map(cstr).transpose().map_err(err)?;
    let t = cpath(target).map_err(err)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        mount(
            ptr(&src),
            t.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(rc).map_err(err)
}

/// Detaches the mount at `target`.
pub(crate) fn unmount(target: &Path) {
    if let Ok(t) = cpath(target) {
        // SAFETY: `t` is a NUL-terminated path that outlives the call.
        unsafe { umount2(t.as_ptr(), MNT_DETACH) };
    }
}

/// Makes a character device.
pub(crate) fn make_char_device(path: &Path, major: u64, minor: u64) -> io::Result<()> {
    let dev = ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff);
    let p = cpath(path)?;
    // SAFETY: `p` is a NUL-terminated path that outlives the call.
    check(unsafe { mknod(p.as_ptr(), S_IFCHR | 0o666, dev) })
}

/// Loads a kernel module from a file.
pub(crate) fn load_module(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let empty = c"";
    // SAFETY: finit_module takes a file descriptor, a NUL-terminated parameter string and
    // flags; both stay valid for the call.
    let rc = unsafe { syscall(SYS_FINIT_MODULE, f.as_raw_fd(), empty.as_ptr(), 0 as c_int) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(17) {
            return Err(format!("load module {}: {e}", path.display()));
        }
    }
    Ok(())
}

/// fork(2): `Ok(0)` in the child, the child's PID in the parent.
pub(crate) fn fork_process() -> io::Result<i32> {
    // SAFETY: the init forks while it has a single thread, so the child's copy of the
    // process state is consistent.
    let pid = unsafe { fork() };
    check(pid)?;
    Ok(pid)
}

/// How a waited-for process ended.
pub(crate) enum Waited {
    Exited(i32),
    Signaled(i32),
}

/// Waits for any child: its PID and how it ended; `None` when there are no children left.
pub(crate) fn wait_any() -> Option<(i32, Waited)> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: `status` is a valid place for the status word.
        let pid = unsafe { waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        let how = if status & 0x7f == 0 {
            Waited::Exited((status >> 8) & 0xff)
        } else {
            Waited::Signaled(status & 0x7f)
        };
        return Some((pid, how));
    }
}

/// Sends `sig` to every process but this one.
pub(crate) fn kill_all(sig: c_int) {
    // SAFETY: kill(2) with pid -1 has no memory effects on this process.
    unsafe { kill(-1, sig) };
}

/// A pipe `(read, write)`, both ends close-on-exec.
pub(crate) fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// Makes descriptor `to` a copy of `from` (not close-on-exec).
pub(crate) fn duplicate_to(from: c_int, to: c_int) -> io::Result<()> {
    // SAFETY: dup2 only changes this process's descriptor table.
    check(unsafe { dup2(from, to) })
}

/// Leaves the process at once with `code`, running no destructors (a forked child's way out).
pub(crate) fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { _exit(code) }
}

/// Becomes `uid`/`gid` with the supplementary `groups`.
pub(crate) fn become_user(uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
    // SAFETY: `groups` points at `groups.len()` valid gids.
    check(unsafe { setgroups(groups.len(), groups.as_ptr()) })
        .map_err(|e| format!("setgroups: {e}"))?;
    // SAFETY: setgid/setuid take plain integers.
    check(unsafe { setgid(gid) }).map_err(|e| format!("setgid {gid}: {e}"))?;
    // SAFETY: as above.
    check(unsafe { setuid(uid) }).map_err(|e| format!("setuid {uid}: {e}"))
}

/// Cuts the bounding set to `keep` (capability numbers): what a process started from here can
/// ever hold. Root's capabilities after `execve` are the bounding set. Needs `CAP_SETPCAP`.
pub(crate) fn limit_bounding_set(keep: &[u8]) -> Result<(), String> {
    const PR_CAPBSET_DROP: c_int = 24;
    let last: c_int = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if keep.iter().any(|k| c_int::from(*k) == cap) {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) changes only this process's bounding set.
        check(unsafe {
            prctl(
                PR_CAPBSET_DROP,
                c_ulong::try_from(cap).unwrap_or(0),
                0u64,
                0u64,
                0u64,
            )
        })
        .map_err(|e| format!("drop capability {cap} from the bounding set: {e}"))?;
    }
    Ok(())
}

/// `struct winsize`.
#[repr(C)]
struct Winsize {
    rows: u16,
    cols: u16,
    xpixel: u16,
    ypixel: u16,
}

/// Sets the window size of the terminal `fd`.
pub(crate) fn set_window_size(fd: c_int, rows: u16, cols: u16) -> io::Result<()> {
    const TIOCSWINSZ: c_ulong = 0x5414;
    let ws = Winsize {
        rows,
        cols,
        xpixel: 0,
        ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize`, which `ws` is.
    check(unsafe { ioctl(fd, TIOCSWINSZ, &ws as *const Winsize) })
}

/// Unlocks the pseudo-terminal whose master is `fd` and returns its number (its slave is
/// `pts/N` in the same devpts instance).
pub(crate) fn unlock_pty(fd: c_int) -> io::Result<u32> {
    const TIOCGPTN: c_ulong = 0x8004_5430;
    const TIOCSPTLCK: c_ulong = 0x4004_5431;
    let unlock: c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int, which `unlock` is.
    check(unsafe { ioctl(fd, TIOCSPTLCK, &unlock as *const c_int) })?;
    let mut n: u32 = 0;
    // SAFETY: TIOCGPTN writes one unsigned int, which `n` is.
    check(unsafe { ioctl(fd, TIOCGPTN, &mut n as *mut u32) })?;
    Ok(n)
}

/// Starts a new session with this process as its leader, then makes the terminal `fd` its
/// controlling terminal.
pub(crate) fn take_terminal(fd: c_int) -> io::Result<()> {
    const TIOCSCTTY: c_ulong = 0x540E;
    // SAFETY: setsid(2) takes no arguments and has no memory effects.
    check(unsafe { setsid() })?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal).
    check(unsafe { ioctl(fd, TIOCSCTTY, 0 as c_int) })
}

/// Sets the hostname.
pub(crate) fn set_hostname(name: &str) -> Result<(), String> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { sethostname(name.as_ptr().cast(), name.len()) })
        .map_err(|e| format!("sethostname: {e}"))
}

/// Replaces the process with `path`; returns only the error.
pub(crate) fn exec(path: &str, argv: &[String], env: &[String]) -> String {
    let all = |v: &[String]| v.iter().map(|s| cstr(s)).collect::<io::Result<Vec<_>>>();
    let (p, args, envs) = match (cstr(path), all(argv), all(env)) {
        (Ok(p), Ok(a), Ok(e)) => (p, a, e),
        _ => return format!("exec {path}: an argument holds a NUL byte"),
    };
    let mut argp: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = envs.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // The step starts with every signal at its default action: Rust's runtime ignores
    // SIGPIPE in this process, and an ignored signal stays ignored across exec (`yes | head`
    // would never end).
    const SIG_DFL: usize = 0;
    for sig in 1..32 {
        if sig != SIGKILL && sig != 19 {
            // SAFETY: setting a signal's action to the default has no memory effects.
            unsafe { set_signal_action(sig, SIG_DFL) };
        }
    }
    // SAFETY: every array is null-terminated and points at strings that outlive the call.
    unsafe { execve(p.as_ptr(), argp.as_ptr(), envp.as_ptr()) };
    format!("exec {path}: {}", io::Error::last_os_error())
}

/// The value of an extended attribute of `path` (not following a symlink), if set.
pub(crate) fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = (cpath(path).ok()?, cstr(name).ok()?);
    // SAFETY: a null buffer with size 0 asks only for the value's length.
    let len = unsafe { lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let got = unsafe { lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(usize::try_from(got).ok()?);
    Some(buf)
}

/// The names of `path`'s extended attributes (not following a symlink).
pub(crate) fn list_xattrs(path: &Path) -> Vec<String> {
    let Ok(p) = cpath(path) else {
        return Vec::new();
    };
    // SAFETY: a null buffer with size 0 asks only for the list's length.
    let len = unsafe { llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    let Ok(len) = usize::try_from(len) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let got = unsafe { llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(usize::try_from(got).unwrap_or(0));
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| String::from_utf8(n.to_vec()).ok())
        .collect()
}

/// Makes the terminal `fd` pass its input on byte for byte: no echo, no line editing or
/// length limit, no signal characters, no CR/LF translation; one byte completes a read. Its
/// output processing stays as it was.
pub(crate) fn raw_input(fd: c_int) -> io::Result<()> {
    const IGNBRK: u32 = 0o1;
    const BRKINT: u32 = 0o2;
    const PARMRK: u32 = 0o10;
    const ISTRIP: u32 = 0o40;
    const INLCR: u32 = 0o100;
    const IGNCR: u32 = 0o200;
    const ICRNL: u32 = 0o400;
    const IXON: u32 = 0o2000;
    const ISIG: u32 = 0o1;
    const ICANON: u32 = 0o2;
    const ECHO: u32 = 0o10;
    const ECHONL: u32 = 0o100;
    const IEXTEN: u32 = 0o100000;
    const VTIME: usize = 5;
    const VMIN: usize = 6;
    const TCSANOW: c_int = 0;
    let mut t = Termios {
        iflag: 0,
        oflag: 0,
        cflag: 0,
        lflag: 0,
        line: 0,
        cc: [0; 32],
        ispeed: 0,
        ospeed: 0,
    };
    // SAFETY: `t` is a `struct termios` as glibc lays it out, which tcgetattr fills in.
    check(unsafe { tcgetattr(fd, &mut t) })?;
    t.iflag &= !(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.lflag &= !(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.cc[VMIN] = 1;
    t.cc[VTIME] = 0;
    // SAFETY: `t` is the valid `struct termios` read above, with flags changed.
    check(unsafe { tcsetattr(fd, TCSANOW, &t) })
}

/// Sends `sig` to the process `pid`.
pub(crate) fn signal(pid: c_int, sig: c_int) {
    // SAFETY: kill(2) has no memory effects on this process.
    unsafe { kill(pid, sig) };
}

/// Sets the extended attribute `name` of `path` (not following a symlink) to `value`.
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cstr(name)?);
    // SAFETY: both strings are NUL-terminated and `value` is valid for `value.len()` bytes.
    check(unsafe {
        lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Waits until everything written to the terminal `fd` has been sent.
pub(crate) fn drain(fd: c_int) {
    // SAFETY: tcdrain only waits on the descriptor.
    unsafe { tcdrain(fd) };
}

/// Stops the VM: a byte to qemu's exit port, else a power-off.
pub(crate) fn power_off(port: u16) -> ! {
    // SAFETY: sync flushes the page cache; it has no memory effects on this process.
    unsafe { sync() };
    // SAFETY: iopl(3) lets this process use I/O ports; the `out` below goes to a port
    // the VMM owns and has no effect on this process's memory.
    unsafe {
        if iopl(3) == 0 {
            std::arch::asm!("out dx, al", in("dx") port, in("al") 0u8);
        }
    }
    // SAFETY: reboot(2) with RB_POWER_OFF stops the machine; nothing runs after it.
    unsafe { reboot(RB_POWER_OFF) };
    exit_now(0)
}
