//! Linux on the builtin VMM: the kernel (an ELF `vmlinux`, or a bzImage) and the initramfs
//! loaded into guest RAM, KVM's interrupt controllers and timer, the serial console on IRQ 4
//! (its output read as frames by [`ConsoleReader`], its input fed from [`console_input`]),
//! and the output and mounts disks as persistent-memory ranges (the guest's `/dev/pmem0`
//! and `/dev/pmem1`), which the host reads from their files after the guest stops.
//!
//! The vCPU runs on the calling thread; a timeout interrupts it with a signal.

// A signal to the vCPU's thread and the time-out's bookkeeping around it.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use linux_loader::loader::{BzImage, Elf, KernelLoader as _, bootparam::setup_header};
use vm_memory::{Bytes as _, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::GuestBoot;
use super::builtin::{Devices, Machine, Stop};
use super::console::{ConsoleReader, Report};
use super::console_input::{self, GuestInput};
use crate::SandboxError;

/// The most guest memory the builtin VMM gives: RAM is one range from 0, which must stay
/// below the 32-bit addresses of the TSS KVM needs on Intel, the I/O APIC and the local APIC.
pub(crate) const MAX_MEMORY_MIB: u32 = 3072;

/// The disks' names in the order they become the guest's `/dev/pmem0`, `/dev/pmem1`, ...
pub(crate) fn pmem_disks(mounts: bool, root: bool) -> Vec<String> {
    let mut names = vec!["kiln-out".to_string()];
    if mounts {
        names.push("kiln-mounts".into());
    }
    if root {
        names.push("kiln-root".into());
    }
    names
}

/// Where a 64-bit kernel is loaded when its ELF headers do not say (the boot protocol's
/// 16 MiB default alignment).
const KERNEL_HIGH: u64 = 0x100_0000;
/// The serial port's interrupt line.
const SERIAL_IRQ: u32 = 4;
/// The local APIC's LVT0 and LVT1 registers.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;

fn setup(what: &str) -> impl Fn(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        what: what.into(),
        source,
    }
}

/// The serial port's interrupt: an eventfd KVM turns into IRQ 4.
struct IrqLine(EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

type Serial = vm_superio::Serial<IrqLine, vm_superio::serial::NoEvents, ConsoleReader>;

/// Boots the guest and runs it until it stops (or the timeout); the step's output goes to
/// `stdout` and `stderr` as it arrives.
pub(crate) fn boot(
    boot: &GuestBoot,
    cmdline: &str,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    input: GuestInput,
) -> Result<Report, SandboxError> {
    let open = |p: &Path, write: bool| {
        let f = OpenOptions::new()
            .read(true)
            .write(write)
            .open(p)
            .map_err(setup("open a disk of the microVM"))?;
        let len = f.metadata().map_err(setup("stat a disk"))?.len();
        Ok::<_, SandboxError>((f, len))
    };
    // In the order of [`pmem_disks`].
    let output = open(boot.output_disk, true)?;
    let mounts = boot.mounts_disk.map(|p| open(p, true)).transpose()?;
    let root = boot.root_disk.map(|p| open(p, false)).transpose()?;
    let mut channels = vec![(&output.0, output.1, true)];
    if let Some((f, len)) = &mounts {
        channels.push((f, *len, true));
    }
    if let Some((f, len)) = &root {
        channels.push((f, len.next_multiple_of(4096), false));
    }
    let mut machine = Machine::new(boot.memory_mib, &channels, Devices::Interrupts)?;
    let (entry, header, kernel_end) = load_kernel(&machine, boot.kernel)?;
    let initrd = load_initrd(&machine, boot.initrd, kernel_end)?;
    machine.boot_state(entry, cmdline, Some(initrd), header)?;
    virtual_wire(&machine)?;

    let irq = EventFd::new(EFD_NONBLOCK).map_err(setup("create the serial interrupt"))?;
    machine
        .vm()
        .register_irqfd(&irq, SERIAL_IRQ)
        .map_err(|e| SandboxError::Setup(format!("connect the serial interrupt: {e}")))?;
    let (input_from, input_to) =
        nix::unistd::pipe().map_err(|e| setup("create the console's input pipe")(e.into()))?;
    let to_guest = console_input::start(input, File::from(input_to));
    let reader = ConsoleReader::new(stdout, stderr, to_guest);
    let serial: Arc<Mutex<Serial>> =
        Arc::new(Mutex::new(vm_superio::Serial::new(IrqLine(irq), reader)));
    if let Some(p) = boot.pid_file {
        let tmp = p.with_extension("tmp");
        let pids = format!("{0} {0}", std::process::id());
        std::fs::write(&tmp, pids)
            .and_then(|()| std::fs::rename(&tmp, p))
            .map_err(setup("write the container's pid file"))?;
    }

    let done = Arc::new(AtomicBool::new(false));
    let feeder = {
        let serial = serial.clone();
        let done = done.clone();
        std::thread::spawn(move || feed_input(File::from(input_from), &serial, &done))
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    KILL_REQUESTED.store(false, Ordering::SeqCst);
    let watchdog = {
        let vcpu_thread = VcpuThread::current();
        let limit = boot.timeout;
        let (done, stopping) = (done.clone(), stopping.clone());
        let (timed_out, killed) = (timed_out.clone(), killed.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if !stopping.load(Ordering::SeqCst) {
                    if limit.is_some_and(|l| started.elapsed() >= l) {
                        timed_out.store(true, Ordering::SeqCst);
                        stopping.store(true, Ordering::SeqCst);
                    } else if KILL_REQUESTED.load(Ordering::SeqCst) {
                        killed.store(true, Ordering::SeqCst);
                        stopping.store(true, Ordering::SeqCst);
                    }
                }
                if stopping.load(Ordering::SeqCst) {
                    // Again until the vCPU has seen it: a signal just before KVM_RUN is lost.
                    vcpu_thread.interrupt();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let stop = machine.run_with(&serial, &stopping);
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    let _ = feeder.join();
    drop(machine);
    let reader = match Arc::try_unwrap(serial) {
        Ok(m) => m
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_writer(),
        Err(_) => {
            return Err(SandboxError::Setup(
                "the serial console is still in use".into(),
            ));
        }
    };
    let mut report = reader.finish();
    report.timed_out = timed_out.load(Ordering::SeqCst);
    report.killed_from_outside = killed.load(Ordering::SeqCst) && report.exited.is_none();
    match stop? {
        Stop::ExitPort(_) | Stop::Shutdown | Stop::Interrupted => {}
        Stop::Halted => report.vmm_errors = "the guest halted".into(),
    }
    Ok(report)
}

/// Loads the kernel: an ELF `vmlinux` is entered at its entry point, a bzImage 0x200 bytes
/// into its protected-mode part (the 64-bit entry), with its setup header in the zero page.
/// Returns the entry, the header, and where the kernel ends.
fn load_kernel(
    machine: &Machine,
    path: &Path,
) -> Result<(u64, Option<setup_header>, u64), SandboxError> {
    let mut f = File::open(path).map_err(setup("open the guest kernel"))?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)
        .map_err(setup("read the guest kernel"))?;
    let high = Some(GuestAddress(KERNEL_HIGH));
    let loaded = if &magic == b"\x7fELF" {
        Elf::load(machine.memory(), None, &mut f, high)
    } else {
        BzImage::load(machine.memory(), None, &mut f, high)
    }
    .map_err(|e| SandboxError::Setup(format!("load {}: {e}", path.display())))?;
    let load = loaded.kernel_load.0;
    let end = loaded.kernel_end.max(load);
    Ok(match loaded.setup_header {
        Some(h) => (load + 0x200, Some(h), end),
        None => (load, None, end),
    })
}

/// Puts the initramfs at the top of RAM (2 MiB aligned, below the boot protocol's 2 GiB
/// limit); its address and size.
fn load_initrd(
    machine: &Machine,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u32), SandboxError> {
    let mut f = File::open(path).map_err(setup("open the initramfs"))?;
    let len = f.metadata().map_err(setup("stat the initramfs"))?.len();
    let top = machine.memory_size().min(0x8000_0000);
    let addr = top.saturating_sub(len) & !((2 << 20) - 1);
    let size = u32::try_from(len).ok().filter(|_| addr > kernel_end);
    let Some(size) = size else {
        return Err(SandboxError::Setup(format!(
            "the root filesystem ({} MiB packed) does not fit in the microVM's memory: raise --vm-memory",
            len >> 20
        )));
    };
    machine
        .memory()
        .read_exact_volatile_from(GuestAddress(addr), &mut f, len as usize)
        .map_err(|e| SandboxError::Setup(format!("load the initramfs: {e}")))?;
    Ok((addr, size))
}

/// The local APIC in virtual-wire mode: the PIC's interrupts through LINT0, NMIs through
/// LINT1, as firmware leaves it for a kernel that finds no MP table or ACPI.
fn virtual_wire(machine: &Machine) -> Result<(), SandboxError> {
    let err = |e: kvm_ioctls::Error| SandboxError::Setup(format!("local APIC: {e}"));
    let mut lapic = machine.vcpu().get_lapic().map_err(err)?;
    let mut set = |reg: usize, mode: u32| {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let v = u32::from_le_bytes(bytes.try_into().expect("four bytes"));
        let v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    };
    set(APIC_LVT0, 0x7); // ExtINT
    set(APIC_LVT1, 0x4); // NMI
    machine.vcpu().set_lapic(&lapic).map_err(err)?;
    let fpu = kvm_bindings::kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    machine
        .vcpu()
        .set_fpu(&fpu)
        .map_err(|e| SandboxError::Setup(format!("FPU: {e}")))
}

/// Moves the console's input (frames from [`console_input`]) into the serial port's receive
/// FIFO as the guest empties it, until the run is `done`.
fn feed_input(mut from: File, serial: &Mutex<Serial>, done: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !done.load(Ordering::SeqCst) {
        let mut poll = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&from),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut poll, nix::poll::PollTimeout::from(50u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut sent = 0;
        while sent < n && !done.load(Ordering::SeqCst) {
            let took = {
                let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
                let room = s.fifo_capacity().min(n - sent);
                if room > 0 {
                    s.enqueue_raw_bytes(&buf[sent..sent + room]).unwrap_or(0)
                } else {
                    0
                }
            };
            sent += took;
            if took == 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

/// The thread running the vCPU, which a signal takes out of `KVM_RUN`.
struct VcpuThread(libc::pthread_t);

/// The signal that interrupts the vCPU: its handler does nothing, so that `KVM_RUN` returns.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

/// The signal that asks the process running a builtin VM to end it as if its VMM had been
/// killed ([`kill_vm_in`]).
fn kill_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

/// Set by [`kill_signal`]'s handler; the watchdog stops the VM.
static KILL_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

extern "C" fn on_kill(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KILL_REQUESTED.store(true, Ordering::SeqCst);
}

/// Ends the builtin VM that process `pid` runs (a container's monitor) as `SIGKILL` ends
/// qemu: at once, the container's process counted as killed by it. (`SIGKILL` itself
/// would kill the monitor before it could record how the container ended.)
pub fn kill_vm_in(pid: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a plain PID and signal number has no memory effects here.
    if unsafe { libc::kill(pid, kill_signal()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl VcpuThread {
    fn current() -> VcpuThread {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
            let _ = vmm_sys_util::signal::register_signal_handler(kill_signal(), on_kill);
        });
        // SAFETY: pthread_self has no preconditions.
        VcpuThread(unsafe { libc::pthread_self() })
    }

    fn interrupt(&self) {
        // SAFETY: the thread is the caller of `boot`, which joins this watchdog before it
        // returns, so the handle is live; the signal's handler does nothing.
        unsafe { libc::pthread_kill(self.0, kick_signal()) };
    }
}

// SAFETY: a pthread_t is an opaque handle; it is only passed to pthread_kill.
unsafe impl Send for VcpuThread {}
