//! The ingest function's integration tests, one binary.

mod lambda_events;
mod startup;
