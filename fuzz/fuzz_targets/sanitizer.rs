//! The sanitizer with registered secrets: no panic, the cap holds, no ESC, no secret through whole.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logstream_core::fuzzing::sanitizer(data));
