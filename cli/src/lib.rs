//! The `logstream` command's library: `logstream dev` lives here so tests can start
//! the local service in-process on port 0.

pub mod dev;
