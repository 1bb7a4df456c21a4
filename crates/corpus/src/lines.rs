//! Line-by-line reading of plain or gzip files, with line numbers and UTF-8 checked per line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{CorpusError, ErrorKind};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Yields `(line_number, line)` for the non-blank lines of a file, without the line ending.
pub(crate) struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    line_number: u64,
    buffer: Vec<u8>,
}

impl Lines {
    /// Opens `path`, decompressing it when it starts with the gzip magic bytes.
    pub(crate) fn open(path: &Path) -> Result<Lines, CorpusError> {
        let file = File::open(path).map_err(|e| CorpusError::new(path, None, ErrorKind::Io(e)))?;
        Lines::from_reader(path, file)
    }

    /// Reads from `reader` (decompressing gzip the same way), named `name` in errors.
    pub(crate) fn from_reader(
        name: &Path,
        reader: impl Read + Send + 'static,
    ) -> Result<Lines, CorpusError> {
        let mut reader = BufReader::new(reader);
        let is_gzip = reader
            .fill_buf()
            .map_err(|e| CorpusError::new(name, None, ErrorKind::Io(e)))?
            .starts_with(&GZIP_MAGIC);
        let reader: Box<dyn BufRead + Send> = if is_gzip {
            Box::new(BufReader::new(MultiGzDecoder::new(reader)))
        } else {
            Box::new(reader)
        };
        Ok(Lines { path: name.to_path_buf(), reader, line_number: 0, buffer: Vec::new() })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn error(&self, kind: ErrorKind) -> CorpusError {
        CorpusError::new(&self.path, Some(self.line_number), kind)
    }

    /// The next non-blank line, or `None` at the end of the file.
    pub(crate) fn next_line(&mut self) -> Option<Result<(u64, String), CorpusError>> {
        loop {
            self.buffer.clear();
            self.line_number += 1;
            match self.reader.read_until(b'\n', &mut self.buffer) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(self.error(ErrorKind::Io(e)))),
            }
            let mut bytes = std::mem::take(&mut self.buffer);
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                self.buffer = bytes;
                continue;
            }
            return Some(match String::from_utf8(bytes) {
                Ok(line) => Ok((self.line_number, line)),
                Err(e) => Err(self.error(ErrorKind::InvalidUtf8(e.utf8_error().valid_up_to() + 1))),
            });
        }
    }
}

/// The non-blank lines of a plain-text file (plain or gzip), one document or paragraph each.
pub struct TextLines {
    lines: Lines,
}

impl TextLines {
    pub fn open(path: impl AsRef<Path>) -> Result<TextLines, CorpusError> {
        Ok(TextLines { lines: Lines::open(path.as_ref())? })
    }
}

impl Iterator for TextLines {
    type Item = Result<String, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.lines.next_line().map(|line| line.map(|(_, text)| text))
    }
}
