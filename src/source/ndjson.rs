//! Newline-delimited JSON from a file or standard input, for `pipewatch replay`.
//!
//! Lines are read with a bound: a line longer than the event size limit is consumed
//! without being buffered whole, and handed on cut to `limit + 1` bytes so the decoder
//! refuses it as `too_large`. A hostile file cannot make replay hold more than one
//! event's worth of memory.

use std::io::{self, BufRead};

pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    limit: usize,
    line_number: u64,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, limit: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: Vec::with_capacity(4096),
            limit,
            line_number: 0,
        }
    }

    /// The next non-blank line without its line ending, with its 1-based number, or
    /// `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        loop {
            self.buf.clear();
            let mut saw_any = false;
            loop {
                let available = self.inner.fill_buf()?;
                if available.is_empty() {
                    break;
                }
                saw_any = true;
                let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                    Some(i) => (&available[..i], i + 1),
                    None => (available, available.len()),
                };
                let room = (self.limit + 1).saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                let found_newline = done > chunk.len();
                self.inner.consume(done);
                if found_newline {
                    break;
                }
            }
            if !saw_any {
                return Ok(None);
            }
            self.line_number += 1;
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
            if !self.buf.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some((self.line_number, &self.buf)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_blank_lines_and_crlf() {
        let data = b"{\"a\":1}\r\n\n   \n{\"b\":2}";
        let mut r = LineReader::new(&data[..], 100);
        assert_eq!(r.next_line().unwrap(), Some((1, &b"{\"a\":1}"[..])));
        assert_eq!(r.next_line().unwrap(), Some((4, &b"{\"b\":2}"[..])));
        assert_eq!(r.next_line().unwrap(), None);
    }

    #[test]
    fn long_lines_are_cut_not_buffered() {
        let mut data = vec![b'x'; 1_000_000];
        data.extend_from_slice(b"\nshort\n");
        let reader = io::BufReader::with_capacity(64, &data[..]);
        let mut r = LineReader::new(reader, 10);
        assert_eq!(r.next_line().unwrap().unwrap().1.len(), 11);
        assert_eq!(r.next_line().unwrap(), Some((2, &b"short"[..])));
        assert!(r.buf.capacity() < 10_000);
    }
}
