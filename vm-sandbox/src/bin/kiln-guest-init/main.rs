//! kiln's guest init: PID 1 of a step's microVM.
//!
//! It reads the step's spec from the initramfs ([`protocol::SPEC_PATH`]), loads the kernel
//! modules it names (virtio, overlay), mounts the image's root (`/lower`, unpacked from the
//! initramfs) under a tmpfs overlay upper, builds `/proc`, `/dev`, `/sys` and the `/etc`
//! files as the container backend does, and runs the step as the spec's user. The step's
//! output goes to the serial console as frames, and frames from the host on its input carry
//! the step's standard input and signals (`input`); afterwards the upper directory goes to the
//! output disk (`/dev/vda`) as a layer tar, and the VM stops through qemu's exit port.
//!
//! The build compiles this file with a plain `rustc -C target-feature=+crt-static`, so it
//! uses `std` only (C calls are declared in `sys`).

#![allow(unsafe_code)]

mod input;
mod layer_tar;
#[path = "../../container/program.rs"]
mod program;
#[path = "../../vm/protocol.rs"]
#[allow(dead_code, unreachable_pub)]
mod protocol;
mod sys;
mod terminal;
#[path = "../../container/user.rs"]
#[allow(dead_code, unreachable_pub)]
mod user;

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protocol::{Frame, GuestMount, GuestSpec};

const ROOT: &str = "/merged";

/// The serial console frames go to.
static CONSOLE: Mutex<Option<fs::File>> = Mutex::new(None);

fn send(frame: &Frame) {
    let mut console = CONSOLE.lock().unwrap_or_else(|e| e.into_inner());
    match console.as_mut() {
        Some(c) => {
            let _ = c.write_all(&frame.encode());
        }
        None => {
            let _ = std::io::stderr().write_all(&frame.encode());
        }
    }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("kiln-guest-init: runs only as the init of a kiln microVM");
        std::process::exit(2);
    }
    if let Err(msg) = run() {
        send(&Frame::Failed(msg));
    }
    if let Some(c) = CONSOLE.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        sys::drain(c.as_raw_fd());
    }
    sys::power_off(protocol::EXIT_PORT)
}

fn ensure_dir(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))
}

fn run() -> Result<(), String> {
    let nosuid = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
    sys::mount_fs(Some("proc"), Path::new("/proc"), Some("proc"), nosuid, None)?;
    sys::mount_fs(Some("dev"), Path::new("/dev"), Some("devtmpfs"), 0, None)?;
    sys::mount_fs(
        Some("sysfs"),
        Path::new("/sys"),
        Some("sysfs"),
        nosuid,
        None,
    )?;
    let console = fs::OpenOptions::new()
        .write(true)
        .open("/dev/ttyS0")
        .map_err(|e| format!("open the serial console: {e}"))?;
    *CONSOLE.lock().unwrap_or_else(|e| e.into_inner()) = Some(console);
    let stdin = input::start("/dev/ttyS0")?;
    send(&Frame::Ready);

    let raw = fs::read(protocol::SPEC_PATH).map_err(|e| format!("read the step's spec: {e}"))?;
    let spec = GuestSpec::decode(&raw)?;
    if let Some((seconds, nanos)) = spec.clock {
        sys::clock_at_least(seconds, nanos)?;
    }
    for m in &spec.modules {
        sys::load_module(Path::new(m))?;
    }
    sys::mount_fs(
        Some("tmpfs"),
        Path::new("/run"),
        Some("tmpfs"),
        sys::MS_NOSUID | sys::MS_NODEV,
        Some("mode=755"),
    )?;
    for d in ["/run/upper", "/run/work", "/run/etc"] {
        ensure_dir(Path::new(d))?;
    }
    let lower = if spec.root_disk {
        let device = disk("kiln-root", &spec.pmem)?;
        ensure_dir(Path::new("/kiln/rootdisk"))?;
        let dev = device.to_string_lossy().into_owned();
        // A disk just probed can still refuse to open (ENXIO) for a moment.
        let mut tries = 0;
        while let Err(e) = sys::mount_fs(
            Some(&dev),
            Path::new("/kiln/rootdisk"),
            Some("ext4"),
            sys::MS_RDONLY,
            None,
        ) {
            tries += 1;
            if tries == 200 {
                return Err(format!("mount the root disk: {e}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        "/kiln/rootdisk/root"
    } else {
        set_packed_xattrs()?;
        "/lower"
    };
    // Plain copies up: no metadata-only copy-ups or redirects, which a layer cannot express.
    let options = format!(
        "lowerdir={lower},upperdir=/run/upper,workdir=/run/work,redirect_dir=off,index=off,metacopy=off"
    );
    sys::mount_fs(
        Some("overlay"),
        Path::new(ROOT),
        Some("overlay"),
        0,
        Some(&options),
    )?;
    let mounted = prepare_root(&spec)?;
    let oom_before = oom_kills();
    let outcome = start_and_wait(&spec, stdin);
    for m in mounted.iter().rev() {
        sys::unmount(m);
    }
    sys::unmount(Path::new(ROOT));
    let status = outcome?;

    // Writable mounts go back first (their binds are gone; the copies hold the writes).
    if spec
        .mounts
        .iter()
        .any(|m| matches!(m, GuestMount::Copy { writable: true, .. }))
    {
        let written = write_tar_to("kiln-mounts", &spec.pmem, Path::new("/kiln/rw"))
            .map_err(|e| format!("write the mounts' contents: {e}"))?;
        send(&Frame::Mounts(written));
    }
    let written = write_tar_to("kiln-out", &spec.pmem, Path::new("/run/upper"))
        .map_err(|e| format!("write the step's changes: {e}"))?;
    send(&Frame::Output(written));
    send(&match status {
        sys::Waited::Exited(code) => Frame::Exited(code),
        sys::Waited::Signaled(signal) => Frame::Killed {
            signal,
            oom: signal == sys::SIGKILL && oom_kills() > oom_before,
        },
    });
    Ok(())
}

/// Gives the packed files the extended attributes the host listed ([`protocol::XATTRS_PATH`]).
/// This kernel's tmpfs holds `security.*` and `trusted.*` ones but not `user.*` (Linux 6.6
/// added those): what it refuses is named once on the step's standard error.
fn set_packed_xattrs() -> Result<(), String> {
    let raw = match fs::read(protocol::XATTRS_PATH) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("read the files' extended attributes: {e}")),
    };
    let mut refused: Vec<String> = Vec::new();
    for (path, name, value) in protocol::decode_xattrs(&raw)? {
        let mut full = b"/".to_vec();
        full.extend_from_slice(&path);
        let full = PathBuf::from(std::ffi::OsString::from_vec(full));
        if let Err(e) = sys::set_xattr(&full, &name, &value) {
            if refused.len() < 3 {
                refused.push(format!("{name} on {}: {e}", full.display()));
            } else if refused.len() == 3 {
                refused.push("...".into());
            }
        }
    }
    if !refused.is_empty() {
        send(&Frame::Stderr(
            format!(
                "kiln: warning: the microVM could not give the image's files these extended attributes: {}\n",
                refused.join(", ")
            )
            .into_bytes(),
        ));
    }
    Ok(())
}

/// Writes `dir` as a tar to the disk `name` ([`disk`]); the bytes written.
fn write_tar_to(name: &str, pmem: &[String], dir: &Path) -> Result<u64, String> {
    let device = disk(name, pmem)?;
    let disk = fs::OpenOptions::new()
        .write(true)
        .open(&device)
        .map_err(|e| format!("open {}: {e}", device.display()))?;
    let written = layer_tar::write_layer(dir, &disk).map_err(|e| e.to_string())?;
    disk.sync_all().map_err(|e| e.to_string())?;
    Ok(written)
}

/// The disk `name` (`kiln-out`, `kiln-mounts`, `kiln-root`): under qemu the virtio disk with
/// that serial number; under the builtin VMM the persistent-memory range at its place in
/// `pmem` (`/dev/pmem0` first), which may appear a moment after its driver loads.
fn disk(name: &str, pmem: &[String]) -> Result<PathBuf, String> {
    let virtio = fs::read_dir("/sys/block")
        .map_err(|e| format!("list block devices: {e}"))?
        .flatten()
        .find(|e| fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == name))
        .map(|e| Path::new("/dev").join(e.file_name()));
    if let Some(d) = virtio {
        return Ok(d);
    }
    let Some(index) = pmem.iter().position(|p| p == name) else {
        return Err(format!("no disk {name}"));
    };
    let device = format!("pmem{index}");
    // Its sysfs entry comes first, its size once it can be opened.
    let size = Path::new("/sys/block").join(&device).join("size");
    for _ in 0..500 {
        let sectors: u64 = fs::read_to_string(&size)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors > 0 {
            return Ok(Path::new("/dev").join(device));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("no disk {name} (/dev/{device})"))
}

/// The OOM killer's count so far.
fn oom_kills() -> u64 {
    fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Builds the step's `/proc`, `/dev`, `/sys`, `/etc` files and mounts as the container backend
/// does; returns the mount points, in the order made.
fn prepare_root(spec: &GuestSpec) -> Result<Vec<PathBuf>, String> {
    let root = Path::new(ROOT);
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mut mounted = Vec::new();
    let mut mount = |src: &str,
                     target: PathBuf,
                     fstype: Option<&str>,
                     flags: std::ffi::c_ulong,
                     data: Option<&str>| {
        sys::mount_fs(Some(src), &target, fstype, flags, data)?;
        mounted.push(target);
        Ok::<(), String>(())
    };
    let nosuid = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
    ensure_dir(&at("proc"))?;
    mount("proc", at("proc"), Some("proc"), nosuid, None)?;
    ensure_dir(&at("dev"))?;
    mount(
        "tmpfs",
        at("dev"),
        Some("tmpfs"),
        sys::MS_NOSUID | sys::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = at("dev").join(name);
        sys::make_char_device(&p, major, minor).map_err(|e| format!("create /dev/{name}: {e}"))?;
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
    }
    ensure_dir(&at("dev/pts"))?;
    mount(
        "devpts",
        at("dev/pts"),
        Some("devpts"),
        sys::MS_NOSUID | sys::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    ensure_dir(&at("dev/shm"))?;
    mount(
        "shm",
        at("dev/shm"),
        Some("tmpfs"),
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, at("dev").join(link))
            .map_err(|e| format!("create /dev/{link}: {e}"))?;
    }
    if !spec.inline_files.is_empty() {
        let pipes = at("dev/pipes");
        ensure_dir(&pipes)?;
        for (name, body) in &spec.inline_files {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(format!("bad inline file name {name:?}"));
            }
            let p = pipes.join(name);
            fs::write(&p, body).map_err(|e| format!("create /dev/pipes/{name}: {e}"))?;
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
        }
    }
    ensure_dir(&at("sys"))?;
    mount(
        "sysfs",
        at("sys"),
        Some("sysfs"),
        nosuid | sys::MS_RDONLY,
        None,
    )?;
    // The /etc files go over the image's (an empty stub where it has none, which the host
    // removes afterwards, as for containers).
    for (name, body) in &spec.etc_files {
        let target = at("etc").join(name);
        let present = match fs::symlink_metadata(&target) {
            Ok(m) => m.is_file(),
            Err(_) => fs::create_dir_all(at("etc"))
                .and_then(|()| fs::File::create(&target).map(drop))
                .is_ok(),
        };
        if present {
            let src = Path::new("/run/etc").join(name);
            fs::write(&src, body).map_err(|e| format!("write {}: {e}", src.display()))?;
            mount(&src.display().to_string(), target, None, sys::MS_BIND, None)?;
        }
    }
    for m in &spec.mounts {
        match m {
            GuestMount::Tmpfs { target, size } => {
                let t = at(target);
                ensure_dir(&t)?;
                let opts = size.map(|s| format!("size={s}"));
                mount("tmpfs", t, Some("tmpfs"), 0, opts.as_deref())?;
            }
            GuestMount::Copy {
                target,
                source,
                writable,
            } => {
                let t = at(target);
                if Path::new(source).is_dir() {
                    ensure_dir(&t)?;
                } else if fs::symlink_metadata(&t).is_err() {
                    if let Some(parent) = t.parent() {
                        ensure_dir(parent)?;
                    }
                    fs::File::create(&t).map_err(|e| format!("create {target}: {e}"))?;
                }
                mount(source, t.clone(), None, sys::MS_BIND, None)?;
                if !writable {
                    sys::mount_fs(
                        None,
                        &t,
                        None,
                        sys::MS_BIND | sys::MS_REMOUNT | sys::MS_RDONLY,
                        None,
                    )?;
                }
            }
        }
    }
    if spec.read_only {
        sys::mount_fs(
            None,
            root,
            None,
            sys::MS_BIND | sys::MS_REMOUNT | sys::MS_RDONLY,
            None,
        )?;
    }
    Ok(mounted)
}

/// Makes the frame for bytes read from one of the step's streams.
type FrameOf = fn(Vec<u8>) -> Frame;

/// The step's standard streams as its process gets them.
enum ChildStreams {
    /// A terminal: the slave's path (the child opens it as its controlling terminal), and
    /// the slave as this process holds it until the step has ended.
    Terminal(PathBuf, fs::File),
    /// Input, output and error.
    Pipes([fs::File; 3]),
}

/// Runs the step and waits for it; its output goes out as frames meanwhile. Every other
/// process is killed once it has ended.
fn start_and_wait(spec: &GuestSpec, stdin: input::StdinChunks) -> Result<sys::Waited, String> {
    let pipe = |what| sys::pipe().map_err(|e| format!("create the {what} pipe: {e}"));
    let (fail_r, fail_w) = pipe("status")?;
    // The step's standard streams: a terminal's slave (with -t), else pipes (and /dev/null
    // for input unless interactive). `outputs` are what the init reads them back from.
    let mut outputs: Vec<(fs::File, FrameOf)> = Vec::new();
    let mut input_to = None;
    let streams = match spec.tty {
        Some(size) => {
            let (master, slave) = terminal::open(&Path::new(ROOT).join("dev/pts"), size)?;
            let clone = |m: &fs::File| {
                m.try_clone()
                    .map_err(|e| format!("duplicate the terminal: {e}"))
            };
            if spec.interactive {
                input_to = Some(clone(&master)?);
            }
            outputs.push((clone(&master)?, Frame::Stdout));
            let held = terminal::hold_slave(&slave)?;
            ChildStreams::Terminal(slave, held)
        }
        None => {
            let (out_r, out_w) = pipe("stdout")?;
            let (err_r, err_w) = pipe("stderr")?;
            outputs.push((out_r, Frame::Stdout));
            outputs.push((err_r, Frame::Stderr));
            let in_r = if spec.interactive {
                let (r, w) = pipe("stdin")?;
                input_to = Some(w);
                r
            } else {
                fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?
            };
            ChildStreams::Pipes([in_r, out_w, err_w])
        }
    };
    let pid = sys::fork_process().map_err(|e| format!("fork: {e}"))?;
    if pid == 0 {
        drop(input_to);
        let wired = match &streams {
            ChildStreams::Terminal(slave, _) => terminal::attach(slave),
            ChildStreams::Pipes(fds) => {
                (0..3).try_for_each(|i| sys::duplicate_to(fds[i].as_raw_fd(), i as std::ffi::c_int))
            }
        };
        let msg = match wired {
            Ok(()) => start_program(spec),
            Err(e) => format!("set up the standard streams: {e}"),
        };
        let mut fail_w = fail_w;
        let _ = fail_w.write_all(msg.as_bytes());
        sys::exit_now(127);
    }
    let held_slave = match streams {
        ChildStreams::Terminal(_, slave) => Some(slave),
        ChildStreams::Pipes(fds) => {
            drop(fds);
            None
        }
    };
    drop(fail_w);
    input::step_started(pid);
    if let Some(w) = input_to {
        input::feed(stdin, w);
    }
    let readers: Vec<_> = outputs
        .into_iter()
        .map(|(mut r, make)| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; protocol::MAX_CHUNK];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => send(&make(buf[..n].to_vec())),
                    }
                }
            })
        })
        .collect();
    let mut failure = String::new();
    let mut fail_r = fail_r;
    let _ = fail_r.read_to_string(&mut failure);
    let mut status = None;
    while let Some((p, how)) = sys::wait_any() {
        if p == pid {
            status = Some(how);
            break;
        }
    }
    input::step_ended();
    terminal::forget();
    sys::kill_all(sys::SIGKILL);
    while sys::wait_any().is_some() {}
    drop(held_slave);
    for r in readers {
        let _ = r.join();
    }
    if !failure.is_empty() {
        return Err(failure);
    }
    status.ok_or_else(|| "the step's process vanished".to_string())
}

/// In the forked child: enters the root, becomes the user, executes the program. Returns only
/// the reason it could not.
fn start_program(spec: &GuestSpec) -> String {
    match prepare_process(spec) {
        Ok((path, env)) => sys::exec(&path, &spec.argv, &env),
        Err(e) => e,
    }
}

fn prepare_process(spec: &GuestSpec) -> Result<(String, Vec<String>), String> {
    std::os::unix::fs::chroot(ROOT).map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let hostname = if spec.hostname.is_empty() {
        "kiln"
    } else {
        &spec.hostname
    };
    sys::set_hostname(hostname)?;
    let id = user::resolve_in_root(&spec.user)?;
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    ensure_dir(Path::new(cwd))?;
    std::env::set_current_dir(cwd).map_err(|e| format!("chdir {cwd}: {e}"))?;
    let env = program::with_defaults(&spec.env, &id.home, hostname);
    sys::limit_bounding_set(&protocol::STEP_CAPABILITIES)?;
    sys::become_user(id.uid, id.gid, &id.groups)?;
    let program = spec.argv.first().ok_or("no command given")?;
    let resolved = program::find_program(program, &env)
        .ok_or_else(|| format!("exec: \"{program}\": executable file not found in $PATH"))?;
    Ok((resolved, env))
}
