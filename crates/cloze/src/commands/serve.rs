use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use cloze_index::DataDir;
use cloze_server::{ApiKey, ServerConfig};

/// Serve the collections over HTTP: create collections, bulk-load documents, search (keyword,
/// semantic, hybrid), evaluate, with a search page at / and the API described at
/// /openapi.json. Stops cleanly on Ctrl-C or SIGTERM, finishing requests in flight.
///
/// Access: set CLOZE_ADMIN_KEY (changes and reads) and optionally CLOZE_SEARCH_KEY (reads and
/// searches only) in the environment, at least 16 bytes each; clients send `Authorization:
/// Bearer KEY`. With no key set, the service listens on loopback only.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings file (TOML; see configs/server.toml) [default: built-in defaults, the same].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on, over the settings file's [default: 127.0.0.1:7700]; port 0 picks a
    /// free port (printed at start).
    #[arg(long, value_name = "ADDRESS")]
    bind: Option<String>,

    /// The largest request body in bytes, over the settings file's [default: 104857600].
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
}

pub fn run(data_dir: DataDir, args: ServeArgs) -> Result<()> {
    let config = server_config(args)?;
    std::fs::create_dir_all(data_dir.path())
        .with_context(|| format!("creating the data folder {}", data_dir.path().display()))?;
    cloze_server::run(config, data_dir)?;
    Ok(())
}

/// The service's settings: the file's, then the flags', then the keys from the environment.
pub fn server_config(args: ServeArgs) -> Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(bytes) = args.max_body_bytes {
        config.max_body_bytes = bytes;
    }
    for (variable, key) in
        [("CLOZE_ADMIN_KEY", &mut config.admin_key), ("CLOZE_SEARCH_KEY", &mut config.search_key)]
    {
        match std::env::var(variable) {
            Ok(value) if !value.is_empty() => *key = Some(ApiKey::new(value)),
            Ok(_) | Err(std::env::VarError::NotPresent) => {}
            Err(error) => anyhow::bail!("{variable}: {error}"),
        }
    }
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("the server settings (settings file, flags, CLOZE_ADMIN_KEY, CLOZE_SEARCH_KEY)")?;
    Ok(config)
}
