use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with a qrels or run file, located by file and (where there is one) line.
#[derive(Debug, thiserror::Error)]
pub struct EvalError {
    path: PathBuf,
    line: Option<u64>,
    kind: EvalErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalErrorKind {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not valid UTF-8")]
    InvalidUtf8,
    #[error("expected {expected}, found {found} columns")]
    Columns { expected: &'static str, found: usize },
    #[error("{column} must be {expected}, found \"{found}\"")]
    Value { column: &'static str, expected: &'static str, found: String },
    #[error("query \"{query}\" has document \"{document}\" twice (first on line {first_line})")]
    Duplicate { query: String, document: String, first_line: u64 },
}

impl EvalError {
    pub(crate) fn new(path: &Path, line: Option<u64>, kind: EvalErrorKind) -> Self {
        EvalError { path: path.to_path_buf(), line, kind }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn line(&self) -> Option<u64> {
        self.line
    }

    pub fn kind(&self) -> &EvalErrorKind {
        &self.kind
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.kind),
            None => write!(f, "{}: {}", self.path.display(), self.kind),
        }
    }
}

/// Calls `each` with `(line_number, columns)` for every non-blank line of a whitespace-separated
/// file, stopping at the first error.
pub(crate) fn for_each_row(
    path: &Path,
    mut each: impl FnMut(u64, &[&str]) -> Result<(), EvalErrorKind>,
) -> Result<(), EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::new(path, None, e.into()))?;
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let number = index as u64 + 1;
        let line = std::str::from_utf8(line)
            .map_err(|_| EvalError::new(path, Some(number), EvalErrorKind::InvalidUtf8))?;
        let columns: Vec<&str> = line.split_whitespace().collect();
        if !columns.is_empty() {
            each(number, &columns).map_err(|kind| EvalError::new(path, Some(number), kind))?;
        }
    }
    Ok(())
}

/// Remembers the line of every (query, document) pair read, so a pair listed twice is reported
/// with both lines.
#[derive(Default)]
pub(crate) struct FirstLines(HashMap<(String, String), u64>);

impl FirstLines {
    pub(crate) fn check(
        &mut self,
        query: &str,
        document: &str,
        line: u64,
    ) -> Result<(), EvalErrorKind> {
        match self.0.entry((query.to_string(), document.to_string())) {
            Entry::Occupied(first) => Err(EvalErrorKind::Duplicate {
                query: query.to_string(),
                document: document.to_string(),
                first_line: *first.get(),
            }),
            Entry::Vacant(slot) => {
                slot.insert(line);
                Ok(())
            }
        }
    }
}
