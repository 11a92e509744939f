//! kiln's own VMM on the rust-vmm crates (kvm-ioctls, vm-memory, linux-loader, vm-superio):
//! one vCPU started directly in 64-bit mode with the Linux boot protocol's state (identity
//! page tables, a flat GDT, the zero page with the command line, the e820 map and the
//! initrd), a 16550 serial port at 0x3f8, the exit port ([`EXIT_PORT`]) and an optional
//! memory channel: a host file mapped into the guest as an e820 persistent-memory range
//! (type 12), which the guest writes and the host reads after it stops.
//!
//! With [`Devices::Interrupts`] it also gets KVM's interrupt controllers and timer and a PCI
//! host bridge, and boots Linux (`builtin_linux.rs`). Small test guests check the boot
//! state, the serial port, the exit port and the memory channel wherever /dev/kvm opens; a
//! Linux boot needs hardware virtualization ([`super::hardware_kvm`]): on PVM hosts a stock
//! kernel does not boot (../shared/design/microvm.md), and `--vmm builtin` is refused there.

// Guest memory, KVM ioctls and a shared mapping: every unsafe block says why it holds.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap};

use super::pci_host::PciHost;
use super::protocol::EXIT_PORT;
use crate::SandboxError;

const GDT_ADDR: u64 = 0x500;
const IDT_ADDR: u64 = 0x520;
const ZERO_PAGE: u64 = 0x7000;
const STACK_TOP: u64 = 0x8ff0;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
const CMDLINE_ADDR: u64 = 0x20000;
const CMDLINE_MAX: usize = 2048;
/// Where a raw test guest or a kernel's 64-bit entry is loaded.
pub(crate) const LOAD_ADDR: u64 = 0x10_0000;
/// Where the memory channel appears in the guest (above RAM, inside the identity map).
pub(crate) const CHANNEL_ADDR: u64 = 0x4000_0000;
const SERIAL_BASE: u16 = 0x3f8;
const E820_RAM: u32 = 1;
const E820_PMEM: u32 = 12;

fn vmm_err(what: &str) -> impl Fn(kvm_ioctls::Error) -> SandboxError + '_ {
    move |e| SandboxError::Setup(format!("{what}: {e}"))
}

/// A serial interrupt line with nothing behind it (the guest polls).
struct NoInterrupt;

impl vm_superio::Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// How a guest stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// It wrote this byte to the exit port.
    ExitPort(u8),
    /// It halted.
    Halted,
    /// A triple fault or a reset request.
    Shutdown,
    /// Stopped from outside ([`Machine::run_with`]'s `stopping`).
    Interrupted,
}

/// A machine with one vCPU.
pub(crate) struct Machine {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: VcpuFd,
    memory: GuestMemoryMmap,
    memory_size: u64,
    channels: Vec<Channel>,
    devices: Devices,
    /// When `new` started, for the time to the first guest instruction.
    pub(crate) created: Instant,
}

/// A host file in guest-physical memory (an e820 persistent-memory range).
struct Channel {
    #[cfg_attr(not(test), allow(dead_code))] // held for the VM; read by the tests
    map: memmap_region::Mapping,
    addr: u64,
    len: u64,
}

/// The devices a machine gets besides RAM and its vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Devices {
    /// None: a test guest polls the serial port and stops with `hlt` or the exit port.
    Bare,
    /// KVM's interrupt controllers (PIC, I/O APIC, the vCPU's local APIC) and timer (PIT),
    /// and a PCI host bridge ([`PciHost`]), which a Linux guest needs; `hlt` then waits for
    /// an interrupt instead of stopping.
    Interrupts,
}

/// Where a channel goes: above RAM and the channel before it, on a 1 GiB boundary, at
/// `lowest` or above.
fn channel_addr(memory_size: u64, previous_end: Option<u64>, lowest: u64) -> u64 {
    let gib = 1u64 << 30;
    previous_end
        .unwrap_or(memory_size)
        .max(lowest)
        .div_ceil(gib)
        * gib
}

/// Where a Linux machine's channels start: above 4 GiB, clear of the local APIC, the I/O
/// APIC and the TSS just below it.
const LINUX_CHANNELS_ADDR: u64 = 1 << 32;

/// A file mapped shared into the process, for the memory channel.
mod memmap_region {
    use std::fs::File;
    use std::os::fd::AsRawFd as _;

    pub(crate) struct Mapping {
        pub(crate) addr: *mut u8,
        pub(crate) len: usize,
    }

    // SAFETY: the mapping is plain shared memory owned by this value; the guest writes it
    // only while the vCPU runs on the thread that owns the machine.
    unsafe impl Send for Mapping {}

    impl Mapping {
        /// A mapping of `len` bytes of `file`: `shared`, the file sees writes to it; else
        /// they stay in the mapping (copy-on-write).
        pub(crate) fn new(file: &File, len: usize, shared: bool) -> std::io::Result<Mapping> {
            let flags = if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            // SAFETY: a fresh mapping of `len` bytes of `file`, which outlives the call; the
            // result is checked before use.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    file.as_raw_fd(),
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Mapping {
                addr: addr.cast(),
                len,
            })
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`, once.
            unsafe { libc::munmap(self.addr.cast(), self.len) };
        }
    }
}

impl Machine {
    /// A VM with `memory_mib` of RAM and `channels` (files of the given lengths, and whether
    /// the guest's writes reach the file) as persistent-memory ranges above it: a bare
    /// machine's first at [`CHANNEL_ADDR`] (inside its identity map) when its RAM is smaller,
    /// a Linux machine's from 4 GiB.
    pub(crate) fn new(
        memory_mib: u32,
        channels: &[(&File, u64, bool)],
        devices: Devices,
    ) -> Result<Machine, SandboxError> {
        let created = Instant::now();
        let kvm = Kvm::new().map_err(vmm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(vmm_err("create a VM"))?;
        let memory_size = u64::from(memory_mib) << 20;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), memory_size as usize)])
            .map_err(|e| SandboxError::Setup(format!("allocate guest memory: {e}")))?;
        let host = memory
            .get_host_address(GuestAddress(0))
            .map_err(|e| SandboxError::Setup(format!("guest memory: {e}")))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is the mapping `memory` owns, which lives as long as the VM.
        unsafe { vm.set_user_memory_region(region) }.map_err(vmm_err("map guest memory"))?;
        let mut mapped: Vec<Channel> = Vec::new();
        for (file, len, shared) in channels {
            let len_usize = usize::try_from(*len)
                .map_err(|_| SandboxError::Setup("memory channel too large".into()))?;
            let map = memmap_region::Mapping::new(file, len_usize, *shared).map_err(|source| {
                SandboxError::Io {
                    what: "map a memory channel".into(),
                    source,
                }
            })?;
            let lowest = match devices {
                Devices::Bare => CHANNEL_ADDR,
                Devices::Interrupts => LINUX_CHANNELS_ADDR,
            };
            let addr = channel_addr(memory_size, mapped.last().map(|c| c.addr + c.len), lowest);
            let region = kvm_userspace_memory_region {
                slot: 1 + mapped.len() as u32,
                guest_phys_addr: addr,
                memory_size: *len,
                userspace_addr: map.addr as u64,
                flags: 0,
            };
            // SAFETY: the region is `map`, kept in the machine as long as the VM.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(vmm_err("map a memory channel"))?;
            mapped.push(Channel {
                map,
                addr,
                len: *len,
            });
        }
        if devices == Devices::Interrupts {
            // Where KVM keeps the TSS (three pages) on Intel: just below 4 GiB, out of RAM.
            vm.set_tss_address(0xfffb_d000)
                .map_err(vmm_err("set the TSS address"))?;
            vm.create_irq_chip()
                .map_err(vmm_err("create the interrupt controllers"))?;
            let pit = kvm_bindings::kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(vmm_err("create the timer"))?;
        }
        let vcpu = vm.create_vcpu(0).map_err(vmm_err("create a vCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(vmm_err("read CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(vmm_err("set CPUID"))?;
        Ok(Machine {
            _kvm: kvm,
            vm,
            vcpu,
            memory,
            memory_size,
            channels: mapped,
            devices,
            created,
        })
    }

    pub(crate) fn vm(&self) -> &VmFd {
        &self.vm
    }

    pub(crate) fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    pub(crate) fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub(crate) fn memory_size(&self) -> u64 {
        self.memory_size
    }

    /// Writes `bytes` into guest RAM at `addr`.
    pub(crate) fn load(&self, bytes: &[u8], addr: u64) -> Result<(), SandboxError> {
        self.memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| SandboxError::Setup(format!("load at {addr:#x}: {e}")))
    }

    /// Sets up the 64-bit boot state for an entry point at `entry`: page tables mapping the
    /// first 4 GiB, the GDT, the zero page (a bzImage's `header`, the command line, the e820
    /// map, the initrd at `initrd`), registers.
    pub(crate) fn boot_state(
        &self,
        entry: u64,
        cmdline: &str,
        initrd: Option<(u64, u32)>,
        header: Option<setup_header>,
    ) -> Result<(), SandboxError> {
        let setup =
            |e: vm_memory::GuestMemoryError| SandboxError::Setup(format!("boot state: {e}"));
        // Identity map with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..4] -> PD[0..4].
        self.memory
            .write_obj(PDPT | 0x3, GuestAddress(PML4))
            .map_err(setup)?;
        for i in 0..4u64 {
            let pd = PD + i * 0x1000;
            self.memory
                .write_obj(pd | 0x3, GuestAddress(PDPT + i * 8))
                .map_err(setup)?;
            for j in 0..512u64 {
                let addr = (i << 30) | (j << 21);
                self.memory
                    .write_obj(addr | 0x83, GuestAddress(pd + j * 8))
                    .map_err(setup)?;
            }
        }
        // GDT: null, null, code (0x10, 64-bit), data (0x18), as the boot protocol expects.
        let gdt: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
        for (i, e) in gdt.iter().enumerate() {
            self.memory
                .write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
                .map_err(setup)?;
        }
        self.memory
            .write_obj(0u64, GuestAddress(IDT_ADDR))
            .map_err(setup)?;

        if cmdline.len() + 1 > CMDLINE_MAX {
            return Err(SandboxError::Setup("kernel command line too long".into()));
        }
        let mut line = cmdline.as_bytes().to_vec();
        line.push(0);
        self.load(&line, CMDLINE_ADDR)?;

        let mut params = boot_params::default();
        if let Some(h) = header {
            params.hdr = h;
        }
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448; // "HdrS"
        params.hdr.type_of_loader = 0xff;
        params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
        params.hdr.cmdline_size = line.len() as u32;
        params.hdr.kernel_alignment = 0x0100_0000;
        params.hdr.initrd_addr_max = 0x7fff_ffff;
        if let Some((addr, size)) = initrd {
            params.hdr.ramdisk_image = addr as u32;
            params.hdr.ramdisk_size = size;
        }
        let mut e820 = vec![
            (0u64, 0x9_fc00u64, E820_RAM),
            (LOAD_ADDR, self.memory_size - LOAD_ADDR, E820_RAM),
        ];
        for c in &self.channels {
            e820.push((c.addr, c.len, E820_PMEM));
        }
        for (i, (addr, size, kind)) in e820.iter().enumerate() {
            params.e820_table[i].addr = *addr;
            params.e820_table[i].size = *size;
            params.e820_table[i].r#type = *kind;
        }
        params.e820_entries = e820.len() as u8;
        // SAFETY: boot_params is a plain C struct (bindgen, no pointers or padding
        // invariants); its bytes are read for the duration of the borrow only.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const params).cast::<u8>(),
                std::mem::size_of::<boot_params>(),
            )
        };
        self.load(bytes, ZERO_PAGE)?;

        let mut sregs = self.vcpu.get_sregs().map_err(vmm_err("read sregs"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x10,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: 0x18,
            type_: 0x3,
            db: 1,
            l: 0,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = GDT_ADDR;
        sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
        sregs.idt.base = IDT_ADDR;
        sregs.idt.limit = 7;
        sregs.cr3 = PML4;
        sregs.cr4 |= 0x20; // PAE
        sregs.cr0 |= 0x8000_0001; // PG | PE
        sregs.efer |= 0x500; // LME | LMA
        self.vcpu.set_sregs(&sregs).map_err(vmm_err("set sregs"))?;
        let regs = kvm_bindings::kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: STACK_TOP,
            rbp: STACK_TOP,
            rsi: ZERO_PAGE,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(vmm_err("set registers"))
    }

    /// Runs the vCPU until the guest stops; serial output goes to `console`.
    pub(crate) fn run(&mut self, console: impl Write) -> Result<Stop, SandboxError> {
        let serial = Mutex::new(vm_superio::Serial::new(NoInterrupt, console));
        self.run_with(&serial, &AtomicBool::new(false))
    }

    /// Runs the vCPU with `serial` at 0x3f8 until the guest stops, or until `stopping` is set
    /// and a signal interrupts the vCPU ([`Stop::Interrupted`]).
    pub(crate) fn run_with<T: vm_superio::Trigger, W: Write>(
        &mut self,
        serial: &Mutex<vm_superio::Serial<T, vm_superio::serial::NoEvents, W>>,
        stopping: &AtomicBool,
    ) -> Result<Stop, SandboxError> {
        let serial_port = |port: u16| (SERIAL_BASE..SERIAL_BASE + 8).contains(&port);
        let lock = || serial.lock().unwrap_or_else(|e| e.into_inner());
        let mut pci = (self.devices == Devices::Interrupts).then(PciHost::default);
        loop {
            if stopping.load(Ordering::SeqCst) {
                return Ok(Stop::Interrupted);
            }
            let exit = match self.vcpu.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(vmm_err("run the vCPU")(e)),
            };
            match exit {
                VcpuExit::IoOut(port, data) if serial_port(port) => {
                    let _ = lock().write((port - SERIAL_BASE) as u8, data[0]);
                }
                VcpuExit::IoOut(EXIT_PORT, data) => return Ok(Stop::ExitPort(data[0])),
                VcpuExit::IoOut(port, data) if PciHost::claims(port) => {
                    if let Some(pci) = pci.as_mut() {
                        pci.write(port, data);
                    }
                }
                VcpuExit::IoOut(..) => {}
                VcpuExit::IoIn(port, data) if serial_port(port) => {
                    data.fill(lock().read((port - SERIAL_BASE) as u8));
                }
                VcpuExit::IoIn(port, data) => match pci.as_ref() {
                    Some(pci) if PciHost::claims(port) => pci.read(port, data),
                    _ => data.fill(0xff),
                },
                VcpuExit::MmioRead(_, data) => data.fill(0xff),
                VcpuExit::MmioWrite(..) => {}
                VcpuExit::Hlt => return Ok(Stop::Halted),
                VcpuExit::Shutdown => return Ok(Stop::Shutdown),
                other => {
                    return Err(SandboxError::Setup(format!(
                        "the guest stopped unexpectedly: {other:?}"
                    )));
                }
            }
        }
    }

    /// Memory channel `index`'s bytes as the guest left them.
    #[cfg(test)]
    pub(crate) fn channel(&self, index: usize) -> Option<&[u8]> {
        self.channels.get(index).map(|c| {
            // SAFETY: the mapping is `c.map.len` bytes and lives as long as `self`; the vCPU
            // is not running (it runs only inside `run`, which borrows `self` mutably).
            unsafe { std::slice::from_raw_parts(c.map.addr, c.map.len) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether /dev/kvm can be opened: tests skip (printing why) where it cannot, and fail
    /// under `CI=true`.
    fn kvm_usable() -> bool {
        let ok = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but /dev/kvm cannot be opened"
            );
            eprintln!("skipped: /dev/kvm cannot be opened");
        }
        ok
    }

    /// Writes the command line (from the zero page's `cmd_line_ptr`) to the serial port, then
    /// the e820 entry count to the exit port. 64-bit code: it runs only in long mode.
    const BOOT_PROBE: &[u8] = &[
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00, // mov ebx, [rsi + 0x228]  (cmd_line_ptr)
        0x8a, 0x03, // loop: mov al, [rbx]
        0x84, 0xc0, // test al, al
        0x74, 0x06, // jz done
        0xee, // out dx, al
        0x48, 0xff, 0xc3, // inc rbx
        0xeb, 0xf4, // jmp loop
        0x8a, 0x86, 0xe8, 0x01, 0x00, 0x00, // done: mov al, [rsi + 0x1e8]  (e820_entries)
        0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
        0xee, // out dx, al
        0xf4, // hlt
    ];

    /// Finds the e820 entry of type 12 (persistent memory), writes "KILNKILN" at its start,
    /// and reports 0x42 on the exit port (0xee when there is none).
    const CHANNEL_PROBE: &[u8] = &[
        0x48, 0x8d, 0xbe, 0xd0, 0x02, 0x00, 0x00, // lea rdi, [rsi + 0x2d0]  (e820_table)
        0x0f, 0xb6, 0x8e, 0xe8, 0x01, 0x00, 0x00, // movzx ecx, byte [rsi + 0x1e8]
        0x83, 0x7f, 0x10, 0x0c, // find: cmp dword [rdi + 16], 12
        0x74, 0x0c, // je found
        0x48, 0x83, 0xc7, 0x14, // add rdi, 20
        0xff, 0xc9, // dec ecx
        0x75, 0xf2, // jnz find
        0xb0, 0xee, // mov al, 0xee
        0xeb, 0x12, // jmp exit
        0x48, 0x8b, 0x3f, // found: mov rdi, [rdi]
        0x48, 0xb8, b'K', b'I', b'L', b'N', b'K', b'I', b'L', b'N', // mov rax, "KILNKILN"
        0x48, 0x89, 0x07, // mov [rdi], rax
        0xb0, 0x42, // mov al, 0x42
        0x66, 0xba, 0xf4, 0x00, // exit: mov dx, 0xf4
        0xee, // out dx, al
        0xf4, // hlt
    ];

    #[test]
    fn a_test_guest_sees_the_boot_state_and_reaches_serial_and_exit_ports() {
        if !kvm_usable() {
            return;
        }
        let mut m = Machine::new(64, &[], Devices::Bare).unwrap();
        m.load(BOOT_PROBE, LOAD_ADDR).unwrap();
        m.boot_state(LOAD_ADDR, "console=ttyS0 kiln=test", None, None)
            .unwrap();
        let mut console = Vec::new();
        let stop = m.run(&mut console).unwrap();
        assert_eq!(String::from_utf8_lossy(&console), "console=ttyS0 kiln=test");
        // Low RAM and RAM from 1 MiB: two e820 entries.
        assert_eq!(stop, Stop::ExitPort(2));
    }

    #[test]
    fn a_test_guest_writes_the_memory_channel() {
        if !kvm_usable() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("channel"))
            .unwrap();
        file.set_len(2 << 20).unwrap();
        let mut m = Machine::new(64, &[(&file, 2 << 20, true)], Devices::Bare).unwrap();
        m.load(CHANNEL_PROBE, LOAD_ADDR).unwrap();
        m.boot_state(LOAD_ADDR, "", None, None).unwrap();
        let stop = m.run(std::io::sink()).unwrap();
        assert_eq!(stop, Stop::ExitPort(0x42));
        assert_eq!(&m.channel(0).unwrap()[..8], b"KILNKILN");
        drop(m);
        // The host file holds it too.
        assert_eq!(
            &std::fs::read(dir.path().join("channel")).unwrap()[..8],
            b"KILNKILN"
        );
    }
}
