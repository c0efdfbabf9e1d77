//! Build markers: one batch or one line per batch gives the same entries; no marker line stored; no mask through.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logstream_core::fuzzing::markers(data));
