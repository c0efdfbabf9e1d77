//! logstream's domain: what a log is, independent of where it is stored or how it is
//! served. No Redis, HTTP or AWS here, so the fuzz targets (`fuzz/`) build only this.
//!
//! | module | what |
//! |---|---|
//! | [`ids`] | `JobId`, `EntryId`, random hex |
//! | [`model`] | entries, line streams, stage and job statuses, the status machine |
//! | [`search`] | `?q=`: a literal, case-insensitive match on a line's text |
//! | [`raw`] | the raw log's text: a line entry's text, its time as ISO-8601 UTC |
//! | [`batch`] | the ingest body: a JSON batch or `text/plain` lines, parsed and checked ([`batch::BatchError`]) |
//! | [`markers`] | build markers: `::group::`, GitLab sections, `::add-mask::`, and the groups a job left open |
//! | [`entries`] | a batch's lines made into the entries stored: sanitized, coloured, markers applied |
//! | [`sanitize`] | escape and control-character stripping, progress collapse, secret redaction (what is and is not: its module doc), line cap |
//! | `fuzzing` | (feature `fuzzing`) one check per fuzz target, shared with the corpus replay tests |

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod entries;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ids;
pub mod markers;
pub mod model;
pub mod raw;
pub mod sanitize;
pub mod search;
