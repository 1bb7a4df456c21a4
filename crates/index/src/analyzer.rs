//! The text analyzer of a collection: how text becomes the terms that BM25 counts.
//!
//! It is chosen when a collection is created and recorded in its manifest, because documents and
//! queries must be analysed the same way for their terms to meet.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tantivy::tokenizer::{
    Language, LowerCaser, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};

use crate::error::IndexError;
use crate::token_length::TokenLengthFilter;

/// Built-in presets, by name; the files in `configs/analyzers/` are their only definition.
const PRESETS: [(&str, &str); 2] = [
    ("english", include_str!("../../../configs/analyzers/english.toml")),
    ("standard", include_str!("../../../configs/analyzers/standard.toml")),
];

const STEMMERS: [(&str, Language); 18] = [
    ("arabic", Language::Arabic),
    ("danish", Language::Danish),
    ("dutch", Language::Dutch),
    ("english", Language::English),
    ("finnish", Language::Finnish),
    ("french", Language::French),
    ("german", Language::German),
    ("greek", Language::Greek),
    ("hungarian", Language::Hungarian),
    ("italian", Language::Italian),
    ("norwegian", Language::Norwegian),
    ("portuguese", Language::Portuguese),
    ("romanian", Language::Romanian),
    ("russian", Language::Russian),
    ("spanish", Language::Spanish),
    ("swedish", Language::Swedish),
    ("tamil", Language::Tamil),
    ("turkish", Language::Turkish),
];

/// How text is split into terms: on every character that is not a letter or digit, then these
/// steps in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzerSettings {
    pub lowercase: bool,
    /// Terms dropped before stemming (compared after lower-casing).
    #[serde(default)]
    pub stopwords: Vec<String>,
    /// A Snowball stemmer language (`english`, `french`, ...), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stemmer: Option<String>,
    /// Tokens shorter than this many characters are dropped (before stop words and stemming).
    #[serde(default = "one")]
    pub min_token_length: usize,
    /// Tokens longer than this many characters are dropped.
    pub max_token_length: usize,
}

impl Default for AnalyzerSettings {
    fn default() -> Self {
        AnalyzerSettings::preset("english").expect("the english preset is valid")
    }
}

impl AnalyzerSettings {
    /// The names of the built-in presets.
    pub fn preset_names() -> impl Iterator<Item = &'static str> {
        PRESETS.iter().map(|(name, _)| *name)
    }

    /// A built-in preset by name, `None` if there is no such preset.
    pub fn preset(name: &str) -> Option<AnalyzerSettings> {
        let (_, text) = PRESETS.iter().find(|(preset, _)| *preset == name)?;
        Some(Self::parse(text, name).expect("built-in presets are valid"))
    }

    /// A preset name, or the path of a TOML file with these settings.
    pub fn from_name_or_file(name_or_path: &str) -> Result<AnalyzerSettings, IndexError> {
        if let Some(settings) = Self::preset(name_or_path) {
            return Ok(settings);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(IndexError::UnknownAnalyzer {
                name: name_or_path.to_string(),
                presets: Self::preset_names().collect::<Vec<_>>().join(", "),
            });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| IndexError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, source: &str) -> Result<AnalyzerSettings, IndexError> {
        let invalid =
            |message: String| IndexError::InvalidAnalyzer { origin: source.to_string(), message };
        let settings: AnalyzerSettings =
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        settings.validate().map_err(invalid)?;
        Ok(settings)
    }

    /// Checks what serde cannot: a known stemmer and a usable token length.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(stemmer) = &self.stemmer {
            if stemmer_language(stemmer).is_none() {
                let known: Vec<&str> = STEMMERS.iter().map(|(name, _)| *name).collect();
                return Err(format!("unknown stemmer \"{stemmer}\"; known: {}", known.join(", ")));
            }
        }
        if self.min_token_length == 0 || self.max_token_length < self.min_token_length {
            return Err(format!(
                "token lengths must satisfy 1 <= min_token_length ({}) <= max_token_length ({})",
                self.min_token_length, self.max_token_length
            ));
        }
        Ok(())
    }

    /// The tantivy analyzer these settings describe.
    pub fn build(&self) -> TextAnalyzer {
        let mut builder = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(TokenLengthFilter { min: self.min_token_length, max: self.max_token_length })
            .dynamic();
        if self.lowercase {
            builder = builder.filter_dynamic(LowerCaser);
        }
        if !self.stopwords.is_empty() {
            builder =
                builder.filter_dynamic(StopWordFilter::remove(self.stopwords.iter().cloned()));
        }
        if let Some(language) = self.stemmer.as_deref().and_then(stemmer_language) {
            builder = builder.filter_dynamic(Stemmer::new(language));
        }
        builder.build()
    }
}

fn one() -> usize {
    1
}

fn stemmer_language(name: &str) -> Option<Language> {
    STEMMERS.iter().find(|(known, _)| *known == name).map(|(_, language)| *language)
}

/// The terms of `text` under `analyzer`, in order, repeats kept.
pub fn analyze(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    analyzer.token_stream(text).process(&mut |token| terms.push(token.text.clone()));
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_lowercases_drops_stopwords_and_stems() {
        let mut analyzer = AnalyzerSettings::default().build();
        let terms = analyze(&mut analyzer, "The Running of the dogs-and-cats, in 1999! I/O x");
        assert_eq!(terms, ["run", "dog", "cat", "1999"]);
        let long = "é".repeat(41);
        assert_eq!(
            analyze(&mut analyzer, &format!("{long} {} keep", &long[2..])),
            ["é".repeat(40), "keep".into()]
        );
    }

    #[test]
    fn standard_keeps_every_word() {
        let mut analyzer = AnalyzerSettings::preset("standard").unwrap().build();
        assert_eq!(analyze(&mut analyzer, "The Running dogs"), ["the", "running", "dogs"]);
    }

    #[test]
    fn files_are_validated_with_their_name_in_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, "lowercase = true\nmax_token_length = 10\nstemmer = \"klingon\"\n")
            .unwrap();
        let error =
            AnalyzerSettings::from_name_or_file(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            error.contains("mine.toml") && error.contains("unknown stemmer \"klingon\""),
            "{error}"
        );
        std::fs::write(&path, "lowercase = true\nmax_token_length = 10\nstemer = \"english\"\n")
            .unwrap();
        let error =
            AnalyzerSettings::from_name_or_file(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(error.contains("unknown field `stemer`"), "{error}");
        let error = AnalyzerSettings::from_name_or_file("nonexistent").unwrap_err().to_string();
        assert!(error.contains("english, standard"), "{error}");
    }
}
