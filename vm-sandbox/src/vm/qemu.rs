//! The qemu VMM: `qemu-system-x86_64 -M microvm` as a child process, with KVM where the host
//! has hardware virtualization and software emulation (TCG) otherwise. The guest's serial
//! console is qemu's stdout, read here line by line: frames go to the step's streams, other
//! lines (the guest kernel's) are kept for error messages. qemu's stdin is the console's
//! input ([`console_input`]).

use std::io::{self, BufRead as _, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::GuestBoot;
use super::console::{ConsoleReader, Report};
use super::console_input::{self, GuestInput};
use super::protocol::EXIT_PORT;
use crate::SandboxError;

/// The qemu binary: `KILN_QEMU`, else `qemu-system-x86_64` on `PATH`.
pub(crate) fn find_qemu() -> Result<PathBuf, SandboxError> {
    if let Some(p) = std::env::var_os("KILN_QEMU") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            SandboxError::Unavailable(
                "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)".into(),
            )
        })
}

/// The kernel command line: serial console, no kernel chatter but emergencies (a panic),
/// a panic stops the VM at once.
pub(crate) const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 reboot=t nokaslr i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable";

/// The command line for a boot: under software emulation the guest's TSC runs at the host's
/// rate, and its calibration against the emulated PIT fails now and then (about one boot in
/// six here), after which the guest, with no HPET or ACPI PM timer on `microvm`, hangs; so
/// the host's TSC rate is given (`tsc_early_khz`), which skips the calibration.
fn cmdline(kvm: bool) -> String {
    let mut line = CMDLINE.to_string();
    if !kvm && let Some(khz) = host_tsc_khz() {
        line.push_str(&format!(" tsc_early_khz={khz}"));
    }
    with_appended(line)
}

/// `line` with `KILN_VM_APPEND` after it: more kernel parameters, for debugging a guest
/// (`loglevel=7` and `KILN_LOG_LEVEL=kiln::guest_kernel=debug` show its boot).
pub(crate) fn with_appended(mut line: String) -> String {
    if let Ok(more) = std::env::var("KILN_VM_APPEND") {
        line.push(' ');
        line.push_str(&more);
    }
    line
}

/// The host CPU's clock rate in kHz, from /proc/cpuinfo (a guest under TCG is told it: its
/// own calibration against the emulated PIT fails now and then).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

fn command(qemu: &Path, kvm: bool, boot: &GuestBoot) -> Command {
    let mut cmd = Command::new(qemu);
    let (accel, cpu) = if kvm {
        ("kvm", "host,-arch-capabilities")
    } else {
        ("tcg", "max")
    };
    cmd.arg("-M")
        .arg(format!("microvm,accel={accel},rtc=on"))
        .args(["-cpu", cpu, "-smp", "1"])
        .arg("-m")
        .arg(format!("{}M", boot.memory_mib))
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(boot.kernel)
        .arg("-initrd")
        .arg(boot.initrd)
        .arg("-append")
        .arg(cmdline(kvm))
        .arg("-device")
        .arg(format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=4"))
        .arg("-drive")
        .arg(format!(
            "id=out,file={},format=raw,if=none",
            boot.output_disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=out,serial=kiln-out"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Out of the caller's process group: a terminal's Ctrl-C is for the guest's process
        // (passed on by kiln), not for qemu. qemu still dies with kiln (PDEATHSIG below).
        .process_group(0);
    if let Some(disk) = boot.mounts_disk {
        cmd.arg("-drive")
            .arg(format!(
                "id=mounts,file={},format=raw,if=none",
                disk.display()
            ))
            .args([
                "-device",
                "virtio-blk-device,drive=mounts,serial=kiln-mounts",
            ]);
    }
    if let Some(disk) = boot.root_disk {
        cmd.arg("-drive")
            .arg(format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=root,serial=kiln-root"]);
    }
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the new process; it allocates
    // nothing and is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Boots the guest and waits for it to stop (or kills it at the timeout); the step's output
/// goes to `stdout` and `stderr` as it arrives.
pub(crate) fn boot(
    qemu: &Path,
    kvm: bool,
    boot: &GuestBoot,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    input: GuestInput,
) -> Result<Report, SandboxError> {
    let mut child = command(qemu, kvm, boot)
        .spawn()
        .map_err(|source| SandboxError::Io {
            what: format!("start {}", qemu.display()),
            source,
        })?;
    if let Some(p) = boot.pid_file {
        let tmp = p.with_extension("tmp");
        let pids = format!("{} {}", child.id(), std::process::id());
        if let Err(source) = std::fs::write(&tmp, pids).and_then(|()| std::fs::rename(&tmp, p)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Io {
                what: format!("write {}", p.display()),
                source,
            });
        }
    }
    let serial = child.stdout.take().expect("stdout is piped");
    let errors = child.stderr.take().expect("stderr is piped");
    let to_guest = console_input::start(input, child.stdin.take().expect("stdin is piped"));
    let console = std::thread::spawn(move || {
        let mut reader = ConsoleReader::new(stdout, stderr, to_guest);
        let mut serial = BufReader::new(serial);
        let mut line = Vec::new();
        loop {
            line.clear();
            match serial.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            reader.line(line.strip_suffix(b"\n").unwrap_or(&line));
        }
        reader.finish()
    });
    let vmm_errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut BufReader::new(errors), &mut s);
        s
    });
    let started = Instant::now();
    let mut timed_out = false;
    let mut killed_from_outside = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                killed_from_outside = status.signal() == Some(libc::SIGKILL);
                break;
            }
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                return Err(SandboxError::Io {
                    what: "wait for qemu".into(),
                    source,
                });
            }
        }
        if boot.timeout.is_some_and(|t| started.elapsed() >= t) {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut report = console.join().unwrap_or_default();
    report.vmm_errors = vmm_errors.join().unwrap_or_default();
    report.timed_out = timed_out;
    report.killed_from_outside = killed_from_outside && report.exited.is_none();
    Ok(report)
}
