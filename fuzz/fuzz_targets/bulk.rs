//! Any bytes as a bulk body: parsing never panics, and what it answers is coherent.
#![no_main]

use cloze_corpus::{parse_bulk, BulkAction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let lines = body.split(|&b| b == b'\n').count();
    match parse_bulk(body) {
        Ok(actions) => {
            assert!(actions.len() <= lines);
            for action in actions {
                match action {
                    BulkAction::Index(document) => assert!(!document.id.is_empty()),
                    BulkAction::Delete(id) => assert!(!id.is_empty()),
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            // Each wrong line once, in order, and a line there is.
            assert!(errors.windows(2).all(|pair| pair[0].line < pair[1].line));
            assert!(errors.iter().all(|error| (1..=lines).contains(&error.line)));
        }
    }
});
