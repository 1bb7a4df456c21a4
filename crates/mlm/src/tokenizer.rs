//! The WordPiece tokenizer: trained on the user's text, saved as `tokenizer.json` and
//! `vocab.txt` beside the model, exactly as Hugging Face's BERT tokenizers are.

use std::path::{Path, PathBuf};

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Model, Tokenizer};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The special tokens, in id order: a trained vocabulary starts with them.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("training the tokenizer: {0}")]
    Training(String),
    #[error("the tokenizer has no {0} token")]
    MissingSpecial(&'static str),
}

/// Trains a WordPiece vocabulary of at most `vocab_size` entries on `texts` with BERT's
/// normaliser (lower-casing if asked) and pre-tokenizer.
pub fn train_wordpiece<I, S>(
    texts: I,
    vocab_size: usize,
    lowercase: bool,
    show_progress: bool,
) -> Result<Tokenizer, TokenizerError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let training = |e: tokenizers::Error| TokenizerError::Training(e.to_string());
    let model = WordPiece::builder().unk_token("[UNK]".to_string()).build().map_err(training)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_decoder(Some(WordPieceDecoder::default()));
    let specials = SPECIAL_TOKENS.iter().map(|token| AddedToken::from(*token, true)).collect();
    let mut trainer = TrainerWrapper::WordPieceTrainer(
        WordPieceTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(specials)
            .show_progress(show_progress)
            .build(),
    );
    tokenizer.train(&mut trainer, texts).map_err(training)?;
    let ids = SpecialIds::of(&tokenizer)?;
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".to_string(), ids.sep),
        ("[CLS]".to_string(), ids.cls),
    )));
    Ok(tokenizer)
}

/// Writes `tokenizer.json` and `vocab.txt` into `dir`.
pub fn save_tokenizer(tokenizer: &Tokenizer, dir: &Path) -> Result<(), TokenizerError> {
    let file_error = |path: PathBuf| {
        move |e: tokenizers::Error| TokenizerError::File { path, message: e.to_string() }
    };
    let path = dir.join(TOKENIZER_FILE);
    tokenizer.save(&path, true).map_err(file_error(path))?;
    tokenizer.get_model().save(dir, None).map_err(file_error(dir.join("vocab.txt")))?;
    Ok(())
}

pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let path = dir.join(TOKENIZER_FILE);
    Tokenizer::from_file(&path).map_err(|e| TokenizerError::File { path, message: e.to_string() })
}

/// The ids of the special tokens the cloze objective needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub pad: u32,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
}

impl SpecialIds {
    pub fn all(self) -> [u32; 5] {
        [self.pad, self.unk, self.cls, self.sep, self.mask]
    }

    pub fn of(tokenizer: &Tokenizer) -> Result<SpecialIds, TokenizerError> {
        let id = |token: &'static str| {
            tokenizer.token_to_id(token).ok_or(TokenizerError::MissingSpecial(token))
        };
        Ok(SpecialIds {
            pad: id("[PAD]")?,
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
        })
    }
}

/// Which ids continue a word (`##` pieces), indexed by id: for whole-word masking.
pub fn continuation_ids(tokenizer: &Tokenizer) -> Vec<bool> {
    let vocab = tokenizer.get_vocab(true);
    let mut continuation = vec![false; tokenizer.get_vocab_size(true)];
    for (token, id) in vocab {
        if let Some(slot) = continuation.get_mut(id as usize) {
            *slot = token.starts_with("##");
        }
    }
    continuation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_saves_and_loads_a_bert_style_tokenizer() {
        let texts =
            ["The cat sat on the mat.", "The dog sat on the log!", "Cats and dogs; mats and logs."];
        let corpus: Vec<String> = texts.iter().cycle().take(60).map(|s| s.to_string()).collect();
        let tokenizer = train_wordpiece(corpus.iter(), 200, true, false).unwrap();
        let ids = SpecialIds::of(&tokenizer).unwrap();
        assert_eq!([ids.pad, ids.unk, ids.cls, ids.sep, ids.mask], [0, 1, 2, 3, 4]);
        let encoding = tokenizer.encode("The CAT sat.", true).unwrap();
        assert_eq!(encoding.get_tokens(), ["[CLS]", "the", "cat", "sat", ".", "[SEP]"]);

        let dir = tempfile::tempdir().unwrap();
        save_tokenizer(&tokenizer, dir.path()).unwrap();
        let vocab = std::fs::read_to_string(dir.path().join("vocab.txt")).unwrap();
        assert!(vocab.starts_with("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"));
        let loaded = load_tokenizer(dir.path()).unwrap();
        assert_eq!(
            loaded.encode("dogs", true).unwrap().get_ids(),
            tokenizer.encode("dogs", true).unwrap().get_ids()
        );
        let continuation = continuation_ids(&tokenizer);
        assert!(continuation.iter().any(|c| *c) && !continuation[ids.cls as usize]);
    }
}
