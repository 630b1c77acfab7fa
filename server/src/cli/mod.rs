//! The commands of `etracker`, one module per command or group of
//! commands; `main.rs` parses the command line and dispatches here.

pub(crate) mod api;
pub(crate) mod batches;
pub(crate) mod consolidator;
pub(crate) mod keys;
pub(crate) mod serve;
pub(crate) mod space;
pub(crate) mod start;
pub(crate) mod store;
pub(crate) mod token;
