//! The domain crate's integration tests, one binary: property tests of the parsers and
//! the sanitizer, and the fuzz corpora replayed through the fuzz targets' checks.

mod fuzz_corpus;
mod properties;
