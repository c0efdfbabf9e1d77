//! The runtime every logstream function shares, in folders by subsystem. The domain
//! (ids, entries, batch parsing, the sanitizer) is the `logstream-core` crate; the test
//! servers and fixtures are `logstream-testkit`, which no function links.
//!
//! | module | what |
//! |---|---|
//! | [`store`] | `LogStore`: every Redis operation, one round trip per batch; key layout, connection and cluster, scripts, reads, the in-place RESP reader |
//! | [`auth`] | pipeline credentials, viewer JWTs and JWKS, and the one read rule ([`auth::Viewer::can_read`]) |
//! | [`archive`] | jobs' logs in S3 or a local folder: segments, manifest, index, pages |
//! | [`log`] | one log across Redis and the archive: every read of a job goes through it |
//! | [`web`] | the API's JSON errors, extractors, viewer auth, 404/405/CORS/body limit for every router |
//! | [`config`] | settings from the environment, checked at start |
//! | [`clients`] | the clients a process makes once from its settings; every function's state is built from them |
//! | [`telemetry`] | tracing setup for the Lambda mains and the CLI |
//! | [`metrics`] | counters and timings as CloudWatch Embedded Metric Format lines, at most one per 10 s |
//! | [`runtime_api`] | `TCP_NODELAY` on the Lambda runtime client's own connections (a streamed response's first frame waited ~40 ms) |
//! | `wsapi` | API Gateway's WebSocket management API (feature `ws`): pushing to and closing connections |

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod archive;
pub mod auth;
pub mod clients;
pub mod config;
pub mod log;
pub mod metrics;
pub mod runtime_api;
pub mod store;
pub mod telemetry;
pub mod web;
#[cfg(feature = "ws")]
pub mod wsapi;
