//! The JSON batch parser: no panic, limits hold, accepted batches round-trip, refusals are 4xx.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logstream_core::fuzzing::batch(data));
