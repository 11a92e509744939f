//! The container backend: Linux namespaces and an overlayfs root.
//!
//! The caller's side ([`ContainerSandbox::run`]) writes the run's spec to a file and starts
//! a helper: the `kiln` binary re-executed with [`INIT_ARG`], whose `main` hands over to
//! [`init_main`]. The helper unshares namespaces, forks the container's PID 1, waits for it and
//! writes how it ended to a result file. Re-executing keeps `fork` out of the (possibly
//! multi-threaded) caller, as runc's `init` and buildah's re-exec do.

mod cgroup;
mod confine;
mod enter;
mod idmap;
mod init;
mod process;
mod program;
mod user;

use std::fs;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

pub use cgroup::{MemoryLimit, ProcessLimit, oom_kills};
pub use enter::{ENTER_ARG, EnterAction, EnterTarget, enter_main};
pub use idmap::{enter_user_namespace, in_user_namespace, subordinate_ranges};
pub use init::init_main;

use crate::{ExitStatus, RootFs, RunIo, RunOutcome, RunSpec, Sandbox, SandboxError, SandboxKind};

/// The first argument that makes the `kiln` binary act as the sandbox helper.
pub const INIT_ARG: &str = "__kiln-sandbox-init";

/// What the helper gets: the run plus where to put things.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    pub(crate) rootfs: RootFs,
    pub(crate) run: RunSpec,
    /// Mount point for the merged root.
    pub(crate) merged: PathBuf,
    /// An empty directory, the lower layer of a `FROM scratch` root.
    pub(crate) empty: PathBuf,
    /// Host-side `hosts`, `resolv.conf` and `hostname` to bind over the image's.
    pub(crate) etc: PathBuf,
    /// Where the helper writes the [`InitResult`].
    pub(crate) result: PathBuf,
    /// Not root: enter a user namespace first and mount overlay with `userxattr`.
    pub(crate) rootless: bool,
    /// Where the helper writes the host PID of the container's PID 1, once it exists.
    #[serde(default)]
    pub(crate) pid_file: Option<PathBuf>,
    /// The groups the caller left to join the build's cgroups; the helper's reaper moves
    /// itself back into them ([`cgroup::joined_homes`]).
    #[serde(default)]
    pub(crate) reaper_groups: Vec<PathBuf>,
}

/// How the run ended, as the helper reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum InitResult {
    Exited(ExitStatus),
    /// The OOM killer ended it (its memory limit, or the host's memory).
    OutOfMemory(ExitStatus),
    SetupFailed(String),
}

/// One helper run's directory, removed (and unlocked) when dropped.
pub(crate) struct ScratchDir {
    dir: tempfile::TempDir,
    _lock: fs::File,
}

impl ScratchDir {
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs processes in Linux namespaces with an overlayfs root.
#[derive(Clone, Debug)]
pub struct ContainerSandbox {
    helper: PathBuf,
    state: PathBuf,
}

impl ContainerSandbox {
    /// `helper` is a binary that calls [`init_main`] when its first argument is [`INIT_ARG`]
    /// (the `kiln` binary itself); `state` is a directory for per-run scratch files.
    pub fn new(helper: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        ContainerSandbox {
            helper: helper.into(),
            state: state.into(),
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Whether overlayfs marked `dir` opaque (its lower contents deleted), as root
/// (`trusted.`) or rootless (`user.`) mounts do.
pub(crate) fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            let name = std::ffi::CString::new(*name).expect("no NUL in the name");
            // SAFETY: both pointers are valid NUL-terminated strings for the call; a null
            // buffer with size 0 asks only for the value's length.
            #[allow(unsafe_code)]
            let n =
                unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
            n >= 0
        })
}

/// The variable that tells a helper which process started it.
const PARENT_VAR: &str = "KILN_SANDBOX_PARENT";

/// Makes this helper (and with it its container) end when the kiln process that started it
/// does, even when killed. False if that process is gone already (it died between starting
/// this one and now, before the parent-death signal was armed).
pub(crate) fn die_with_parent() -> bool {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    match std::env::var(PARENT_VAR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        Some(parent) => nix::unistd::getppid().as_raw() == parent,
        None => true,
    }
}

/// The files under `/etc` that every container gets from the host side.
pub(crate) const ETC_FILES: [&str; 3] = ["hosts", "resolv.conf", "hostname"];

/// Removes the empty mount points the helper made for [`ETC_FILES`] that the image lacks, so
/// they never reach a layer.
pub(crate) fn remove_mount_stubs(rootfs: &RootFs) {
    for name in ETC_FILES {
        let rel = Path::new("etc").join(name);
        let stub = rootfs.upper.join(&rel);
        let empty_file = fs::symlink_metadata(&stub).is_ok_and(|m| m.is_file() && m.len() == 0);
        let in_image = rootfs
            .lower
            .iter()
            .any(|l| fs::symlink_metadata(l.join(&rel)).is_ok());
        if empty_file && !in_image {
            let _ = fs::remove_file(&stub);
        }
    }
    // Overlay copied `/etc` up to hold the stubs: an empty copy that matches the image's
    // carries no change, and would otherwise put `etc/` into every layer.
    if !rootfs.direct {
        let upper_etc = rootfs.upper.join("etc");
        let empty = fs::read_dir(&upper_etc).is_ok_and(|mut d| d.next().is_none());
        let same = |a: &fs::Metadata, b: &fs::Metadata| {
            use std::os::unix::fs::MetadataExt;
            a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid()
        };
        let lower_etc = rootfs
            .lower
            .iter()
            .find_map(|l| fs::symlink_metadata(l.join("etc")).ok());
        if empty
            && !is_opaque(&upper_etc)
            && let (Ok(up), Some(low)) = (fs::symlink_metadata(&upper_etc), lower_etc)
            && low.is_dir()
            && same(&up, &low)
        {
            let _ = fs::remove_dir(&upper_etc);
        }
    }
}

pub(crate) fn write_etc_files(dir: &Path, hostname: &str) -> Result<(), SandboxError> {
    fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    // The host's resolver configuration, as Docker gives containers on the host network.
    let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for (name, body) in [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{hostname}\n")),
    ] {
        let p = dir.join(name);
        fs::write(&p, body).map_err(io(format!("write {}", p.display())))?;
    }
    Ok(())
}

impl Sandbox for ContainerSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Container
    }

    fn probe(&self) -> Result<(), SandboxError> {
        if !nix::unistd::geteuid().is_root() {
            // Rootless: needs user namespaces (and, for overlay, a kernel >= 5.11).
            let max = fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
            if max.trim() == "0" {
                return Err(SandboxError::Unavailable(
                    "user namespaces are disabled (user.max_user_namespaces = 0)".into(),
                ));
            }
        }
        Ok(())
    }

    fn run(
        &self,
        rootfs: &RootFs,
        spec: &RunSpec,
        streams: RunIo,
    ) -> Result<RunOutcome, SandboxError> {
        self.run_recording_pid(rootfs, spec, streams, None)
    }
}

impl ContainerSandbox {
    /// [`Sandbox::run`], and once the container's first process exists, its host PID goes to
    /// `pid_file` (written atomically), for `kiln stop`, `exec` and `top`.
    pub fn run_recording_pid(
        &self,
        rootfs: &RootFs,
        spec: &RunSpec,
        streams: RunIo,
        pid_file: Option<&Path>,
    ) -> Result<RunOutcome, SandboxError> {
        self.probe()?;
        let dir = scratch_dir(&self.state)?;
        let d = dir.path();
        let init = InitSpec {
            rootfs: rootfs.clone(),
            run: spec.clone(),
            merged: d.join("merged"),
            empty: d.join("empty"),
            etc: d.join("etc"),
            result: d.join("result.json"),
            rootless: !nix::unistd::geteuid().is_root() || idmap::in_user_namespace(),
            pid_file: pid_file.map(Path::to_path_buf),
            reaper_groups: cgroup::joined_homes(),
        };
        for p in [&init.merged, &init.empty] {
            fs::create_dir(p).map_err(io(format!("create {}", p.display())))?;
        }
        write_etc_files(
            &init.etc,
            if spec.hostname.is_empty() {
                "kiln"
            } else {
                &spec.hostname
            },
        )?;
        let spec_path = d.join("spec.json");
        let json = serde_json::to_vec(&init).expect("spec serializes");
        fs::write(&spec_path, json).map_err(io("write run spec"))?;
        tracing::debug!(argv = ?spec.argv, lower = rootfs.lower.len(), "container run");
        let outcome = self.run_helper(INIT_ARG, &spec_path, &init.result, streams);
        remove_mount_stubs(rootfs);
        outcome
    }

    /// Runs `action` inside an existing container: `kiln exec` in a running one (the
    /// process's streams as `streams` says), `kiln cp` in a running or stopped one (the tar
    /// on the helper's stdout or stdin, which `streams` provides).
    pub fn enter(
        &self,
        target: EnterTarget,
        action: EnterAction,
        streams: RunIo,
    ) -> Result<RunOutcome, SandboxError> {
        self.probe()?;
        let dir = scratch_dir(&self.state)?;
        let d = dir.path();
        let spec = enter::EnterSpec {
            target,
            action,
            rootless: !nix::unistd::geteuid().is_root() || idmap::in_user_namespace(),
            scratch: d.to_path_buf(),
            result: d.join("result.json"),
        };
        for p in [d.join("merged"), d.join("empty")] {
            fs::create_dir(&p).map_err(io(format!("create {}", p.display())))?;
        }
        let spec_path = d.join("spec.json");
        let json = serde_json::to_vec(&spec).expect("spec serializes");
        fs::write(&spec_path, json).map_err(io("write enter spec"))?;
        self.run_helper(ENTER_ARG, &spec_path, &spec.result, streams)
    }

    /// Starts the helper in mode `arg` on `spec_path` with `streams`, waits, and reads how it
    /// ended from `result_path`.
    fn run_helper(
        &self,
        arg: &str,
        spec_path: &Path,
        result_path: &Path,
        streams: RunIo,
    ) -> Result<RunOutcome, SandboxError> {
        let mut cmd = Command::new(&self.helper);
        cmd.arg(arg)
            .arg(spec_path)
            .env(PARENT_VAR, std::process::id().to_string());
        match &streams {
            RunIo::Inherit => {}
            RunIo::OutputToStderr => {
                cmd.stdin(Stdio::null()).stdout(std::io::stderr());
            }
            RunIo::OutputTo(fd) => {
                let out = fd.try_clone().map_err(io("duplicate the output pipe"))?;
                let err = fd.try_clone().map_err(io("duplicate the output pipe"))?;
                cmd.stdin(Stdio::null()).stdout(out).stderr(err);
            }
            RunIo::Fds {
                stdin,
                stdout,
                stderr,
            } => {
                let dup = |fd: &std::sync::Arc<std::os::fd::OwnedFd>| {
                    fd.try_clone().map_err(io("duplicate a standard stream"))
                };
                match stdin {
                    Some(fd) => cmd.stdin(dup(fd)?),
                    None => cmd.stdin(Stdio::null()),
                };
                cmd.stdout(dup(stdout)?).stderr(dup(stderr)?);
            }
        }
        let status = cmd.status().map_err(io(format!(
            "start sandbox helper {}",
            self.helper.display()
        )))?;
        let result = fs::read(result_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<InitResult>(&b).ok());
        match result {
            Some(InitResult::Exited(status)) => Ok(RunOutcome {
                status,
                oom_killed: false,
            }),
            Some(InitResult::OutOfMemory(status)) => Ok(RunOutcome {
                status,
                oom_killed: true,
            }),
            Some(InitResult::SetupFailed(msg)) => Err(SandboxError::Setup(msg)),
            // Killed (`kiln stop` and `kill` end a container through its helper): the
            // container died with it.
            None if status.signal() == Some(9) => Ok(RunOutcome {
                status: ExitStatus::Signal(9),
                oom_killed: false,
            }),
            None => Err(SandboxError::Setup(format!(
                "sandbox helper ended without a result ({status})"
            ))),
        }
    }
}

/// A fresh directory for one helper run under the state directory, locked while in use;
/// those of runs whose process died (killed before it could clean up) are removed first.
pub(crate) fn scratch_dir(state: &Path) -> Result<ScratchDir, SandboxError> {
    fs::create_dir_all(state).map_err(io(format!("create {}", state.display())))?;
    sweep_dead_runs(state);
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(state)
        .map_err(io(format!("create a directory in {}", state.display())))?;
    // The lock file appears under its name already locked, so a sweep in another process
    // never finds it unlocked while this one is alive.
    let fresh = dir.path().join("lock.new");
    let lock = fs::File::create(&fresh).map_err(io("create a run lock"))?;
    lock.lock().map_err(io("lock a run directory"))?;
    fs::rename(&fresh, dir.path().join("lock")).map_err(io("create a run lock"))?;
    Ok(ScratchDir { dir, _lock: lock })
}

fn sweep_dead_runs(state: &Path) {
    let Ok(entries) = fs::read_dir(state) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("run-") {
            continue;
        }
        // A run locks its directory right after making it: one with an unlocked lock file, or
        // with none and not brand new, belongs to a dead process.
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() < 10));
        let Ok(lock) = fs::File::open(path.join("lock")) else {
            if !young {
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}
