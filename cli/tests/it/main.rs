//! The integration tests of the `logstream` command and of `logstream dev`, one binary:
//! the service in-process on port 0 over private Redis servers, the real binary for
//! `run`, `tail` and `logs`.

mod archive_dev;
mod archive_s3_dev;
mod cli_support;
mod client_upload;
mod cluster;
mod complete_logs;
mod deletion;
mod dev_limits;
mod faults;
mod history_api;
mod ingest_api;
mod log_features;
mod logs_command;
mod markers;
mod openapi;
mod run_command;
mod sse_api;
mod support;
mod tail_command;
mod team_access;
mod template_routes;
mod tls;
mod viewer_e2e;
mod ws_api;
