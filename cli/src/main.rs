//! The `logstream` command.

use clap::{Parser, Subcommand};

use logstream_cli::dev;
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
            if let Some(token) = &server.viewer_token {
                println!("  viewer JWT (user {}): {token}", dev::DEV_USER);
            }
            println!("Ctrl-C stops it.");
            server.run_until_signal().await
        }
    }
}
