//! The sse function's integration tests, one binary.

mod concurrent;
mod streaming;
