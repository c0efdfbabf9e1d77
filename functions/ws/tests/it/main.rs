//! The ws function's integration tests, one binary.

mod lambda_events;
