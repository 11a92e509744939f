//! Getting into an existing container: `kiln exec` (a new process in a running container's
//! namespaces) and `kiln cp` (a tar stream out of, or into, a running or stopped container).
//!
//! Like the init helper, this runs in the `kiln` binary re-executed with [`ENTER_ARG`], so
//! `setns` and `fork` happen in a single-threaded process. Archive work runs inside the
//! container's root (joined, or for a stopped container mounted privately), so a symlink in
//! the container resolves within the container, never on the host.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::mount::MsFlags;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, chroot, fchdir, fork};
use serde::{Deserialize, Serialize};

use super::InitResult;
use crate::{ExitStatus, RootFs, RunSpec};

/// The first argument that makes the `kiln` binary act as the enter helper.
pub const ENTER_ARG: &str = "__kiln-sandbox-enter";

/// Which container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EnterTarget {
    /// A running container: the host PID of its first process.
    Process(i32),
    /// A stopped container's root (its layers and upper directory), mounted privately for
    /// the action.
    Root(RootFs),
}

/// What to do there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EnterAction {
    /// Start a process (running containers only), with the streams the caller gave.
    Exec(RunSpec),
    /// Write a tar of `path` to stdout: one entry named after its last component, or its
    /// contents when `path` ends in `/.` (as `docker cp` does).
    ArchiveOut {
        /// Path inside the container.
        path: String,
    },
    /// Read a tar from stdin into `dest`. With `top` (the name of the archive's single top
    /// entry): into `dest` when it is a directory, else the entry becomes `dest`. Without:
    /// `dest` must be a directory and the archive unpacks into it.
    ArchiveIn {
        /// Path inside the container.
        dest: String,
        /// The archive's top entry.
        top: Option<String>,
    },
}

/// The enter helper's instructions.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EnterSpec {
    pub(crate) target: EnterTarget,
    pub(crate) action: EnterAction,
    pub(crate) rootless: bool,
    /// A directory with empty `merged` and `empty` directories, to mount a stopped root.
    pub(crate) scratch: PathBuf,
    pub(crate) result: PathBuf,
}

/// Entry point of the enter helper (`kiln __kiln-sandbox-enter SPEC`). Must run while the
/// process is single-threaded.
pub fn enter_main(spec_path: &Path) -> i32 {
    if !super::die_with_parent() {
        return 2;
    }
    let spec: EnterSpec = match fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln: enter helper: read {}: {e}", spec_path.display());
            return 2;
        }
    };
    // Opened now: once inside the container, the host's paths are out of sight.
    let mut result_file = match fs::File::create(&spec.result) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kiln: enter helper: create {}: {e}", spec.result.display());
            return 2;
        }
    };
    let result = match enter(&spec) {
        Ok(status) => InitResult::Exited(status),
        Err(msg) => InitResult::SetupFailed(msg),
    };
    let json = serde_json::to_vec(&result).expect("result serializes");
    match io::Write::write_all(&mut result_file, &json) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln: enter helper: write result: {e}");
            2
        }
    }
}

fn enter(spec: &EnterSpec) -> Result<ExitStatus, String> {
    match &spec.target {
        EnterTarget::Process(pid) => join(*pid, matches!(spec.action, EnterAction::Exec(_)))?,
        EnterTarget::Root(rootfs) => {
            if matches!(spec.action, EnterAction::Exec(_)) {
                return Err("the container is not running".into());
            }
            mount_root(rootfs, &spec.scratch, spec.rootless)?;
        }
    }
    match &spec.action {
        EnterAction::Exec(run) => exec(run),
        EnterAction::ArchiveOut { path } => archive_out(path).map(|()| ExitStatus::Code(0)),
        EnterAction::ArchiveIn { dest, top } => {
            archive_in(dest, top.as_deref()).map(|()| ExitStatus::Code(0))
        }
    }
}

/// Joins the namespaces of `pid` (its user namespace first where it is not ours; all of
/// them for a process, the mount namespace only for archive work) and takes its root.
fn join(pid: i32, all: bool) -> Result<(), String> {
    let ns = |name: &str| -> Result<Option<OwnedFd>, String> {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(a), Ok(b)) = (fs::metadata(&theirs), fs::metadata(&ours)) else {
            return Ok(None);
        };
        if a.ino() == b.ino() && a.dev() == b.dev() {
            return Ok(None);
        }
        open(
            theirs.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Some)
        .map_err(|e| format!("open {theirs}: {e}"))
    };
    let names: &[&str] = if all {
        &["user", "cgroup", "ipc", "uts", "net", "pid", "mnt"]
    } else {
        &["user", "mnt"]
    };
    let mut fds = Vec::new();
    for n in names {
        if let Some(fd) = ns(n)? {
            fds.push((*n, fd));
        }
    }
    let root = open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open the container's root (is it running?): {e}"))?;
    for (name, fd) in &fds {
        setns(fd.as_fd(), CloneFlags::empty())
            .map_err(|e| format!("join its {name} namespace: {e}"))?;
    }
    fchdir(root.as_fd()).map_err(|e| format!("enter the container's root: {e}"))?;
    chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Mounts a stopped container's root privately and takes it as `/`.
fn mount_root(rootfs: &RootFs, scratch: &Path, rootless: bool) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        super::idmap::enter_user_namespace()?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("create a mount namespace: {e}"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    super::init::mount_root_fs(
        rootfs,
        &scratch.join("merged"),
        &scratch.join("empty"),
        rootless,
    )?;
    nix::unistd::chdir(&scratch.join("merged")).map_err(|e| format!("chdir: {e}"))?;
    chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Forks into the joined PID namespace and runs the process there.
fn exec(run: &RunSpec) -> Result<ExitStatus, String> {
    let forwarded = super::init::forwarded_signals();
    forwarded
        .thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    let (err_read, err_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the helper is single-threaded (enter_main runs before anything starts a
    // thread), so the child may allocate and run arbitrary code after fork.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(err_read);
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            let Err(msg) = super::process::start_program(run, "");
            let _ = nix::unistd::write(&err_write, msg.as_bytes());
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            drop(err_write);
            let mut msg = String::new();
            let _ = fs::File::from(err_read).read_to_string(&mut msg);
            let status = super::init::forward_signals_until_exit(child, &forwarded)?;
            if msg.is_empty() { Ok(status) } else { Err(msg) }
        }
    }
}

fn not_found(path: &str) -> String {
    format!("could not find the file {path} in container")
}

fn archive_out(path: &str) -> Result<(), String> {
    let contents_only = path.ends_with("/.");
    let p = Path::new(path);
    let md = fs::symlink_metadata(p).map_err(|_| not_found(path))?;
    let mut tar = tar::Builder::new(io::stdout().lock());
    tar.follow_symlinks(false);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    let write_err = |e: io::Error| format!("archive {path}: {e}");
    if contents_only || (md.is_dir() && name == ".") {
        tar.append_dir_all(".", p).map_err(write_err)?;
    } else if md.is_dir() {
        tar.append_dir_all(&name, p).map_err(write_err)?;
    } else {
        tar.append_path_with_name(p, &name).map_err(write_err)?;
    }
    io::Write::flush(&mut tar.into_inner().map_err(write_err)?).map_err(write_err)?;
    Ok(())
}

fn unpack(into: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(io::stdin().lock());
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive
        .unpack(into)
        .map_err(|e| format!("extract into {}: {e}", into.display()))
}

fn archive_in(dest: &str, top: Option<&str>) -> Result<(), String> {
    let d = Path::new(dest);
    let is_dir = fs::metadata(d).is_ok_and(|m| m.is_dir());
    let Some(top) = top else {
        if !is_dir {
            return Err(not_found(dest));
        }
        return unpack(d);
    };
    if is_dir {
        return unpack(d);
    }
    if top == "." {
        // `SRC/.`: the contents go into `dest`, made if missing.
        fs::create_dir(d).map_err(|e| format!("create {dest}: {e}"))?;
        return unpack(d);
    }
    // Not a directory: the copy takes the name `dest`, which its parent must hold.
    let parent = d
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    if !fs::metadata(parent).is_ok_and(|m| m.is_dir()) {
        return Err(not_found(&parent.display().to_string()));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-cp-")
        .tempdir_in(parent)
        .map_err(|e| format!("create a directory in {}: {e}", parent.display()))?;
    unpack(tmp.path())?;
    let entry = tmp.path().join(top);
    if fs::symlink_metadata(d).is_ok_and(|m| m.is_file()) && entry.is_dir() {
        return Err(format!("cannot copy a directory to the file {dest}"));
    }
    fs::rename(&entry, d).map_err(|e| format!("move into place {dest}: {e}"))
}
