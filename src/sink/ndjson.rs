//! NDJSON output: one JSON object per line, to a file or standard output.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::Serialize;

pub struct NdjsonWriter {
    /// `Send`, so that the service can write from its consumer thread.
    out: BufWriter<Box<dyn Write + Send>>,
}

impl NdjsonWriter {
    /// `-` is standard output.
    pub fn create(path: &Path) -> io::Result<NdjsonWriter> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(io::stdout())
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
