//! Any bytes as a JSONL corpus (what `cloze index` reads, plain or gzip): reading never panics,
//! stops at the first bad line, and names a line that is there.
#![no_main]

use cloze_corpus::{DocumentReader, FieldMapping};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = DocumentReader::from_reader(
        "fuzz.jsonl",
        std::io::Cursor::new(data.to_vec()),
        FieldMapping::default(),
    ) else {
        return;
    };
    let mut results = reader.collect::<Vec<_>>().into_iter().peekable();
    while let Some(result) = results.next() {
        if let Err(error) = result {
            assert!(results.peek().is_none(), "reading went on after an error");
            assert!(error.to_string().starts_with("fuzz.jsonl"), "{error}");
            assert!(error.line().is_none_or(|line| line >= 1), "{error}");
        }
    }
});
