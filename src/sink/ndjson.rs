//! NDJSON output: one JSON object per line, to a file or standard output.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::Serialize;

pub struct NdjsonWriter {
    out: BufWriter<Box<dyn Write>>,
}

impl NdjsonWriter {
    /// `-` is standard output.
    pub fn create(path: &Path) -> io::Result<NdjsonWriter> {
        let out: Box<dyn Write> = if path == Path::new("-") {
            Box::new(io::stdout().lock())
        } else {
            Box::new(File::create(path)?)
        };
        Ok(NdjsonWriter {
            out: BufWriter::with_capacity(1 << 16, out),
        })
    }

    pub fn write<T: Serialize>(&mut self, item: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, item)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
