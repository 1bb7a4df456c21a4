//! Any bytes as a bulk body: parsing never panics, and what it answers is coherent.
#![no_main]

use cloze_corpus::{parse_bulk, BulkAction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let lines = body.split(|&b| b == b'\n').count();
    // With and without vectors: a collection of 3-dimensional vectors, and one of none.
    for dimension in [Some(3), None] {
        check(body, lines, dimension);
    }
});

fn check(body: &[u8], lines: usize, dimension: Option<usize>) {
    match parse_bulk(body, dimension) {
        Ok(actions) => {
            assert!(actions.len() <= lines);
            for action in actions {
                match action {
                    BulkAction::Index(document) => {
                        assert!(!document.id.is_empty());
                        if let Some(vector) = &document.vector {
                            assert_eq!(Some(vector.len()), dimension);
                            assert!(vector.iter().all(|x| x.is_finite()));
                        }
                    }
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
}
