//! Query files: BEIR `queries.jsonl` (`{"_id", "text"}`) or TSV (`id<TAB>text`).

use std::path::Path;

use serde_json::Value;

use crate::error::{json_type_name, CorpusError, ErrorKind};
use crate::lines::Lines;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: String,
    pub text: String,
}

/// Reads every query of a file. A name ending in `.tsv` (or `.tsv.gz`) is read as `id<TAB>text`
/// lines, anything else as JSONL objects with `_id` and `text`.
pub fn read_queries(path: impl AsRef<Path>) -> Result<Vec<Query>, CorpusError> {
    let path = path.as_ref();
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let is_tsv = name.ends_with(".tsv") || name.ends_with(".tsv.gz");
    let mut lines = Lines::open(path)?;
    let mut queries = Vec::new();
    while let Some(line) = lines.next_line() {
        let (_, line) = line?;
        let query = if is_tsv { parse_tsv(&line) } else { parse_json(&line) };
        queries.push(query.map_err(|kind| lines.error(kind))?);
    }
    Ok(queries)
}

fn parse_tsv(line: &str) -> Result<Query, ErrorKind> {
    match line.split('\t').collect::<Vec<_>>()[..] {
        [id, text] => Ok(Query { id: id.trim().to_string(), text: text.to_string() }),
        ref columns => Err(ErrorKind::Columns { expected: "2 (id, text)", found: columns.len() }),
    }
}

fn parse_json(line: &str) -> Result<Query, ErrorKind> {
    let value: Value = serde_json::from_str(line).map_err(|e| ErrorKind::Json(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(ErrorKind::NotAnObject(json_type_name(&value)));
    };
    let mut field = |name: &str| match object.remove(name) {
        None | Some(Value::Null) => Err(ErrorKind::MissingField(name.to_string())),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => {
            Err(ErrorKind::FieldType { field: name.to_string(), found: json_type_name(&other) })
        }
    };
    Ok(Query { id: field("_id")?, text: field("text")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, content: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_jsonl_and_tsv() {
        let (_dir, jsonl) = write("q.jsonl", "{\"_id\": 1, \"text\": \"a b\", \"metadata\": {}}\n");
        assert_eq!(
            read_queries(&jsonl).unwrap(),
            vec![Query { id: "1".into(), text: "a b".into() }]
        );
        let (_dir, tsv) = write("q.tsv", "1\tfirst query\n\n2\tsecond\n");
        let queries = read_queries(&tsv).unwrap();
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[1], Query { id: "2".into(), text: "second".into() });
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let (_dir, tsv) = write("q.tsv", "1\tok\n2\ttoo\tmany\n");
        let error = read_queries(&tsv).unwrap_err();
        assert_eq!(error.line(), Some(2));
        assert!(error.to_string().contains("expected 2 (id, text), found 3"), "{error}");
        let (_dir, jsonl) = write("q.jsonl", "{\"_id\": \"1\"}\n");
        let error = read_queries(&jsonl).unwrap_err();
        assert_eq!(
            (error.line(), error.to_string().ends_with("missing field \"text\"")),
            (Some(1), true)
        );
    }
}
