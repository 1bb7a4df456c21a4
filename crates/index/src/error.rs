use std::path::PathBuf;

/// What can go wrong with a collection on disk.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no collection named \"{name}\" in {data_dir} (collections there: {available})")]
    UnknownCollection { name: String, data_dir: PathBuf, available: String },
    #[error("a collection named \"{0}\" already exists")]
    CollectionExists(String),
    #[error(
        "invalid collection name \"{0}\": use 1 to 128 letters, digits, '-', '_' or '.', \
         starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("unknown analyzer \"{name}\": not a preset ({presets}) nor an existing TOML file")]
    UnknownAnalyzer { name: String, presets: String },
    #[error("invalid analyzer settings in {origin}: {message}")]
    InvalidAnalyzer { origin: String, message: String },
    #[error("invalid vector settings for \"{name}\": {message}")]
    InvalidVectorSettings { name: String, message: String },
    #[error("{path}: {message}")]
    InvalidManifest { path: PathBuf, message: String },
    #[error(
        "{path} was written by a newer Cloze (collection format {found}; this one reads up to \
         {supported})"
    )]
    UnsupportedFormat { path: PathBuf, found: u32, supported: u32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Corpus(#[from] cloze_corpus::CorpusError),
    #[error("the model in {path}: {source}")]
    Model { path: PathBuf, source: Box<cloze_mlm::EmbedError> },
    #[error(transparent)]
    HeldOut(#[from] cloze_mlm::HeldOutError),
    #[error(
        "collection \"{collection}\" was indexed with the model {expected} (weights sha256 \
         {expected_sha256:.12}), but {found} has weights sha256 {found_sha256:.12}: vectors of \
         different models cannot be compared; index into a new collection to use this model"
    )]
    ModelMismatch {
        collection: String,
        expected: PathBuf,
        expected_sha256: String,
        found: PathBuf,
        found_sha256: String,
    },
    #[error("collection \"{collection}\" has no document with id {}", ids.join(", "))]
    UnknownDocuments { collection: String, ids: Vec<String> },
    #[error("collection \"{0}\" has no vectors: create it with a model (cloze index --model DIR)")]
    NoModel(String),
    #[error(
        "collection \"{0}\" has no model: its documents bring their own vectors, and a semantic \
         or hybrid search needs a query vector (`vector`) rather than text alone"
    )]
    NoEncoder(String),
    #[error(
        "document \"{id}\" has no vector, and collection \"{collection}\" has no model to \
         compute one: give each document its vector"
    )]
    MissingVector { collection: String, id: String },
    #[error("the vector of document \"{id}\" in collection \"{collection}\": {message}")]
    InvalidVector { collection: String, id: String, message: String },
    #[error("a query vector has {found} dimensions; collection \"{collection}\" holds {expected}")]
    DimensionMismatch { collection: String, expected: usize, found: usize },
    #[error(
        "collection \"{0}\" does not expand its documents, so it has no expansion weight: \
         create it with expansion (cloze index --expand)"
    )]
    NotExpanding(String),
    #[error("collection \"{0}\" kept changing while it was being opened; try again")]
    Busy(String),
    #[error("comparing the vectors of collection \"{collection}\": {source}")]
    Similarity { collection: String, source: Box<candle_core::Error> },
    #[error("the vectors in {path}: {message}")]
    CorruptVectors { path: PathBuf, message: String },
    #[error("the search index in {path}: {source}")]
    Tantivy { path: PathBuf, source: tantivy::TantivyError },
}
