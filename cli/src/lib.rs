//! The `logstream` command's library: `logstream dev` lives here so tests can start
//! the local service in-process on port 0.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod dev;
