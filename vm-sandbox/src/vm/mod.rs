//! The microVM backend: each run boots a throwaway virtual machine with its own kernel.
//!
//! The guest is Debian's cloud kernel with kiln's static guest init
//! (`src/bin/kiln-guest-init`) and the modules it loads, in an initramfs kiln writes itself
//! (newc cpio; the fixed part is cached by content, [`kernel::base_initramfs`]). The run's
//! root filesystem goes in as a second cpio appended to it: the lower layers merged
//! ([`rootfs::pack_merged`]), plus the spec ([`protocol::GuestSpec`]) and copies of bind
//! sources (writable ones come back on a second disk and replace the host directory's
//! contents). The guest mounts it under a tmpfs overlay upper, runs the step and writes
//! the upper directory as a layer tar to a virtio disk, which the host unpacks into the
//! run's upper directory, so callers see the same result as from the container backend.
//! Output and the exit status come back as frames on the serial console; standard input
//! and signals go in as frames on its input ([`MicroVmSandbox::run_container`]).
//!
//! VMMs: [`Vmm::Qemu`] (`qemu-system-x86_64 -M microvm`, KVM on hardware virtualization,
//! else TCG). [`Vmm::Builtin`], an in-process VMM on the rust-vmm crates (`builtin.rs`: the
//! machine, boot state, serial, exit port, memory channels; `builtin_linux.rs`: the Linux
//! boot and run), on hosts with hardware virtualization only: its disks are persistent-memory
//! ranges instead of virtio. [`Vmm::Auto`] takes it there, qemu elsewhere.

mod builtin;
mod builtin_linux;
mod console;
mod console_input;
mod cpio;
mod kernel;
mod pci_host;
pub mod protocol;
mod qemu;
mod root_disk;
mod rootfs;
mod transfer;
mod vmlinux;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use builtin_linux::kill_vm_in;
pub use kernel::{guest_modules, hardware_kvm};
use protocol::{GuestMount, GuestSpec};
pub use qemu::host_tsc_khz;

use crate::container::{ETC_FILES, remove_mount_stubs, scratch_dir, write_etc_files};
use crate::{
    ExitStatus, RootFs, RunIo, RunOutcome, RunSpec, Sandbox, SandboxError, SandboxKind,
    SandboxMountKind,
};

/// What the builtin VMM's guests add to the kernel command line: there are no ACPI tables
/// to look for.
const BUILTIN_CMDLINE: &str = "acpi=off";

/// The first argument that makes the `kiln` binary run [`first_instruction_probe`].
pub const VMM_PROBE_ARG: &str = "__kiln-vmm-probe";

/// Starts the builtin VMM with a guest whose first instruction writes to the exit port, and
/// returns the time from creating the VM to that write (`bench/vm-step.sh` times the whole
/// process around it).
pub fn first_instruction_probe() -> Result<Duration, SandboxError> {
    let mut m = builtin::Machine::new(16, &[], builtin::Devices::Bare)?;
    // out 0xf4, al
    m.load(&[0xe6, protocol::EXIT_PORT as u8], builtin::LOAD_ADDR)?;
    m.boot_state(builtin::LOAD_ADDR, "", None, None)?;
    match m.run(std::io::sink())? {
        builtin::Stop::ExitPort(_) => Ok(m.created.elapsed()),
        other => Err(SandboxError::Setup(format!(
            "the probe guest stopped as {other:?}"
        ))),
    }
}

/// Which VMM runs the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vmm {
    /// The builtin VMM on hardware KVM, else qemu.
    #[default]
    Auto,
    /// kiln's in-process VMM (rust-vmm crates).
    Builtin,
    /// `qemu-system-x86_64 -M microvm`.
    Qemu,
}

impl std::str::FromStr for Vmm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Vmm::Auto),
            "builtin" => Ok(Vmm::Builtin),
            "qemu" => Ok(Vmm::Qemu),
            other => Err(format!("unknown VMM {other:?} (use auto, builtin or qemu)")),
        }
    }
}

/// How the microVMs are made.
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// The VMM.
    pub vmm: Vmm,
    /// The guest kernel (else found as [`kernel::find_kernel`] says).
    pub kernel: Option<PathBuf>,
    /// Longest a run may take before the VM is killed.
    pub timeout: Option<Duration>,
    /// Guest memory in MiB; the root filesystem and the step's changes live in it.
    pub memory_mib: u32,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            vmm: Vmm::Auto,
            kernel: None,
            timeout: None,
            memory_mib: 1024,
        }
    }
}

/// Runs each process in its own microVM.
#[derive(Clone, Debug)]
pub struct MicroVmSandbox {
    options: VmOptions,
    state: PathBuf,
}

impl MicroVmSandbox {
    /// `state` holds per-run scratch files and the initramfs cache.
    pub fn new(options: VmOptions, state: impl Into<PathBuf>) -> Self {
        MicroVmSandbox {
            options,
            state: state.into(),
        }
    }

    /// The VMM that runs the guests.
    fn vmm(&self) -> Result<ChosenVmm, SandboxError> {
        let hw = hardware_kvm();
        match self.options.vmm {
            Vmm::Builtin if self.options.memory_mib > builtin_linux::MAX_MEMORY_MIB => {
                Err(SandboxError::Unavailable(format!(
                    "the builtin VMM gives guests at most {} MiB of memory (--vm-memory): use --vmm qemu",
                    builtin_linux::MAX_MEMORY_MIB
                )))
            }
            Vmm::Builtin if hw => Ok(ChosenVmm::Builtin),
            Vmm::Builtin => Err(SandboxError::Unavailable(
                "the builtin VMM needs hardware virtualization (VMX or SVM), which this host's /dev/kvm does not offer: use --vmm qemu (or auto)".into(),
            )),
            Vmm::Auto if hw && self.options.memory_mib <= builtin_linux::MAX_MEMORY_MIB => {
                Ok(ChosenVmm::Builtin)
            }
            Vmm::Auto | Vmm::Qemu => Ok(ChosenVmm::Qemu {
                binary: qemu::find_qemu()?,
                kvm: hw,
            }),
        }
    }
}

/// What a VMM boots: the guest's kernel and initramfs, its disks (files: the output disk and
/// the mounts' the guest writes, the root's it only reads), memory and time limit.
pub(crate) struct GuestBoot<'a> {
    pub(crate) kernel: &'a std::path::Path,
    pub(crate) initrd: &'a std::path::Path,
    pub(crate) output_disk: &'a std::path::Path,
    /// Where the guest writes the writable mounts' contents, when there are any.
    pub(crate) mounts_disk: Option<&'a std::path::Path>,
    /// The root filesystem's image, when it goes on a disk ([`root_disk`]).
    pub(crate) root_disk: Option<&'a std::path::Path>,
    pub(crate) memory_mib: u32,
    pub(crate) timeout: Option<Duration>,
    /// Where to write `VMM_PID MONITOR_PID` once the VM runs (a container's pid file).
    pub(crate) pid_file: Option<&'a std::path::Path>,
}

/// The VMM a run uses.
enum ChosenVmm {
    Builtin,
    Qemu { binary: PathBuf, kvm: bool },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Where a stream of the step goes on the host.
/// A host-side destination of a guest stream.
type Sink = Box<dyn Write + Send>;

fn sinks(streams: &RunIo) -> Result<(Sink, Sink), SandboxError> {
    let dup = |fd: &Arc<std::os::fd::OwnedFd>| -> Result<Sink, SandboxError> {
        let owned = fd
            .try_clone()
            .map_err(io("duplicate an output descriptor"))?;
        Ok(Box::new(fs::File::from(owned)))
    };
    Ok(match streams {
        RunIo::Inherit => (Box::new(std::io::stdout()), Box::new(std::io::stderr())),
        RunIo::OutputToStderr => (Box::new(std::io::stderr()), Box::new(std::io::stderr())),
        RunIo::OutputTo(fd) => (dup(fd)?, dup(fd)?),
        RunIo::Fds { stdout, stderr, .. } => (dup(stdout)?, dup(stderr)?),
    })
}

impl Sandbox for MicroVmSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::MicroVm
    }

    fn probe(&self) -> Result<(), SandboxError> {
        kernel::find_kernel(self.options.kernel.as_deref())?;
        self.vmm().map(drop)
    }

    fn run(
        &self,
        rootfs: &RootFs,
        spec: &RunSpec,
        streams: RunIo,
    ) -> Result<RunOutcome, SandboxError> {
        self.run_with(rootfs, spec, streams, None, None, None)
    }
}

impl MicroVmSandbox {
    /// Runs a container (`kiln run`): as [`Sandbox::run`], and meanwhile the signals a
    /// container gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) sent to this
    /// process go to the guest's process instead, and `pid_file` says `QEMU_PID OWN_PID`
    /// while the VM runs (`SIGKILL` to qemu ends the run as a container killed by it). With
    /// `spec.tty` the guest gives the step a pseudo-terminal (its output comes on `stdout`),
    /// the size of `terminal` (the caller's, when it has one), following it.
    pub fn run_container(
        &self,
        rootfs: &RootFs,
        spec: &RunSpec,
        streams: RunIo,
        pid_file: Option<&std::path::Path>,
        terminal: Option<Arc<std::os::fd::OwnedFd>>,
    ) -> Result<RunOutcome, SandboxError> {
        let (_forwarding, signals) = console_input::SignalForwarder::install()?;
        self.run_with(rootfs, spec, streams, Some(signals), pid_file, terminal)
    }

    fn run_with(
        &self,
        rootfs: &RootFs,
        spec: &RunSpec,
        streams: RunIo,
        signals: Option<std::sync::mpsc::Receiver<i32>>,
        pid_file: Option<&std::path::Path>,
        terminal: Option<Arc<std::os::fd::OwnedFd>>,
    ) -> Result<RunOutcome, SandboxError> {
        if rootfs.direct {
            return Err(SandboxError::Unavailable(
                "--isolation vm needs overlay snapshots (this store copies layers instead)".into(),
            ));
        }
        let kernel = kernel::find_kernel(self.options.kernel.as_deref())?;
        let vmm = self.vmm()?;
        let cache = self.state.join("initramfs");
        let base = kernel::base_initramfs(&kernel, &cache)?;
        let boot_image = vmlinux::bootable(&kernel.image, &cache);
        let scratch = scratch_dir(&self.state.join("runs"))?;
        let d = scratch.path();

        let hostname = if spec.hostname.is_empty() {
            "kiln"
        } else {
            &spec.hostname
        };
        let etc = d.join("etc");
        write_etc_files(&etc, hostname)?;
        let mut guest = GuestSpec {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            user: spec.user.clone(),
            hostname: hostname.to_string(),
            modules: kernel::module_paths(matches!(vmm, ChosenVmm::Builtin)),
            etc_files: Vec::new(),
            inline_files: spec
                .inline_files
                .iter()
                .map(|f| (f.name.clone(), f.content.clone().into_bytes()))
                .collect(),
            mounts: Vec::new(),
            read_only: spec.read_only,
            interactive: false,
            root_disk: false,
            pmem: Vec::new(),
            clock: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| (d.as_secs(), d.subsec_nanos())),
            tty: spec.tty.then(|| {
                terminal
                    .as_deref()
                    .and_then(crate::tty::window_size)
                    .map_or((0, 0), |w| (w.ws_row, w.ws_col))
            }),
        };
        let stdin = match &streams {
            RunIo::Fds {
                stdin: Some(fd), ..
            } => Some(fd.clone()),
            _ => None,
        };
        guest.interactive = stdin.is_some();
        for name in ETC_FILES {
            let p = etc.join(name);
            let body = fs::read(&p).map_err(io(format!("read {}", p.display())))?;
            guest.etc_files.push((name.to_string(), body));
        }
        let mut copies = Vec::new();
        for m in &spec.mounts {
            match &m.kind {
                SandboxMountKind::Tmpfs { size } => guest.mounts.push(GuestMount::Tmpfs {
                    target: m.target.clone(),
                    size: *size,
                }),
                SandboxMountKind::Bind { source, writable } => {
                    if *writable && !source.is_dir() {
                        return Err(SandboxError::Unavailable(format!(
                            "a writable file mount at {} is not supported with --isolation vm yet",
                            m.target
                        )));
                    }
                    // Writable copies go under kiln/rw/N: the guest returns that tree.
                    let n = copies.len();
                    let inside = if *writable {
                        format!("/kiln/rw/{n}")
                    } else {
                        format!("/kiln/binds/{n}")
                    };
                    copies.push((source.clone(), inside.clone()));
                    guest.mounts.push(GuestMount::Copy {
                        target: m.target.clone(),
                        source: inside,
                        writable: *writable,
                    });
                }
            }
        }

        let disk_size = (u64::from(self.options.memory_mib) + 64) << 20;
        let output_disk = d.join("output.img");
        fs::File::create(&output_disk)
            .and_then(|f| f.set_len(disk_size))
            .map_err(io("create the output disk"))?;
        let writable: Vec<(usize, PathBuf)> = guest
            .mounts
            .iter()
            .filter_map(|m| match m {
                GuestMount::Copy {
                    source,
                    writable: true,
                    ..
                } => source
                    .strip_prefix("/kiln/rw/")
                    .and_then(|n| n.parse().ok())
                    .map(|n: usize| (n, copies[n].0.clone())),
                _ => None,
            })
            .collect();
        let mounts_disk = d.join("mounts.img");
        if !writable.is_empty() {
            fs::File::create(&mounts_disk)
                .and_then(|f| f.set_len(disk_size))
                .map_err(io("create the mounts disk"))?;
        }

        // A large root goes on a disk of its own, else in the initramfs.
        let root_image = d.join("root.img");
        guest.root_disk = root_disk::make(&rootfs.lower, &root_image)?.is_some();
        let lower: &[PathBuf] = if guest.root_disk { &[] } else { &rootfs.lower };
        if matches!(vmm, ChosenVmm::Builtin) {
            guest.pmem = builtin_linux::pmem_disks(!writable.is_empty(), guest.root_disk);
        }
        // The initrd: the cached fixed part, then this run's part.
        let initrd = d.join("initrd.cpio");
        {
            let mut out = std::io::BufWriter::new(
                fs::File::create(&initrd).map_err(io(format!("create {}", initrd.display())))?,
            );
            let mut fixed =
                fs::File::open(&base).map_err(io(format!("read {}", base.display())))?;
            std::io::copy(&mut fixed, &mut out).map_err(io("write the initramfs"))?;
            let mut w = cpio::CpioWriter::new(out);
            transfer::write_run_part(&mut w, &guest, &copies, lower)
                .map_err(io("pack the root filesystem into the initramfs"))?;
            w.finish().map_err(io("write the initramfs"))?;
        }
        let (out, err) = sinks(&streams)?;
        let input = console_input::GuestInput {
            stdin,
            signals,
            window: terminal.filter(|_| spec.tty),
        };
        let mounts_disk = (!writable.is_empty()).then_some(mounts_disk.as_path());
        let boot = GuestBoot {
            kernel: &boot_image,
            initrd: &initrd,
            output_disk: &output_disk,
            mounts_disk,
            root_disk: guest.root_disk.then_some(root_image.as_path()),
            memory_mib: self.options.memory_mib,
            timeout: self.options.timeout,
            pid_file,
        };
        let report = match &vmm {
            ChosenVmm::Builtin => {
                tracing::debug!(argv = ?spec.argv, "microVM run (builtin VMM)");
                let cmdline = qemu::with_appended(format!("{} {BUILTIN_CMDLINE}", qemu::CMDLINE));
                builtin_linux::boot(&boot, &cmdline, out, err, input)?
            }
            ChosenVmm::Qemu { binary, kvm } => {
                tracing::debug!(argv = ?spec.argv, kvm, "microVM run (qemu)");
                qemu::boot(binary, *kvm, &boot, out, err, input)?
            }
        };
        if report.killed_from_outside {
            return Ok(RunOutcome {
                status: ExitStatus::Signal(9),
                oom_killed: false,
            });
        }
        // A cache mount keeps what the step wrote even when the step failed.
        if let Some(len) = report.mounts {
            transfer::sync_back(
                mounts_disk.unwrap_or(&output_disk),
                len,
                &d.join("mounts"),
                &writable,
            )?;
        }
        let status = outcome(&report, self.options.timeout)?;
        let len = report.output.unwrap_or(0);
        let disk = fs::File::open(&output_disk).map_err(io("read the output disk"))?;
        snapshotter::snapshot::unpack_layer(std::io::Read::take(disk, len), &rootfs.upper)
            .map_err(|e| SandboxError::Setup(format!("apply the microVM's changes: {e}")))?;
        remove_mount_stubs(rootfs);
        Ok(RunOutcome {
            status,
            oom_killed: false,
        })
    }
}

/// How the step ended, from the guest's report; an error where the guest could not say.
fn outcome(
    report: &console::Report,
    timeout: Option<Duration>,
) -> Result<ExitStatus, SandboxError> {
    if report.timed_out {
        let t = timeout
            .map(|t| format!("{}s", t.as_secs()))
            .unwrap_or_default();
        return Err(SandboxError::Setup(format!(
            "the microVM did not finish within {t} (--vm-timeout) and was stopped"
        )));
    }
    if let Some(m) = &report.failed {
        return Err(SandboxError::Setup(m.clone()));
    }
    let status = match (report.exited, report.killed) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some((_, true))) => {
            return Err(SandboxError::Setup(
                "the step ran out of memory in the microVM (raise --vm-memory)".into(),
            ));
        }
        (None, Some((signal, false))) => ExitStatus::Signal(signal),
        (None, None) => {
            let panic = report.panic.as_ref().map(|l| {
                l.trim_start_matches(|c: char| {
                    c == '[' || c == ']' || c == ' ' || c == '.' || c.is_ascii_digit()
                })
            });
            return Err(SandboxError::Setup(match panic {
                Some(p) => format!("the microVM's kernel panicked: {p}"),
                None => {
                    let last = report
                        .kernel_log
                        .last()
                        .cloned()
                        .or_else(|| report.vmm_errors.lines().last().map(str::to_string))
                        .unwrap_or_else(|| "no output".into());
                    format!("the microVM stopped before the step finished: {last}")
                }
            }));
        }
    };
    if report.output.is_none() {
        return Err(SandboxError::Setup(
            "the microVM stopped before it wrote the step's changes".into(),
        ));
    }
    Ok(status)
}
