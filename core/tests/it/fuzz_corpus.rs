//! Replays every input the fuzzer kept (`fuzz/corpus/<target>/`) through the same
//! checks the `cargo fuzz` targets run ([`logstream_core::fuzzing`]), so CI on stable
//! Rust, without nightly or cargo-fuzz, still proves none of them fails.

use std::path::PathBuf;

use logstream_core::fuzzing;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: {} fails its check", file.display());
        }
    }
    eprintln!("{target}: {} inputs", files.len());
}

#[test]
fn the_sanitizer_corpus_passes() {
    replay("sanitizer", fuzzing::sanitizer);
}

#[test]
fn the_splitter_corpus_passes() {
    replay("splitter", fuzzing::splitter);
}

#[test]
fn the_batch_parser_corpus_passes() {
    replay("batch", fuzzing::batch);
}

#[test]
fn the_id_parser_corpus_passes() {
    replay("ids", fuzzing::ids);
}

#[test]
fn the_markers_corpus_passes() {
    replay("markers", fuzzing::markers);
}
