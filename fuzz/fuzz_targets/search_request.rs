//! Any bytes as a `_search` body: parsing never panics, and a request it accepts is within the
//! limits it was given.
#![no_main]

use cloze_server::routes::search::parse_search;
use cloze_server::ServerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let config = ServerConfig { max_hits: 100, max_query_bytes: 64, ..ServerConfig::default() };
    match parse_search(body, &config) {
        Ok(request) => {
            assert!(request.limit >= 1 && request.offset + request.limit <= config.max_hits);
            assert!(request.query.len() <= config.max_query_bytes);
        }
        Err(error) => assert!(error.status.is_client_error(), "{error}"),
    }
});
