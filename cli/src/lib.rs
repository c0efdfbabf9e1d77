//! The `logstream` command's library.
//!
//! | module | what |
//! |---|---|
//! | [`dev`] | `logstream dev`: the local service, in-process so tests can start it on port 0 |
//! | [`bench`] | `logstream bench`: ingest and history throughput |
//! | [`soak`] | `logstream soak`: many jobs and viewers for a set time, memory and connections watched |
//! | [`client`] | a Rust client of the API (uploader with `seq` and retries, live follow): usable by other Rust code |
//! | [`lines`] | a command's output, in chunks, into lines |
//! | [`run`] | `logstream run`: a command's output streamed to a job |
//! | [`view`] | `logstream tail` and `logstream logs` |
//! | [`render`] | how entries are printed on a terminal |
//! | [`viewer`] | the log-viewer page `logstream dev` serves |

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod client;
pub mod coldstart;
pub mod dev;
pub mod lines;
pub mod local_ws;
pub mod render;
pub mod run;
pub mod soak;
pub mod view;
pub mod viewer;
