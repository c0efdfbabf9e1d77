//! The common crate of logstream: what every function shares.
//!
//! | module | what |
//! |---|---|
//! | [`model`] | `JobId`, `EntryId`, `Entry`, the job status machine |
//! | [`sanitize`] | ANSI stripping, progress collapse, secret redaction, line cap |
//! | [`batch`] | the ingest body: a JSON batch or `text/plain` lines, parsed and checked |
//! | [`keys`] | the Redis key layout |
//! | [`store`] | `LogStore`: every Redis operation, one round trip per batch |
//! | [`auth`] | pipeline credentials: ingest key and per-job tokens |
//! | [`jwt`] | viewer credentials: RS256 via JWKS, HS256 |
//! | [`config`] | settings from the environment, checked at start |
//! | [`error`] | the API's JSON error answer |
//! | [`http`] | extractors, viewer auth, 404/405/CORS/body limit for every router |
//! | [`archive`] | finished jobs' logs in S3 or a local folder: format, index, pages |
//! | [`redis_server`] | a private `redis-server` for `logstream dev` and tests |
//! | [`redis_cluster`] | a private six-node Redis Cluster for the tests |
//! | [`s3_server`] | a private S3-compatible server for the archive tests and benchmark |
//! | [`process`] | helper servers that die with their owner |
//! | [`telemetry`] | tracing setup for the Lambda mains and the CLI |
//! | `testing` | (feature `testing`) sample Lambda events through lambda_http's types |
//! | `fuzzing` | (feature `fuzzing`) one check per fuzz target, shared with the corpus replay tests |

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod archive;
pub mod auth;
pub mod batch;
pub mod config;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod model;
pub mod process;
pub mod redis_cluster;
pub mod redis_server;
mod resp;
pub mod s3_server;
pub mod sanitize;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
