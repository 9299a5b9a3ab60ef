//! Devices of the microVM and the buses that route port and MMIO exits to them.

pub mod ged;
pub mod legacy;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Condvar, Mutex};

/// A device on the port-I/O or MMIO bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of bus registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A zero-length range.
    #[error("device range at {0:#x} is empty")]
    Empty(u64),
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A sorted map from address ranges to devices.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `dev` at `base .. base + len`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base.checked_add(len).ok_or(BusError::Overlap { base, len })?;
        if self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(pos, (base, len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let i = self.ranges.partition_point(|(b, _, _)| *b <= addr);
        let (b, l, d) = self.ranges.get(i.checked_sub(1)?)?;
        (addr - b < *l).then_some((*b, d))
    }

    /// Routes a read; returns false if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                lock(dev).read(addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                lock(dev).write(addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panicking thread is still used, since device
/// state is plain data that the panic did not leave half-borrowed.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (reboot, Ctrl-Alt-Del, triple fault).
    Reset,
    /// The VMM was asked to stop the VM.
    Stopped,
    /// A vCPU or device failed.
    Error(String),
}

/// A one-shot latch that records the first reason a VM stops and wakes whoever waits for it.
#[derive(Default)]
pub struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    cv: Condvar,
}

impl ExitLatch {
    /// A latch not yet set.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Records `r` unless a reason is already recorded.
    pub fn set(&self, r: ExitReason) {
        let mut g = lock(&self.reason);
        if g.is_none() {
            *g = Some(r);
            self.cv.notify_all();
        }
    }
    /// The recorded reason, if any.
    pub fn get(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }
    /// Blocks until a reason is recorded.
    pub fn wait(&self) -> ExitReason {
        let mut g = lock(&self.reason);
        loop {
            if let Some(r) = g.as_ref() {
                return r.clone();
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_refuses_overlap() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x60, 1).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x3f0, 9),
            Err(BusError::Overlap { base: 0x3f0, len: 9 })
        );
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 5);
        assert!(!bus.read(0x400, &mut d));
        assert!(!bus.read(0x3f7, &mut d));
        assert!(bus.write(0x3f8, &[1]));
        assert_eq!(a.lock().unwrap().0, vec![(0, vec![1])]);
        assert!(bus.insert(Arc::new(Mutex::new(Echo(vec![]))), u64::MAX, 2).is_err());
    }

    #[test]
    fn latch_keeps_first_reason() {
        let l = ExitLatch::new();
        l.set(ExitReason::PowerOff);
        l.set(ExitReason::Reset);
        assert_eq!(l.wait(), ExitReason::PowerOff);
    }
}
