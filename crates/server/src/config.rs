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
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            bind: "127.0.0.1:7700".to_string(),
            max_body_bytes: 100 << 20,
            max_hits: 10_000,
            workers: 0,
            shutdown_timeout_secs: 30,
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
        if self.max_hits == 0 {
            return Err("max_hits must be at least 1".to_string());
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
