//! Bulk bodies: NDJSON in the shape of Elasticsearch's `_bulk`, as the HTTP service takes them.
//!
//! Each line is an action followed, for `index`, by the document, or a document on its own
//! (which then carries its `_id`):
//!
//! ```text
//! {"index": {"_id": "1"}}
//! {"title": "Vitamin D", "text": "...", "year": 2019}
//! {"delete": {"_id": "2"}}
//! {"_id": "3", "text": "..."}
//! ```
//!
//! A body is read whole before anything is applied, so a wrong line anywhere refuses all of it,
//! and the answer can list every wrong line at once.
//!
//! For a collection that holds vectors, a document's `vector` field is its own vector (as
//! Elasticsearch's `dense_vector`): an array of numbers of the collection's dimension.

use serde_json::{Map, Value};

use crate::documents::{Document, FieldMapping};

/// One change a bulk body asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum BulkAction {
    /// Add the document, or replace the one with its id.
    Index(Document),
    /// Remove the document with this id.
    Delete(String),
}

/// A bulk line that cannot be applied: its number (from 1) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkLineError {
    pub line: usize,
    pub reason: String,
}

/// The field of a bulk document that holds its own vector.
pub const VECTOR_FIELD: &str = "vector";

/// Reads a bulk body into its actions, in order, or every wrong line. With `vector_dimension`
/// (a collection that holds vectors of that length), each document's [`VECTOR_FIELD`] is its
/// vector; without, it is metadata like any other field.
pub fn parse_bulk(
    body: &[u8],
    vector_dimension: Option<usize>,
) -> Result<Vec<BulkAction>, Vec<BulkLineError>> {
    let mapping = FieldMapping {
        vector_field: vector_dimension.map(|_| VECTOR_FIELD.to_string()),
        vector_dimension,
        ..FieldMapping::default()
    };
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    // The line of an `index` action whose document has not come yet, and the id it named.
    let mut awaiting: Option<(usize, Option<String>)> = None;
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let mut fail = |reason: String| errors.push(BulkLineError { line: number, reason });
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // A line after an index action is its document, whatever it holds: a wrong one is
        // reported here, once, and the action does not also lack a document.
        let document_of = awaiting.take();
        let object = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                fail("expected a JSON object".to_string());
                continue;
            }
            Err(error) => {
                fail(format!("not valid JSON: {error}"));
                continue;
            }
        };
        if let Some((_, id)) = document_of {
            match document(object, id, &mapping) {
                Ok(document) => changes.push(BulkAction::Index(document)),
                Err(reason) => fail(reason),
            }
            continue;
        }
        match action(&object) {
            Some(("index", meta)) => match optional_id(meta) {
                Ok(id) => awaiting = Some((number, id)),
                Err(reason) => fail(format!("index.{reason}")),
            },
            Some(("delete", meta)) => match optional_id(meta) {
                Ok(Some(id)) => changes.push(BulkAction::Delete(id)),
                Ok(None) => fail("delete: missing \"_id\"".to_string()),
                Err(reason) => fail(format!("delete.{reason}")),
            },
            Some((other, _)) => fail(format!(
                "unsupported action \"{other}\": use index (adds or replaces) or delete"
            )),
            None => match document(object, None, &mapping) {
                Ok(document) => changes.push(BulkAction::Index(document)),
                Err(reason) => fail(reason),
            },
        }
    }
    if let Some((line, _)) = awaiting {
        errors.push(BulkLineError {
            line,
            reason: "an index action with no document after it".into(),
        });
    }
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(errors)
    }
}

/// An action line: one key naming an action, whose value is an object.
fn action(object: &Map<String, Value>) -> Option<(&str, &Map<String, Value>)> {
    const ACTIONS: [&str; 4] = ["index", "create", "update", "delete"];
    match object.iter().next() {
        Some((name, Value::Object(meta)))
            if object.len() == 1 && ACTIONS.contains(&name.as_str()) =>
        {
            Some((name.as_str(), meta))
        }
        _ => None,
    }
}

/// The `_id` an action names, if any.
fn optional_id(meta: &Map<String, Value>) -> Result<Option<String>, String> {
    if let Some(unknown) = meta.keys().find(|key| *key != "_id") {
        return Err(format!("{unknown}: unknown field, expected \"_id\""));
    }
    match meta.get("_id") {
        None => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(Value::Number(id)) => Ok(Some(id.to_string())),
        Some(_) => Err("_id: expected a non-empty string or a number".to_string()),
    }
}

/// A document line, with the id its action named (which wins over an `_id` field).
fn document(
    mut object: Map<String, Value>,
    id: Option<String>,
    mapping: &FieldMapping,
) -> Result<Document, String> {
    if let Some(id) = id {
        object.insert("_id".to_string(), Value::String(id));
    }
    if !object.contains_key("_id") {
        return Err(
            "missing \"_id\": put it in the document or in an index action before it".into()
        );
    }
    object.entry("title").or_insert(Value::Null);
    let document = mapping.document(object).map_err(|error| error.to_string())?;
    if document.id.is_empty() {
        return Err("_id: must not be empty".to_string());
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_actions_and_bare_documents_in_order() {
        let body = b"{\"index\": {\"_id\": \"1\"}}\n{\"title\": \"T\", \"text\": \"one\", \"year\": 2001}\n\r\n\
            {\"delete\": {\"_id\": 2}}\n{\"_id\": \"3\", \"text\": \"three\"}\n";
        let changes = parse_bulk(body, None).unwrap();
        assert_eq!(changes.len(), 3);
        let BulkAction::Index(first) = &changes[0] else { panic!("{changes:?}") };
        assert_eq!(
            (first.id.as_str(), first.title.as_str(), first.text.as_str()),
            ("1", "T", "one")
        );
        assert_eq!(first.metadata["year"], 2001);
        assert_eq!(changes[1], BulkAction::Delete("2".to_string()));
        let BulkAction::Index(third) = &changes[2] else { panic!("{changes:?}") };
        assert_eq!((third.id.as_str(), third.title.as_str()), ("3", ""));
    }

    #[test]
    fn a_wrong_document_after_an_index_action_is_one_error_on_its_own_line() {
        // Found by the fuzz target: the action was also reported, after the document's line.
        let errors = parse_bulk(b"{\"index\": {\"_id\": \"1\"}}\nnot json\n", None).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 2);
    }

    #[test]
    fn every_wrong_line_is_reported_with_its_number() {
        let body = b"{\"_id\": \"1\", \"text\": \"ok\"}\nnot json\n[1]\n{\"title\": \"no id\", \"text\": \"x\"}\n\
            {\"_id\": \"5\"}\n{\"update\": {\"_id\": \"1\"}}\n{\"delete\": {}}\n{\"index\": {\"_id\": \"8\", \"x\": 1}}\n\
            {\"index\": {}}\n{\"text\": \"no id after all\"}\n{\"index\": {\"_id\": \"11\"}}";
        let errors = parse_bulk(body, None).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 10, 11]);
        assert!(errors[0].reason.starts_with("not valid JSON"), "{errors:?}");
        assert!(errors[3].reason.contains("missing field \"text\""), "{errors:?}");
        assert!(errors[4].reason.contains("unsupported action \"update\""), "{errors:?}");
        assert!(errors[6].reason.contains("index.x: unknown field"), "{errors:?}");
        assert!(errors[8].reason.contains("no document after it"), "{errors:?}");
    }

    #[test]
    fn documents_carry_their_vectors_where_the_collection_holds_vectors() {
        let body = b"{\"_id\": \"1\", \"text\": \"a\", \"vector\": [0.5, 1]}\n\
            {\"_id\": \"2\", \"text\": \"b\"}\n{\"_id\": \"3\", \"text\": \"c\", \"vector\": [1]}\n";
        let errors = parse_bulk(body, Some(2)).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 3);
        assert!(errors[0].reason.contains("has 1 values; the collection's vectors have 2"));
        let changes = parse_bulk(&body[..body.len() - 41], Some(2)).unwrap();
        let BulkAction::Index(first) = &changes[0] else { panic!("{changes:?}") };
        assert_eq!(first.vector, Some(vec![0.5, 1.0]));
        // Where the collection holds no vectors it is metadata.
        let changes = parse_bulk(body, None).unwrap();
        let BulkAction::Index(first) = &changes[0] else { panic!("{changes:?}") };
        assert_eq!((first.vector.as_ref(), first.metadata.contains_key("vector")), (None, true));
    }
}
