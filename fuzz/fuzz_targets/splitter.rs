//! The text/plain body splitter and parser: no panic, one line per newline, text back as sent.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| logstream_core::fuzzing::splitter(data));
