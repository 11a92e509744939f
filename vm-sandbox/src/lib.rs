//! The Sandbox seam: run one process in a root filesystem and report how it ended.
//!
//! # Brief overview
//!
//! - [`Sandbox`]: the trait the builder and `kiln run` use. A run gets a [`RootFs`] (read-only
//!   lower directories plus a writable upper directory, overlayfs-style) and a [`RunSpec`]
//!   (argv, environment, working directory, user, network mode, hostname); on return the
//!   process's writes are in the upper directory and the [`RunOutcome`] says how it ended.
//! - [`ContainerSandbox`]: Linux namespaces (mount, pid, uts, ipc, and net for
//!   `--network=none`), an overlayfs root with `pivot_root`, `/proc`, a minimal `/dev` and a
//!   read-only `/sys`. The namespace work happens in a re-executed helper process
//!   ([`container::init_main`]), so the caller never forks a multi-threaded process.
//! - [`MicroVmSandbox`]: a throwaway microVM per run (qemu `-M microvm`), with kiln's own
//!   static guest init; the step's changes come back as a layer tar on a virtio disk.
//! - [`FakeSandbox`]: the test double: records every spec and applies scripted effects.
//!
//! Running a non-zero exit is a result ([`ExitStatus::Code`]), not an error; errors are for
//! sandboxes that could not start the process ([`SandboxError`]).

pub mod container;
mod fake;
mod scoped;
pub mod tty;
pub mod vm;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use container::ContainerSandbox;
pub use fake::FakeSandbox;
pub use scoped::scoped_path;
pub use vm::{MicroVmSandbox, VmOptions, Vmm};

/// The root filesystem of one run: overlay lower directories (top-most first) and the upper
/// directory that receives every write; or, where overlayfs is not available, one plain
/// directory that already holds the whole tree (`direct`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RootFs {
    /// True: `upper` is the complete root, bind-mounted as it is (copy-based snapshots).
    #[serde(default)]
    pub direct: bool,
    /// Read-only layers, top-most first; may be empty (`FROM scratch`).
    pub lower: Vec<PathBuf>,
    /// Writable directory that collects the run's changes.
    pub upper: PathBuf,
    /// Overlayfs work directory on the same filesystem as `upper`.
    pub work: PathBuf,
    /// The upper directory outlives no crash: it is committed or removed once the run ends
    /// (a build step, `run --rm`). The overlay is then mounted `volatile`, as podman does
    /// for `--rm` containers: `fsync` and `syncfs` inside are no-ops, and unmounting it does
    /// not sync the whole file system under `upper` (for a RUN that wrote 1 GiB here, the
    /// step's layer waited 0.6 s on that writeback).
    #[serde(default)]
    pub throwaway: bool,
}

/// Network mode of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network (what `default` means, as in rootless BuildKit).
    #[default]
    Host,
    /// A new, empty network namespace (loopback only, down).
    None,
}

/// What to run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunSpec {
    /// Program and arguments; the program is looked up in the spec's `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Working directory inside the root (created if missing).
    pub cwd: String,
    /// `user[:group]` by name or number, resolved in the root's /etc/passwd and /etc/group;
    /// empty means root.
    pub user: String,
    /// Network mode.
    pub network: Network,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// Files made for this run only, at `/dev/pipes/NAME` (mode 0755) on the sandbox's own
    /// `/dev`, so they never reach a layer: heredoc scripts of `RUN <<EOF` with a `#!` line.
    #[serde(default)]
    pub inline_files: Vec<InlineFile>,
    /// Extra mounts (RUN --mount, run -v), made after the root and before the process starts.
    #[serde(default)]
    pub mounts: Vec<SandboxMount>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Standard input is a terminal: the process leads a new session with it as its
    /// controlling terminal, which also appears as `/dev/console`.
    #[serde(default)]
    pub tty: bool,
    /// The root filesystem is mounted read-only (`kiln run --read-only`).
    #[serde(default)]
    pub read_only: bool,
}

/// Resource limits of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Processes the container's user may have at once (`RLIMIT_NPROC`); none when absent.
    pub processes: Option<u64>,
    /// Bytes of memory the run may use (a memory cgroup, as root); none when absent.
    #[serde(default)]
    pub memory: Option<u64>,
}

/// A mount inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxMount {
    /// Absolute path inside the root; created (as a directory, or an empty file for a file
    /// source) when missing, resolved without leaving the root.
    pub target: String,
    /// What is mounted there.
    pub kind: SandboxMountKind,
}

/// What a [`SandboxMount`] mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxMountKind {
    /// A host file or directory, bound (recursively), read-only unless `writable`.
    Bind {
        /// Host path.
        source: std::path::PathBuf,
        /// Writes allowed.
        writable: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in bytes (the kernel's default when absent).
        size: Option<u64>,
    },
}

/// A file the sandbox creates under `/dev/pipes/` for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    /// The file name (no `/`).
    pub name: String,
    /// Its content.
    pub content: String,
}

/// How the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The shell's `$?` for it: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// What a finished run reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// How the process ended.
    pub status: ExitStatus,
    /// The OOM killer ended it: it outgrew its memory limit (or the microVM's memory).
    pub oom_killed: bool,
}

/// Where the process's standard streams go.
#[derive(Clone, Debug, Default)]
pub enum RunIo {
    /// The caller's stdin, stdout and stderr (`kiln run`).
    #[default]
    Inherit,
    /// No stdin; stdout and stderr both to the caller's stderr (build steps, whose output is
    /// progress, not the command's result).
    OutputToStderr,
    /// No stdin; stdout and stderr both into this file descriptor (a pipe the caller reads,
    /// to show or log a build step's output).
    OutputTo(std::sync::Arc<std::os::fd::OwnedFd>),
    /// These descriptors: stdin (`/dev/null` when absent), stdout and stderr. With
    /// [`RunSpec::tty`] all three are the slave side of one pseudo-terminal.
    Fds {
        /// Standard input.
        stdin: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
        /// Standard output.
        stdout: std::sync::Arc<std::os::fd::OwnedFd>,
        /// Standard error.
        stderr: std::sync::Arc<std::os::fd::OwnedFd>,
    },
}

/// Which backend a sandbox is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxKind {
    /// Linux namespaces.
    Container,
    /// A microVM.
    MicroVm,
    /// The test double.
    Fake,
}

/// Why a sandbox could not run the process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The host lacks what the backend needs.
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    /// Setting up the sandbox or starting the program failed.
    #[error("{0}")]
    Setup(String),
    /// An I/O error on the host side.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs processes in isolated root filesystems.
pub trait Sandbox: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> SandboxKind;
    /// Checks that the host can run this backend.
    fn probe(&self) -> Result<(), SandboxError>;
    /// Runs `spec` to completion on `rootfs`, with standard streams as `io` says.
    fn run(&self, rootfs: &RootFs, spec: &RunSpec, io: RunIo) -> Result<RunOutcome, SandboxError>;
}
