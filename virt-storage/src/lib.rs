//! Storage layer: volumes, disk formats, import, clone and golden images (see issue 3).
//!
//! [`format`](mod@format) holds the disk-format code: raw and qcow2 images behind virt-core's
//! [`BlockBackend`](virt_core::block::BlockBackend) seam, format detection, conversion and
//! host-assisted sparse copies.

// Library code returns errors; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod cdi;
pub mod cloudinit;
pub mod datavolume;
pub mod format;
pub mod fuzzing;
pub mod golden;
pub mod hostdisk;
pub mod import;
pub mod registry;
pub mod upload;
pub mod volume;
