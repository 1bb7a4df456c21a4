//! Collections: a named folder holding a manifest, a tantivy index and, with a model, the
//! vectors of the same documents.
//!
//! ```text
//! <data-dir>/<name>/manifest.json   format version, analyzer, model and HNSW settings
//! <data-dir>/<name>/tantivy/        the keyword index, with every document's fields stored
//! <data-dir>/<name>/vectors/        generations of the vector index (see the vectors module)
//! ```
//!
//! Every change ends in one tantivy commit whose payload names the vector commit written just
//! before it: the commit is the single moment at which both indexes change. A change writes
//! what it changes (its documents, one new vector segment, tombstones), never the whole
//! collection; merging vector segments is separate work ([`Collection::build_merge`]) that
//! runs beside searches and writes and is put in place by a commit of its own.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cloze_corpus::Document;
use serde::{Deserialize, Serialize};
use serde_json::Map;
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{AllQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, OwnedValue, Schema, TextFieldIndexing,
    TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term,
};

use crate::analyzer::AnalyzerSettings;
use crate::encoder::{Encoder, ModelRecord};
use crate::error::IndexError;
use crate::files::process_is_running;
use crate::live_statistics::BodyLengths;
use crate::manifest::{ExpansionSettings, FusionSettings, Manifest, SemanticSettings};
use crate::merge::{self, BuiltMerge, MergePlan};
use crate::nearest::Neighbour;
use crate::vectors::{VectorIndex, VECTORS_DIR};

pub(crate) const TANTIVY_DIR: &str = "tantivy";
/// The name the collection's analyzer is registered under in tantivy.
const ANALYZER_NAME: &str = "cloze";
/// Indexing memory; tantivy flushes a segment to disk when it is reached.
const WRITER_MEMORY: usize = 128 << 20;
/// Documents embedded together: sorted by length within a chunk, so batches pad little.
const EMBED_CHUNK: usize = 512;
/// Opening retries this many times when writes keep committing under it.
const OPEN_ATTEMPTS: usize = 10;
/// An expanding write of at least this many vectors gives its segment a graph before it finds
/// its documents' neighbours (see [`VectorIndex::link_unsaved_segments`]). Measured on 2 cores
/// with 384-dimensional vectors, a write of 80,000 took as long either way and one of 160,000
/// 11% less (the graph, built earlier, is the one the next merge would build).
const EXPAND_WITH_GRAPH_SLOTS: usize = 100_000;
/// Documents whose neighbours are looked for together, so that a large write shows its
/// progress every few seconds. The matrix products of a segment with no graph lose little to
/// it: an expanding write of 40,000 given 384-dimensional vectors took 21.0 s against 20.7 s
/// as one batch (2 cores, medians of 3, `benches/expansion_scale.sh`).
const NEIGHBOUR_CHUNK: usize = 2048;

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
    pub fn create(
        &self,
        name: &str,
        analyzer: AnalyzerSettings,
        semantic: Option<SemanticSettings>,
    ) -> Result<Collection, IndexError> {
        let dir = self.collection_dir(name)?;
        if dir.exists() {
            return Err(IndexError::CollectionExists(name.to_string()));
        }
        analyzer.validate().map_err(|message| IndexError::InvalidAnalyzer {
            origin: format!("the settings of \"{name}\""),
            message,
        })?;
        if let Some(semantic) = &semantic {
            semantic.validate().map_err(|message| IndexError::InvalidVectorSettings {
                name: name.to_string(),
                message,
            })?;
        }
        let building = self.hidden(name, "creating");
        std::fs::create_dir_all(building.join(TANTIVY_DIR))
            .map_err(crate::files::io_error(&building))?;
        let built = Index::create_in_dir(building.join(TANTIVY_DIR), schema())
            .map_err(|source| IndexError::Tantivy { path: building.clone(), source })
            .and_then(|_| Manifest::new(analyzer, semantic).save(&building));
        if let Err(error) = built {
            let _ = std::fs::remove_dir_all(&building);
            return Err(error);
        }
        crate::files::rename_synced(&building, &dir)?;
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

    /// Removes a collection and everything in it. It disappears at once, whole: it is renamed
    /// to a hidden folder first, which a crash may leave behind for [`DataDir::clear_debris`].
    pub fn delete(&self, name: &str) -> Result<(), IndexError> {
        let dir = self.collection_dir(name)?;
        if !self.exists(name)? {
            return self.open(name).map(drop);
        }
        let doomed = self.hidden(name, "deleting");
        crate::files::rename_synced(&dir, &doomed)?;
        crate::files::remove_dir(&doomed)
    }

    /// A hidden folder beside the collections for work on `name` by this process, which a
    /// listing never shows: `.NAME.WHAT-PID`.
    pub(crate) fn hidden(&self, name: &str, what: &str) -> PathBuf {
        self.root.join(format!(".{name}.{what}-{}", std::process::id()))
    }

    /// A hidden work folder for a passing copy of collection `name` (one a process makes and
    /// drops, such as the copy tuning runs on): removed when the guard is dropped, or by
    /// [`DataDir::clear_debris`] if the process dies first. Each call gets its own folder, so
    /// a service can tune one collection for two requests at once.
    pub fn scratch(&self, name: &str) -> Result<Scratch, IndexError> {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        validate_name(name)?;
        let number = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.hidden(name, &format!("scratch{number}"));
        if path.exists() {
            crate::files::remove_dir(&path)?;
        }
        std::fs::create_dir_all(&path)
            .map_err(|source| IndexError::Io { path: path.clone(), source })?;
        Ok(Scratch { path })
    }

    /// Removes what interrupted creates, deletes and restores left behind: hidden work
    /// folders of processes that are no longer running. Returns how many it removed.
    pub fn clear_debris(&self) -> Result<usize, IndexError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(IndexError::Io { path: self.root.clone(), source }),
        };
        let mut removed = 0;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = debris_owner(&name) else { continue };
            if process_is_running(pid) {
                continue;
            }
            tracing::warn!("removing {name}, left behind by an interrupted process {pid}");
            crate::files::remove_dir(&entry.path())?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// A hidden work folder in a data folder, removed on drop (see [`DataDir::scratch`]).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = crate::files::remove_dir(&self.path) {
            tracing::warn!("removing {}: {error}", self.path.display());
        }
    }
}

/// The process that owns a hidden work folder `.NAME.WHAT-PID`, if `folder` is one.
fn debris_owner(folder: &str) -> Option<u32> {
    const WORK: [&str; 5] = ["creating", "deleting", "restoring", "replaced", "scratch"];
    let rest = folder.strip_prefix('.')?;
    let (what, pid) = rest.rsplit_once('.')?.1.rsplit_once('-')?;
    // Scratch folders are numbered: `scratch0`, `scratch1`, ...
    let what = what.trim_end_matches(|c: char| c.is_ascii_digit());
    WORK.contains(&what).then_some(())?;
    pid.parse().ok()
}

/// Collection names become folder names: keep them to a portable set that cannot climb out of
/// the data folder or hide (`..`, `a/b`, `.x`).
/// Generation `generation` of the vectors of the collection in `dir`.
fn load_vectors(
    dir: &Path,
    semantic: &SemanticSettings,
    generation: u64,
) -> Result<VectorIndex, IndexError> {
    VectorIndex::load(&dir.join(VECTORS_DIR), generation, semantic.dimension(), semantic.hnsw)
}

/// The vector generation that the index's last commit names (0 before any).
pub(crate) fn committed_generation(index: &Index, dir: &Path) -> Result<u64, IndexError> {
    committed_payload(index, dir).map(|payload| payload.vector_generation)
}

/// What the index's last commit carries (all zero before any).
fn committed_payload(index: &Index, dir: &Path) -> Result<CommitPayload, IndexError> {
    let metas = index
        .load_metas()
        .map_err(|source| IndexError::Tantivy { path: dir.join(TANTIVY_DIR), source })?;
    match metas.payload {
        None => Ok(CommitPayload::default()),
        Some(payload) => serde_json::from_str::<CommitPayload>(&payload).map_err(|e| {
            IndexError::CorruptVectors {
                path: dir.join(TANTIVY_DIR),
                message: format!("the commit payload {payload:?}: {e}"),
            }
        }),
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), IndexError> {
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
    /// The text of the document's nearest documents, analysed, for a collection with
    /// [`ExpansionSettings`]; collections created before it existed lack the field.
    pub expansion: Option<Field>,
}

fn schema() -> Schema {
    let mut builder = Schema::builder();
    builder.add_text_field("id", STRING | STORED | FAST);
    builder.add_text_field("title", STORED);
    builder.add_text_field("text", STORED);
    let body = TextFieldIndexing::default()
        .set_tokenizer(ANALYZER_NAME)
        .set_index_option(IndexRecordOption::WithFreqs);
    builder.add_text_field("body", TextOptions::default().set_indexing_options(body.clone()));
    let metadata = JsonObjectOptions::default()
        .set_stored()
        .set_indexing_options(TextFieldIndexing::default().set_tokenizer("raw"))
        .set_fast("raw");
    builder.add_json_field("metadata", metadata);
    builder.add_text_field("expansion", TextOptions::default().set_indexing_options(body));
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
            expansion: schema.get_field("expansion").ok(),
        })
    }
}

/// An open collection. Cloning is cheap (indexes and segments are shared): the server changes a
/// clone and publishes it, while searches go on reading the state they started with.
#[derive(Clone)]
pub struct Collection {
    name: String,
    dir: PathBuf,
    manifest: Manifest,
    index: Index,
    reader: IndexReader,
    /// The committed documents this state shows: a later commit (through a clone) reloads the
    /// shared reader, never this.
    searcher: Searcher,
    fields: Fields,
    /// The vector commit named by the last tantivy commit.
    generation: u64,
    /// The last log entry applied, for a replica fed from a replicated log.
    log_position: Option<u64>,
    /// Present when the collection has a model.
    vectors: Option<VectorIndex>,
    /// Loaded when first needed: keyword searches never pay for it.
    encoder: OnceLock<Arc<Encoder>>,
    /// Shared by every state of the collection, for its live BM25 figures.
    body_lengths: BodyLengths,
}

/// What a tantivy commit carries: the vector commit that matches its documents, and for a
/// replica of a clustered partition, the last log entry the commit includes.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CommitPayload {
    vector_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_position: Option<u64>,
}

/// What an ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestSummary {
    /// Documents read and written (a re-indexed id counts once per occurrence).
    pub ingested: u64,
    /// Live documents in the collection afterwards.
    pub document_count: u64,
    /// Live vectors afterwards (more than documents when long documents have windows).
    pub vector_count: u64,
}

/// One change to a collection's documents.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Add the document, replacing any with its id.
    Upsert(Document),
    /// Remove the document with this id, if there is one.
    Delete(String),
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Replaced a document with the same id.
    Updated,
    Deleted,
    /// A delete found no document with its id.
    NotFound,
}

/// How far a write has got, for showing progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteProgress {
    /// One more change is written (and its document embedded, where the collection embeds).
    Change,
    /// An expanding write has found the nearest documents of `done` of its `of` documents.
    NeighboursFound { done: usize, of: usize },
    /// An expanding write has checked `done` of `of` earlier documents near what it changed,
    /// to expand again those whose neighbours it changed.
    EarlierChecked { done: usize, of: usize },
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactSummary {
    /// Tombstoned vectors dropped.
    pub removed: u64,
    /// Live vectors, now in one segment with a fresh graph.
    pub vector_count: u64,
}

impl Collection {
    pub(crate) fn open_dir(name: &str, dir: PathBuf) -> Result<Collection, IndexError> {
        let manifest = Manifest::load(&dir)?;
        let tantivy_error = |source| IndexError::Tantivy { path: dir.join(TANTIVY_DIR), source };
        let index = Index::open_in_dir(dir.join(TANTIVY_DIR)).map_err(tantivy_error)?;
        index.tokenizers().register(ANALYZER_NAME, manifest.analyzer.build());
        let fields = Fields::of(&index.schema()).map_err(tantivy_error)?;
        let expands =
            manifest.semantic.as_ref().is_some_and(|semantic| semantic.expansion.is_some());
        if expands && fields.expansion.is_none() {
            return Err(IndexError::InvalidManifest {
                path: dir.join(crate::manifest::MANIFEST_FILE),
                message: "semantic.expansion is set, but the keyword index has no expansion \
                          field (it was created by an older Cloze): index into a new collection"
                    .to_string(),
            });
        }
        // A writer in another process may commit while this opens: the tantivy reader and the
        // vectors must come from the same commit. The generation read before loading the
        // vectors and again after building the reader is the same only if no commit came in
        // between; otherwise (or if the vectors were removed meanwhile) try again.
        let mut attempts = 0;
        let (reader, generation, log_position, vectors) = loop {
            attempts += 1;
            let CommitPayload { vector_generation: generation, log_position } =
                committed_payload(&index, &dir)?;
            let vectors = match &manifest.semantic {
                Some(semantic) => match load_vectors(&dir, semantic, generation) {
                    Ok(vectors) => Some(vectors),
                    Err(_)
                        if attempts < OPEN_ATTEMPTS
                            && committed_generation(&index, &dir)? != generation =>
                    {
                        continue
                    }
                    Err(error) => return Err(error),
                },
                None => None,
            };
            let reader: IndexReader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()
                .map_err(tantivy_error)?;
            if committed_generation(&index, &dir)? == generation {
                break (reader, generation, log_position, vectors);
            }
            if attempts == OPEN_ATTEMPTS {
                return Err(IndexError::Busy(name.to_string()));
            }
        };
        // Loading a segment's graph (copied into flat arrays and dropped) left the heap full of
        // freed small blocks.
        cloze_mlm::allocator::return_freed_memory();
        Ok(Collection {
            name: name.to_string(),
            dir,
            manifest,
            index,
            searcher: reader.searcher(),
            reader,
            fields,
            generation,
            log_position,
            vectors,
            encoder: OnceLock::new(),
            body_lengths: BodyLengths::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether the collection embeds with a model of its own (not only vectors its documents
    /// bring).
    pub fn has_model(&self) -> bool {
        self.manifest.semantic.as_ref().is_some_and(|semantic| semantic.model.is_some())
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
        self.searcher.clone()
    }

    pub fn document_count(&self) -> u64 {
        self.searcher().num_docs()
    }

    pub(crate) fn tantivy_error(&self, source: tantivy::TantivyError) -> IndexError {
        IndexError::Tantivy { path: self.dir.join(TANTIVY_DIR), source }
    }

    /// The collection's model, loaded from the folder the manifest names, and refused if its
    /// weights are not the ones the collection was indexed with.
    pub fn encoder(&self) -> Result<&Encoder, IndexError> {
        Ok(self.loaded_encoder()?.as_ref())
    }

    /// The collection's model as a shared handle, for another [`Collection`] of the same
    /// folder to [use](Self::use_encoder) without loading it again.
    pub fn shared_encoder(&self) -> Result<Arc<Encoder>, IndexError> {
        self.loaded_encoder().cloned()
    }

    fn loaded_encoder(&self) -> Result<&Arc<Encoder>, IndexError> {
        if let Some(encoder) = self.encoder.get() {
            return Ok(encoder);
        }
        let model = self.model()?;
        let encoder = Encoder::load(&model.path)?;
        self.use_encoder(encoder)?;
        Ok(self.encoder.get().expect("just set"))
    }

    /// Uses an encoder loaded by the caller (from wherever the model folder now is), after
    /// checking that it is the collection's model.
    pub fn use_encoder(&self, encoder: impl Into<Arc<Encoder>>) -> Result<(), IndexError> {
        let encoder = encoder.into();
        let expected = self.model()?;
        if encoder.record().weights_sha256 != expected.weights_sha256 {
            return Err(IndexError::ModelMismatch {
                collection: self.name.clone(),
                expected: expected.path.clone(),
                expected_sha256: expected.weights_sha256.clone(),
                found: encoder.record().path.clone(),
                found_sha256: encoder.record().weights_sha256.clone(),
            });
        }
        // Another thread may have loaded the same model meanwhile: either copy will do.
        let _ = self.encoder.set(encoder);
        Ok(())
    }

    /// Makes `fusion` the collection's default hybrid fusion (or clears it), saved in the
    /// manifest. Takes the write lock, so it cannot interleave with a write.
    pub fn set_default_fusion(&mut self, fusion: Option<FusionSettings>) -> Result<(), IndexError> {
        self.semantic()?;
        let _lock = self.lock_for_write()?;
        self.manifest.fusion = fusion;
        self.manifest.save(&self.dir)
    }

    /// Makes `weight` the weight keyword searches give the neighbours' text when they ask for
    /// none, saved in the manifest. The expansion field holds the same text at any weight, so
    /// only the scores change. Takes the write lock, as [`Collection::set_default_fusion`].
    pub fn set_expansion_weight(&mut self, weight: f64) -> Result<(), IndexError> {
        if self.expansion().is_none() {
            return Err(IndexError::NotExpanding(self.name.clone()));
        }
        ExpansionSettings::check_weight(weight).map_err(|message| {
            IndexError::InvalidVectorSettings {
                name: self.name.clone(),
                message: format!("expansion weight {message}"),
            }
        })?;
        let _lock = self.lock_for_write()?;
        // The lock may have reopened the collection at a later state: set it there.
        match self.manifest.semantic.as_mut().and_then(|semantic| semantic.expansion.as_mut()) {
            Some(expansion) => expansion.weight = weight,
            None => return Err(IndexError::NotExpanding(self.name.clone())),
        }
        self.manifest.save(&self.dir)
    }

    fn model(&self) -> Result<&ModelRecord, IndexError> {
        self.semantic()?.model.as_ref().ok_or_else(|| IndexError::NoEncoder(self.name.clone()))
    }

    fn semantic(&self) -> Result<&SemanticSettings, IndexError> {
        self.manifest.semantic.as_ref().ok_or_else(|| IndexError::NoModel(self.name.clone()))
    }

    /// Adds documents, replacing any stored document with the same id, and commits them all
    /// at once, in the keyword index and (with a model) as vectors. If any item is an error,
    /// or writing fails, nothing is committed and the error is returned: the collection stays
    /// exactly as it was. `on_progress` is told how far the write has got.
    pub fn ingest<I, E>(
        &mut self,
        documents: I,
        on_progress: impl FnMut(WriteProgress),
    ) -> Result<IngestSummary, IndexError>
    where
        I: IntoIterator<Item = Result<Document, E>>,
        IndexError: From<E>,
    {
        let changes = documents.into_iter().map(|document| document.map(Change::Upsert));
        let outcomes = self.apply(changes, on_progress)?;
        Ok(IngestSummary {
            ingested: outcomes.len() as u64,
            document_count: self.manifest.document_count,
            vector_count: self.vector_count(),
        })
    }

    /// Applies changes in order (a document added and then deleted in the same call is gone)
    /// and commits them all at once, in both indexes. Deleting an id that is not there is no
    /// error: its outcome says so. If any item is an error, or writing fails, nothing is
    /// committed and the error is returned. `on_progress` is told how far the write has got.
    /// Returns each change's outcome, in order.
    pub fn apply<I, E>(
        &mut self,
        changes: I,
        on_progress: impl FnMut(WriteProgress),
    ) -> Result<Vec<Outcome>, IndexError>
    where
        I: IntoIterator<Item = Result<Change, E>>,
        IndexError: From<E>,
    {
        self.apply_logged(changes, None, on_progress)
    }

    /// Applies changes as [`Collection::apply`] does, for a replica fed from a replicated log:
    /// the commit also records `log_position`, the last log entry the changes come from, so
    /// after a crash the replica knows where to resume ([`Collection::log_position`]). Changes
    /// are upserts and deletes by id, so applying an entry twice leaves the same documents.
    pub fn apply_at_log_position<I, E>(
        &mut self,
        changes: I,
        log_position: u64,
    ) -> Result<Vec<Outcome>, IndexError>
    where
        I: IntoIterator<Item = Result<Change, E>>,
        IndexError: From<E>,
    {
        self.apply_logged(changes, Some(log_position), |_| {})
    }

    /// The last log entry the committed state includes (see
    /// [`Collection::apply_at_log_position`]); None for a collection not fed from a log.
    pub fn log_position(&self) -> Option<u64> {
        self.log_position
    }

    fn apply_logged<I, E>(
        &mut self,
        changes: I,
        log_position: Option<u64>,
        mut on_progress: impl FnMut(WriteProgress),
    ) -> Result<Vec<Outcome>, IndexError>
    where
        I: IntoIterator<Item = Result<Change, E>>,
        IndexError: From<E>,
    {
        let mut writer = self.lock_for_write()?;
        let before = self.vectors.clone();
        let mut outcomes = Vec::new();
        let queued = self.queue(&mut writer, changes, &mut outcomes, &mut on_progress);
        let position_before = self.log_position;
        if log_position.is_some() {
            self.log_position = log_position;
        }
        if let Err(error) = self.finish(writer, queued, before) {
            self.log_position = position_before;
            return Err(error);
        }
        Ok(outcomes)
    }

    /// Writes changes to the tantivy writer and the vector index, neither committed yet.
    fn queue<I, E>(
        &mut self,
        writer: &mut IndexWriter,
        changes: I,
        outcomes: &mut Vec<Outcome>,
        on_progress: &mut impl FnMut(WriteProgress),
    ) -> Result<(), IndexError>
    where
        I: IntoIterator<Item = Result<Change, E>>,
        IndexError: From<E>,
    {
        let searcher = self.searcher();
        let expansion = self.expansion();
        // With expansion, documents reach tantivy last, once every vector of the write is in
        // place to find their neighbours among.
        let mut deferred: Vec<Document> = Vec::new();
        // The committed directions of documents this write replaces or deletes: the documents
        // near them may hold their old text in their expansion.
        let mut replaced: Vec<Vec<f32>> = Vec::new();
        // Whether each id touched so far is present after the changes before this one.
        let mut present: HashMap<String, bool> = HashMap::new();
        // Documents waiting to be embedded, with their text, and their ids.
        let mut pending: Vec<(String, String)> = Vec::new();
        let mut pending_ids: HashSet<String> = HashSet::new();
        // Documents embedded, waiting to become the write's one new segment, and their ids.
        let mut staged = Staged::default();
        for change in changes {
            let change = change?;
            let id = match &change {
                Change::Upsert(document) => document.id.clone(),
                Change::Delete(id) => id.clone(),
            };
            let existed = match present.get(&id) {
                Some(&present) => present,
                None => self.address(&searcher, &id)?.is_some(),
            };
            writer.delete_term(Term::from_field_text(self.fields.id, &id));
            match change {
                Change::Upsert(document) => {
                    if expansion.is_some() {
                        // The id's earlier version in this write is replaced, as delete_term
                        // above does for committed ones.
                        if present.contains_key(&id) {
                            deferred.retain(|earlier| earlier.id != document.id);
                        }
                        deferred.push(Document { vector: None, ..document.clone() });
                    } else {
                        writer
                            .add_document(self.tantivy_document(&document))
                            .map_err(|e| self.tantivy_error(e))?;
                    }
                    present.insert(id, true);
                    outcomes.push(if existed { Outcome::Updated } else { Outcome::Created });
                    if let Some(semantic) = &self.manifest.semantic {
                        // The new vectors replace the committed ones, and any earlier in the
                        // same write.
                        if existed {
                            if expansion.is_some() {
                                replaced.extend(self.document_vector(&document.id)?);
                            }
                            if let Some(vectors) = self.vectors.as_mut() {
                                vectors.remove(&document.id);
                            }
                        }
                        staged.remove(&document.id);
                        if pending_ids.remove(&document.id) {
                            pending.retain(|(pending, _)| *pending != document.id);
                        }
                        match document.vector {
                            Some(vector) => {
                                let vector = unit_vector(vector, semantic.dimension()).map_err(
                                    |message| self.invalid_vector(&document.id, message),
                                )?;
                                staged.add(document.id, vec![vector]);
                            }
                            None if semantic.model.is_none() => {
                                return Err(IndexError::MissingVector {
                                    collection: self.name.clone(),
                                    id: document.id,
                                });
                            }
                            None => {
                                let text = document.searchable_text();
                                pending_ids.insert(document.id.clone());
                                pending.push((document.id, text));
                                if pending.len() == EMBED_CHUNK {
                                    pending_ids.clear();
                                    self.embed(&mut pending, &mut staged, on_progress)?;
                                }
                                continue;
                            }
                        }
                    }
                }
                Change::Delete(id) => {
                    if present.contains_key(&id) {
                        deferred.retain(|earlier| earlier.id != id);
                    }
                    // Vectors still waiting to be embedded would come back after the removal.
                    pending_ids.clear();
                    self.embed(&mut pending, &mut staged, on_progress)?;
                    staged.remove(&id);
                    if expansion.is_some() {
                        replaced.extend(self.document_vector(&id)?);
                    }
                    if let Some(vectors) = self.vectors.as_mut() {
                        vectors.remove(&id);
                    }
                    present.insert(id, false);
                    outcomes.push(if existed { Outcome::Deleted } else { Outcome::NotFound });
                }
            }
            on_progress(WriteProgress::Change);
        }
        self.embed(&mut pending, &mut staged, on_progress)?;
        if let Some(vectors) = self.vectors.as_mut() {
            vectors.add_segment(staged.documents);
            if expansion.is_some() {
                vectors.link_unsaved_segments(EXPAND_WITH_GRAPH_SLOTS);
            }
        }
        if let Some((field, settings)) = expansion {
            let write = Expansion { documents: &deferred, replaced: &replaced, field, settings };
            self.write_expanded(writer, &searcher, write, on_progress)?;
        }
        Ok(())
    }

    /// The expansion field and its settings, for a collection that expands its documents.
    pub fn expansion(&self) -> Option<(Field, ExpansionSettings)> {
        let settings = self.manifest.semantic.as_ref()?.expansion?;
        Some((self.fields.expansion?, settings))
    }

    /// Writes `documents` to tantivy, each with the text of its nearest documents (by the mean
    /// of its vectors) in the expansion field. The vector index already holds this write's
    /// vectors, so documents of the same write are among each other's neighbours; a neighbour
    /// written before comes from `searcher`, the last commit.
    ///
    /// Earlier documents are expanded again where this write changed their neighbours, so
    /// that a collection built in many writes expands about as if built in one: those that now
    /// have one of the write's documents among their own nearest, and all those near the
    /// `replaced` directions (of documents this write rewrites or deletes), whose expansion may
    /// hold the old text. Both are looked for among the twice as many nearest of each direction
    /// (a document is mostly among the nearest of its own nearest); earlier documents farther
    /// away keep their expansion.
    fn write_expanded(
        &self,
        writer: &mut IndexWriter,
        searcher: &Searcher,
        Expansion { documents, replaced, field, settings }: Expansion<'_>,
        on_progress: &mut impl FnMut(WriteProgress),
    ) -> Result<(), IndexError> {
        tracing::info!(
            documents = documents.len(),
            neighbours = settings.neighbours,
            "finding each document's nearest documents to expand it with"
        );
        let ids: Vec<&str> = documents.iter().map(|document| document.id.as_str()).collect();
        let found = self.nearest_documents(&ids, 2 * settings.neighbours, &mut |done, of| {
            on_progress(WriteProgress::NeighboursFound { done, of })
        })?;
        let written: HashMap<&str, &Document> = ids.iter().copied().zip(documents).collect();
        // Earlier documents to expand again: any near a replaced direction, and those near a
        // written document that now have one of the write's documents among their nearest.
        let near_replaced = self.nearest_to(replaced, 2 * settings.neighbours)?;
        let always = near_replaced.iter().flatten().map(|id| (id.as_str(), true));
        let if_gained = found.iter().flatten().map(|id| (id.as_str(), false));
        let mut candidates: Vec<(&str, bool)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for (id, always) in always.chain(if_gained) {
            if !written.contains_key(id) && seen.insert(id) {
                candidates.push((id, always));
            }
        }
        let candidate_ids: Vec<&str> = candidates.iter().map(|(id, _)| *id).collect();
        let candidates_found =
            self.nearest_documents(&candidate_ids, settings.neighbours, &mut |done, of| {
                on_progress(WriteProgress::EarlierChecked { done, of })
            })?;
        let mut rewritten: Vec<(Document, Vec<String>)> = Vec::new();
        for ((id, always), neighbours) in candidates.into_iter().zip(candidates_found) {
            let gained =
                neighbours.iter().any(|neighbour| written.contains_key(neighbour.as_str()));
            if always || gained {
                if let Some(address) = self.address(searcher, id)? {
                    rewritten.push((self.stored_document(searcher, address)?, neighbours));
                }
            }
        }
        if !rewritten.is_empty() {
            tracing::info!(
                documents = rewritten.len(),
                "expanding again the earlier documents whose neighbours this write changed"
            );
        }
        // A document lends its text to several others: it is read and joined once.
        let mut texts: HashMap<String, Option<String>> = rewritten
            .iter()
            .map(|(document, _)| (document.id.clone(), Some(document.searchable_text())))
            .collect();
        let mut text_of = |id: &str| -> Result<Option<String>, IndexError> {
            if let Some(text) = texts.get(id) {
                return Ok(text.clone());
            }
            let text = match written.get(id) {
                Some(written) => Some(written.searchable_text()),
                None => match self.address(searcher, id)? {
                    Some(address) => {
                        Some(self.stored_document(searcher, address)?.searchable_text())
                    }
                    None => None,
                },
            };
            texts.insert(id.to_string(), text.clone());
            Ok(text)
        };
        let written_again = rewritten.iter().map(|(document, neighbours)| (document, neighbours));
        let written_now = documents.iter().zip(&found);
        for (document, neighbours) in written_now.chain(written_again) {
            let mut expansion = String::new();
            for neighbour in neighbours.iter().take(settings.neighbours) {
                if let Some(text) = text_of(neighbour)? {
                    expansion.push_str(&text);
                    expansion.push('\n');
                }
            }
            // Deletes the committed version of a document written again; this write's own
            // documents were deleted by id already, and nothing was added for them yet.
            writer.delete_term(Term::from_field_text(self.fields.id, &document.id));
            let mut entry = self.tantivy_document(document);
            entry.add_text(field, &expansion);
            writer.add_document(entry).map_err(|e| self.tantivy_error(e))?;
        }
        Ok(())
    }

    /// The ids of the `limit` documents nearest each of `ids` by the mean of its vectors, best
    /// first, itself left out; none for an id without vectors. `on_progress` is told how many
    /// of how many documents with vectors are done, as they are.
    fn nearest_documents(
        &self,
        ids: &[&str],
        limit: usize,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<String>>, IndexError> {
        let queries: Vec<Option<Vec<f32>>> =
            ids.iter().map(|id| self.document_vector(id)).collect::<Result<_, _>>()?;
        let asked: Vec<Vec<f32>> = queries.iter().flatten().cloned().collect();
        let mut found = Vec::with_capacity(asked.len());
        for chunk in asked.chunks(NEIGHBOUR_CHUNK) {
            // One more than wanted: a document is its own nearest.
            found.extend(self.nearest_to(chunk, limit + 1)?);
            on_progress(found.len(), asked.len());
        }
        let mut found = found.into_iter();
        Ok(ids
            .iter()
            .zip(&queries)
            .map(|(id, query)| match query {
                Some(_) => found
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|neighbour| neighbour != id)
                    .take(limit)
                    .collect(),
                None => Vec::new(),
            })
            .collect())
    }

    /// The ids of the `limit` documents nearest each of `directions`, best first.
    fn nearest_to(
        &self,
        directions: &[Vec<f32>],
        limit: usize,
    ) -> Result<Vec<Vec<String>>, IndexError> {
        let ef_search = self.semantic()?.hnsw.ef_search;
        let Some(vectors) = &self.vectors else {
            return Err(IndexError::NoModel(self.name.clone()));
        };
        let found = vectors.nearest_each(directions, limit, ef_search).map_err(|source| {
            IndexError::Similarity { collection: self.name.clone(), source: Box::new(source) }
        })?;
        Ok(found
            .into_iter()
            .map(|found| found.into_iter().map(|neighbour| neighbour.id).collect())
            .collect())
    }

    fn invalid_vector(&self, id: &str, message: String) -> IndexError {
        IndexError::InvalidVector { collection: self.name.clone(), id: id.to_string(), message }
    }

    /// Embeds the pending documents into `staged`, emptying `pending`.
    fn embed(
        &mut self,
        pending: &mut Vec<(String, String)>,
        staged: &mut Staged,
        on_progress: &mut impl FnMut(WriteProgress),
    ) -> Result<(), IndexError> {
        if pending.is_empty() || self.vectors.is_none() {
            return Ok(());
        }
        // Loaded here, on the first document to embed: deletes alone never need the model.
        self.encoder()?;
        let Some(semantic) = &self.manifest.semantic else {
            return Ok(());
        };
        let encoder = self.encoder.get().expect("loaded just above");
        let texts: Vec<&str> = pending.iter().map(|(_, text)| text.as_str()).collect();
        let embedded = match semantic.window_overlap {
            Some(overlap) => encoder.encode_windows(&texts, semantic.window_length(), overlap)?,
            None => encoder.encode(&texts)?.into_iter().map(|vector| vec![vector]).collect(),
        };
        let count = pending.len();
        for (id, vectors) in pending.drain(..).map(|(id, _)| id).zip(embedded) {
            staged.add(id, vectors);
        }
        (0..count).for_each(|_| on_progress(WriteProgress::Change));
        Ok(())
    }

    /// Removes documents from both indexes, all or none: if an id is not in the collection,
    /// nothing is removed and the error lists the missing ids. Returns how many were removed.
    pub fn delete<S: AsRef<str>>(&mut self, ids: &[S]) -> Result<u64, IndexError> {
        let searcher = self.searcher();
        let mut missing = Vec::new();
        for id in ids {
            if self.address(&searcher, id.as_ref())?.is_none() {
                missing.push(id.as_ref().to_string());
            }
        }
        if !missing.is_empty() {
            return Err(IndexError::UnknownDocuments {
                collection: self.name.clone(),
                ids: missing,
            });
        }
        let changes = ids.iter().map(|id| Ok::<_, IndexError>(Change::Delete(id.as_ref().into())));
        self.apply(changes, |_| {})?;
        let mut unique: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
        unique.sort_unstable();
        unique.dedup();
        Ok(unique.len() as u64)
    }

    /// Merges every vector segment into one with a fresh graph and no tombstones (the
    /// vectors of replaced and deleted documents). Merges in the background keep tombstones
    /// below a quarter of each segment by themselves; this is for a collection that will not
    /// change for a while, or to measure the search at its fastest.
    pub fn compact(&mut self) -> Result<CompactSummary, IndexError> {
        let Some(vectors) = &self.vectors else {
            return Err(IndexError::NoModel(self.name.clone()));
        };
        let before = vectors.dead_count() as u64;
        while let Some(plan) = self.vectors.as_ref().and_then(|v| merge::plan(v, true, true)) {
            let built = self.build_merge(plan)?;
            self.apply_merge(built)?;
        }
        Ok(CompactSummary { removed: before, vector_count: self.vector_count() })
    }

    /// The vector merge the merge policy asks for now, if any (see the merge module); with
    /// `force`, one that leaves a single segment with a graph.
    pub fn plan_merge(&self, force: bool) -> Option<MergePlan> {
        merge::plan(self.vectors.as_ref()?, force, false)
    }

    /// Builds a planned merge: the slow part (graph inserts, writing the new segment), done on
    /// this state without any lock, so searches and writes go on meanwhile. Put it in place
    /// with [`Self::apply_merge`].
    pub fn build_merge(&self, plan: MergePlan) -> Result<BuiltMerge, IndexError> {
        let vectors =
            self.vectors.as_ref().ok_or_else(|| IndexError::NoModel(self.name.clone()))?;
        let built = merge::build(vectors, plan, &self.dir.join(VECTORS_DIR));
        // The graph just built and dropped was millions of small blocks.
        cloze_mlm::allocator::return_freed_memory();
        built
    }

    /// Puts a built merge in place of its input segments and commits, as a write does (it
    /// takes the write lock). Returns false, changing nothing, if a write since it was planned
    /// removed one of its inputs.
    pub fn apply_merge(&mut self, built: BuiltMerge) -> Result<bool, IndexError> {
        let writer = self.lock_for_write()?;
        let before = self.vectors.clone();
        let vectors_dir = self.dir.join(VECTORS_DIR);
        let Some(vectors) = self.vectors.as_mut() else {
            return Err(IndexError::NoModel(self.name.clone()));
        };
        match merge::apply(vectors, built, &vectors_dir) {
            Ok(true) => self.finish(writer, Ok(()), before).map(|()| true),
            Ok(false) => Ok(false),
            Err(error) => {
                self.vectors = before;
                Err(error)
            }
        }
    }

    /// Runs the merges the policy asks for (with `force`, until one segment is left) here and
    /// now, one after another; `on_merge` hears of each before it is built. Returns how many
    /// merges ran.
    pub fn merge_segments(
        &mut self,
        force: bool,
        mut on_merge: impl FnMut(&MergePlan),
    ) -> Result<usize, IndexError> {
        let mut merges = 0;
        while let Some(plan) = self.plan_merge(force) {
            on_merge(&plan);
            let built = self.build_merge(plan)?;
            self.apply_merge(built)?;
            merges += 1;
        }
        Ok(merges)
    }

    /// Vector segments; 0 without a model.
    pub fn segment_count(&self) -> usize {
        self.vectors.as_ref().map_or(0, VectorIndex::segment_count)
    }

    /// Documents with vectors.
    pub fn vector_document_count(&self) -> u64 {
        self.vectors.as_ref().map_or(0, |v| v.document_count() as u64)
    }

    /// Live vectors.
    pub fn vector_count(&self) -> u64 {
        self.vectors.as_ref().map_or(0, |v| v.live_slots() as u64)
    }

    /// The ids of the documents that have vectors, sorted (for checks and tools).
    pub fn vector_document_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.vectors.iter().flat_map(|v| v.ids().map(str::to_string)).collect();
        ids.sort();
        ids
    }

    /// The ids of every committed document, sorted.
    pub fn document_ids(&self) -> Result<Vec<String>, IndexError> {
        let searcher = self.searcher();
        let addresses: Vec<DocAddress> = searcher
            .search(&AllQuery, &DocSetCollector)
            .map_err(|e| self.tantivy_error(e))?
            .into_iter()
            .collect();
        let mut ids = self.ids(&searcher, &addresses)?;
        ids.sort();
        Ok(ids)
    }

    /// The documents whose vectors are nearest to `query` (a unit vector of the collection's
    /// dimension), best first, each scored by the cosine similarity of its best vector.
    /// `ef_search` overrides the collection's setting for this search; `allowed`, when given,
    /// holds the only documents to consider.
    pub fn nearest(
        &self,
        query: &[f32],
        limit: usize,
        ef_search: Option<usize>,
        allowed: Option<&HashSet<String>>,
    ) -> Result<Vec<Neighbour>, IndexError> {
        let vectors = self.checked_vectors(query)?;
        let ef = ef_search.unwrap_or(self.semantic()?.hnsw.ef_search).max(1);
        Ok(vectors.nearest(query, limit, ef, allowed))
    }

    /// What [`Self::nearest`] approximates: the query compared with every vector.
    pub fn exact_nearest(&self, query: &[f32], limit: usize) -> Result<Vec<Neighbour>, IndexError> {
        Ok(self.checked_vectors(query)?.exact_nearest(query, limit))
    }

    /// The cosine similarity of `query` to each document of `ids` by its best vector, as
    /// [`Self::nearest`] scores it; None for a document without vectors.
    pub fn similarities(
        &self,
        query: &[f32],
        ids: &[&str],
    ) -> Result<Vec<Option<f32>>, IndexError> {
        Ok(self.checked_vectors(query)?.similarities(query, ids))
    }

    /// Where document `id` points: the unit-length mean of its vectors (its windows' with
    /// windows); None for a document without vectors. Its neighbours are nearest to this.
    pub fn document_vector(&self, id: &str) -> Result<Option<Vec<f32>>, IndexError> {
        let Some(mean) = self.mean_vector(&[id])? else {
            return Ok(None);
        };
        Ok(unit_vector(mean, self.semantic()?.dimension()).ok())
    }

    /// The mean vector of the documents of `ids` that have vectors (None if none has): where
    /// pseudo-relevance feedback moves a query.
    pub fn mean_vector(&self, ids: &[&str]) -> Result<Option<Vec<f32>>, IndexError> {
        let vectors =
            self.vectors.as_ref().ok_or_else(|| IndexError::NoModel(self.name.clone()))?;
        Ok(vectors.mean_vector(ids))
    }

    fn checked_vectors(&self, query: &[f32]) -> Result<&VectorIndex, IndexError> {
        let vectors =
            self.vectors.as_ref().ok_or_else(|| IndexError::NoModel(self.name.clone()))?;
        if query.len() != vectors.dimension() {
            return Err(IndexError::DimensionMismatch {
                collection: self.name.clone(),
                expected: vectors.dimension(),
                found: query.len(),
            });
        }
        Ok(vectors)
    }

    /// The address of the committed document `id`, if there is one.
    pub fn address(&self, searcher: &Searcher, id: &str) -> Result<Option<DocAddress>, IndexError> {
        let query = TermQuery::new(
            Term::from_field_text(self.fields.id, id),
            tantivy::schema::IndexRecordOption::Basic,
        );
        let found = searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())
            .map_err(|e| self.tantivy_error(e))?;
        Ok(found.first().map(|(_, address)| *address))
    }

    /// A tantivy writer, which also holds the collection's write lock: a second writer, in
    /// this process or another, is refused.
    pub(crate) fn writer(&self) -> Result<IndexWriter, IndexError> {
        // One indexing thread keeps documents in the order they came, so equal scores rank the
        // same way on every build of the collection and relevance figures are reproducible.
        let writer = self
            .index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(|e| self.tantivy_error(e))?;
        Ok(writer)
    }

    /// The write lock, with this state brought up to the last commit first: another process
    /// may have written since it was read, and a write must start from what that left.
    fn lock_for_write(&mut self) -> Result<IndexWriter, IndexError> {
        let writer = self.writer()?;
        if committed_generation(&self.index, &self.dir)? != self.generation {
            let encoder = self.encoder.get().cloned();
            *self = Collection::open_dir(&self.name, self.dir.clone())?;
            if let Some(encoder) = encoder {
                let _ = self.encoder.set(encoder);
            }
        }
        // Now this state is the last commit, so it knows which vector files are in use: the
        // rest is debris of interrupted writes and merges.
        if let Some(vectors) = &self.vectors {
            vectors.remove_uncommitted(&self.dir.join(VECTORS_DIR), self.generation)?;
        }
        Ok(writer)
    }

    /// Commits what `writer` and the vector index hold, if `queued` is Ok, as one change:
    /// the next vector commit is written first (what changed, and a file naming the segment
    /// set), then the tantivy commit names it. On any error both are rolled back to the last
    /// commit: tantivy's writer, and the vectors to `before`.
    fn finish(
        &mut self,
        mut writer: IndexWriter,
        queued: Result<(), IndexError>,
        before: Option<VectorIndex>,
    ) -> Result<(), IndexError> {
        let generation = self.generation + 1;
        let vectors_dir = self.dir.join(VECTORS_DIR);
        let committed = queued
            .and_then(|()| match &mut self.vectors {
                Some(vectors) => vectors.save(&vectors_dir, generation),
                None => Ok(()),
            })
            .and_then(|()| {
                let mut prepared = writer.prepare_commit().map_err(|e| self.tantivy_error(e))?;
                let payload = CommitPayload {
                    vector_generation: generation,
                    log_position: self.log_position,
                };
                prepared.set_payload(&serde_json::to_string(&payload).expect("serializes"));
                prepared.commit().map_err(|e| self.tantivy_error(e))
            });
        if let Err(error) = committed {
            // Nothing was committed; drop the files written so far as well.
            let _ = writer.rollback();
            let _ = writer.garbage_collect_files().wait();
            self.vectors = before;
            if let Some(vectors) = &self.vectors {
                let _ = vectors.remove_uncommitted(&vectors_dir, self.generation);
            }
            return Err(error);
        }
        self.generation = generation;
        if let Some(vectors) = &self.vectors {
            if let Err(error) = vectors.remove_uncommitted(&vectors_dir, generation) {
                tracing::warn!("leaving files of an old vector commit behind: {error}");
            }
        }
        writer.wait_merging_threads().map_err(|e| self.tantivy_error(e))?;
        self.reader.reload().map_err(|e| self.tantivy_error(e))?;
        self.searcher = self.reader.searcher();
        self.manifest.document_count = self.document_count();
        // The files are now in this build's layout.
        self.manifest.format_version = crate::manifest::FORMAT_VERSION;
        self.manifest.save(&self.dir)
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

    pub(crate) fn body_lengths(&self) -> &BodyLengths {
        &self.body_lengths
    }

    /// The body a stored document was indexed with: its title and text, as
    /// [`Document::searchable_text`] joins them.
    pub(crate) fn body_of(&self, stored: &TantivyDocument) -> String {
        let text_of = |field| {
            stored.get_first(field).and_then(|value| value.as_str()).unwrap_or("").to_string()
        };
        let document = Document {
            id: String::new(),
            title: text_of(self.fields.title),
            text: text_of(self.fields.text),
            metadata: Map::new(),
            vector: None,
        };
        document.searchable_text()
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
            vector: None,
        })
    }
}

/// `vector` at unit length, checked: the collection's vectors are compared by their dot
/// product, which is their cosine only at unit length.
pub fn unit_vector(mut vector: Vec<f32>, dimension: usize) -> Result<Vec<f32>, String> {
    if vector.len() != dimension {
        return Err(format!(
            "it has {} values; the collection's vectors have {dimension}",
            vector.len()
        ));
    }
    if let Some(position) = vector.iter().position(|x| !x.is_finite()) {
        return Err(format!("value {position} is not a finite number"));
    }
    let norm = vector.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err("it has length zero, so it points nowhere (cosine is undefined)".to_string());
    }
    vector.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
    Ok(vector)
}

/// What an expanding write hands to tantivy once its vectors are in: its documents, the
/// committed directions of those it replaces or deletes, and where and how to expand them.
struct Expansion<'a> {
    documents: &'a [Document],
    replaced: &'a [Vec<f32>],
    field: Field,
    settings: ExpansionSettings,
}

/// The vectors one write adds, in the order their documents came, each id once: a later
/// version of a document replaces the one staged before it, and a delete drops it.
#[derive(Default)]
struct Staged {
    documents: Vec<(String, Vec<Vec<f32>>)>,
    ids: HashSet<String>,
}

impl Staged {
    fn add(&mut self, id: String, vectors: Vec<Vec<f32>>) {
        self.ids.insert(id.clone());
        self.documents.push((id, vectors));
    }

    fn remove(&mut self, id: &str) {
        if self.ids.remove(id) {
            self.documents.retain(|(staged, _)| staged != id);
        }
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
        Ok(Document {
            id: id.into(),
            title: title.into(),
            text: text.into(),
            metadata: Map::new(),
            vector: None,
        })
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
        let mut collection = data.create("docs", AnalyzerSettings::default(), None).unwrap();
        let mut with_metadata = document("b", "Bee", "buzz").unwrap();
        with_metadata.metadata.insert("year".into(), 2001.into());
        let summary = collection
            .ingest(
                [
                    document("a", "A", "first"),
                    Ok(with_metadata.clone()),
                    document("a", "A2", "second"),
                ],
                |_| {},
            )
            .unwrap();
        assert_eq!(summary, IngestSummary { ingested: 3, document_count: 2, vector_count: 0 });
        assert_eq!(find(&collection, "a").unwrap().text, "second");
        assert_eq!(find(&collection, "b").unwrap(), with_metadata);

        collection.ingest([document("b", "Bee", "again")], |_| {}).unwrap();
        let reopened = data.open("docs").unwrap();
        assert_eq!(reopened.document_count(), 2);
        assert_eq!(reopened.manifest().document_count, 2);
        assert_eq!(find(&reopened, "b").unwrap().text, "again");
        assert_eq!(data.collection_names().unwrap(), ["docs"]);
    }

    /// A collection whose documents bring 2-dimensional vectors and lend their text to their
    /// nearest neighbour.
    fn expanding(data: &DataDir) -> Collection {
        let semantic = SemanticSettings {
            expansion: Some(ExpansionSettings { neighbours: 1, weight: 0.5 }),
            ..SemanticSettings::with_dimension(2, Default::default())
        };
        data.create("docs", AnalyzerSettings::default(), Some(semantic)).unwrap()
    }

    fn placed(id: &str, text: &str, vector: [f32; 2]) -> Result<Change, IndexError> {
        Ok(Change::Upsert(Document { vector: Some(vector.to_vec()), ..document(id, "", text)? }))
    }

    /// The ids whose expansion field holds `word`, sorted.
    fn expanded_with(collection: &Collection, word: &str) -> Vec<String> {
        let (field, _) = collection.expansion().unwrap();
        let searcher = collection.searcher();
        let query = TermQuery::new(Term::from_field_text(field, word), IndexRecordOption::Basic);
        let hits = searcher.search(&query, &TopDocs::with_limit(10).order_by_score()).unwrap();
        let addresses: Vec<DocAddress> = hits.iter().map(|(_, address)| *address).collect();
        let mut ids = collection.ids(&searcher, &addresses).unwrap();
        ids.sort();
        ids
    }

    #[test]
    fn an_expanding_collection_indexes_each_document_with_its_nearest_ones_text() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let mut collection = expanding(&data);
        collection
            .apply(
                [
                    placed("apple", "apple orchard", [1.0, 0.0]),
                    placed("pear", "fruit", [0.9, 0.1]),
                    placed("boat", "submarine", [0.0, 1.0]),
                    // Gone by the end of the write, so no document's neighbour.
                    placed("gone", "ghost", [0.95, 0.05]),
                    Ok(Change::Delete("gone".into())),
                    // Written twice: the second text is the one lent and stored.
                    placed("ship", "draft", [0.1, 0.9]),
                    placed("ship", "hull", [0.1, 0.9]),
                ],
                |_| {},
            )
            .unwrap();
        assert_eq!(expanded_with(&collection, "fruit"), ["apple"]);
        assert_eq!(expanded_with(&collection, "appl"), ["pear"]);
        assert_eq!(expanded_with(&collection, "hull"), ["boat"]);
        assert!(expanded_with(&collection, "ghost").is_empty());
        assert!(expanded_with(&collection, "draft").is_empty());
        assert!(find(&collection, "gone").is_none());
        assert_eq!(find(&collection, "ship").unwrap().text, "hull");

        // A later write finds neighbours among the committed documents too, and a committed
        // document that now has a nearer one is expanded again, its stored fields unchanged.
        // Progress comes in the order of the work: the document, its neighbours, and the
        // earlier documents it might be a new neighbour of (boat and ship, its two nearest).
        let mut steps = Vec::new();
        collection.apply([placed("raft", "timber", [0.0, 1.0])], |step| steps.push(step)).unwrap();
        assert_eq!(
            steps,
            [
                WriteProgress::Change,
                WriteProgress::NeighboursFound { done: 1, of: 1 },
                WriteProgress::EarlierChecked { done: 2, of: 2 },
            ]
        );
        let reopened = data.open("docs").unwrap();
        assert_eq!(expanded_with(&reopened, "submarin"), ["raft", "ship"]);
        assert_eq!(expanded_with(&reopened, "timber"), ["boat"]);
        assert!(expanded_with(&reopened, "hull").is_empty());
        assert_eq!(find(&reopened, "boat").unwrap().text, "submarine");
        assert_eq!(reopened.manifest().document_count, 5);

        // A document written again lends its new text to the documents it is nearest.
        collection.apply([placed("pear", "quince", [0.9, 0.1])], |_| {}).unwrap();
        assert_eq!(expanded_with(&collection, "quinc"), ["apple"]);
        assert!(expanded_with(&collection, "fruit").is_empty());
        assert_eq!(expanded_with(&collection, "appl"), ["pear"]);
    }

    #[test]
    fn a_rewritten_document_reaches_a_document_it_lends_to_beyond_its_own_nearest() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let mut collection = expanding(&data);
        // x's nearest is y, but x is z's nearest: z is among x's two nearest, not its one.
        let placed_all = [
            placed("x", "xylophone", [1.0, 0.0]),
            placed("y", "yacht", [0.98, 0.2]),
            placed("z", "zebra", [0.9, -0.44]),
        ];
        collection.apply(placed_all, |_| {}).unwrap();
        assert_eq!(expanded_with(&collection, "xylophon"), ["y", "z"]);
        collection.apply([placed("x", "xenon", [1.0, 0.0])], |_| {}).unwrap();
        assert_eq!(expanded_with(&collection, "xenon"), ["y", "z"]);
        assert!(expanded_with(&collection, "xylophon").is_empty());

        // Moved far away, x lends its text to no one, and those that borrowed it are expanded
        // again; once z is deleted, no expansion holds its text.
        collection.apply([placed("x", "xenon", [-1.0, 0.0])], |_| {}).unwrap();
        assert_eq!(expanded_with(&collection, "xenon"), Vec::<String>::new());
        assert_eq!(expanded_with(&collection, "zebra"), ["x", "y"]);
        collection.apply([Ok::<_, IndexError>(Change::Delete("z".into()))], |_| {}).unwrap();
        assert!(expanded_with(&collection, "zebra").is_empty());
        assert_eq!(expanded_with(&collection, "yacht"), ["x"]);
    }

    #[test]
    fn an_expanding_collection_needs_its_expansion_field() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        drop(expanding(&data));
        // As a collection made before expansion existed would look with the setting added.
        let schema = {
            let mut builder = Schema::builder();
            for field in schema().fields().filter(|(_, entry)| entry.name() != "expansion") {
                builder.add_field(field.1.clone());
            }
            builder.build()
        };
        let tantivy_dir = dir.path().join("docs").join(TANTIVY_DIR);
        std::fs::remove_dir_all(&tantivy_dir).unwrap();
        std::fs::create_dir(&tantivy_dir).unwrap();
        Index::create_in_dir(&tantivy_dir, schema).unwrap();
        let error = data.open("docs").err().unwrap().to_string();
        assert!(error.contains("no expansion field"), "{error}");
    }

    #[test]
    fn ids_match_stored_documents_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut collection =
            DataDir::new(dir.path()).create("docs", AnalyzerSettings::default(), None).unwrap();
        for batch in 0..3 {
            let documents = (0..50).map(|i| document(&format!("{batch}-{i}"), "", "text"));
            collection
                .ingest(documents.chain([document("shared", "", &format!("v{batch}"))]), |_| {})
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
        let mut collection = data.create("docs", AnalyzerSettings::default(), None).unwrap();
        collection.ingest([document("a", "", "kept")], |_| {}).unwrap();
        let before = snapshot(dir.path());
        let bad_line: CorpusError = cloze_corpus::read_queries("/nonexistent.tsv").unwrap_err();
        let many = (0..5000).map(|i| document(&format!("new{i}"), "", "x"));
        let result = collection.ingest(many.chain([Err(bad_line.into())]), |_| {});
        assert!(result.is_err());
        drop(collection);
        assert_eq!(snapshot(dir.path()), before);
        let reopened = data.open("docs").unwrap();
        assert_eq!(reopened.document_count(), 1);
        assert!(find(&reopened, "new1").is_none());
    }

    #[test]
    fn each_scratch_folder_is_its_own_and_goes_when_dropped_or_as_debris() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(dir.path());
        let (first, second) =
            (data_dir.scratch("docs").unwrap(), data_dir.scratch("docs").unwrap());
        assert_ne!(first.path(), second.path());
        assert!(first.path().is_dir() && second.path().is_dir());
        let kept = first.path().to_path_buf();
        drop(first);
        assert!(!kept.exists() && second.path().is_dir());
        // A running process's folder stays; a dead one's is debris.
        assert_eq!(data_dir.clear_debris().unwrap(), 0);
        let dead = dir.path().join(".docs.scratch7-4294967294");
        std::fs::create_dir(&dead).unwrap();
        assert_eq!(debris_owner(".docs.scratch7-4294967294"), Some(4294967294));
        assert_eq!(debris_owner(".docs.scratchy-12"), None);
        assert_eq!(data_dir.clear_debris().unwrap(), 1);
        assert!(!dead.exists() && second.path().is_dir());
    }

    #[test]
    fn names_that_could_escape_the_data_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            let error = data.create(bad, AnalyzerSettings::default(), None).err().unwrap();
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
        data.create("one", AnalyzerSettings::default(), None).unwrap();
        assert!(matches!(
            data.create("one", AnalyzerSettings::default(), None),
            Err(IndexError::CollectionExists(_))
        ));
        assert!(data.open("two").err().unwrap().to_string().ends_with("(collections there: one)"));
        data.delete("one").unwrap();
        assert!(data.collection_names().unwrap().is_empty());
    }
}
