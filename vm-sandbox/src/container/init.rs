//! The helper side of the container backend: namespaces, root filesystem, exec.

use std::convert::Infallible;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, fork, pivot_root, sethostname};

use super::{InitResult, InitSpec};
use crate::{ExitStatus, Network};

/// Entry point of the sandbox helper (`kiln __kiln-sandbox-init SPEC`). Must be called while
/// the process is still single-threaded. Returns the helper's exit code; how the contained
/// process ended goes to the result file named in the spec.
pub fn init_main(spec_path: &Path) -> i32 {
    if !super::die_with_parent() {
        return 2;
    }
    let spec: InitSpec = match fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln: sandbox helper: read {}: {e}", spec_path.display());
            return 2;
        }
    };
    let result = match run(&spec) {
        Ok((status, true)) => InitResult::OutOfMemory(status),
        Ok((status, false)) => InitResult::Exited(status),
        Err(msg) => InitResult::SetupFailed(msg),
    };
    let json = serde_json::to_vec(&result).expect("result serializes");
    match fs::write(&spec.result, json) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln: sandbox helper: write result: {e}");
            2
        }
    }
}

/// Runs the container; how it ended, and whether the OOM killer ended it.
fn run(spec: &InitSpec) -> Result<(ExitStatus, bool), String> {
    // Rootless: a user namespace first, where this user is root (one uid and gid mapped).
    if !nix::unistd::geteuid().is_root() {
        super::idmap::enter_user_namespace()?;
    }
    // Forked before the PID namespace exists, so that it can outlive the container.
    let reaper = start_reaper(&spec.reaper_groups);
    // Only the PID namespace is entered here (it applies to children); the child makes its own
    // mount namespace, so its pivot_root does not move this helper's root.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("create a pid namespace: {e}"))?;
    // The child reports a setup failure through this pipe; a successful exec closes it.
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // As root, the process limit is a pids cgroup around everything the container starts.
    let _pids = match (spec.rootless, spec.run.limits.processes) {
        (false, Some(max)) => super::cgroup::ProcessLimit::join(max).transpose()?,
        _ => None,
    };
    // And the memory limit a memory cgroup (its OOM kills counted to tell them apart).
    let _memory = match (spec.rootless, spec.run.limits.memory) {
        (false, Some(max)) => super::cgroup::MemoryLimit::join(max).transpose()?,
        _ => None,
    };
    let oom_before = super::cgroup::oom_kills();
    // Signals meant for the container are blocked here and forwarded to it by the wait loop;
    // the child unblocks them just before exec.
    let forwarded = forwarded_signals();
    forwarded
        .thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    // SAFETY: the helper is single-threaded (init_main runs before anything starts a
    // thread), so the child may allocate and run arbitrary code after fork.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(err_read);
            // The container dies with its helper (its PID 1 takes the whole namespace along).
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let Err(msg) = container_init(spec);
            let _ = nix::unistd::write(&err_write, msg.as_bytes());
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            drop(err_write);
            if let Some(pid_file) = &spec.pid_file {
                // The container's first process, then this helper (which signals reach the
                // container through, whatever user the first process runs as).
                let pids = format!("{} {}", child.as_raw(), std::process::id());
                write_atomically(pid_file, pids.as_bytes())?;
            }
            let mut msg = String::new();
            let _ = fs::File::from(err_read).read_to_string(&mut msg);
            if let Some(tell) = reaper {
                // The child has exec'd (the error pipe closed): its mount namespace is final.
                let _ = nix::unistd::write(&tell, format!("{child}\n").as_bytes());
                // Open until this helper exits, which tells the reaper to let go.
                std::mem::forget(tell);
            }
            let status = forward_signals_until_exit(child, &forwarded)?;
            let oom = status == ExitStatus::Signal(9) && super::cgroup::oom_kills() > oom_before;
            if msg.is_empty() {
                Ok((status, oom))
            } else {
                Err(msg)
            }
        }
    }
}

/// The signals a container gets from `kiln run`'s terminal or `kiln stop`/`kill` through the
/// helper, plus `SIGCHLD`, which ends the helper's wait.
pub(super) fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
        Signal::SIGALRM,
        Signal::SIGURG,
        Signal::SIGXCPU,
        Signal::SIGXFSZ,
        Signal::SIGVTALRM,
        Signal::SIGPROF,
        Signal::SIGIO,
        Signal::SIGPWR,
        Signal::SIGSYS,
    ] {
        set.add(s);
    }
    set
}

/// Waits for the container's PID 1, passing every other signal in `set` on to it.
pub(super) fn forward_signals_until_exit(child: Pid, set: &SigSet) -> Result<ExitStatus, String> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitStatus::Signal(sig as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("wait for the container process: {e}")),
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}

/// Starts the reaper: a process that holds the container's mount namespace (whose PID 1's
/// PID it reads from the returned pipe) until this helper has exited. Unmounting a
/// container's tree waits for an RCU grace period, tens of milliseconds; without the reaper,
/// the container's exit would pay it before its status reached the caller. The reaper first
/// moves itself back into `groups` (the caller's groups from before it joined the build's),
/// so that its teardown does not keep the build's groups busy.
fn start_reaper(groups: &[std::path::PathBuf]) -> Option<std::os::fd::OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    // SAFETY: the helper is single-threaded (see init_main), so the child may run any code.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked.ok()? {
        ForkResult::Child => {
            drop(write);
            for home in groups {
                let _ = fs::write(home.join("cgroup.procs"), "0");
            }
            // Nothing of the container's output may stay open here.
            if let Ok(null) = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
            }
            let mut from_helper = std::io::BufReader::new(fs::File::from(read));
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut from_helper, &mut line);
            let ns = line
                .trim()
                .parse::<i32>()
                .ok()
                .and_then(|pid| fs::File::open(format!("/proc/{pid}/ns/mnt")).ok());
            // EOF once the helper has exited; then the namespace goes, with its mounts.
            let mut rest = Vec::new();
            let _ = from_helper.read_to_end(&mut rest);
            drop(ns);
            std::process::exit(0);
        }
        ForkResult::Parent { .. } => {
            drop(read);
            Some(write)
        }
    }
}

/// Writes `path` through a temporary file and a rename.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

pub(super) fn ensure_dir(p: &Path) -> Result<(), String> {
    if !p.is_dir() {
        fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))?;
    }
    Ok(())
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    let src_path = src.map(Path::new);
    mount(src_path, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {e}",
            fstype.or(src).unwrap_or("?"),
            target.display()
        )
    })
}

/// One extra mount, inside the root before `pivot_root`.
fn extra_mount(root: &Path, m: &crate::SandboxMount) -> Result<(), String> {
    let target = crate::scoped_path(root, &m.target)?;
    match &m.kind {
        crate::SandboxMountKind::Bind { source, writable } => {
            let is_dir = fs::metadata(source)
                .map_err(|e| format!("mount source {}: {e}", source.display()))?
                .is_dir();
            if is_dir {
                fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", m.target))?;
            } else if fs::symlink_metadata(&target).is_err() {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", m.target))?;
                }
                fs::File::create(&target).map_err(|e| format!("create {}: {e}", m.target))?;
            }
            let src = source.display().to_string();
            mnt(
                Some(&src),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            if !writable {
                mnt(
                    None,
                    &target,
                    None,
                    MsFlags::MS_BIND
                        | MsFlags::MS_REMOUNT
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV,
                    None,
                )?;
            }
        }
        crate::SandboxMountKind::Tmpfs { size } => {
            fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", m.target))?;
            let opts = size.map(|s| format!("size={s}"));
            mnt(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                opts.as_deref(),
            )?;
        }
    }
    Ok(())
}

/// Mounts the root filesystem at `root`: overlay over the layers (`empty` standing in for
/// none), or the complete directory bound as it is.
pub(super) fn mount_root_fs(
    rootfs: &crate::RootFs,
    root: &Path,
    empty: &Path,
    rootless: bool,
) -> Result<(), String> {
    let none = MsFlags::empty();
    let lower: Vec<String> = if rootfs.lower.is_empty() {
        vec![empty.display().to_string()]
    } else {
        rootfs
            .lower
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    };
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{}",
        lower.join(":"),
        rootfs.upper.display(),
        rootfs.work.display(),
        if rootless { ",userxattr" } else { "" }
    );
    if rootfs.direct {
        let src = rootfs.upper.display().to_string();
        mnt(
            Some(&src),
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    } else {
        if opts.len() >= 4000 {
            return Err(format!(
                "too many layers for one overlay mount ({})",
                lower.len()
            ));
        }
        if rootfs.throwaway {
            // The kernel leaves this marker at a volatile mount and refuses the next mount
            // of the same directories while it is there; a throwaway upper is mounted again
            // only to enter a stopped `--rm` container, which no crash can have left.
            let _ = fs::remove_dir(rootfs.work.join("work/incompat/volatile"));
            let volatile = format!("{opts},volatile");
            // Before Linux 5.10 there is no `volatile`: then an ordinary mount, synced.
            if mount(
                Some("overlay"),
                root,
                Some("overlay"),
                none,
                Some(volatile.as_str()),
            )
            .is_ok()
            {
                return Ok(());
            }
        }
        mnt(Some("overlay"), root, Some("overlay"), none, Some(&opts))?;
    }
    Ok(())
}

/// Runs as PID 1 of the new namespaces: builds the root, drops to the user, execs.
fn container_init(spec: &InitSpec) -> Result<Infallible, String> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if Path::new("/proc/self/ns/cgroup").exists() {
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    if spec.run.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| format!("create namespaces: {e}"))?;
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let root = &spec.merged;
    mount_root_fs(&spec.rootfs, root, &spec.empty, spec.rootless)?;

    let at = |p: &str| root.join(p);
    ensure_dir(&at("proc"))?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt(Some("proc"), &at("proc"), Some("proc"), nosuid, None)?;

    ensure_dir(&at("dev"))?;
    mnt(
        Some("tmpfs"),
        &at("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = at("dev").join(dev);
        fs::File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        let host = format!("/dev/{dev}");
        mnt(Some(&host), &target, None, MsFlags::MS_BIND, None)?;
    }
    ensure_dir(&at("dev/pts"))?;
    mnt(
        Some("devpts"),
        &at("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    ensure_dir(&at("dev/shm"))?;
    mnt(
        Some("shm"),
        &at("dev/shm"),
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
        symlink(target, at("dev").join(link)).map_err(|e| format!("create /dev/{link}: {e}"))?;
    }
    let _ = fs::set_permissions(at("dev/shm"), fs::Permissions::from_mode(0o1777));
    if !spec.run.inline_files.is_empty() {
        let pipes = at("dev/pipes");
        ensure_dir(&pipes)?;
        for f in &spec.run.inline_files {
            if f.name.is_empty() || f.name.contains('/') || f.name.starts_with('.') {
                return Err(format!("bad inline file name {:?}", f.name));
            }
            let path = pipes.join(&f.name);
            fs::write(&path, &f.content)
                .map_err(|e| format!("create /dev/pipes/{}: {e}", f.name))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod /dev/pipes/{}: {e}", f.name))?;
        }
    }

    ensure_dir(&at("sys"))?;
    let ro = nosuid | MsFlags::MS_RDONLY;
    if mnt(Some("sysfs"), &at("sys"), Some("sysfs"), ro, None).is_err() {
        // A fresh sysfs needs a network namespace of our own; else bind the host's read-only.
        let bound = mnt(
            Some("/sys"),
            &at("sys"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .and_then(|_| {
            mnt(
                None,
                &at("sys"),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
                None,
            )
        });
        if let Err(e) = bound {
            if !spec.rootless {
                return Err(e);
            }
            // Rootless without a network namespace: /sys stays an empty directory.
            let _ = umount2(&at("sys"), MntFlags::MNT_DETACH);
        }
    }

    // The host-made files go over the image's own, so they never reach the upper directory.
    // Where the image has none, an empty stub is the mount point; the caller's side removes
    // it afterwards ([`super::remove_mount_stubs`]). A symlink or a directory there is left.
    for name in super::ETC_FILES {
        let target = at("etc").join(name);
        let present = match fs::symlink_metadata(&target) {
            Ok(m) => m.is_file(),
            Err(_) => fs::create_dir_all(at("etc"))
                .and_then(|()| fs::File::create(&target))
                .is_ok(),
        };
        if present {
            let src = spec.etc.join(name).display().to_string();
            mnt(Some(&src), &target, None, MsFlags::MS_BIND, None)?;
        }
    }

    if spec.run.tty {
        // The terminal on stdin is the container's console as well.
        let console = at("dev/console");
        fs::File::create(&console).map_err(|e| format!("create /dev/console: {e}"))?;
        let pts = fs::read_link("/proc/self/fd/0")
            .map_err(|e| format!("find the terminal: {e}"))?
            .display()
            .to_string();
        mnt(Some(&pts), &console, None, MsFlags::MS_BIND, None)?;
    }

    for m in &spec.run.mounts {
        extra_mount(root, m)?;
    }

    // Read-only after the mount points were made; the mounts under it keep their own mode.
    if spec.run.read_only {
        mnt(
            None,
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }

    chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    let hostname = if spec.run.hostname.is_empty() {
        "kiln"
    } else {
        &spec.run.hostname
    };
    sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;

    super::process::start_program(&spec.run, hostname)
}
