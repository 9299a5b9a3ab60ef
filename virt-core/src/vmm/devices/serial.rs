//! The 16550 UART on COM1 (port 0x3f8, IRQ 4), on `vm-superio`, writing to any `Write` sink.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::vmm::state::{Decoder, DeviceState, Encoder, Persist, Section, StateError};

/// COM1's I/O port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_GSI: u32 = 4;

/// Raises the serial interrupt through an irqfd.
pub struct IrqTrigger(pub Arc<EventFd>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port as a bus device.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, SharedOut>,
    irq: Arc<EventFd>,
    out: SharedOut,
}

/// The console sink, shared so a restored UART model writes to the same sink.
#[derive(Clone)]
struct SharedOut(Arc<std::sync::Mutex<Box<dyn Write + Send>>>);

impl Write for SharedOut {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        super::lock(&self.0).write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        super::lock(&self.0).flush()
    }
}

impl SerialDevice {
    /// A UART that raises `irq` and writes guest output to `out`.
    pub fn new(irq: Arc<EventFd>, out: Box<dyn Write + Send>) -> Self {
        let out = SharedOut(Arc::new(std::sync::Mutex::new(out)));
        Self { serial: Serial::new(IrqTrigger(irq.clone()), out.clone()), irq, out }
    }

    /// Queues bytes typed by the user for the guest to read; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

/// Bytes of the receive FIFO a section may carry (vm-superio's FIFO size).
const FIFO_MAX: usize = 64;

impl Persist for SerialDevice {
    const VERSION: u16 = 1;

    fn save(&self, e: &mut Encoder) -> Result<(), StateError> {
        let s = self.serial.state();
        for b in [
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ] {
            e.u8(b);
        }
        e.bytes(&s.in_buffer);
        Ok(())
    }

    fn restore(&mut self, _version: u16, d: &mut Decoder<'_>) -> Result<(), StateError> {
        let state = SerialState {
            baud_divisor_low: d.u8()?,
            baud_divisor_high: d.u8()?,
            interrupt_enable: d.u8()?,
            interrupt_identification: d.u8()?,
            line_control: d.u8()?,
            line_status: d.u8()?,
            modem_control: d.u8()?,
            modem_status: d.u8()?,
            scratch: d.u8()?,
            in_buffer: d.bytes(FIFO_MAX)?.to_vec(),
        };
        self.serial = Serial::from_state(&state, IrqTrigger(self.irq.clone()), NoEvents, self.out.clone())
            .map_err(|e| d.invalid(format!("UART state refused: {e:?}")))?;
        Ok(())
    }
}

impl DeviceState for SerialDevice {
    fn save_section(&mut self, name: &str) -> Result<Section, StateError> {
        self.to_section(name)
    }
    fn restore_section(&mut self, section: &Section) -> Result<(), StateError> {
        self.load_section(section)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                log::warn!("serial write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_sink_and_input_raises_irq() {
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let sink = Sink::default();
        let mut s = SerialDevice::new(irq.clone(), Box::new(sink.clone()));
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt, then feed input.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut d = [0u8];
        s.read(0, &mut d);
        assert_eq!(d[0], b'x');
    }
}
