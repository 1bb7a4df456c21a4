//! `cloze node`, `cloze router` and `cloze cluster`: a collection partitioned and replicated
//! over several machines, on NATS JetStream.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cloze_cluster::router::Router;
use cloze_cluster::{Node, NodeConfig};
use cloze_index::DataDir;

use crate::commands::serve::{server_config, ServeArgs};

/// Where NATS is, for every cluster command.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server URLs, comma-separated, tried in order (put the one on this machine first):
    /// the client moves to another when one fails.
    #[arg(long, env = "CLOZE_NATS", value_name = "URLS", default_value = "nats://127.0.0.1:4222")]
    nats: String,

    /// Copies of the streams and buckets Cloze creates in JetStream: 3 with three NATS servers
    /// or more (a write then survives the loss of one), 1 with a single server.
    #[arg(long, value_name = "N", default_value_t = 3)]
    nats_replicas: usize,
}

/// Run a cluster node: it holds the partitions the cluster's map gives it (in --data-dir),
/// applies their writes from the NATS JetStream log, and answers the routers' searches.
/// Start one per machine, each with its own --id; a node that restarts with the same id and
/// data folder resumes where its last commit stopped.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's name in the cluster (letters, digits, '-', '_'); keep it across restarts.
    #[arg(long, value_name = "ID")]
    id: String,

    #[command(flatten)]
    nats: NatsArgs,
}

/// Run a router: the HTTP API of `cloze serve` for clustered collections. It writes `_bulk`
/// requests to the log by partition and answers `_search` and `_rank_eval` from one replica of
/// each partition, ranking as one collection would. Adds GET /_cluster (nodes, maps,
/// replicas' progress; ?checksums=true to compare copies) and POST /_cluster/_rebalance.
/// Create a clustered collection with PUT /collections/NAME and `partitions` and `replicas`
/// beside the usual settings.
#[derive(Debug, Args)]
pub struct RouterArgs {
    #[command(flatten)]
    serve: ServeArgs,

    #[command(flatten)]
    nats: NatsArgs,

    /// How long a node has to answer one step of a search before another replica of its
    /// partitions is asked, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    node_timeout_ms: u64,
}

/// See and change a cluster: its state, and moving partitions when nodes join or leave.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,

    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print the cluster's state as JSON: live nodes, and for each collection its log and each
    /// partition's replicas (state, documents, log position).
    Status {
        /// Also a checksum of each replica's documents, to check that copies agree.
        #[arg(long)]
        checksums: bool,
    },
    /// Spread every collection's partitions evenly over the live nodes: run after starting a
    /// new node. New replicas copy a snapshot of a live replica and replay the log; the
    /// replicas they replace are dropped once they caught up.
    Rebalance {
        /// Move every replica off these nodes (comma-separated), to stop them afterwards.
        #[arg(long, value_delimiter = ',', value_name = "IDS")]
        exclude: Vec<String>,

        /// How long to wait for new replicas to catch up, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        timeout: u64,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn node(data_dir: DataDir, args: NodeArgs) -> Result<()> {
    std::fs::create_dir_all(data_dir.path())
        .with_context(|| format!("creating the data folder {}", data_dir.path().display()))?;
    let config = NodeConfig {
        id: args.id,
        nats: args.nats.nats,
        data_dir: data_dir.path().to_path_buf(),
        nats_replicas: args.nats.nats_replicas,
    };
    runtime()?.block_on(async {
        let node = Node::start(config).await?;
        node.run().await
    })?;
    Ok(())
}

pub fn router(args: RouterArgs) -> Result<()> {
    let config = server_config(args.serve)?;
    cloze_server::run_router(
        config,
        args.nats.nats,
        args.nats.nats_replicas,
        Duration::from_millis(args.node_timeout_ms),
    )?;
    Ok(())
}

pub fn cluster(args: ClusterArgs) -> Result<()> {
    runtime()?.block_on(async {
        let router =
            Router::connect(&args.nats.nats, args.nats.nats_replicas, Duration::from_secs(5))
                .await?;
        match args.command {
            ClusterCommand::Status { checksums } => {
                let status = router.status(checksums).await?;
                println!("{}", serde_json::to_string_pretty(&status)?);
            }
            ClusterCommand::Rebalance { exclude, timeout } => {
                let moves = router
                    .rebalance(&exclude, Duration::from_secs(timeout), |step| eprintln!("{step}"))
                    .await?;
                if moves.is_empty() {
                    println!("every collection is balanced already");
                }
                moves.iter().for_each(|m| println!("{m}"));
            }
        }
        Ok(())
    })
}
