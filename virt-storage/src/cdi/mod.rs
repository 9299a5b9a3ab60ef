//! CDI's API (`cdi.kubevirt.io/v1beta1`) as Rust types. This first part holds the value types the
//! objects need: storage quantities, RFC 3339 timestamps and DataImportCron cron schedules.

mod cron;
mod quantity;
mod time;

pub use cron::{CronError, Schedule};
pub use quantity::{Quantity, QuantityError};
pub use time::{Timestamp, TimestampError};
