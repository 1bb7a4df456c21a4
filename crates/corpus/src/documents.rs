//! Documents from JSONL corpora (BEIR's `corpus.jsonl` and any JSONL with named fields).

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{json_type_name, CorpusError, ErrorKind};
use crate::lines::Lines;

/// One document as the rest of Cloze sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    /// Shown as the hit's title; searched together with `text`.
    pub title: String,
    /// The searched text fields other than the title, joined by newlines.
    pub text: String,
    /// Every other field of the source object, kept as stored metadata.
    pub metadata: Map<String, Value>,
    /// The document's own vector, when its source names a vector field: indexed as it is
    /// instead of one a model computes.
    pub vector: Option<Vec<f32>>,
}

impl Document {
    /// Title and text as one string (a newline between them when both are there): what keyword
    /// search indexes and what a model reads.
    pub fn searchable_text(&self) -> String {
        match (self.title.is_empty(), self.text.is_empty()) {
            (true, _) => self.text.clone(),
            (false, true) => self.title.clone(),
            (false, false) => format!("{}\n{}", self.title, self.text),
        }
    }
}

/// Which JSON fields hold the id, the searched text and the title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMapping {
    pub id_field: String,
    /// The fields whose text is searched, in order. Each must be present in every document
    /// (`null` counts as empty text).
    pub text_fields: Vec<String>,
    /// The text field shown as the title; `None`, or a name not among `text_fields`, means the
    /// documents have no title.
    pub title_field: Option<String>,
    /// The field that holds a document's own vector (an array of numbers), if any; a document
    /// without it (or with `null`) has none.
    pub vector_field: Option<String>,
    /// The length every vector must have.
    pub vector_dimension: Option<usize>,
}

impl Default for FieldMapping {
    /// BEIR's layout: `{"_id", "title", "text"}`.
    fn default() -> Self {
        FieldMapping {
            id_field: "_id".to_string(),
            text_fields: vec!["title".to_string(), "text".to_string()],
            title_field: Some("title".to_string()),
            vector_field: None,
            vector_dimension: None,
        }
    }
}

impl FieldMapping {
    fn is_title(&self, field: &str) -> bool {
        self.title_field.as_deref() == Some(field)
    }

    /// Turns one parsed JSON object into a [`Document`], or says which field is wrong.
    pub fn document(&self, mut object: Map<String, Value>) -> Result<Document, ErrorKind> {
        let id = match object.remove(&self.id_field) {
            None | Some(Value::Null) => return Err(ErrorKind::MissingField(self.id_field.clone())),
            Some(value) => scalar_text(&self.id_field, value)?,
        };
        let mut title = String::new();
        let mut text = String::new();
        for field in &self.text_fields {
            let value = match object.remove(field) {
                None => return Err(ErrorKind::MissingField(field.clone())),
                Some(Value::Null) => String::new(),
                Some(value) => scalar_text(field, value)?,
            };
            if self.is_title(field) {
                title = value;
            } else {
                if !text.is_empty() && !value.is_empty() {
                    text.push('\n');
                }
                text.push_str(&value);
            }
        }
        let vector = match &self.vector_field {
            Some(field) => match object.remove(field) {
                None | Some(Value::Null) => None,
                Some(value) => Some(self.vector(field, value)?),
            },
            None => None,
        };
        Ok(Document { id, title, text, metadata: object, vector })
    }

    /// A vector field's value: an array of finite numbers, of the expected length.
    fn vector(&self, field: &str, value: Value) -> Result<Vec<f32>, ErrorKind> {
        let wrong = |message: String| ErrorKind::Vector { field: field.to_string(), message };
        let Value::Array(values) = value else {
            return Err(wrong(format!(
                "expected an array of numbers, found {}",
                json_type_name(&value)
            )));
        };
        if let Some(expected) = self.vector_dimension {
            if values.len() != expected {
                return Err(wrong(format!(
                    "has {} values; the collection's vectors have {expected}",
                    values.len()
                )));
            }
        }
        values
            .iter()
            .enumerate()
            .map(|(i, value)| match value.as_f64().map(|x| x as f32) {
                Some(x) if x.is_finite() => Ok(x),
                Some(_) => Err(wrong(format!("value {i} is out of the range of a 32-bit float"))),
                None => Err(wrong(format!("value {i} is {}, not a number", json_type_name(value)))),
            })
            .collect()
    }
}

fn scalar_text(field: &str, value: Value) -> Result<String, ErrorKind> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => {
            Err(ErrorKind::FieldType { field: field.to_string(), found: json_type_name(&other) })
        }
    }
}

/// Streams the documents of a JSONL file (plain or gzip), one object a line; blank lines are
/// skipped. The first bad line ends the stream with an error naming the file and line.
pub struct DocumentReader {
    lines: Lines,
    mapping: FieldMapping,
    failed: bool,
}

impl DocumentReader {
    pub fn open(path: impl AsRef<Path>, mapping: FieldMapping) -> Result<Self, CorpusError> {
        Ok(DocumentReader { lines: Lines::open(path.as_ref())?, mapping, failed: false })
    }

    /// Reads JSONL from any reader (standard input, a network stream), plain or gzip; errors
    /// name it `name`.
    pub fn from_reader(
        name: impl AsRef<Path>,
        reader: impl std::io::Read + Send + 'static,
        mapping: FieldMapping,
    ) -> Result<Self, CorpusError> {
        let lines = Lines::from_reader(name.as_ref(), reader)?;
        Ok(DocumentReader { lines, mapping, failed: false })
    }

    pub fn path(&self) -> &Path {
        self.lines.path()
    }

    fn parse(&self, line: &str) -> Result<Document, ErrorKind> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| ErrorKind::Json(e.to_string()))?;
        match value {
            Value::Object(object) => self.mapping.document(object),
            other => Err(ErrorKind::NotAnObject(json_type_name(&other))),
        }
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Document, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = match self.lines.next_line()? {
            Ok((_, line)) => self.parse(&line).map_err(|kind| self.lines.error(kind)),
            Err(e) => Err(e),
        };
        self.failed = result.is_err();
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn corpus(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file
    }

    fn read_all(content: &[u8], mapping: FieldMapping) -> Result<Vec<Document>, CorpusError> {
        let file = corpus(content);
        DocumentReader::open(file.path(), mapping)?.collect()
    }

    #[test]
    fn reads_beir_documents_and_keeps_extra_fields_as_metadata() {
        let docs = read_all(
            b"{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"body\", \"year\": 1999}\n\n\
              {\"_id\": 7, \"title\": \"\", \"text\": null}\r\n",
            FieldMapping::default(),
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "d1");
        assert_eq!(docs[0].title, "T");
        assert_eq!(docs[0].text, "body");
        assert_eq!(docs[0].metadata.get("year"), Some(&Value::from(1999)));
        assert_eq!(docs[1].id, "7");
        assert_eq!(docs[1].text, "");
        assert!(docs[1].metadata.is_empty());
    }

    #[test]
    fn a_vector_field_is_read_as_the_documents_vector_and_checked() {
        let mapping = FieldMapping {
            vector_field: Some("emb".into()),
            vector_dimension: Some(3),
            ..FieldMapping::default()
        };
        let docs = read_all(
            b"{\"_id\": \"a\", \"title\": \"\", \"text\": \"x\", \"emb\": [1, 0.5, -2e3]}\n\
              {\"_id\": \"b\", \"title\": \"\", \"text\": \"y\", \"emb\": null, \"k\": 1}",
            mapping.clone(),
        )
        .unwrap();
        assert_eq!(docs[0].vector, Some(vec![1.0, 0.5, -2000.0]));
        assert!(docs[0].metadata.is_empty());
        assert_eq!((docs[1].vector.as_ref(), docs[1].metadata.len()), (None, 1));
        for (line, expected) in [
            ("[1, 2]", "field \"emb\" has 2 values; the collection's vectors have 3"),
            ("[1, \"2\", 3]", "field \"emb\" value 1 is a string, not a number"),
            ("[1, 2, 1e300]", "field \"emb\" value 2 is out of the range of a 32-bit float"),
            ("{}", "field \"emb\" expected an array of numbers, found an object"),
        ] {
            let body =
                format!("{{\"_id\": \"a\", \"title\": \"\", \"text\": \"x\", \"emb\": {line}}}");
            let error = read_all(body.as_bytes(), mapping.clone()).unwrap_err().to_string();
            assert!(error.ends_with(&format!(":1: {expected}")), "{error}");
        }
    }

    #[test]
    fn custom_fields_join_text_and_leave_title_empty_without_a_title_field() {
        let mapping = FieldMapping {
            id_field: "doc".into(),
            text_fields: vec!["abstract".into(), "body".into()],
            title_field: Some("title".into()),
            ..FieldMapping::default()
        };
        let docs = read_all(
            b"{\"doc\": \"a\", \"abstract\": \"x\", \"body\": \"y\", \"title\": \"kept\"}",
            mapping,
        )
        .unwrap();
        assert_eq!(docs[0].title, "");
        assert_eq!(docs[0].text, "x\ny");
        assert_eq!(docs[0].metadata.get("title"), Some(&Value::from("kept")));
    }

    #[test]
    fn reads_gzip_by_content() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"{\"_id\": \"z\", \"title\": \"t\", \"text\": \"gz\"}\n").unwrap();
        let compressed = encoder.finish().unwrap();
        let docs = read_all(&compressed, FieldMapping::default()).unwrap();
        assert_eq!(docs[0].text, "gz");
        // The same from a reader, named as the caller says.
        let reader = DocumentReader::from_reader(
            "<stdin>",
            std::io::Cursor::new(compressed),
            FieldMapping::default(),
        )
        .unwrap();
        assert_eq!(reader.collect::<Result<Vec<_>, _>>().unwrap(), docs);
        let bad = std::io::Cursor::new(b"{\"_id\": \"1\"}\n".to_vec());
        let reader = DocumentReader::from_reader("<stdin>", bad, FieldMapping::default()).unwrap();
        let error = reader.collect::<Result<Vec<_>, _>>().unwrap_err().to_string();
        assert!(error.starts_with("<stdin>:1"), "{error}");
    }

    /// "line: message" of the error that reading `content` ends with.
    fn error_of(content: &[u8]) -> String {
        let file = corpus(content);
        let reader = DocumentReader::open(file.path(), FieldMapping::default()).unwrap();
        let error = reader.collect::<Result<Vec<_>, _>>().unwrap_err();
        assert_eq!(error.path(), file.path());
        format!("{}: {}", error.line().unwrap(), error.kind())
    }

    #[test]
    fn bad_lines_are_named_by_line_number() {
        let ok = b"{\"_id\": \"1\", \"title\": \"\", \"text\": \"a\"}\n";
        let cases: [(&[u8], &str); 6] = [
            (b"{not json}\n", "not valid JSON"),
            (b"[1, 2]\n", "expected a JSON object, found an array"),
            (b"{\"title\": \"\", \"text\": \"a\"}\n", "missing field \"_id\""),
            (b"{\"_id\": \"2\", \"title\": \"\"}\n", "missing field \"text\""),
            (
                b"{\"_id\": \"2\", \"title\": [], \"text\": \"a\"}\n",
                "field \"title\" must be a string",
            ),
            (b"{\"_id\": \"2\", \"title\": \"\", \"text\": \"\xff\"}\n", "not valid UTF-8"),
        ];
        for (bad, expected) in cases {
            let mut content = ok.to_vec();
            content.extend_from_slice(b"\n");
            content.extend_from_slice(bad);
            let message = error_of(&content);
            assert!(message.starts_with("3: "), "{message}");
            assert!(message.contains(expected), "{message} should contain {expected}");
        }
    }

    #[test]
    fn stops_after_the_first_error() {
        let file = corpus(b"oops\n{\"_id\": \"1\", \"title\": \"\", \"text\": \"a\"}\n");
        let mut reader = DocumentReader::open(file.path(), FieldMapping::default()).unwrap();
        assert!(reader.next().unwrap().is_err());
        assert!(reader.next().is_none());
    }

    #[test]
    fn unreadable_file_is_named() {
        let error = DocumentReader::open("/nonexistent/corpus.jsonl", FieldMapping::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("/nonexistent/corpus.jsonl: cannot read"), "{error}");
    }

    #[test]
    fn empty_file_has_no_documents() {
        assert!(read_all(b"", FieldMapping::default()).unwrap().is_empty());
    }
}
