//! The server's settings: built-in defaults, then a TOML file (`configs/server.toml`), then
//! command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How the service listens and what it accepts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on; loopback unless the service should be reachable from other
    /// machines.
    pub bind: String,
    /// The largest request body, in bytes: bulk ingests bigger than this must be split.
    pub max_body_bytes: usize,
    /// The most hits (`offset` + `k`) one search may ask for: deep pages cost memory and time,
    /// as in Elasticsearch's `max_result_window`.
    pub max_hits: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// On a shutdown signal, how long in-flight requests may take to finish, in seconds.
    pub shutdown_timeout_secs: u64,
    /// The key that may change collections and documents (and also search), sent as
    /// `Authorization: Bearer KEY`. `CLOZE_ADMIN_KEY` overrides it. With no key at all the
    /// service listens on loopback only.
    pub admin_key: Option<ApiKey>,
    /// A key that may only read and search. `CLOZE_SEARCH_KEY` overrides it.
    pub search_key: Option<ApiKey>,
    /// The most lines one bulk request may hold.
    pub max_bulk_lines: usize,
    /// The longest query text, in bytes.
    pub max_query_bytes: usize,
    /// How long a read (search, evaluation, listing) may take before the answer is 503, in
    /// seconds. Writes are not cut short: they commit whole or not at all.
    pub request_timeout_secs: u64,
    /// Requests (other than the health check and the page) being served at once; more get a
    /// 503 at once instead of waiting in an unbounded queue.
    pub max_concurrent_requests: usize,
    /// Of those, writes (bulk, deletes, collection changes, snapshots), which hold their whole
    /// body in memory while they wait their turn.
    pub max_concurrent_writes: usize,
}

/// A secret: kept out of `Debug` output, so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(redacted)")
    }
}

/// Keys shorter than this are refused: they could be guessed.
pub const MIN_KEY_BYTES: usize = 16;

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            bind: "127.0.0.1:7700".to_string(),
            max_body_bytes: 100 << 20,
            max_hits: 10_000,
            workers: 0,
            shutdown_timeout_secs: 30,
            admin_key: None,
            search_key: None,
            max_bulk_lines: 1_000_000,
            max_query_bytes: 4096,
            request_timeout_secs: 30,
            max_concurrent_requests: 64,
            max_concurrent_writes: 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ServerConfig {
    /// Reads a TOML file; settings it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: ServerConfig = toml::from_str(&text).map_err(|error| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        config
            .validate()
            .map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        Ok(config)
    }

    /// Checks settings that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be at least 1".to_string());
        }
        for (name, value) in [
            ("max_hits", self.max_hits),
            ("max_bulk_lines", self.max_bulk_lines),
            ("max_query_bytes", self.max_query_bytes),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_concurrent_writes", self.max_concurrent_writes),
            ("request_timeout_secs", self.request_timeout_secs as usize),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        for (name, key) in [("admin_key", &self.admin_key), ("search_key", &self.search_key)] {
            if key.as_ref().is_some_and(|key| key.len() < MIN_KEY_BYTES) {
                return Err(format!(
                    "{name} must be at least {MIN_KEY_BYTES} bytes long (try `openssl rand -hex 32`)"
                ));
            }
        }
        if self.search_key.is_some() && self.admin_key.is_none() {
            return Err("search_key is set but admin_key is not: set both, or neither".to_string());
        }
        if self.search_key.is_some() && self.search_key == self.admin_key {
            return Err("search_key and admin_key must differ".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_matches_the_defaults_and_mistakes_name_the_setting() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/server.toml");
        assert_eq!(ServerConfig::from_file(&shipped).unwrap(), ServerConfig::default());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(&file, "bind = \"0.0.0.0:80\"\nmax_hits = \"many\"\n").unwrap();
        let error = ServerConfig::from_file(&file).unwrap_err().to_string();
        assert!(error.contains("server.toml") && error.contains("max_hits"), "{error}");
        std::fs::write(&file, "port = 80\n").unwrap();
        let error = ServerConfig::from_file(&file).unwrap_err().to_string();
        assert!(error.contains("unknown field `port`"), "{error}");
    }
}
