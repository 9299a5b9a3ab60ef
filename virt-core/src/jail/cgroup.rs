//! cgroups: later
