//! A PCI host bridge alone on bus 0, behind the configuration mechanism #1 ports
//! (0xcf8 address, 0xcfc data). The builtin VMM's guests have no PCI devices, but Linux on
//! x86 claims the e820 persistent-memory ranges (the builtin VMM's disks) only in its PCI
//! set-up (`pcibios_resource_survey`), which runs only when it finds a PCI bus it trusts: one
//! with a host bridge.

/// The address port.
pub(crate) const ADDRESS_PORT: u16 = 0xcf8;
/// The data port (four bytes).
pub(crate) const DATA_PORT: u16 = 0xcfc;

/// The bridge's configuration space header: Red Hat's vendor ID with the device ID of
/// qemu's generic host bridge, class 06/00/00 (host bridge), header type 0, no BARs.
const CONFIG: [u8; 16] = [
    0x36, 0x1b, // vendor
    0x08, 0x00, // device
    0x00, 0x00, // command
    0x00, 0x00, // status
    0x00, // revision
    0x00, 0x00, 0x06, // class: programming interface, subclass, class
    0x00, // cache line size
    0x00, // latency timer
    0x00, // header type
    0x00, // BIST
];

/// The bridge and the address latch.
#[derive(Default)]
pub(crate) struct PciHost {
    address: u32,
}

impl PciHost {
    /// Whether `port` is one of the configuration ports.
    pub(crate) fn claims(port: u16) -> bool {
        (ADDRESS_PORT..DATA_PORT + 4).contains(&port)
    }

    pub(crate) fn write(&mut self, port: u16, data: &[u8]) {
        if let Some(shift) = port.checked_sub(ADDRESS_PORT).filter(|s| *s < 4) {
            for (i, b) in data.iter().enumerate() {
                let at = (usize::from(shift) + i) * 8;
                if at < 32 {
                    self.address = (self.address & !(0xff << at)) | (u32::from(*b) << at);
                }
            }
        }
        // Writes to the data port (BAR sizing, the command register) change nothing here.
    }

    pub(crate) fn read(&self, port: u16, data: &mut [u8]) {
        if let Some(shift) = port.checked_sub(ADDRESS_PORT).filter(|s| *s < 4) {
            let bytes = self.address.to_le_bytes();
            for (i, d) in data.iter_mut().enumerate() {
                *d = bytes.get(usize::from(shift) + i).copied().unwrap_or(0xff);
            }
            return;
        }
        let offset = usize::from(port - DATA_PORT);
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.config_byte(offset + i);
        }
    }

    /// A byte of the selected register: the bridge is bus 0, device 0, function 0; nothing
    /// else answers.
    fn config_byte(&self, offset: usize) -> u8 {
        let enabled = self.address & 0x8000_0000 != 0;
        let bus_device_function = (self.address >> 8) & 0xffff;
        if !enabled || bus_device_function != 0 {
            return 0xff;
        }
        let register = (self.address & 0xfc) as usize + offset;
        CONFIG.get(register).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(pci: &mut PciHost, address: u32) -> u32 {
        pci.write(ADDRESS_PORT, &address.to_le_bytes());
        let mut d = [0u8; 4];
        pci.read(DATA_PORT, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn the_address_latch_reads_back_as_linux_probes_it() {
        let mut pci = PciHost::default();
        pci.write(0xcfb, &[0x01]);
        pci.write(ADDRESS_PORT, &0x8000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        pci.read(ADDRESS_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    }

    #[test]
    fn only_the_host_bridge_answers() {
        let mut pci = PciHost::default();
        // Vendor and device, then class (dword 2: revision and class code).
        assert_eq!(read32(&mut pci, 0x8000_0000), 0x0008_1b36);
        assert_eq!(read32(&mut pci, 0x8000_0008) >> 16, 0x0600);
        assert_eq!(read32(&mut pci, 0x8000_0010), 0, "no BARs");
        // Device 1 and bus 1: nothing there.
        assert_eq!(read32(&mut pci, 0x8000_0800), 0xffff_ffff);
        assert_eq!(read32(&mut pci, 0x8001_0000), 0xffff_ffff);
        // Not enabled: nothing.
        assert_eq!(read32(&mut pci, 0x0000_0000), 0xffff_ffff);
        // A 16-bit read of the class at offset 0x0a, as Linux's sanity check does.
        pci.write(ADDRESS_PORT, &0x8000_0008u32.to_le_bytes());
        let mut d = [0u8; 2];
        pci.read(DATA_PORT + 2, &mut d);
        assert_eq!(u16::from_le_bytes(d), 0x0600);
    }
}
