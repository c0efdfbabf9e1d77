//! The `logstream` command's library.
//!
//! | module | what |
//! |---|---|
//! | [`dev`] | `logstream dev`: the local service (every function's router on one port, the local WebSocket endpoint, the viewer page), in-process so tests can start it on port 0 |
//! | [`perf`] | `logstream bench`, `logstream soak` and the local Runtime API for cold starts |
//! | [`run`] | `logstream run`: a command's output streamed to a job |
//! | [`lines`] | a command's output, in chunks, into lines |
//! | [`view`] | `logstream tail` and `logstream logs` |
//! | [`render`] | how entries are printed on a terminal |
//!
//! The API client they are built on is its own crate, `logstream-client`.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod dev;
pub mod lines;
pub mod perf;
pub mod render;
pub mod run;
pub mod view;
