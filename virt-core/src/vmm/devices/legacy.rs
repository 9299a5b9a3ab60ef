//! Small legacy devices: the i8042 reset line and the ACPI sleep/reset registers.

use std::sync::Arc;

use super::{BusDevice, ExitLatch, ExitReason};
use crate::vmm::acpi::{RESET_VALUE, S5_SLP_TYP};

/// Port of the i8042 data register.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Port of the i8042 command/status register.
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// The "pulse reset line" command.
const I8042_CMD_RESET: u8 = 0xfe;

/// Just enough of an i8042 keyboard controller for Linux's `reboot=k` path: writing 0xfe to the
/// command port resets the machine. Reads say "no data, input buffer empty".
pub struct I8042 {
    exit: Arc<ExitLatch>,
}

impl I8042 {
    /// A controller that reports resets to `exit`.
    pub fn new(exit: Arc<ExitLatch>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        // The device spans 0x60..=0x64; offset 4 is the command port.
        if offset == I8042_COMMAND_PORT - I8042_DATA_PORT && data.first() == Some(&I8042_CMD_RESET) {
            self.exit.set(ExitReason::Reset);
        }
    }
}

/// The hardware-reduced ACPI sleep control/status and reset registers (ports 0x600..0x603).
pub struct AcpiPm {
    exit: Arc<ExitLatch>,
}

impl AcpiPm {
    /// Registers that report power-off and reset to `exit`.
    pub fn new(exit: Arc<ExitLatch>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            // Sleep control: SLP_TYP in bits 2..5, SLP_EN in bit 5.
            0 if v & (1 << 5) != 0 && (v >> 2) & 0x7 == S5_SLP_TYP => self.exit.set(ExitReason::PowerOff),
            2 if v == RESET_VALUE => self.exit.set(ExitReason::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_write_powers_off_and_other_states_do_not() {
        let l = ExitLatch::new();
        let mut pm = AcpiPm::new(l.clone());
        pm.write(0, &[(3 << 2) | (1 << 5)]); // S3: ignored
        assert_eq!(l.get(), None);
        pm.write(0, &[S5_SLP_TYP << 2]); // no SLP_EN
        assert_eq!(l.get(), None);
        pm.write(0, &[(S5_SLP_TYP << 2) | (1 << 5)]);
        assert_eq!(l.get(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_register_and_i8042_reset() {
        let l = ExitLatch::new();
        AcpiPm::new(l.clone()).write(2, &[RESET_VALUE]);
        assert_eq!(l.get(), Some(ExitReason::Reset));
        let l = ExitLatch::new();
        let mut k = I8042::new(l.clone());
        k.write(0, &[0xfe]); // data port: not a command
        assert_eq!(l.get(), None);
        k.write(4, &[0xfe]);
        assert_eq!(l.get(), Some(ExitReason::Reset));
    }
}
