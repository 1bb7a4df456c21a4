//! Relevance judgments: BEIR TSV (`query-id corpus-id score`, with a header) or TREC qrels
//! (`query-id iteration doc-id grade`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{for_each_row, EvalError, EvalErrorKind, FirstLines};

/// Judged grades by query, then by document. Grades of 1 and above mean relevant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qrels {
    judgments: BTreeMap<String, HashMap<String, i64>>,
}

impl Qrels {
    /// Reads a BEIR TSV or TREC qrels file; the layout is told from the column count of the first
    /// judgment, and every later line must have the same count.
    pub fn read(path: impl AsRef<Path>) -> Result<Qrels, EvalError> {
        let path = path.as_ref();
        let mut qrels = Qrels::default();
        let mut first_lines = FirstLines::default();
        let mut width = None;
        for_each_row(path, |line, columns| {
            let (query, document, grade) = match (width, columns) {
                // A header, as BEIR's `query-id corpus-id score`: a first line without a grade.
                (None, [_, _, grade]) if grade.parse::<i64>().is_err() && line == 1 => {
                    return Ok(())
                }
                (None | Some(3), [query, document, grade]) => (query, document, grade),
                (None | Some(4), [query, _, document, grade]) => (query, document, grade),
                (Some(3), _) => {
                    return Err(EvalErrorKind::Columns {
                        expected: "3 (query-id, corpus-id, score)",
                        found: columns.len(),
                    })
                }
                (Some(4), _) => {
                    return Err(EvalErrorKind::Columns {
                        expected: "4 (query-id, iteration, doc-id, grade)",
                        found: columns.len(),
                    })
                }
                _ => {
                    return Err(EvalErrorKind::Columns {
                        expected: "3 (BEIR: query-id, corpus-id, score) or 4 (TREC: query-id, \
                                   iteration, doc-id, grade)",
                        found: columns.len(),
                    })
                }
            };
            width = Some(columns.len());
            let grade = grade.parse::<i64>().map_err(|_| EvalErrorKind::Value {
                column: "the relevance grade",
                expected: "an integer",
                found: grade.to_string(),
            })?;
            first_lines.check(query, document, line)?;
            qrels.insert(query, document, grade);
            Ok(())
        })?;
        Ok(qrels)
    }

    /// Adds or replaces one judgment.
    pub fn insert(&mut self, query: &str, document: &str, grade: i64) {
        self.judgments.entry(query.to_string()).or_default().insert(document.to_string(), grade);
    }

    /// The judged queries, in id order.
    pub fn queries(&self) -> impl Iterator<Item = &str> {
        self.judgments.keys().map(String::as_str)
    }

    pub fn num_queries(&self) -> usize {
        self.judgments.len()
    }

    /// The judged grades of one query's documents, if the query is judged.
    pub fn judgments(&self, query: &str) -> Option<&HashMap<String, i64>> {
        self.judgments.get(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(content: &str) -> Result<Qrels, EvalError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        Qrels::read(file.path())
    }

    #[test]
    fn reads_beir_with_header_and_trec_without() {
        let beir = read("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t2\n\n2\td1\t0\n").unwrap();
        let trec = read("1 0 d1 1\n1 0 d2 2\n2 0 d1 0\n").unwrap();
        assert_eq!(beir, trec);
        assert_eq!(beir.queries().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(beir.judgments("1").unwrap()["d2"], 2);
    }

    #[test]
    fn wrong_column_count_names_the_line() {
        let error = read("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\n").unwrap_err();
        assert_eq!(error.line(), Some(3));
        assert!(error
            .to_string()
            .contains("expected 3 (query-id, corpus-id, score), found 2 columns"));
        let error = read("1 0 d1 1\n2 0 d1\n").unwrap_err();
        assert!(error.to_string().contains(":2: expected 4 (query-id, iteration"), "{error}");
        let error = read("1 0 d1 1 extra\n").unwrap_err();
        assert!(error.to_string().contains(":1: expected 3 (BEIR"), "{error}");
        let error = read("1 d1 1\n1 d2 x\n").unwrap_err();
        assert!(
            error.to_string().contains(":2: the relevance grade must be an integer"),
            "{error}"
        );
    }

    #[test]
    fn duplicate_judgment_is_an_error() {
        let error = read("1 0 d1 1\n1 0 d1 2\n").unwrap_err();
        assert!(error
            .to_string()
            .ends_with(":2: query \"1\" has document \"d1\" twice (first on line 1)"));
    }
}
