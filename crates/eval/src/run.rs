//! Runs: ranked documents with scores, per query, read and written in TREC format
//! (`query-id Q0 doc-id rank score tag`).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use crate::error::{for_each_row, EvalError, EvalErrorKind, FirstLines};

/// Retrieved documents and their scores, by query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    results: BTreeMap<String, Vec<(String, f64)>>,
}

impl Run {
    pub fn new() -> Run {
        Run::default()
    }

    /// Reads a TREC run file. The rank column is read but not used: as in `trec_eval`, order
    /// comes from the scores.
    pub fn read(path: impl AsRef<Path>) -> Result<Run, EvalError> {
        let mut run = Run::new();
        let mut first_lines = FirstLines::default();
        for_each_row(path.as_ref(), |line, columns| {
            let [query, _, document, rank, score, _] = columns else {
                return Err(EvalErrorKind::Columns {
                    expected: "6 (query-id Q0 doc-id rank score tag)",
                    found: columns.len(),
                });
            };
            rank.parse::<i64>().map_err(|_| EvalErrorKind::Value {
                column: "the rank (column 4)",
                expected: "an integer",
                found: rank.to_string(),
            })?;
            let score = score.parse::<f64>().ok().filter(|s| s.is_finite()).ok_or_else(|| {
                EvalErrorKind::Value {
                    column: "the score (column 5)",
                    expected: "a finite number",
                    found: score.to_string(),
                }
            })?;
            first_lines.check(query, document, line)?;
            run.results.entry(query.to_string()).or_default().push((document.to_string(), score));
            Ok(())
        })?;
        Ok(run)
    }

    /// Sets the results of one query, best first.
    pub fn insert(&mut self, query: &str, results: Vec<(String, f64)>) {
        self.results.insert(query.to_string(), results);
    }

    /// One query's results, in the order they were given.
    pub fn results(&self, query: &str) -> Option<&[(String, f64)]> {
        self.results.get(query).map(Vec::as_slice)
    }

    pub fn queries(&self) -> impl Iterator<Item = &str> {
        self.results.keys().map(String::as_str)
    }

    /// Writes the run in TREC format, ranks from 1 in the order the results were given.
    pub fn write_trec(&self, out: &mut impl Write, tag: &str) -> io::Result<()> {
        for (query, results) in &self.results {
            for (rank, (document, score)) in results.iter().enumerate() {
                writeln!(out, "{query} Q0 {document} {} {score} {tag}", rank + 1)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_gives_the_same_run() {
        let mut run = Run::new();
        run.insert("q1", vec![("d1".into(), 2.5), ("d2".into(), 1.0 / 3.0)]);
        run.insert("q2", vec![("d3".into(), -1e-9)]);
        let mut bytes = Vec::new();
        run.write_trec(&mut bytes, "cloze").unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        assert_eq!(Run::read(file.path()).unwrap(), run);
        assert!(String::from_utf8(bytes).unwrap().starts_with("q1 Q0 d1 1 2.5 cloze\n"));
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("q Q0 d 1 0.5\n", "expected 6 (query-id Q0 doc-id rank score tag), found 5 columns"),
            ("q Q0 d one 0.5 t\n", "the rank (column 4) must be an integer, found \"one\""),
            ("q Q0 d 1 NaN t\n", "the score (column 5) must be a finite number"),
        ];
        for (content, expected) in cases {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), format!("q Q0 ok 1 1 t\n{content}")).unwrap();
            let error = Run::read(file.path()).unwrap_err();
            assert_eq!(error.line(), Some(2));
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
