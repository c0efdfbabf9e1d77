//! Dev-only support: the servers `logstream dev` and the tests start, and the fixtures
//! the tests share. No Lambda links this crate; the CLI does, for `logstream dev`'s
//! private `redis-server`.
//!
//! | module | what |
//! |---|---|
//! | [`process`] | helper servers that die with their owner |
//! | [`redis_server`] | a private `redis-server` on a free loopback port (one per test binary, or one of a test's own) |
//! | [`redis_cluster`] | a private six-node Redis Cluster |
//! | [`s3_server`] | a private S3-compatible server (moto) |
//! | [`fault_proxy`] | an HTTP proxy that fails chosen requests to it (500s, timeouts, held answers) |
//! | [`lambda`] | the `events/` samples through lambda_http's own types |
//! | [`fixtures`] | settings from pairs, unique job ids, viewer tokens, a job seeded in the store |
//! | [`sse`] | a Server-Sent Events client that parses frames as a browser does |

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fault_proxy;
pub mod fixtures;
pub mod lambda;
pub mod process;
pub mod redis_cluster;
pub mod redis_server;
pub mod s3_server;
pub mod sse;
