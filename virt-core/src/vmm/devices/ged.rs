//! The event register of the ACPI Generic Event Device (GED, `ACPI0013`), through which the VMM
//! signals platform events (the power button) on a hardware-reduced ACPI platform.
//!
//! The DSDT (see [`crate::vmm::acpi`]) declares the GED with one edge-triggered interrupt and an
//! `_EVT` method that reads this register and, for [`GED_EVENT_POWER_BUTTON`], notifies the power
//! button device `\_SB.PWRB` (`PNP0C0C`) with 0x80, which Linux's `button` driver reports as a
//! `KEY_POWER` press. The protocol is the one QEMU's `acpi-ged` and Cloud Hypervisor use:
//!
//! 1. the VMM sets the event's bit in the register, then raises the interrupt (an irqfd edge);
//! 2. the guest's GED driver runs `_EVT`, which reads the register once;
//! 3. the read returns every pending event bit and clears them (read-to-clear). Writes are ignored.
//!
//! Setting the bit before the edge means the guest never reads an empty register for a press; a
//! press made before the guest's driver listens stays pending and is seen with the next interrupt.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
pub use crate::vmm::acpi::{GED_EVENT_PORT, GED_EVENT_POWER_BUTTON, GED_GSI};
use crate::vmm::state::{Decoder, DeviceState, Encoder, Persist, Section, StateError};

/// Errors of the GED.
#[derive(Debug, thiserror::Error)]
pub enum GedError {
    /// The interrupt could not be raised.
    #[error(
        "cannot raise the Generic Event Device's interrupt (GSI {gsi}) for event {event:#04x}: {source}"
    )]
    Interrupt {
        /// The GED's GSI.
        gsi: u32,
        /// The event bits being signalled.
        event: u8,
        /// Underlying error (the irqfd write).
        source: std::io::Error,
    },
}

/// The GED's event register (one byte at [`GED_EVENT_PORT`]) and its interrupt.
pub struct Ged {
    pending: u8,
    irq: Arc<EventFd>,
    gsi: u32,
}

impl Ged {
    /// A register with no event pending whose interrupt is `irq` (an irqfd registered on `gsi`).
    pub fn new(irq: Arc<EventFd>, gsi: u32) -> Self {
        Self { pending: 0, irq, gsi }
    }

    /// Signals `event` (bits of `GED_EVENT_*`): sets them in the register, then raises the interrupt.
    pub fn notify(&mut self, event: u8) -> Result<(), GedError> {
        self.pending |= event;
        self.irq.write(1).map_err(|source| GedError::Interrupt { gsi: self.gsi, event, source })
    }

    /// Events set and not yet read by the guest.
    pub fn pending(&self) -> u8 {
        self.pending
    }
}

impl Persist for Ged {
    const VERSION: u16 = 1;

    fn save(&self, e: &mut Encoder) -> Result<(), StateError> {
        e.u8(self.pending);
        Ok(())
    }

    fn restore(&mut self, _version: u16, d: &mut Decoder<'_>) -> Result<(), StateError> {
        self.pending = d.u8()?;
        Ok(())
    }
}

impl DeviceState for Ged {
    fn save_section(&mut self, name: &str) -> Result<Section, StateError> {
        self.to_section(name)
    }
    fn restore_section(&mut self, section: &Section) -> Result<(), StateError> {
        self.load_section(section)
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = std::mem::take(&mut self.pending);
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ged() -> (Ged, Arc<EventFd>) {
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (Ged::new(irq.clone(), GED_GSI), irq)
    }

    #[test]
    fn press_sets_the_bit_then_raises_the_interrupt() {
        let (mut g, irq) = ged();
        assert_eq!(g.pending(), 0);
        assert!(irq.read().is_err(), "no interrupt before a press");
        g.notify(GED_EVENT_POWER_BUTTON).unwrap();
        assert_eq!(g.pending(), GED_EVENT_POWER_BUTTON);
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn a_read_returns_pending_events_and_clears_them() {
        let (mut g, _irq) = ged();
        let mut b = [0xaau8; 1];
        g.read(0, &mut b);
        assert_eq!(b, [0], "nothing pending");
        g.notify(GED_EVENT_POWER_BUTTON).unwrap();
        g.notify(GED_EVENT_POWER_BUTTON).unwrap();
        // A wider read (inl) sees the events in its low byte.
        let mut d = [0xaau8; 4];
        g.read(0, &mut d);
        assert_eq!(d, [GED_EVENT_POWER_BUTTON, 0, 0, 0]);
        g.read(0, &mut b);
        assert_eq!(b, [0], "read-to-clear");
    }

    #[test]
    fn writes_and_other_offsets_leave_events_pending() {
        let (mut g, _irq) = ged();
        g.notify(GED_EVENT_POWER_BUTTON).unwrap();
        g.write(0, &[0]);
        g.write(0, &[0xff]);
        let mut b = [0xaau8; 1];
        g.read(1, &mut b);
        assert_eq!(b, [0]);
        assert_eq!(g.pending(), GED_EVENT_POWER_BUTTON);
        g.read(0, &mut b);
        assert_eq!(b, [GED_EVENT_POWER_BUTTON]);
    }
}
