//! A token filter that keeps tokens within a length range.
//!
//! tantivy's `RemoveLongFilter` only has an upper bound. The lower bound matters for English
//! ranking: single letters and digits ("a", "i", "5", the halves of "I/O") are frequent,
//! carry little meaning, and the BM25 baselines we compare against drop them (Lucene's
//! analyzers through stop words, bm25s through its `\w\w+` token pattern).

use tantivy::tokenizer::{Token, TokenFilter, TokenStream, Tokenizer};

/// Keeps tokens of `min..=max` characters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenLengthFilter {
    pub min: usize,
    pub max: usize,
}

impl TokenFilter for TokenLengthFilter {
    type Tokenizer<T: Tokenizer> = TokenLengthTokenizer<T>;

    fn transform<T: Tokenizer>(self, inner: T) -> TokenLengthTokenizer<T> {
        TokenLengthTokenizer { range: self, inner }
    }
}

#[derive(Clone)]
pub(crate) struct TokenLengthTokenizer<T> {
    range: TokenLengthFilter,
    inner: T,
}

impl<T: Tokenizer> Tokenizer for TokenLengthTokenizer<T> {
    type TokenStream<'a> = TokenLengthStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        TokenLengthStream { range: self.range, tail: self.inner.token_stream(text) }
    }
}

pub(crate) struct TokenLengthStream<S> {
    range: TokenLengthFilter,
    tail: S,
}

impl<S: TokenStream> TokenStream for TokenLengthStream<S> {
    fn advance(&mut self) -> bool {
        while self.tail.advance() {
            let chars = self.tail.token().text.chars().count();
            if (self.range.min..=self.range.max).contains(&chars) {
                return true;
            }
        }
        false
    }

    fn token(&self) -> &Token {
        self.tail.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.tail.token_mut()
    }
}
