//! ACPI tables for the microVM: RSDP, XSDT, FADT (hardware-reduced), MADT and a DSDT that describes the
//! virtio-mmio devices (`LNRO0005`), the serial port, the `_S5_` power-off state and the power button:
//! a Generic Event Device (`ACPI0013`, `\_SB.GED_`) whose `_EVT` method notifies the control-method
//! power button `\_SB.PWRB` (`PNP0C0C`). See [`crate::vmm::devices::ged`] for the register protocol.
//!
//! Debian's kernel has no `VIRTIO_MMIO_CMDLINE_DEVICES`, so virtio-mmio devices must be found through
//! ACPI, as QEMU's `microvm` machine does. The FADT declares a hardware-reduced platform with no CMOS
//! RTC, no i8042 and no VGA: Linux then skips the legacy PIC, PIT calibration, RTC and keyboard probes,
//! each of which costs many VM exits.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_END, ACPI_START, APIC_START, IOAPIC_START};

/// Port where the guest writes `SLP_TYP | SLP_EN` to enter a sleep state (S5 = power off).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// Port where the guest reads the sleep status.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// Port where the guest writes [`RESET_VALUE`] to reset the machine.
pub const RESET_PORT: u16 = 0x602;
/// Value that resets the machine when written to [`RESET_PORT`].
pub const RESET_VALUE: u8 = 0x1;
/// The `SLP_TYP` value the DSDT gives for S5.
pub const S5_SLP_TYP: u8 = 5;
/// Port of the Generic Event Device's event register (one byte, read-to-clear).
pub const GED_EVENT_PORT: u16 = 0x604;
/// The Generic Event Device's interrupt: ISA line 3 (COM2's, unused here), edge-triggered, active high.
/// Kept out of the virtio range (GSI 5 and up) so that the disk limit does not change.
pub const GED_GSI: u32 = 3;
/// Event bit of the power button in the GED's event register.
pub const GED_EVENT_POWER_BUTTON: u8 = 1;
/// The notification the GED's `_EVT` sends to the power button (`PNP0C0C`): "button pressed".
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

const OEM_ID: [u8; 6] = *b"VIRTRS";
const OEM_TABLE_ID: [u8; 8] = *b"VIRTRSVM";
const OEM_REVISION: u32 = 1;

/// A virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy)]
pub struct MmioDeviceInfo {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of its register window.
    pub size: u64,
    /// Interrupt line (GSI), edge-triggered, active high.
    pub gsi: u32,
}

/// Errors while building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the ACPI window.
    #[error("ACPI tables need {0} bytes, more than the {1} bytes reserved for them")]
    TooLarge(usize, u64),
    /// Too many vCPUs for the table formats used.
    #[error("{0} vCPUs cannot be described (at most 255)")]
    TooManyCpus(usize),
    /// A device lies where the DSDT cannot describe it (above 4 GiB).
    #[error("virtio-mmio device at {0:#x} is above 4 GiB")]
    DeviceAddress(u64),
    /// Writing a table into guest memory failed.
    #[error("cannot write ACPI table {table} at {addr:#x}: {source}")]
    Memory {
        /// Table signature.
        table: &'static str,
        /// Where it was written.
        addr: u64,
        /// Underlying error.
        source: vm_memory::GuestMemoryError,
    },
}

fn io_gas(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port))
}

/// The DSDT's AML body.
fn dsdt(devices: &[MmioDeviceInfo]) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();
    // Serial port COM1, so Linux's PNP layer knows it without probing.
    {
        let io = aml::IO::new(0x3f8, 0x3f8, 0, 8);
        let irq = aml::Interrupt::new(true, true, false, false, 4);
        let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
        let hid = aml::EISAName::new("PNP0501");
        let uid = 0u8;
        let n_hid = aml::Name::new("_HID".into(), &hid);
        let n_uid = aml::Name::new("_UID".into(), &uid);
        let n_crs = aml::Name::new("_CRS".into(), &crs);
        aml::Device::new("_SB_.COM1".into(), vec![&n_hid, &n_uid, &n_crs]).to_aml_bytes(&mut body);
    }
    for (i, d) in devices.iter().enumerate() {
        let base = u32::try_from(d.base).map_err(|_| AcpiError::DeviceAddress(d.base))?;
        let size = u32::try_from(d.size).map_err(|_| AcpiError::DeviceAddress(d.base))?;
        let mem = aml::Memory32Fixed::new(true, base, size);
        let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        let uid = i as u64;
        let hid: aml::AmlStr = "LNRO0005";
        let n_hid = aml::Name::new("_HID".into(), &hid);
        let n_uid = aml::Name::new("_UID".into(), &uid);
        let n_cca = aml::Name::new("_CCA".into(), &aml::ONE);
        let n_crs = aml::Name::new("_CRS".into(), &crs);
        let name = format!("_SB_.V{i:03X}");
        aml::Device::new(name.as_str().into(), vec![&n_hid, &n_uid, &n_cca, &n_crs]).to_aml_bytes(&mut body);
    }
    power_button(&mut body);
    // \_S5_: the sleep type written to the sleep control register to power off.
    let s5_typ = S5_SLP_TYP;
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&s5_typ])).to_aml_bytes(&mut body);

    let mut table = acpi_tables::sdt::Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    Ok(table.as_slice().to_vec())
}

/// `\_SB.GED_` (the Generic Event Device) and `\_SB.PWRB` (the power button), in ASL:
///
/// ```text
/// Device (\_SB.GED_) {
///     Name (_HID, "ACPI0013")
///     Name (_UID, Zero)
///     Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 3 } })
///     OperationRegion (GDST, SystemIO, 0x604, One)
///     Field (GDST, ByteAcc, NoLock, WriteAsZeros) { GDAT, 8 }
///     Method (_EVT, 1, Serialized) {       // Linux's GED driver calls it from its interrupt thread
///         Local0 = GDAT                    // one read: the pending events, cleared by the read
///         Local1 = Local0 & One
///         If (Local1 == One) { Notify (\_SB.PWRB, 0x80) }
///     }
/// }
/// Device (\_SB.PWRB) { Name (_HID, EisaId ("PNP0C0C")) Name (_UID, Zero) }
/// ```
///
/// The FADT's `PWR_BUTTON` flag says "no fixed-hardware power button", so the guest looks for this
/// control-method one.
fn power_button(body: &mut Vec<u8>) {
    let irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let hid: aml::AmlStr = "ACPI0013";
    let n_hid = aml::Name::new("_HID".into(), &hid);
    let n_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let n_crs = aml::Name::new("_CRS".into(), &crs);
    let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemIO, &GED_EVENT_PORT, &aml::ONE);
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    let gdat = aml::Path::new("GDAT");
    let read = aml::Store::new(&aml::Local(0), &gdat);
    let bit = GED_EVENT_POWER_BUTTON;
    let mask = aml::And::new(&aml::Local(1), &aml::Local(0), &bit);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let code = NOTIFY_BUTTON_PRESSED;
    let notify = aml::Notify::new(&pwrb, &code);
    let pressed = aml::Equal::new(&aml::Local(1), &bit);
    let if_pressed = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &mask, &if_pressed]);
    aml::Device::new("_SB_.GED_".into(), vec![&n_hid, &n_uid, &n_crs, &region, &field, &evt])
        .to_aml_bytes(body);

    let button = aml::EISAName::new("PNP0C0C");
    let b_hid = aml::Name::new("_HID".into(), &button);
    let b_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    aml::Device::new("_SB_.PWRB".into(), vec![&b_hid, &b_uid]).to_aml_bytes(body);
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt =
        MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, LocalInterruptController::Address(APIC_START as u32));
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    let mut v = Vec::new();
    madt.to_aml_bytes(&mut v);
    v
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
    const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    f.reset_reg = io_gas(RESET_PORT);
    f.reset_value = RESET_VALUE;
    f.sleep_control_reg = io_gas(SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io_gas(SLEEP_STATUS_PORT);
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"VIRTRSVM").into();
    let mut v = Vec::new();
    f.finalize().to_aml_bytes(&mut v);
    v
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Writes all tables into the ACPI window of guest memory and returns the RSDP's address.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    cpus: usize,
    devices: &[MmioDeviceInfo],
) -> Result<u64, AcpiError> {
    let cpus = u8::try_from(cpus).map_err(|_| AcpiError::TooManyCpus(cpus))?;
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64, 16);
    let dsdt = dsdt(devices)?;
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64, 16);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64, 16);
    let madt = madt(cpus);
    let xsdt_addr = align(madt_addr + madt.len() as u64, 16);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let end = xsdt_addr + xsdt_bytes.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge((end - ACPI_START) as usize, ACPI_END - ACPI_START));
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    for (table, addr, bytes) in [
        ("RSDP", rsdp_addr, &rsdp),
        ("DSDT", dsdt_addr, &dsdt),
        ("FACP", fadt_addr, &fadt),
        ("APIC", madt_addr, &madt),
        ("XSDT", xsdt_addr, &xsdt_bytes),
    ] {
        mem.write_slice(bytes, GuestAddress(addr)).map_err(|source| AcpiError::Memory {
            table,
            addr,
            source,
        })?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_are_well_formed_and_linked() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let devs = [MmioDeviceInfo { base: 0xd000_0000, size: 0x1000, gsi: 5 }];
        let rsdp = create_acpi_tables(&mem, 2, &devs).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let read_table = |addr: u64| {
            let mut h = [0u8; 8];
            mem.read_slice(&mut h, GuestAddress(addr)).unwrap();
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            t
        };
        let xsdt = read_table(xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> =
            xsdt[36..].chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let sigs: Vec<Vec<u8>> = entries.iter().map(|a| read_table(*a)[..4].to_vec()).collect();
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        let fadt = read_table(entries[0]);
        assert!(checksum_ok(&fadt));
        let madt = read_table(entries[1]);
        assert!(checksum_ok(&madt));
        // Two local APICs (type 0) and one IOAPIC (type 1).
        let mut off = 44;
        let mut types = vec![];
        while off < madt.len() {
            types.push(madt[off]);
            off += madt[off + 1] as usize;
        }
        assert_eq!(types, vec![0, 0, 1]);
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = read_table(x_dsdt);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        let hay = String::from_utf8_lossy(&dsdt);
        assert!(hay.contains("LNRO0005") && hay.contains("_S5_"));
        assert!(contains(&dsdt, b"\x0dACPI0013\x00"), "the DSDT has no GED");
        assert!(contains(&dsdt, &[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x0c]), "no PNP0C0C");
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// The GED and power button AML, byte by byte where it matters. (During development the whole DSDT
    /// was disassembled with ACPICA's `iasl -d` into the ASL in `power_button`'s comment, and that ASL
    /// recompiled with 0 errors and 0 warnings.)
    #[test]
    fn ged_and_power_button_aml() {
        let mut aml = Vec::new();
        power_button(&mut aml);
        // Device (\_SB.GED_) with _HID "ACPI0013" and _UID 0.
        assert!(contains(&aml, b"\x2e_SB_GED_"), "{aml:02x?}");
        assert!(contains(&aml, b"\x08_HID\x0dACPI0013\x00\x08_UID\x00"));
        // _CRS: one extended interrupt descriptor, consumer, edge, active high, exclusive, GSI 3.
        let gsi = GED_GSI.to_le_bytes();
        let irq = [0x89, 0x06, 0x00, 0x03, 0x01, gsi[0], gsi[1], gsi[2], gsi[3]];
        assert!(contains(&aml, &irq));
        // OperationRegion (GDST, SystemIO, 0x604, One) and Field (GDST, ByteAcc, NoLock, WriteAsZeros)
        // { GDAT, 8 }.
        let port = GED_EVENT_PORT.to_le_bytes();
        assert!(contains(
            &aml,
            &[&[0x5b, 0x80][..], b"GDST", &[0x01, 0x0b, port[0], port[1], 0x01]].concat()
        ));
        assert!(contains(&aml, &[&b"GDST"[..], &[0x41], b"GDAT", &[0x08]].concat()));
        // Method (_EVT, 1, Serialized): Local0 = GDAT; Local1 = Local0 & 1; If (Local1 == 1) Notify.
        let notify = [&[0x86, b'\\', 0x2e][..], b"_SB_PWRB", &[0x0a, NOTIFY_BUTTON_PRESSED]].concat();
        let pressed = [0x93, 0x61, GED_EVENT_POWER_BUTTON];
        let body = [
            &[0x70][..],
            b"GDAT",
            &[0x60],
            &[0x7b, 0x60, GED_EVENT_POWER_BUTTON, 0x61],
            &[0xa0, (1 + pressed.len() + notify.len()) as u8],
            &pressed,
            &notify,
        ]
        .concat();
        let method = [&[0x14, (body.len() + 6) as u8][..], b"_EVT", &[0x09], &body].concat();
        assert!(contains(&aml, &method), "{aml:02x?}");
        // Device (\_SB.PWRB) with _HID EisaId ("PNP0C0C").
        assert!(contains(&aml, b"\x2e_SB_PWRB"));
        assert!(contains(&aml, &[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x0c]));
    }

    #[test]
    fn fadt_declares_a_control_method_power_button_on_reduced_hardware() {
        let f = fadt(0x1000);
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 4), 0, "PWR_BUTTON: no fixed-feature power button");
    }
}
