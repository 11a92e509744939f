//! The container backend: Linux namespaces and an overlayfs root.
//!
//! The caller's side ([`ContainerSandbox::run`]) writes the run's spec to a file and starts
//! a helper: the `kiln` binary re-executed with [`INIT_ARG`], whose `main` hands over to
//! [`init_main`]. The helper unshares namespaces, forks the container's PID 1, waits for it and
//! writes how it ended to a result file. Re-executing keeps `fork` out of the (possibly
//! multi-threaded) caller, as runc's `init` and buildah's re-exec do.

mod init;
mod user;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

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
}

/// How the run ended, as the helper reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum InitResult {
    Exited(ExitStatus),
    SetupFailed(String),
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

fn write_etc_files(dir: &Path, hostname: &str) -> Result<(), SandboxError> {
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
        self.probe()?;
        fs::create_dir_all(&self.state).map_err(io(format!("create {}", self.state.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.state)
            .map_err(io(format!(
                "create a directory in {}",
                self.state.display()
            )))?;
        let d = dir.path();
        let init = InitSpec {
            rootfs: rootfs.clone(),
            run: spec.clone(),
            merged: d.join("merged"),
            empty: d.join("empty"),
            etc: d.join("etc"),
            result: d.join("result.json"),
            rootless: !nix::unistd::geteuid().is_root(),
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
        let mut cmd = Command::new(&self.helper);
        cmd.arg(INIT_ARG).arg(&spec_path);
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
        }
        let status = cmd.status().map_err(io(format!(
            "start sandbox helper {}",
            self.helper.display()
        )))?;
        let result = fs::read(&init.result)
            .ok()
            .and_then(|b| serde_json::from_slice::<InitResult>(&b).ok());
        match result {
            Some(InitResult::Exited(status)) => Ok(RunOutcome { status }),
            Some(InitResult::SetupFailed(msg)) => Err(SandboxError::Setup(msg)),
            None => Err(SandboxError::Setup(format!(
                "sandbox helper ended without a result ({status})"
            ))),
        }
    }
}
