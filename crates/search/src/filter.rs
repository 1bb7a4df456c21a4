//! Filters on documents' stored metadata: the fields of a document other than its id, title and
//! text.
//!
//! A filter is a JSON object of conditions, all of which a document must meet:
//!
//! ```json
//! {"lang": "en", "tags": ["biology", "medicine"], "year": {"gte": 2000, "lt": 2010}}
//! ```
//!
//! A string, number or boolean asks for that value; a list asks for any of its values; an object
//! of `gt`, `gte`, `lt` and `lte` asks for a number in that range. A field that holds a list
//! meets a condition when any of its values does. Nested fields are named with dots (`a.b`).
//!
//! Filters run in tantivy (strings through the metadata's exact-match terms, numbers through
//! its fast columns), so every mode applies the same filter: keyword search intersects it with
//! the query, semantic search only considers the documents it lets through.

use std::collections::HashSet;
use std::ops::Bound;

use cloze_index::Collection;
use serde_json::Value;
use tantivy::collector::DocSetCollector;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{Searcher, Term};

use crate::SearchError;

/// Documents must meet every condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

/// One metadata field's condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The field's path, nested names joined with dots.
    pub field: String,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Any of these values.
    AnyOf(Vec<Scalar>),
    /// A number within these bounds.
    Range { lower: Bound<f64>, upper: Bound<f64> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Number(f64),
    Bool(bool),
}

/// What is wrong with a filter, and where: `path` names the place in the filter object, such
/// as `year.gte`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FilterError {
    pub path: String,
    pub message: String,
}

impl Filter {
    /// Reads a filter from its JSON form (see the module documentation).
    pub fn from_json(value: &Value) -> Result<Filter, FilterError> {
        let error = |path: &str, message: &str| FilterError {
            path: path.to_string(),
            message: message.to_string(),
        };
        let Value::Object(fields) = value else {
            return Err(error("", "a filter is an object of field conditions"));
        };
        let mut conditions = Vec::with_capacity(fields.len());
        for (field, condition) in fields {
            if field.is_empty() {
                return Err(error(field, "a field name is not empty"));
            }
            let test = match condition {
                Value::Array(values) if values.is_empty() => {
                    return Err(error(field, "a list of values is not empty"))
                }
                Value::Array(values) => Test::AnyOf(
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, value)| {
                            scalar(value).ok_or_else(|| {
                                error(
                                    &format!("{field}[{i}]"),
                                    "expected a string, number or boolean",
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Value::Object(bounds) => {
                    let (mut lower, mut upper) = (Bound::Unbounded, Bound::Unbounded);
                    for (operator, bound) in bounds {
                        let path = format!("{field}.{operator}");
                        let number = bound
                            .as_f64()
                            .filter(|n| n.is_finite())
                            .ok_or_else(|| error(&path, "expected a number"))?;
                        let (slot, bound) = match operator.as_str() {
                            "gt" => (&mut lower, Bound::Excluded(number)),
                            "gte" => (&mut lower, Bound::Included(number)),
                            "lt" => (&mut upper, Bound::Excluded(number)),
                            "lte" => (&mut upper, Bound::Included(number)),
                            _ => {
                                return Err(error(
                                    &path,
                                    "unknown operator: expected gt, gte, lt or lte",
                                ))
                            }
                        };
                        if *slot != Bound::Unbounded {
                            return Err(error(&path, "a second lower or upper bound"));
                        }
                        *slot = bound;
                    }
                    if bounds.is_empty() {
                        return Err(error(field, "a range names at least one of gt, gte, lt, lte"));
                    }
                    Test::Range { lower, upper }
                }
                value => Test::AnyOf(vec![scalar(value).ok_or_else(|| {
                    error(field, "expected a string, number, boolean, list or range")
                })?]),
            };
            conditions.push(Condition { field: field.clone(), test });
        }
        Ok(Filter { conditions })
    }

    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// The filter as a tantivy query over `collection`'s metadata field.
    pub(crate) fn query(&self, collection: &Collection) -> Box<dyn Query> {
        let field = collection.fields().metadata;
        let term = |path: &str| Term::from_field_json_path(field, path, false);
        let number_range = |path: &str, lower: Bound<f64>, upper: Bound<f64>| {
            let bound_term = |n: f64| {
                let mut t = term(path);
                t.append_type_and_fast_value(n);
                t
            };
            Box::new(RangeQuery::new(lower.map(bound_term), upper.map(bound_term)))
                as Box<dyn Query>
        };
        let conditions = self.conditions.iter().map(|condition| {
            let path = condition.field.as_str();
            let query: Box<dyn Query> = match &condition.test {
                Test::Range { lower, upper } => number_range(path, *lower, *upper),
                Test::AnyOf(values) => {
                    let any = values.iter().map(|value| {
                        let query: Box<dyn Query> = match value {
                            // Numbers are compared by value, whatever type (i64, u64, f64) the
                            // column stores them as.
                            Scalar::Number(n) => {
                                number_range(path, Bound::Included(*n), Bound::Included(*n))
                            }
                            Scalar::Str(s) => {
                                let mut t = term(path);
                                t.append_type_and_str(s);
                                Box::new(TermQuery::new(t, IndexRecordOption::Basic))
                            }
                            Scalar::Bool(b) => {
                                let mut t = term(path);
                                t.append_type_and_fast_value(*b);
                                Box::new(TermQuery::new(t, IndexRecordOption::Basic))
                            }
                        };
                        (Occur::Should, query)
                    });
                    Box::new(BooleanQuery::new(any.collect()))
                }
            };
            (Occur::Must, query)
        });
        Box::new(BooleanQuery::new(conditions.collect()))
    }

    /// The ids of the committed documents that pass the filter.
    pub(crate) fn document_ids(
        &self,
        collection: &Collection,
        searcher: &Searcher,
    ) -> Result<HashSet<String>, SearchError> {
        let addresses: Vec<_> = searcher
            .search(self.query(collection).as_ref(), &DocSetCollector)
            .map_err(|source| SearchError::Tantivy {
                collection: collection.name().to_string(),
                source,
            })?
            .into_iter()
            .collect();
        Ok(collection.ids(searcher, &addresses)?.into_iter().collect())
    }
}

fn scalar(value: &Value) -> Option<Scalar> {
    match value {
        Value::String(s) => Some(Scalar::Str(s.clone())),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Number(n) => n.as_f64().map(Scalar::Number),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_values_lists_and_ranges() {
        let filter = Filter::from_json(
            &json!({"lang": "en", "tags": ["a", 2], "year": {"gte": 2000, "lt": 2010}}),
        )
        .unwrap();
        let tests: Vec<_> =
            filter.conditions().iter().map(|c| (c.field.as_str(), &c.test)).collect();
        assert_eq!(
            tests,
            [
                ("lang", &Test::AnyOf(vec![Scalar::Str("en".into())])),
                ("tags", &Test::AnyOf(vec![Scalar::Str("a".into()), Scalar::Number(2.0)])),
                (
                    "year",
                    &Test::Range { lower: Bound::Included(2000.0), upper: Bound::Excluded(2010.0) }
                ),
            ]
        );
    }

    #[test]
    fn errors_name_the_place() {
        let path = |value| Filter::from_json(&value).unwrap_err().path;
        assert_eq!(path(json!({"year": {"gte": "x"}})), "year.gte");
        assert_eq!(path(json!({"year": {"from": 1}})), "year.from");
        assert_eq!(path(json!({"year": {"gt": 1, "gte": 2}})), "year.gte");
        assert_eq!(path(json!({"year": {}})), "year");
        assert_eq!(path(json!({"tags": ["a", null]})), "tags[1]");
        assert_eq!(path(json!({"tags": []})), "tags");
        assert_eq!(path(json!({"lang": null})), "lang");
        assert_eq!(path(json!(["lang"])), "");
    }
}
