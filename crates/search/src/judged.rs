//! Judged queries: the queries a set of relevance judgments covers, searched into a run that
//! `cloze-eval` scores.

use std::collections::HashMap;

use cloze_eval::{Qrels, Run};

use crate::{search, Hit, SearchError, SearchRequest};

/// A query with judgments: its id in the judgments, its text, and its own vector if it brings
/// one (for a collection whose documents bring theirs).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedQuery {
    pub id: String,
    pub text: String,
    pub vector: Option<Vec<f32>>,
}

/// A query that is judged but has no text to search for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("query \"{id}\" is judged but has no text")]
pub struct NoQueryText {
    pub id: String,
}

impl JudgedQuery {
    /// Every query `qrels` judges, in its order, with its text from `texts`; an error names
    /// the first one without.
    pub fn from_judgments(
        qrels: &Qrels,
        texts: &HashMap<String, String>,
    ) -> Result<Vec<JudgedQuery>, NoQueryText> {
        qrels
            .queries()
            .map(|id| match texts.get(id) {
                Some(text) => {
                    Ok(JudgedQuery { id: id.to_string(), text: text.clone(), vector: None })
                }
                None => Err(NoQueryText { id: id.to_string() }),
            })
            .collect()
    }

    /// This query's search, with every other setting from `template`.
    pub fn request(&self, template: &SearchRequest) -> SearchRequest {
        let mut request = template.clone();
        request.query.clone_from(&self.text);
        request.vector.clone_from(&self.vector);
        request
    }
}

/// Adds one query's ranking to `run`, as the evaluation scores it.
pub fn record(run: &mut Run, query: &str, hits: Vec<Hit>) {
    run.insert(query, hits.into_iter().map(|hit| (hit.id, f64::from(hit.score))).collect());
}

/// Searches each query with `template`'s settings into a run; `on_query` is called after
/// each, for progress. An error names the query it came from.
pub fn search_judged(
    collection: &cloze_index::Collection,
    template: &SearchRequest,
    queries: &[JudgedQuery],
    mut on_query: impl FnMut(),
) -> Result<Run, SearchError> {
    let mut run = Run::new();
    for query in queries {
        let found = search(collection, &query.request(template)).map_err(|error| {
            SearchError::InQuery { id: query.id.clone(), source: Box::new(error) }
        })?;
        record(&mut run, &query.id, found.hits);
        on_query();
    }
    Ok(run)
}
