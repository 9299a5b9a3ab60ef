//! The 16550 UART on COM1 (port 0x3f8, IRQ 4), on `vm-superio`, writing to any `Write` sink.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

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
    serial: Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART that raises `irq` and writes guest output to `out`.
    pub fn new(irq: Arc<EventFd>, out: Box<dyn Write + Send>) -> Self {
        Self { serial: Serial::new(IrqTrigger(irq), out) }
    }

    /// Queues bytes typed by the user for the guest to read; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
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
