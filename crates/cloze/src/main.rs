//! `cloze`: the command line over the Cloze library crates.

mod commands;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Cloze: a self-hosted search engine. Put documents in a collection, search them by keywords,
/// by meaning or both (hybrid), measure the ranking against relevance judgments, and train an encoder on your
/// own text.
///
/// Start with `cloze sample` (a small collection to search) and `cloze serve`, then open
/// http://127.0.0.1:7700; or with `cloze index --collection
/// NAME --corpus corpus.jsonl` (add `--model DIR` for semantic search), then `cloze search` and
/// `cloze eval`; `cloze train --config
/// configs/tiny.toml --corpus FILE --out DIR` trains an encoder and `cloze embed` turns
/// documents into vectors with it. Every command's `--help` says more.
#[derive(Debug, Parser)]
#[command(name = "cloze", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// The folder that holds the collections (one sub-folder each).
    #[arg(
        long,
        global = true,
        env = "CLOZE_DATA_DIR",
        default_value = "index",
        value_name = "DIR"
    )]
    data_dir: PathBuf,

    /// Log more (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Index(commands::index::IndexArgs),
    Search(commands::search::SearchArgs),
    Eval(commands::eval::EvalArgs),
    Tune(commands::tune::TuneArgs),
    Delete(commands::delete::DeleteArgs),
    Compact(commands::compact::CompactArgs),
    Collections(commands::collections::CollectionsArgs),
    Sample(commands::sample::SampleArgs),
    Serve(commands::serve::ServeArgs),
    Node(commands::cluster::NodeArgs),
    Router(commands::cluster::RouterArgs),
    Cluster(commands::cluster::ClusterArgs),
    Snapshot(commands::snapshot::SnapshotArgs),
    Restore(commands::snapshot::RestoreArgs),
    Train(commands::train::TrainArgs),
    Embed(commands::embed::EmbedArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Batch model work (training, embedding, indexing) gains from keeping freed memory. The
    // server does not: its per-query work is small, and with memory kept in each of its many
    // threads' malloc arenas its heap climbed under load (300 -> 373 MiB in a 4-minute soak)
    // where glibc's defaults hold it level (about 200 MiB) at the same speed.
    let serving = matches!(cli.command, Command::Serve(_) | Command::Node(_) | Command::Router(_));
    if !serving {
        cloze_mlm::allocator::reuse_freed_memory();
    }
    let default_level = match cli.verbose {
        // A server's log is how its operator follows it.
        0 if serving => "info,hnsw_rs=warn",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = cloze_index::DataDir::new(cli.data_dir);
    let result = match cli.command {
        Command::Index(args) => commands::index::run(&data_dir, args),
        Command::Search(args) => commands::search::run(&data_dir, args),
        Command::Eval(args) => commands::eval::run(&data_dir, args),
        Command::Tune(args) => commands::tune::run(&data_dir, args),
        Command::Delete(args) => commands::delete::run(&data_dir, args),
        Command::Compact(args) => commands::compact::run(&data_dir, args),
        Command::Collections(args) => commands::collections::run(&data_dir, args),
        Command::Sample(args) => commands::sample::run(&data_dir, args),
        Command::Serve(args) => commands::serve::run(data_dir, args),
        Command::Node(args) => commands::cluster::node(data_dir, args),
        Command::Router(args) => commands::cluster::router(args),
        Command::Cluster(args) => commands::cluster::cluster(args),
        Command::Snapshot(args) => commands::snapshot::run(&data_dir, args),
        Command::Restore(args) => commands::snapshot::restore(&data_dir, args),
        Command::Train(args) => commands::train::run(args),
        Command::Embed(args) => commands::embed::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
