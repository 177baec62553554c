//! A tool's output cut into lines with bounded memory, whatever it prints:
//! long lines, no newline at all, progress redrawn with `\r`, or bytes that
//! are not UTF-8.

use std::io;

use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// One line of a tool's output, without its line end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputLine {
    /// The line (lossy UTF-8); for a cut line, its first bytes and the mark
    /// ` [line cut: N more bytes dropped]`, together at most the limit.
    pub text: String,
    /// How many bytes of the line were dropped (0 for a whole line).
    pub dropped: usize,
}

/// Splits bytes into [`OutputLine`]s for a `FramedRead`.
///
/// Why not tokio-util's `LinesCodec::new_with_max_length`: it fails on
/// bytes that are not UTF-8, and a decoder error ends a `FramedRead`; on an
/// over-long line it drops the prefix too, without saying how much was cut;
/// and a progress bar redrawn with `\r` for a long time is one long line to
/// it. This decoder takes every byte `FramedRead` read (so the read buffer
/// never grows) and holds at most `max` bytes of the current line: the rest
/// of a longer line is only counted.
#[derive(Debug)]
pub(crate) struct LineDecoder {
    max: usize,
    /// The current line's first bytes (at most `max`).
    line: Vec<u8>,
    /// Bytes of the current line beyond `max`, dropped.
    dropped: usize,
    /// The last byte was `\r`: the line ends (`\r\n`) or is redrawn.
    after_cr: bool,
}

impl LineDecoder {
    /// Lines of up to `max` bytes are kept whole.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            line: Vec::new(),
            dropped: 0,
            after_cr: false,
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.max.saturating_sub(self.line.len());
        let (kept, rest) = bytes.split_at(room.min(bytes.len()));
        let needed = self.line.len() + kept.len();
        if needed > self.line.capacity() {
            // Grow by doubling, but never past the limit.
            let target = needed.max(self.line.capacity() * 2).min(self.max);
            self.line.reserve_exact(target - self.line.len());
        }
        self.line.extend_from_slice(kept);
        self.dropped += rest.len();
    }

    /// A `\r` not followed by a line end: a progress bar redraws, so only
    /// what follows counts (the last state is what a terminal would show).
    fn redraw(&mut self) {
        self.line.clear();
        self.dropped = 0;
    }

    fn take_line(&mut self) -> OutputLine {
        self.after_cr = false;
        let dropped = std::mem::take(&mut self.dropped);
        let line = if dropped == 0 {
            OutputLine {
                text: String::from_utf8_lossy(&self.line).into_owned(),
                dropped: 0,
            }
        } else {
            cut(&self.line, dropped, self.max)
        };
        self.line.clear();
        // A long line's buffer is let go; a small one is reused.
        self.line.shrink_to(4096);
        line
    }
}

/// The mark after a cut line's prefix (the server marks its cuts alike).
fn cut_mark(dropped: usize) -> String {
    format!(" [line cut: {dropped} more bytes dropped]")
}

/// `line` (the first bytes of a longer line, `dropped` more after them) cut
/// so that what is kept and the mark fit in `max` bytes, not splitting a
/// UTF-8 character.
fn cut(line: &[u8], dropped: usize, max: usize) -> OutputLine {
    let total = line.len() + dropped;
    // Dropping more only shortens the count, so the mark of `total` bounds it.
    let mut keep = max.saturating_sub(cut_mark(total).len()).min(line.len());
    keep -= incomplete_char_tail(&line[..keep]);
    let dropped = total - keep;
    let mut text = String::from_utf8_lossy(&line[..keep]).into_owned();
    text.push_str(&cut_mark(dropped));
    OutputLine { text, dropped }
}

/// How many bytes at the end of `bytes` start a UTF-8 character that the
/// cut left incomplete (0 when the end is whole, or not UTF-8 anyway).
fn incomplete_char_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(4) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 != 0x80 {
            let width = match byte {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if width > back { back } else { 0 };
        }
    }
    0
}

impl Decoder for LineDecoder {
    type Item = OutputLine;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<OutputLine>, io::Error> {
        loop {
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            if self.after_cr {
                match first {
                    b'\n' => {
                        buf.advance(1);
                        return Ok(Some(self.take_line()));
                    }
                    b'\r' => {
                        buf.advance(1);
                        continue;
                    }
                    _ => {
                        self.after_cr = false;
                        self.redraw();
                    }
                }
            }
            match buf.iter().position(|byte| matches!(byte, b'\n' | b'\r')) {
                Some(end) => {
                    let ends_line = buf[end] == b'\n';
                    self.keep(&buf[..end]);
                    buf.advance(end + 1);
                    if ends_line {
                        return Ok(Some(self.take_line()));
                    }
                    self.after_cr = true;
                }
                None => {
                    self.keep(buf);
                    buf.clear();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<OutputLine>, io::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        // A last line without a line end.
        if self.line.is_empty() && self.dropped == 0 && !self.after_cr {
            return Ok(None);
        }
        Ok(Some(self.take_line()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]], max: usize) -> Vec<OutputLine> {
        let mut decoder = LineDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut lines = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(line) = decoder.decode(&mut buf).expect("decode") {
                lines.push(line);
            }
            assert!(buf.is_empty(), "the decoder takes every byte it is given");
        }
        while let Some(line) = decoder.decode_eof(&mut buf).expect("decode_eof") {
            lines.push(line);
        }
        lines
    }

    fn texts(lines: &[OutputLine]) -> Vec<&str> {
        lines.iter().map(|line| line.text.as_str()).collect()
    }

    #[test]
    fn lines_end_with_lf_or_crlf_and_the_last_needs_no_end() {
        let lines = lines_of(&[b"one\ntwo\r\n\nthr", b"ee\r", b"\nfour"], 100);
        assert_eq!(texts(&lines), ["one", "two", "", "three", "four"]);
        assert!(lines.iter().all(|line| line.dropped == 0));
        assert!(lines_of(&[b""], 100).is_empty());
        assert_eq!(texts(&lines_of(&[b"a\r"], 100)), ["a"]);
    }

    #[test]
    fn a_redrawn_progress_line_keeps_its_last_state() {
        let lines = lines_of(&[b"10%\r20%\r", b"30%\r\r\ndone\n"], 100);
        assert_eq!(texts(&lines), ["30%", "done"]);
        // Redraws never add up to a cut, however many there are.
        let redraws = "x".repeat(50) + "\r";
        let lines = lines_of(&[redraws.repeat(1000).as_bytes(), b"last\n"], 64);
        assert_eq!(texts(&lines), ["last"]);
    }

    #[test]
    fn a_line_at_the_limit_is_whole_and_a_longer_one_is_cut_and_marked() {
        let at_limit = "a".repeat(64);
        let longer = "b".repeat(200);
        let lines = lines_of(&[format!("{at_limit}\n{longer}\nnext\n").as_bytes()], 64);
        assert_eq!(lines[0].text, at_limit);
        assert_eq!(lines[0].dropped, 0);
        let cut = &lines[1];
        assert!(cut.text.len() <= 64, "{:?}", cut.text);
        let (kept, mark) = cut.text.split_once(' ').expect("a mark");
        assert!(
            kept.chars().all(|c| c == 'b') && !kept.is_empty(),
            "{kept:?}"
        );
        assert_eq!(cut.dropped, 200 - kept.len());
        assert_eq!(
            mark,
            format!("[line cut: {} more bytes dropped]", cut.dropped)
        );
        assert_eq!(lines[2].text, "next");
    }

    #[test]
    fn a_cut_does_not_split_a_character() {
        let long = "é".repeat(100);
        let lines = lines_of(&[long.as_bytes(), b"\n"], 100);
        let (kept, _) = lines[0].text.split_once(" [line cut").expect("a mark");
        assert!(
            !kept.is_empty() && kept.chars().all(|c| c == 'é'),
            "{kept:?}"
        );
        assert_eq!(lines[0].dropped, 200 - kept.len());
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let lines = lines_of(&[b"caf\xe9 \xff\xfe ok\n", "naïve\n".as_bytes()], 100);
        assert_eq!(texts(&lines), ["caf\u{fffd} \u{fffd}\u{fffd} ok", "naïve"]);
    }

    #[test]
    fn memory_stays_bounded_whatever_the_line_length() {
        let mut decoder = LineDecoder::new(1024);
        let mut buf = BytesMut::new();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..100 {
            buf.extend_from_slice(&chunk);
            assert_eq!(decoder.decode(&mut buf).expect("decode"), None);
            assert!(buf.is_empty());
            assert!(decoder.line.len() <= 1024 && decoder.line.capacity() <= 1024);
        }
        let line = decoder
            .decode_eof(&mut buf)
            .expect("decode_eof")
            .expect("the cut line");
        assert!(line.text.len() <= 1024);
        assert_eq!(
            line.dropped + line.text.find(' ').expect("a mark"),
            100 * 64 * 1024
        );
    }
}
