//! The helper side of the container backend: namespaces, root filesystem, exec.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Uid, chdir, fork, pivot_root, setgid, setgroups, sethostname, setuid,
};

use super::user::resolve_in_root;
use super::{InitResult, InitSpec};
use crate::{ExitStatus, Network};

/// The default `PATH` when the image sets none (Docker's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point of the sandbox helper (`kiln __kiln-sandbox-init SPEC`). Must be called while
/// the process is still single-threaded. Returns the helper's exit code; how the contained
/// process ended goes to the result file named in the spec.
pub fn init_main(spec_path: &Path) -> i32 {
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
        Ok(status) => InitResult::Exited(status),
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

fn run(spec: &InitSpec) -> Result<ExitStatus, String> {
    // Rootless: a user namespace first, where this user is root (one uid and gid mapped).
    if spec.rootless {
        enter_user_namespace()?;
    }
    // Only the PID namespace is entered here (it applies to children); the child makes its own
    // mount namespace, so its pivot_root does not move this helper's root.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("create a pid namespace: {e}"))?;
    // The child reports a setup failure through this pipe; a successful exec closes it.
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the helper is single-threaded (init_main runs before anything starts a
    // thread), so the child may allocate and run arbitrary code after fork.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(err_read);
            let Err(msg) = container_init(spec);
            let _ = nix::unistd::write(&err_write, msg.as_bytes());
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            drop(err_write);
            let mut msg = String::new();
            let _ = fs::File::from(err_read).read_to_string(&mut msg);
            let status = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break ExitStatus::Code(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => break ExitStatus::Signal(sig as i32),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("wait for the container process: {e}")),
                }
            };
            if msg.is_empty() { Ok(status) } else { Err(msg) }
        }
    }
}

/// Maps the calling user to root in a new user namespace (a single id each way).
fn enter_user_namespace() -> Result<(), String> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("create a user namespace: {e}"))?;
    let write =
        |file: &str, text: String| fs::write(file, text).map_err(|e| format!("write {file}: {e}"));
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    Ok(())
}

fn ensure_dir(p: &Path) -> Result<(), String> {
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

/// Runs as PID 1 of the new namespaces: builds the root, drops to the user, execs.
fn container_init(spec: &InitSpec) -> Result<Infallible, String> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if spec.run.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| format!("create namespaces: {e}"))?;
    let none = MsFlags::empty();
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let root = &spec.merged;
    let lower: Vec<String> = if spec.rootfs.lower.is_empty() {
        vec![spec.empty.display().to_string()]
    } else {
        spec.rootfs
            .lower
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    };
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{}",
        lower.join(":"),
        spec.rootfs.upper.display(),
        spec.rootfs.work.display(),
        if spec.rootless { ",userxattr" } else { "" }
    );
    if spec.rootfs.direct {
        let src = spec.rootfs.upper.display().to_string();
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
        mnt(Some("overlay"), root, Some("overlay"), none, Some(&opts))?;
    }

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
    for name in ["hosts", "resolv.conf", "hostname"] {
        let target = at("etc").join(name);
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
            let src = spec.etc.join(name).display().to_string();
            mnt(Some(&src), &target, None, MsFlags::MS_BIND, None)?;
        }
    }

    for m in &spec.run.mounts {
        extra_mount(root, m)?;
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

    let id = resolve_in_root(&spec.run.user)?;
    let cwd = if spec.run.cwd.is_empty() {
        "/"
    } else {
        &spec.run.cwd
    };
    ensure_dir(Path::new(cwd))?;
    chdir(cwd).map_err(|e| format!("chdir {cwd}: {e}"))?;

    let mut env = spec.run.env.clone();
    let has = |env: &[String], k: &str| {
        env.iter()
            .any(|kv| kv.split_once('=').is_some_and(|(key, _)| key == k))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", id.home));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if spec.rootless && (id.uid != 0 || id.gid != 0) {
        return Err(format!(
            "user {:?} (uid {}, gid {}) needs subordinate ids, which rootless mode does not map yet; run as root or use USER root",
            spec.run.user, id.uid, id.gid
        ));
    }
    if !spec.rootless {
        let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    }
    setgid(Gid::from_raw(id.gid)).map_err(|e| format!("setgid {}: {e}", id.gid))?;
    setuid(Uid::from_raw(id.uid)).map_err(|e| format!("setuid {}: {e}", id.uid))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;

    let program = spec.run.argv.first().ok_or("no command given")?;
    let path_var = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let resolved = find_program(program, &path_var)
        .ok_or_else(|| format!("exec: \"{program}\": executable file not found in $PATH"))?;
    let cstr =
        |s: &str| CString::new(s).map_err(|_| format!("argument contains a NUL byte: {s:?}"));
    let argv: Vec<CString> = spec
        .run
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let e = nix::unistd::execve(&cstr(&resolved)?, &argv, &envp).unwrap_err();
    Err(format!("exec {program}: {e}"))
}

/// Looks a program up as `execvp` would, but in the container's `PATH`.
fn find_program(program: &str, path: &str) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_string());
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{program}"))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
