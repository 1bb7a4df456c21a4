use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with an input file, located by file and (where there is one) line.
#[derive(Debug, thiserror::Error)]
pub struct CorpusError {
    path: PathBuf,
    line: Option<u64>,
    kind: ErrorKind,
}

/// What went wrong, without the location.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not valid UTF-8 (byte {0} of the line)")]
    InvalidUtf8(usize),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("missing field \"{0}\"")]
    MissingField(String),
    #[error("field \"{field}\" must be a string or a number, found {found}")]
    FieldType { field: String, found: &'static str },
    #[error("field \"{field}\" {message}")]
    Vector { field: String, message: String },
    #[error("expected {expected}, found {found} tab-separated columns")]
    Columns { expected: &'static str, found: usize },
}

impl CorpusError {
    pub(crate) fn new(path: &Path, line: Option<u64>, kind: ErrorKind) -> Self {
        CorpusError { path: path.to_path_buf(), line, kind }
    }

    /// The file the error is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based line number, when the error is about one line.
    pub fn line(&self) -> Option<u64> {
        self.line
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for CorpusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.kind),
            None => write!(f, "{}: {}", self.path.display(), self.kind),
        }
    }
}

/// The JSON type name used in messages ("found an array").
pub(crate) fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
