//! Collections: a named folder holding a manifest and a tantivy index of the same documents.
//!
//! ```text
//! <data-dir>/<name>/manifest.json   format version, analyzer, document count
//! <data-dir>/<name>/tantivy/        the keyword index, with every document's fields stored
//! ```

use std::path::{Path, PathBuf};

use cloze_corpus::Document;
use serde_json::Map;
use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, OwnedValue, Schema, TextFieldIndexing,
    TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term,
};

use crate::analyzer::AnalyzerSettings;
use crate::error::IndexError;
use crate::manifest::Manifest;

const TANTIVY_DIR: &str = "tantivy";
/// The name the collection's analyzer is registered under in tantivy.
const ANALYZER_NAME: &str = "cloze";
/// Indexing memory; tantivy flushes a segment to disk when it is reached.
const WRITER_MEMORY: usize = 128 << 20;

/// The folder that holds every collection (`index/` by default).
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn collection_dir(&self, name: &str) -> Result<PathBuf, IndexError> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }

    /// The names of the collections here, sorted; none if the folder does not exist yet.
    pub fn collection_names(&self) -> Result<Vec<String>, IndexError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(IndexError::Io { path: self.root.clone(), source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| Manifest::path(&entry.path()).is_file())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| validate_name(name).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn exists(&self, name: &str) -> Result<bool, IndexError> {
        Ok(Manifest::path(&self.collection_dir(name)?).is_file())
    }

    /// Creates an empty collection. It appears whole or not at all: it is built in a hidden
    /// folder and renamed into place.
    pub fn create(&self, name: &str, analyzer: AnalyzerSettings) -> Result<Collection, IndexError> {
        let dir = self.collection_dir(name)?;
        if dir.exists() {
            return Err(IndexError::CollectionExists(name.to_string()));
        }
        analyzer.validate().map_err(|message| IndexError::InvalidAnalyzer {
            origin: format!("the settings of \"{name}\""),
            message,
        })?;
        let building = self.root.join(format!(".{name}.creating-{}", std::process::id()));
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IndexError::Io { path, source }
        };
        std::fs::create_dir_all(building.join(TANTIVY_DIR)).map_err(io_error(&building))?;
        let built = Index::create_in_dir(building.join(TANTIVY_DIR), schema())
            .map_err(|source| IndexError::Tantivy { path: building.clone(), source })
            .and_then(|_| Manifest::new(analyzer).save(&building));
        if let Err(error) = built {
            let _ = std::fs::remove_dir_all(&building);
            return Err(error);
        }
        std::fs::rename(&building, &dir).map_err(io_error(&dir))?;
        Collection::open_dir(name, dir)
    }

    pub fn open(&self, name: &str) -> Result<Collection, IndexError> {
        if !self.exists(name)? {
            let available = self.collection_names()?;
            return Err(IndexError::UnknownCollection {
                name: name.to_string(),
                data_dir: self.root.clone(),
                available: if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                },
            });
        }
        Collection::open_dir(name, self.collection_dir(name)?)
    }

    /// Removes a collection and everything in it.
    pub fn delete(&self, name: &str) -> Result<(), IndexError> {
        let dir = self.collection_dir(name)?;
        if !self.exists(name)? {
            return self.open(name).map(drop);
        }
        std::fs::remove_dir_all(&dir).map_err(|source| IndexError::Io { path: dir, source })
    }
}

/// Collection names become folder names: keep them to a portable set that cannot climb out of
/// the data folder or hide (`..`, `a/b`, `.x`).
fn validate_name(name: &str) -> Result<(), IndexError> {
    let valid = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(IndexError::InvalidName(name.to_string()))
    }
}

/// The tantivy fields of a collection.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// The document id: exact-match, stored, and a fast field so ranked ids come without
    /// reading stored documents.
    pub id: Field,
    pub title: Field,
    pub text: Field,
    /// Title and text together, analysed: what BM25 ranks.
    pub body: Field,
    /// The document's other JSON fields.
    pub metadata: Field,
}

fn schema() -> Schema {
    let mut builder = Schema::builder();
    builder.add_text_field("id", STRING | STORED | FAST);
    builder.add_text_field("title", STORED);
    builder.add_text_field("text", STORED);
    let body = TextFieldIndexing::default()
        .set_tokenizer(ANALYZER_NAME)
        .set_index_option(IndexRecordOption::WithFreqs);
    builder.add_text_field("body", TextOptions::default().set_indexing_options(body));
    let metadata = JsonObjectOptions::default()
        .set_stored()
        .set_indexing_options(TextFieldIndexing::default().set_tokenizer("raw"))
        .set_fast("raw");
    builder.add_json_field("metadata", metadata);
    builder.build()
}

impl Fields {
    fn of(schema: &Schema) -> Result<Fields, tantivy::TantivyError> {
        Ok(Fields {
            id: schema.get_field("id")?,
            title: schema.get_field("title")?,
            text: schema.get_field("text")?,
            body: schema.get_field("body")?,
            metadata: schema.get_field("metadata")?,
        })
    }
}

/// An open collection.
pub struct Collection {
    name: String,
    dir: PathBuf,
    manifest: Manifest,
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

/// What an ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestSummary {
    /// Documents read and written (a re-indexed id counts once per occurrence).
    pub ingested: u64,
    /// Live documents in the collection afterwards.
    pub document_count: u64,
}

impl Collection {
    fn open_dir(name: &str, dir: PathBuf) -> Result<Collection, IndexError> {
        let manifest = Manifest::load(&dir)?;
        let tantivy_error = |source| IndexError::Tantivy { path: dir.join(TANTIVY_DIR), source };
        let index = Index::open_in_dir(dir.join(TANTIVY_DIR)).map_err(tantivy_error)?;
        index.tokenizers().register(ANALYZER_NAME, manifest.analyzer.build());
        let fields = Fields::of(&index.schema()).map_err(tantivy_error)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_error)?;
        Ok(Collection { name: name.to_string(), dir, manifest, index, reader, fields })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// A fresh copy of the collection's analyzer, for analysing queries as documents were.
    pub fn analyzer(&self) -> TextAnalyzer {
        self.manifest.analyzer.build()
    }

    /// A consistent view of the committed documents.
    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    pub fn document_count(&self) -> u64 {
        self.searcher().num_docs()
    }

    fn tantivy_error(&self, source: tantivy::TantivyError) -> IndexError {
        IndexError::Tantivy { path: self.dir.join(TANTIVY_DIR), source }
    }

    /// Adds documents, replacing any stored document with the same id, and commits them all
    /// at once. If any item is an error, or writing fails, nothing is committed and the error
    /// is returned: the collection stays exactly as it was. `on_document` is called after each
    /// document is queued, for progress reporting.
    pub fn ingest<I, E>(
        &mut self,
        documents: I,
        mut on_document: impl FnMut(),
    ) -> Result<IngestSummary, IndexError>
    where
        I: IntoIterator<Item = Result<Document, E>>,
        IndexError: From<E>,
    {
        // One indexing thread keeps documents in the order they came, so equal scores rank the
        // same way on every build of the collection and relevance figures are reproducible.
        let mut writer: IndexWriter = self
            .index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(|e| self.tantivy_error(e))?;
        let mut ingested = 0;
        let queued = documents.into_iter().try_for_each(|document| {
            let document = document?;
            writer.delete_term(Term::from_field_text(self.fields.id, &document.id));
            writer
                .add_document(self.tantivy_document(&document))
                .map_err(|e| self.tantivy_error(e))?;
            ingested += 1;
            on_document();
            Ok::<(), IndexError>(())
        });
        if let Err(error) =
            queued.and_then(|()| writer.commit().map(drop).map_err(|e| self.tantivy_error(e)))
        {
            // Nothing was committed; drop the segment files written so far as well.
            let _ = writer.rollback();
            let _ = writer.garbage_collect_files().wait();
            return Err(error);
        }
        writer.wait_merging_threads().map_err(|e| self.tantivy_error(e))?;
        self.reader.reload().map_err(|e| self.tantivy_error(e))?;
        let document_count = self.document_count();
        self.manifest.document_count = document_count;
        self.manifest.save(&self.dir)?;
        Ok(IngestSummary { ingested, document_count })
    }

    fn tantivy_document(&self, document: &Document) -> TantivyDocument {
        let fields = &self.fields;
        let mut stored = TantivyDocument::new();
        stored.add_text(fields.id, &document.id);
        stored.add_text(fields.title, &document.title);
        stored.add_text(fields.text, &document.text);
        stored.add_text(fields.body, document.searchable_text());
        if !document.metadata.is_empty() {
            stored.add_field_value(fields.metadata, &OwnedValue::from(document.metadata.clone()));
        }
        stored
    }

    /// The ids of documents found by `searcher`, in the same order.
    ///
    /// Ids come from the id fast field's dictionary, looked up per segment in sorted order so
    /// each dictionary block is decoded once: ranking 1000 hits stays cheap.
    pub fn ids(
        &self,
        searcher: &Searcher,
        addresses: &[DocAddress],
    ) -> Result<Vec<String>, IndexError> {
        let mut ids = vec![String::new(); addresses.len()];
        for (segment_ord, segment) in searcher.segment_readers().iter().enumerate() {
            // (term ordinal, position in `addresses`) of this segment's hits, by ordinal.
            let mut wanted: Vec<(u64, usize)> = Vec::new();
            let column = segment.fast_fields().str("id").map_err(|e| self.tantivy_error(e))?;
            let column = column.expect("the id field is a fast field");
            for (position, address) in addresses.iter().enumerate() {
                if address.segment_ord as usize == segment_ord {
                    wanted
                        .extend(column.term_ords(address.doc_id).next().map(|ord| (ord, position)));
                }
            }
            if wanted.is_empty() {
                continue;
            }
            wanted.sort_unstable();
            let mut ords: Vec<u64> = wanted.iter().map(|(ord, _)| *ord).collect();
            ords.dedup();
            // Called once per distinct ordinal, in order: hand the id to every hit that has it.
            let mut cursor = 0;
            column
                .dictionary()
                .sorted_ords_to_term_cb(&ords, |bytes| {
                    let ord = wanted[cursor].0;
                    while cursor < wanted.len() && wanted[cursor].0 == ord {
                        ids[wanted[cursor].1] = String::from_utf8_lossy(bytes).into_owned();
                        cursor += 1;
                    }
                })
                .map_err(|e| self.tantivy_error(e.into()))?;
        }
        Ok(ids)
    }

    /// The stored fields of a document found by `searcher`.
    pub fn stored_document(
        &self,
        searcher: &Searcher,
        address: DocAddress,
    ) -> Result<Document, IndexError> {
        let stored: TantivyDocument = searcher.doc(address).map_err(|e| self.tantivy_error(e))?;
        let text_of = |field| {
            stored.get_first(field).and_then(|value| value.as_str()).unwrap_or("").to_string()
        };
        let metadata = match stored.get_first(self.fields.metadata) {
            Some(value) => match serde_json::to_value(OwnedValue::from(value)) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        Ok(Document {
            id: text_of(self.fields.id),
            title: text_of(self.fields.title),
            text: text_of(self.fields.text),
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cloze_corpus::CorpusError;
    use tantivy::collector::TopDocs;
    use tantivy::query::TermQuery;
    use tantivy::schema::IndexRecordOption;

    use super::*;

    fn document(id: &str, title: &str, text: &str) -> Result<Document, IndexError> {
        Ok(Document { id: id.into(), title: title.into(), text: text.into(), metadata: Map::new() })
    }

    fn find(collection: &Collection, id: &str) -> Option<Document> {
        let searcher = collection.searcher();
        let query = TermQuery::new(
            Term::from_field_text(collection.fields().id, id),
            IndexRecordOption::Basic,
        );
        let hits = searcher.search(&query, &TopDocs::with_limit(2).order_by_score()).unwrap();
        assert!(hits.len() <= 1, "id {id} is stored more than once");
        hits.first().map(|(_, address)| collection.stored_document(&searcher, *address).unwrap())
    }

    /// Every file under `dir` with a digest of its content, to compare a folder before and
    /// after. tantivy's `.managed.json` lists its files in hash order, so it is compared sorted.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(snapshot(&path));
                continue;
            }
            let mut hasher = DefaultHasher::new();
            if path.ends_with(".managed.json") {
                let mut names: Vec<String> =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                names.sort();
                names.hash(&mut hasher);
            } else {
                std::fs::read(&path).unwrap().hash(&mut hasher);
            }
            files.insert(path, hasher.finish());
        }
        files
    }

    #[test]
    fn ingest_stores_documents_and_replaces_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let mut collection = data.create("docs", AnalyzerSettings::default()).unwrap();
        let mut with_metadata = document("b", "Bee", "buzz").unwrap();
        with_metadata.metadata.insert("year".into(), 2001.into());
        let summary = collection
            .ingest(
                [
                    document("a", "A", "first"),
                    Ok(with_metadata.clone()),
                    document("a", "A2", "second"),
                ],
                || {},
            )
            .unwrap();
        assert_eq!(summary, IngestSummary { ingested: 3, document_count: 2 });
        assert_eq!(find(&collection, "a").unwrap().text, "second");
        assert_eq!(find(&collection, "b").unwrap(), with_metadata);

        collection.ingest([document("b", "Bee", "again")], || {}).unwrap();
        let reopened = data.open("docs").unwrap();
        assert_eq!(reopened.document_count(), 2);
        assert_eq!(reopened.manifest().document_count, 2);
        assert_eq!(find(&reopened, "b").unwrap().text, "again");
        assert_eq!(data.collection_names().unwrap(), ["docs"]);
    }

    #[test]
    fn ids_match_stored_documents_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut collection =
            DataDir::new(dir.path()).create("docs", AnalyzerSettings::default()).unwrap();
        for batch in 0..3 {
            let documents = (0..50).map(|i| document(&format!("{batch}-{i}"), "", "text"));
            collection
                .ingest(documents.chain([document("shared", "", &format!("v{batch}"))]), || {})
                .unwrap();
        }
        let searcher = collection.searcher();
        assert!(searcher.segment_readers().len() > 1, "the test needs several segments");
        let top = searcher
            .search(&tantivy::query::AllQuery, &TopDocs::with_limit(1000).order_by_score())
            .unwrap();
        let addresses: Vec<DocAddress> = top.iter().rev().map(|(_, address)| *address).collect();
        let ids = collection.ids(&searcher, &addresses).unwrap();
        assert_eq!(ids.len(), 151);
        for (id, address) in ids.iter().zip(&addresses) {
            assert_eq!(id, &collection.stored_document(&searcher, *address).unwrap().id);
        }
    }

    #[test]
    fn a_failed_ingest_leaves_the_collection_exactly_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let mut collection = data.create("docs", AnalyzerSettings::default()).unwrap();
        collection.ingest([document("a", "", "kept")], || {}).unwrap();
        let before = snapshot(dir.path());
        let bad_line: CorpusError = cloze_corpus::read_queries("/nonexistent.tsv").unwrap_err();
        let many = (0..5000).map(|i| document(&format!("new{i}"), "", "x"));
        let result = collection.ingest(many.chain([Err(bad_line.into())]), || {});
        assert!(result.is_err());
        drop(collection);
        assert_eq!(snapshot(dir.path()), before);
        let reopened = data.open("docs").unwrap();
        assert_eq!(reopened.document_count(), 1);
        assert!(find(&reopened, "new1").is_none());
    }

    #[test]
    fn names_that_could_escape_the_data_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            let error = data.create(bad, AnalyzerSettings::default()).err().unwrap();
            assert!(matches!(error, IndexError::InvalidName(_)), "{bad}: {error}");
        }
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn unknown_and_duplicate_collections_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("not-yet"));
        let error = data.open("nope").err().unwrap().to_string();
        assert!(
            error.starts_with("no collection named \"nope\"")
                && error.ends_with("(collections there: none)")
        );
        data.create("one", AnalyzerSettings::default()).unwrap();
        assert!(matches!(
            data.create("one", AnalyzerSettings::default()),
            Err(IndexError::CollectionExists(_))
        ));
        assert!(data.open("two").err().unwrap().to_string().ends_with("(collections there: one)"));
        data.delete("one").unwrap();
        assert!(data.collection_names().unwrap().is_empty());
    }
}
