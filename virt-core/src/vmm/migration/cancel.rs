//! Cancelling a migration from another thread, and the commit point a cancel cannot pass.

use super::MigrationError;
use crate::vmm::devices::lock;
use std::sync::Mutex;

/// Cancels a migration from another thread. [`CancelToken::cancel`] before the source commits
/// makes the migration fail (the source resumes, the destination never runs); after it, it is too
/// late. The commit point and a cancel exclude each other, so a cancel never loses the VM.
#[derive(Default)]
pub struct CancelToken {
    state: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    cancelled: bool,
    committed: bool,
    /// Unblocks the source's I/O (shuts its stream down) when cancelled.
    on_cancel: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("CancelToken")
            .field("cancelled", &s.cancelled)
            .field("committed", &s.committed)
            .finish()
    }
}

impl CancelToken {
    /// Runs `f` on cancel (e.g. shutting the stream down, so a source blocked on the peer wakes).
    pub fn on_cancel(&self, f: Box<dyn FnOnce() + Send>) {
        lock(&self.state).on_cancel = Some(f);
    }
    /// Cancels; false when the migration already committed (the destination runs).
    pub fn cancel(&self) -> bool {
        let mut s = lock(&self.state);
        if s.committed {
            return false;
        }
        s.cancelled = true;
        if let Some(f) = s.on_cancel.take() {
            f();
        }
        true
    }
    /// Whether a cancel came.
    pub fn is_cancelled(&self) -> bool {
        lock(&self.state).cancelled
    }
    pub(super) fn check(&self) -> Result<(), MigrationError> {
        if self.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        Ok(())
    }
    /// The point of no return: fails if cancelled, else no cancel takes effect from here on.
    pub(super) fn commit(&self) -> Result<(), MigrationError> {
        let mut s = lock(&self.state);
        if s.cancelled {
            return Err(MigrationError::Cancelled);
        }
        s.committed = true;
        Ok(())
    }
}
