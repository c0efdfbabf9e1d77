//! The `logstream` command's library: `logstream dev` lives here so tests can start
//! the local service in-process on port 0; `logstream bench` measures it.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod coldstart;
pub mod dev;
pub mod local_ws;
pub mod viewer;
