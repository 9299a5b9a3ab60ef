//! Live migration.
