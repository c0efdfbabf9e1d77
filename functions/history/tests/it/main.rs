//! The history function's integration tests, one binary.

mod archive_fallback;
mod cursor_properties;
mod lambda_events;
