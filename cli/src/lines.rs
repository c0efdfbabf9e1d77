//! Splitting a command's output, read in arbitrary chunks, into lines.
//!
//! `\n` ends a line and a `\r` just before it belongs to the line ending (CRLF). A
//! partial line is held until its newline arrives, or until [`LineSplitter::finish`]
//! at end of output. Invalid UTF-8 becomes U+FFFD. Everything else, ANSI codes and
//! progress-bar `\r`s included, is passed on as printed: the service sanitizes.
//!
//! Memory is bounded: at most [`MAX_HELD_BYTES`] of one line are held. A longer line
//! that is a progress bar (rewritten with `\r`) keeps only what follows its last `\r`,
//! which is all the service would keep of it; any other line keeps its first
//! [`MAX_HELD_BYTES`] and drops the rest (the service stores 16 KiB of a line anyway).

use memchr::{memchr, memrchr};

use logstream_client::upload::MAX_TEXT_BYTES;

/// Most bytes of one line held while waiting for its end.
pub const MAX_HELD_BYTES: usize = MAX_TEXT_BYTES;

/// Turns chunks of output into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `chunk`, calling `emit` with each line it completes.
    pub fn push(&mut self, chunk: &[u8], mut emit: impl FnMut(String)) {
        let mut rest = chunk;
        while let Some(end) = memchr(b'\n', rest) {
            let line = &rest[..end];
            if self.partial.is_empty() && line.len() <= MAX_HELD_BYTES {
                emit(text(line));
            } else {
                self.hold(line);
                let line = std::mem::take(&mut self.partial);
                emit(text(&line));
            }
            rest = &rest[end + 1..];
        }
        self.hold(rest);
    }

    /// Ends the output: the partial line, if any, is a line.
    pub fn finish(&mut self, mut emit: impl FnMut(String)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit(text(&line));
        }
    }

    fn hold(&mut self, mut bytes: &[u8]) {
        if self.partial.len() + bytes.len() > MAX_HELD_BYTES {
            // A `\r` followed by more text: what precedes it is overwritten on screen.
            let search = bytes.len().saturating_sub(1);
            if let Some(cr) = memrchr(b'\r', &bytes[..search]) {
                self.partial.clear();
                bytes = &bytes[cr + 1..];
            } else if !bytes.is_empty()
                && let Some(cr) = memrchr(b'\r', &self.partial)
            {
                self.partial.drain(..=cr);
            }
        }
        let room = MAX_HELD_BYTES.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

fn text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, |l| out.push(l));
        }
        splitter.finish(|l| out.push(l));
        out
    }

    #[test]
    fn lines_end_at_newlines_and_crlf_whatever_the_chunking() {
        let raw = b"one\r\ntwo\n\nthree\n";
        let expected = ["one", "two", "", "three"];
        assert_eq!(split(&[raw]), expected);
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(split(&bytes), expected);
    }

    #[test]
    fn a_partial_line_waits_for_its_newline_or_the_end() {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        splitter.push(b"hal", |l| out.push(l));
        assert!(out.is_empty());
        splitter.push(b"f\nno newline", |l| out.push(l));
        assert_eq!(out, ["half"]);
        splitter.finish(|l| out.push(l));
        assert_eq!(out, ["half", "no newline"]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters_even_when_split() {
        assert_eq!(split(&[b"bad \xff byte\n"]), ["bad \u{fffd} byte"]);
        // A valid character split across two reads stays whole.
        let e = "é".as_bytes();
        assert_eq!(split(&[&[b'x', e[0]], &[e[1], b'\n']]), ["xé"]);
    }

    #[test]
    fn progress_carriage_returns_inside_a_line_are_passed_on() {
        assert_eq!(split(&[b"10%\r50%\r100%\n"]), ["10%\r50%\r100%"]);
    }

    #[test]
    fn a_huge_line_is_held_up_to_the_limit() {
        let huge = vec![b'x'; MAX_HELD_BYTES * 3];
        let lines = split(&[&huge[..1000], &huge[1000..], b"\nnext\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_HELD_BYTES);
        assert_eq!(lines[1], "next");
        let lines = split(&[&huge, b"\n"]);
        assert_eq!(lines[0].len(), MAX_HELD_BYTES, "also within one chunk");
    }

    #[test]
    fn a_huge_progress_line_keeps_what_follows_its_last_carriage_return() {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for pct in 0..=100 {
            let frame = format!("\r[{}] {pct}%", "#".repeat(10_000));
            splitter.push(frame.as_bytes(), |l| out.push(l));
        }
        splitter.push(b"\n", |l| out.push(l));
        assert_eq!(out.len(), 1);
        assert!(out[0].ends_with("] 100%"), "the final state survives");
        assert!(out[0].len() <= MAX_HELD_BYTES);
    }
}
