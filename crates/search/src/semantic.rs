//! Semantic ranking: the query embedded by the collection's model, its nearest documents found
//! in the collection's HNSW graph.

use cloze_index::{analyze, Collection};

use crate::keyword::fill_documents;
use crate::{Hit, SearchError, SearchRequest};

pub(crate) fn search(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Vec<Hit>, SearchError> {
    if request.query.trim().is_empty() || request.limit == 0 {
        return Ok(Vec::new());
    }
    let query = collection.encoder()?.encode(&[&request.query])?.remove(0);
    let wanted = request.offset.saturating_add(request.limit);
    let neighbours = collection.nearest(&query, wanted, request.ef_search)?;
    let mut hits: Vec<Hit> = neighbours
        .into_iter()
        .skip(request.offset)
        .map(|n| Hit {
            id: n.id,
            score: n.similarity,
            title: None,
            snippet: None,
            explanation: None,
        })
        .collect();
    if request.with_documents {
        fill_documents_by_id(collection, &mut hits, &request.query)?;
    }
    Ok(hits)
}

/// Gives hits found by id (not through tantivy) their titles and snippets.
pub(crate) fn fill_documents_by_id(
    collection: &Collection,
    hits: &mut [Hit],
    query: &str,
) -> Result<(), SearchError> {
    let searcher = collection.searcher();
    let mut addresses = Vec::with_capacity(hits.len());
    for hit in hits.iter() {
        // The vector index and the keyword index share their ids and commit together.
        let address =
            collection.address(&searcher, &hit.id)?.ok_or_else(|| SearchError::Inconsistent {
                collection: collection.name().to_string(),
                id: hit.id.clone(),
            })?;
        addresses.push(address);
    }
    let terms = analyze(&mut collection.analyzer(), query);
    fill_documents(collection, &searcher, hits, &addresses, &terms)
}
