//! Entry id (cursor, Last-Event-ID) and job id parsing: accepted exactly by their grammar, round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logstream_core::fuzzing::ids(data));
