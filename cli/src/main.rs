//! The `logstream` command.

use clap::{Parser, Subcommand};

use logstream_cli::{bench, dev};
use logstream_shared::config::{Config, exit_on_error};

#[derive(Parser)]
#[command(
    name = "logstream",
    version,
    about = "Build logs, live, for every build."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every function in one local process on a real Redis (its own
    /// redis-server when REDIS_URL is unset).
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = dev::DEFAULT_ADDR)]
        addr: String,
    },
    /// Measures ingest lines/s and history pages/s over HTTP. Without --url it starts
    /// `logstream dev` in-process on a private redis-server (build with --release).
    Bench {
        /// A running service to measure instead.
        #[arg(long, env = "LOGSTREAM_URL")]
        url: Option<String>,
        /// Ingest key of that service.
        #[arg(long, env = "LOGSTREAM_INGEST_KEY", hide_env_values = true)]
        ingest_key: Option<String>,
        /// Lines per ingest request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Ingest requests in all.
        #[arg(long, default_value_t = 500)]
        requests: usize,
        /// Ingest requests in flight at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// History page requests (500 entries each).
        #[arg(long, default_value_t = 2000)]
        pages: usize,
        /// SSE viewers following one job while lines are posted one by one, for the
        /// ingest-to-viewer delivery latency (0 skips it).
        #[arg(long, default_value_t = 100)]
        viewers: usize,
        /// Lines posted during the delivery run.
        #[arg(long, default_value_t = 200)]
        deliveries: usize,
        /// Instead: start each function binary (release builds next to this one) under
        /// a local Lambda Runtime API and report exec-to-first-answer and peak RSS.
        #[arg(long)]
        cold_start: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logstream_shared::telemetry::init();
    match Cli::parse().command {
        Command::Dev { addr } => {
            let config = exit_on_error("logstream dev", Config::from_env());
            let server = dev::start(config, &addr).await?;
            println!("logstream dev listening on {}", server.url());
            println!("  redis:       {}", server.redis_url);
            println!("  ingest key:  {}", server.ingest_key);
            println!(
                "  websocket:   ws://{}/ws?job_id=ID&access_token=JWT",
                server.addr
            );
            if let Some(token) = &server.viewer_token {
                println!("  viewer JWT (user {}): {token}", dev::DEV_USER);
            }
            println!("Ctrl-C stops it.");
            server.run_until_signal().await
        }
        Command::Bench {
            url,
            ingest_key,
            batch,
            requests,
            concurrency,
            pages,
            viewers,
            deliveries,
            cold_start,
            json,
        } => {
            if cold_start {
                let rows = logstream_cli::coldstart::run().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", logstream_cli::coldstart::table(&rows));
                }
                return Ok(());
            }
            let opts = bench::BenchOptions {
                url,
                ingest_key,
                batch,
                requests,
                concurrency,
                pages,
                viewers,
                deliveries,
            };
            let report = bench::run(opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", bench::table(&report));
            }
            Ok(())
        }
    }
}
