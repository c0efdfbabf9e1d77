//! The archiver function's integration tests, one binary, against a private
//! redis-server and a private S3-compatible server.

mod dir_archive;
mod faults;
mod s3_archive;
mod segments;
mod support;
