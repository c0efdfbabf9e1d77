//! The `logstream` command: thin wiring of the library's commands to clap.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand};

use logstream_cli::perf::{bench, soak};
use logstream_cli::render::ColorChoice;
use logstream_cli::run::{EXIT_SETUP_FAILED, RunOptions};
use logstream_cli::view::{ViewError, ViewOptions};
use logstream_cli::{dev, run, view};
use logstream_client::RetryPolicy;
use logstream_core::model::JobStatus;
use logstream_shared::config::{Config, exit_on_error};

/// `tail`/`logs` could not do their work (bad settings, refused, unreachable).
const EXIT_VIEW_FAILED: u8 = 2;

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
        /// Connections served at once; past it new ones wait in the kernel's backlog
        /// until one closes.
        #[arg(long, default_value_t = dev::serve::DEFAULT_MAX_CONNECTIONS,
              value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
        max_connections: usize,
        /// Seconds a client may take to send a request head (and stay idle between
        /// requests) before its connection is closed.
        #[arg(long, default_value_t = dev::serve::DEFAULT_HEADER_READ_SECS,
              value_parser = clap::value_parser!(u64).range(1..))]
        header_timeout_secs: u64,
    },
    /// Measures the service against the Redis under it: the XADD ceiling, ingest
    /// lines/s (and latency again with stalled consumers), history pages/s, ingest-to-viewer delivery latency and each function's
    /// cold start, printed as tables (or JSON). Without --url it starts `logstream dev`
    /// in-process on a private redis-server (build with --release, and build the
    /// function binaries too for the cold-start table: `cargo build --release
    /// --workspace`).
    Bench {
        /// A running service to measure instead.
        #[arg(long, env = "LOGSTREAM_URL")]
        url: Option<String>,
        /// Ingest key of that service.
        #[arg(long, env = "LOGSTREAM_INGEST_KEY", hide_env_values = true)]
        ingest_key: Option<String>,
        /// A viewer JWT of that service's `dev` user, for the history and delivery runs.
        #[arg(long, env = "LOGSTREAM_TOKEN", hide_env_values = true)]
        viewer_token: Option<String>,
        /// Lines per ingest request: one run per size.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        batch: Vec<usize>,
        /// Requests in flight at once: one ingest and one history run per value.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        concurrency: Vec<usize>,
        /// Lines posted by each ingest run.
        #[arg(long, default_value_t = 200_000)]
        lines: usize,
        /// History page requests per run.
        #[arg(long, default_value_t = 3000)]
        pages: usize,
        /// Entries per history page (1-500).
        #[arg(long, default_value_t = 500)]
        page_size: usize,
        /// SSE viewers following one job while lines are posted one by one: one
        /// delivery run per count (0 skips delivery).
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        viewers: Vec<usize>,
        /// Lines posted during each delivery run.
        #[arg(long, default_value_t = 200)]
        deliveries: usize,
        /// WebSocket clients, and as many SSE readers, that read their first frames and
        /// then stop reading, on an ingest run of each shape measured next to a baseline
        /// and a run with as many clients that read everything (0 skips those runs;
        /// in-process service only).
        #[arg(long, default_value_t = 2)]
        stalled: usize,
        /// Triples of a baseline run, a reading-clients run and a stalled run per shape;
        /// the median triple by stalled/baseline p99 is reported (one triple's ratio
        /// swings with the machine).
        #[arg(long, default_value_t = 3)]
        stalled_pairs: usize,
        /// Lines of one big job posted while it is archived in segments, then paged and
        /// replayed (0 skips it; needs the service's Redis: in-process only).
        #[arg(long, default_value_t = 1_000_000)]
        big_job: usize,
        /// Leave out the cold-start table.
        #[arg(long)]
        no_cold_start: bool,
        /// Only the cold-start table.
        #[arg(long, conflicts_with = "no_cold_start")]
        cold_start: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Many jobs written and followed at once for a set time, sampling memory and
    /// connection counts to show they stay flat. Without --url it starts `logstream
    /// dev` in-process on a private redis-server (build with --release).
    Soak {
        #[command(flatten)]
        opts: soak::SoakOptions,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Runs CMD and streams its stdout and stderr, line by line, to a job.
    ///
    /// Sets the job `running`, runs CMD (its output is echoed here too, unless
    /// --quiet), waits until every line is stored, then sets the job `ready` (exit code
    /// 0) or `failed`, and exits with CMD's exit code. Lines are batched (sent every
    /// ~100 ms or 512 KiB), numbered with `seq` and retried on errors and 5xx answers,
    /// so none is lost or stored twice; when the service is slow, CMD waits on its
    /// output instead of memory growing. SIGINT, SIGTERM and SIGHUP are passed to CMD
    /// and mark the job failed.
    ///
    /// Exit codes: CMD's (128+N when signal N killed it); 125 when run failed before
    /// starting CMD; 126 when CMD could not be started; 127 when it was not found.
    #[command(after_help = "Example:\n  logstream run --job build-42 --stage test -- cargo test")]
    Run {
        /// The job to stream to (1-128 characters of A-Z a-z 0-9 _ -). May be left out
        /// with --create: the service then picks an id and it is printed on stderr.
        #[arg(long, value_name = "ID", required_unless_present = "create")]
        job: Option<String>,
        /// Create the job first (needs the deployment's ingest key and --owner). A job
        /// that already exists is used as it is, so a retried pipeline step does not
        /// fail.
        #[arg(long)]
        create: bool,
        /// With --create: the user (the viewer JWT's `sub`) who may read the job.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// With --create: the name of an environment variable whose value the job
        /// redacts from every line, as `***` (repeatable).
        #[arg(long = "secret-env", value_name = "VAR", requires = "create")]
        secret_env: Vec<String>,
        /// Wrap the run in stage events: NAME `started`, then `succeeded` or `failed`.
        #[arg(long, value_name = "NAME")]
        stage: Option<String>,
        /// When CMD succeeds, leave the job `running` for later steps (the last step
        /// leaves this out). A failure still marks the job failed.
        #[arg(long)]
        keep_open: bool,
        /// Do not echo CMD's output here (it is still streamed).
        #[arg(long, short)]
        quiet: bool,
        /// The service's URL.
        #[arg(long, env = "LOGSTREAM_URL", default_value = logstream_client::DEFAULT_URL)]
        url: String,
        /// The deployment's ingest key, or the job's own ingest token (from POST /jobs).
        #[arg(long, env = "LOGSTREAM_INGEST_KEY", hide_env_values = true)]
        ingest_key: Option<String>,
        /// Give up on the service after it has failed for this many seconds in a row
        /// (lines not delivered by then are reported, CMD's exit code still wins).
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        retry_for: u64,
        /// The command to run and its arguments, after `--`.
        #[arg(
            value_name = "CMD",
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        command: Vec<OsString>,
    },
    /// Follows a job's log live until the job ends.
    ///
    /// Prints each line as it arrives (stderr lines in red on a terminal, prefixed with
    /// `[stderr] ` otherwise), stage events and status changes as `==>` markers.
    /// Resumes after a dropped connection without missing or repeating a line.
    ///
    /// A job that has ended already is printed whole (as `--from-start` would); a job
    /// that does not exist yet is waited for (`--wait`).
    ///
    /// Exit codes: 0 when the job ends `ready`, 1 when it ends `failed`, 2 when it
    /// could not be followed (no token, no such job after the wait, service
    /// unreachable).
    Tail {
        /// The job to follow.
        #[arg(value_name = "ID")]
        job: String,
        /// Print the whole log so far first (otherwise only what comes next).
        #[arg(long)]
        from_start: bool,
        /// How long to wait for a job that does not exist yet (or is not yours),
        /// in seconds; 0 does not wait.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        wait: u64,
        #[command(flatten)]
        view: ViewArgs,
    },
    /// Prints a job's log (the stored history).
    ///
    /// Exit codes: 1 when the job has failed, 2 when it could not be read, else 0
    /// (a job still running prints what it has so far).
    Logs {
        /// The job to print.
        #[arg(value_name = "ID")]
        job: String,
        /// Only the newest N entries (default: all of them).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// One JSON entry per line, exactly as the service sends them.
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// The raw log: the text of every line and nothing else, as the service's raw
        /// route sends it (a log of any size, streamed).
        #[arg(long, conflicts_with = "limit")]
        raw: bool,
        /// With --raw: each line starts with its time (ISO-8601, UTC).
        #[arg(long, requires = "raw")]
        timestamps: bool,
        #[command(flatten)]
        view: ViewArgs,
    },
}

/// What `tail` and `logs` share.
#[derive(clap::Args)]
struct ViewArgs {
    /// The service's URL.
    #[arg(long, env = "LOGSTREAM_URL", default_value = logstream_client::DEFAULT_URL)]
    url: String,
    /// A viewer JWT whose user owns the job (`logstream dev` prints one).
    #[arg(long, env = "LOGSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The streaming function's URL, for the live stream and the raw log (on AWS the
    /// stack's `SseUrl`); default: --url.
    #[arg(long, env = "LOGSTREAM_STREAM_URL")]
    stream_url: Option<String>,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    color: ColorChoice,
    /// Give up after the service has failed for this many seconds in a row.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    retry_for: u64,
}

impl ViewArgs {
    fn options(self, job: String) -> ViewOptions {
        ViewOptions {
            url: url_or_default(self.url),
            stream_url: self.stream_url,
            token: self.token,
            job,
            colour: self.color,
            retry: retry_for(self.retry_for),
        }
    }
}

/// An empty `LOGSTREAM_URL` counts as unset.
fn url_or_default(url: String) -> String {
    if url.trim().is_empty() {
        logstream_client::DEFAULT_URL.to_owned()
    } else {
        url
    }
}

fn retry_for(secs: u64) -> RetryPolicy {
    RetryPolicy {
        give_up_after: Duration::from_secs(secs),
        ..RetryPolicy::default()
    }
}

/// Client commands log warnings (retries) to stderr, keeping stdout for output.
fn client_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .without_time()
        .with_target(false)
        .try_init();
}

fn view_failed(command: &str, e: &ViewError) -> ExitCode {
    match e {
        // The reader stopped reading (`| head`): not worth a message.
        ViewError::Output(io) if io.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        e => {
            eprintln!("logstream {command}: {e}");
            ExitCode::from(EXIT_VIEW_FAILED)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            job,
            create,
            owner,
            secret_env,
            stage,
            keep_open,
            quiet,
            url,
            ingest_key,
            retry_for: secs,
            command,
        } => {
            // Checked here rather than by clap, whose usage line would list every flag
            // given, those that came from the environment included, as if required.
            if create && owner.is_none() {
                eprintln!(
                    "error: --create needs --owner USER (the user, the viewer JWT's `sub`, who may read the job)\n\n\
                     For more information, try 'logstream run --help'."
                );
                return ExitCode::from(2);
            }
            client_tracing();
            let mut secrets = Vec::new();
            for var in &secret_env {
                match std::env::var(var) {
                    Ok(value) if !value.is_empty() => secrets.push(value),
                    _ => {
                        eprintln!("logstream run: --secret-env {var}: the variable is not set");
                        return ExitCode::from(EXIT_SETUP_FAILED);
                    }
                }
            }
            let opts = RunOptions {
                url: url_or_default(url),
                ingest_key,
                job,
                create,
                owner,
                secrets,
                stage,
                keep_open,
                quiet,
                retry: retry_for(secs),
                command,
            };
            match run::run(opts).await {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("logstream run: {e}");
                    ExitCode::from(EXIT_SETUP_FAILED)
                }
            }
        }
        Command::Tail {
            job,
            from_start,
            wait,
            view,
        } => {
            client_tracing();
            let wait = Duration::from_secs(wait);
            match view::tail(&view.options(job), from_start, wait).await {
                Ok(JobStatus::Ready) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => view_failed("tail", &e),
            }
        }
        Command::Logs {
            job,
            limit,
            json,
            raw,
            timestamps,
            view,
        } => {
            client_tracing();
            let limit = limit.map(|n| n as usize);
            let opts = view.options(job);
            let printed = if raw {
                view::raw(&opts, timestamps).await
            } else {
                view::logs(&opts, limit, json).await
            };
            match printed {
                Ok(JobStatus::Failed) => ExitCode::FAILURE,
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => view_failed("logs", &e),
            }
        }
        other => match service(other).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // What `main` returning `anyhow::Result` printed before.
                eprintln!("Error: {e:?}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `dev` and `bench`: the service side.
async fn service(command: Command) -> anyhow::Result<()> {
    if matches!(command, Command::Bench { .. }) {
        // The report is the output: only warnings from the in-process service.
        client_tracing();
    } else {
        logstream_shared::telemetry::init();
    }
    match command {
        Command::Dev {
            addr,
            max_connections,
            header_timeout_secs,
        } => {
            let config = exit_on_error("logstream dev", Config::from_env());
            let limits = dev::serve::Limits {
                max_connections,
                header_read: Duration::from_secs(header_timeout_secs),
            };
            let server = dev::start_with(config, &addr, limits).await?;
            let mut banner = format!(
                "logstream dev listening on {}\n  redis:       {}\n  archive:     {}\n  \
                 ingest key:  {}\n  websocket:   ws://{}/ws?job_id=ID&access_token=JWT\n",
                server.url(),
                server.redis_url,
                server.archive,
                server.ingest_key,
                server.addr
            );
            if let Some(token) = &server.viewer_token {
                banner.push_str(&format!("  viewer JWT (user {}): {token}\n", dev::DEV_USER));
            }
            // What `run`, `tail` and `logs` read, ready to paste into another shell.
            banner.push_str(&format!(
                "For logstream run / tail / logs in another shell:\n  export LOGSTREAM_URL={} LOGSTREAM_INGEST_KEY={}",
                server.url(),
                server.ingest_key
            ));
            if let Some(token) = &server.viewer_token {
                banner.push_str(&format!(" LOGSTREAM_TOKEN={token}"));
            }
            banner.push_str("\nCtrl-C stops it.\n");
            // A closed stdout (the banner's reader went away) must not stop the service.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
            server.run_until_signal().await
        }
        Command::Bench {
            url,
            ingest_key,
            viewer_token,
            batch,
            concurrency,
            lines,
            pages,
            page_size,
            viewers,
            deliveries,
            stalled,
            stalled_pairs,
            big_job,
            no_cold_start,
            cold_start,
            json,
        } => {
            if cold_start {
                let rows = logstream_cli::perf::coldstart::run().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", logstream_cli::perf::coldstart::table(&rows));
                }
                return Ok(());
            }
            let opts = bench::BenchOptions {
                url,
                ingest_key,
                viewer_token,
                batches: batch,
                concurrency,
                lines,
                pages,
                page_size,
                viewers,
                deliveries,
                stalled,
                stalled_pairs,
                big_job,
                cold_start: !no_cold_start,
            };
            let report = bench::run(opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", bench::table(&report));
            }
            Ok(())
        }
        Command::Soak { opts, json } => {
            eprintln!("{}", soak::HEADER);
            let report = soak::run(opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", soak::table(&report));
            }
            Ok(())
        }
        Command::Run { .. } | Command::Tail { .. } | Command::Logs { .. } => Ok(()),
    }
}
