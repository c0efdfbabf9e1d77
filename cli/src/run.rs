//! `logstream run`: runs a command and streams its output to a job.
//!
//! ```text
//! CMD ─stdout pipe─▶ pump ─┐                                  ┌─▶ our stdout (echo)
//!     ─stderr pipe─▶ pump ─┴─▶ LineSender ─▶ Upload (client::upload) ─▶ ingest
//! ```
//!
//! In order: create the job (`--create`; an existing job is used as it is, so a step
//! retried by the pipeline does not fail), set it `running`, post `stage started`
//! (`--stage`), run CMD with its output captured line by line ([`crate::lines`]) and
//! echoed unless `--quiet`, wait until every line is stored, post `stage
//! succeeded|failed`, set the job `ready` (exit code 0) or `failed`, exit with CMD's
//! code. `--keep-open` leaves a successful job `running` for later steps.
//!
//! Backpressure: a pump waits while the uploader's queue is full, so a slow or absent
//! service ends up holding the command on a full pipe instead of growing memory.
//!
//! Signals: SIGINT, SIGTERM and SIGHUP are passed to the command, noted in the log, and
//! the job is marked failed whatever the command then does. A signal that arrives after
//! the command has ended (while its last lines are still being delivered, say to a
//! service that is down) stops waiting for the service: `run` exits at once with the
//! command's code. Ctrl-C in a terminal reaches the command twice (the
//! terminal signals the whole process group, then this passes it on); build tools
//! treat that like one.
//!
//! After the command exits, its pipes are read until end of file, or until they have
//! been silent for [`AFTER_EXIT_SILENCE`]: a background process the command started may
//! hold them open for ever, and must not keep the job running.
//!
//! Exit codes of `run` itself, as `env`/`timeout` use them: 125 when it failed before
//! running the command (bad settings, the service refused the job), 126 when the
//! command could not be started, 127 when it was not found; otherwise the command's
//! code, or 128 + N when a signal N killed it.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use logstream_core::ids::{InvalidJobId, JobId};
use logstream_core::model::{JobStatus, LineStream, StageStatus, now_ms};

use crate::lines::LineSplitter;
use logstream_client::upload::{LineSender, LogLine, Upload, UploadOptions, UploadReport};
use logstream_client::{Client, ClientError, RetryPolicy};

/// `run` failed before the command ran.
pub const EXIT_SETUP_FAILED: u8 = 125;
/// The command exists but could not be started.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// How long the pipes may stay silent after the command exited.
pub const AFTER_EXIT_SILENCE: Duration = Duration::from_secs(2);
/// Bytes read from a pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// What to run and where to stream it.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The service URL.
    pub url: String,
    /// The deployment's ingest key, or the job's ingest token.
    pub ingest_key: Option<String>,
    /// The job; `None` only with `create` (the service picks an id).
    pub job: Option<String>,
    /// Create the job first.
    pub create: bool,
    /// The owner of a created job.
    pub owner: Option<String>,
    /// Literal secrets a created job redacts.
    pub secrets: Vec<String>,
    /// Wrap the run in this stage's events.
    pub stage: Option<String>,
    /// Leave a successful job `running`.
    pub keep_open: bool,
    /// Do not echo the command's output.
    pub quiet: bool,
    /// Retries against the service.
    pub retry: RetryPolicy,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Why `run` could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Neither `--ingest-key` nor `LOGSTREAM_INGEST_KEY`.
    #[error("no ingest key: pass --ingest-key or set LOGSTREAM_INGEST_KEY")]
    NoIngestKey,
    /// Neither `--job` nor `--create`.
    #[error("no job: pass --job ID, or --create --owner USER")]
    NoJob,
    /// `--create` without `--owner`.
    #[error("--create needs --owner")]
    NoOwner,
    /// Nothing after `--`.
    #[error("no command to run (give it after --)")]
    NoCommand,
    /// `--job` is not a valid job id.
    #[error("--job: {0}")]
    InvalidJobId(#[from] InvalidJobId),
    /// `--job` names a job the service does not have (and `--create` was not given).
    #[error(
        "job {0} does not exist (or this ingest token is another job's): create it first \
         (POST /jobs), or let run create it with --create --owner USER"
    )]
    NoSuchJob(JobId),
    /// The service refused a step before the command ran, or could not be reached.
    #[error("{step}: {source}")]
    Service {
        /// What `run` was doing.
        step: &'static str,
        /// Why it failed.
        #[source]
        source: ClientError,
    },
    /// Signal handlers could not be installed.
    #[error("cannot watch for signals: {0}")]
    Signals(#[source] io::Error),
}

fn service(step: &'static str) -> impl FnOnce(ClientError) -> RunError {
    move |source| RunError::Service { step, source }
}

/// Runs the command as the module doc says; returns the exit code for `run`.
pub async fn run(opts: RunOptions) -> Result<u8, RunError> {
    let key = opts
        .ingest_key
        .clone()
        .filter(|k| !k.trim().is_empty())
        .ok_or(RunError::NoIngestKey)?;
    let Some((program, args)) = opts.command.split_first() else {
        return Err(RunError::NoCommand);
    };
    let client = Client::new(&opts.url, Some(key))
        .map_err(service("the service URL"))?
        .with_retry(opts.retry);
    let job = resolve_job(&client, &opts).await?;
    client
        .set_status(&job, JobStatus::Running)
        .await
        .map_err(|e| match e {
            ClientError::Api { status, .. } if status == reqwest::StatusCode::NOT_FOUND => {
                RunError::NoSuchJob(job.clone())
            }
            e => service("marking the job running")(e),
        })?;
    if let Some(stage) = &opts.stage {
        client
            .post_stage(&job, stage, StageStatus::Started)
            .await
            .map_err(service("posting the stage start"))?;
    }

    // Before the command starts, so no signal meant for it can be missed.
    let mut signals = Signals::install().map_err(RunError::Signals)?;
    let (sender, upload) = Upload::start(client.clone(), job.clone(), UploadOptions::default());
    let ran = supervise(program, args, sender, &mut signals, opts.quiet).await;
    if ran.interrupted {
        not_finished(&job);
        return Ok(ran.code);
    }

    let report = tokio::select! {
        report = upload.finish() => report,
        signal = signals.recv() => {
            eprintln!("logstream: {}: stopped waiting for the service", signal.as_str());
            not_finished(&job);
            return Ok(ran.code);
        }
    };
    report_delivery(&job, ran.lines, &report);
    if report
        .error
        .as_ref()
        .is_some_and(|e| e.code() == Some("job_finished"))
    {
        // Someone else ended the job: its status is not ours to change.
        return Ok(ran.code);
    }

    let finish = async {
        if let Some(stage) = &opts.stage {
            let status = if ran.succeeded {
                StageStatus::Succeeded
            } else {
                StageStatus::Failed
            };
            client.post_stage(&job, stage, status).await?;
        }
        let code = i64::from(ran.code);
        if !ran.succeeded {
            client.end(&job, JobStatus::Failed, code).await?;
        } else if !opts.keep_open {
            client.end(&job, JobStatus::Ready, code).await?;
        }
        Ok::<(), ClientError>(())
    };
    tokio::select! {
        done = finish => if let Err(e) = done {
            eprintln!("logstream: could not record the end of job {job}: {e}");
        },
        signal = signals.recv() => {
            eprintln!("logstream: {}: job {job} was not marked finished", signal.as_str());
        }
    }
    Ok(ran.code)
}

fn not_finished(job: &JobId) {
    eprintln!("logstream: lines may be missing from job {job}, which was not marked finished");
}

/// The job to stream to, created first with `--create`.
async fn resolve_job(client: &Client, opts: &RunOptions) -> Result<JobId, RunError> {
    let id = opts.job.as_deref().map(JobId::parse).transpose()?;
    if !opts.create {
        return id.ok_or(RunError::NoJob);
    }
    let owner = opts.owner.as_deref().ok_or(RunError::NoOwner)?;
    match client.create_job(id.as_ref(), owner, &opts.secrets).await {
        Ok(created) => {
            if id.is_none() {
                eprintln!("logstream: job {}", created.job_id);
            }
            Ok(created.job_id)
        }
        // Created by an earlier attempt of this step (or its lost answer): use it.
        Err(e) if e.code() == Some("job_exists") => id.ok_or(RunError::NoJob),
        Err(e) => Err(service("creating the job")(e)),
    }
}

/// Says on stderr what was not delivered.
fn report_delivery(job: &JobId, produced: u64, report: &UploadReport) {
    if let Some(e) = &report.error {
        let missing = produced.saturating_sub(report.lines);
        eprintln!(
            "logstream: {missing} of {produced} lines could not be delivered to job {job}: {e}"
        );
    }
}

/// How the command ended.
#[derive(Debug)]
struct Ran {
    code: u8,
    /// Exit code 0 and no signal received.
    succeeded: bool,
    /// Lines handed to the uploader or refused by it.
    lines: u64,
    /// A signal stopped `run` from reading the rest of the output.
    interrupted: bool,
}

/// Runs the command, pumping its output into `sender`, passing signals on.
async fn supervise(
    program: &OsString,
    args: &[OsString],
    sender: LineSender,
    signals: &mut Signals,
    quiet: bool,
) -> Ran {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            };
            let note = format!("logstream: cannot run {}: {e}", program.to_string_lossy());
            eprintln!("{note}");
            let _ = sender.send(vec![system_line(note)]).await;
            return Ran {
                code,
                succeeded: false,
                lines: 1,
                interrupted: false,
            };
        }
    };

    let (exited_tx, exited_rx) = watch::channel(false);
    let echo_out = (!quiet).then(tokio::io::stdout);
    let echo_err = (!quiet).then(tokio::io::stderr);
    let pumps = [
        child.stdout.take().map(|pipe| {
            tokio::spawn(pump(
                pipe,
                LineStream::Stdout,
                sender.clone(),
                echo_out,
                exited_rx.clone(),
            ))
        }),
        child.stderr.take().map(|pipe| {
            tokio::spawn(pump(
                pipe,
                LineStream::Stderr,
                sender.clone(),
                echo_err,
                exited_rx.clone(),
            ))
        }),
    ];

    let mut notes = 0u64;
    let mut signalled = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.recv() => {
                signalled = Some(sig);
                let passed = match child.id() {
                    Some(pid) => i32::try_from(pid)
                        .ok()
                        .map(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)),
                    None => None,
                };
                let how = match passed {
                    Some(Ok(())) => "passed it to the command",
                    _ => "the command had already ended",
                };
                let note = system_line(format!("logstream: received {}, {how}", sig.as_str()));
                notes += 1;
                let _ = sender.send(vec![note]).await;
            }
        }
    };
    let _ = exited_tx.send(true);

    // The rest of the output may wait on a slow service: a signal stops waiting.
    let aborts: Vec<_> = pumps.iter().flatten().map(|p| p.abort_handle()).collect();
    let drained = async {
        let mut lines = 0;
        for pump in pumps.into_iter().flatten() {
            lines += pump.await.unwrap_or(0);
        }
        lines
    };
    let mut lines = tokio::select! {
        lines = drained => lines,
        sig = signals.recv() => {
            aborts.iter().for_each(|a| a.abort());
            eprintln!("logstream: {}: stopped reading the command's output", sig.as_str());
            return Ran {
                code: status.as_ref().map_or(1, |s| exit_code(*s)),
                succeeded: false,
                lines: 0,
                interrupted: true,
            };
        }
    };
    let code = match &status {
        Ok(status) => exit_code(*status),
        Err(e) => {
            eprintln!("logstream: lost track of the command: {e}");
            1
        }
    };
    if code != 0 {
        let note = match status.as_ref().ok().and_then(|s| s.signal()) {
            Some(n) => format!("logstream: the command was killed by signal {n}"),
            None => format!("logstream: the command exited with code {code}"),
        };
        notes += 1;
        let _ = sender.send(vec![system_line(note)]).await;
    }
    lines += notes;
    Ran {
        code,
        succeeded: code == 0 && signalled.is_none(),
        lines,
        interrupted: false,
    }
}

fn system_line(text: String) -> LogLine {
    LogLine::new(LineStream::System, text)
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from((128 + signal) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Reads one pipe to its end: echoes it, splits it into lines, sends them. Returns
/// how many lines it produced.
async fn pump<R, W>(
    mut pipe: R,
    stream: LineStream,
    sender: LineSender,
    mut echo: Option<W>,
    mut exited: watch::Receiver<bool>,
) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK];
    let mut splitter = LineSplitter::default();
    let mut lines_seen = 0u64;
    let mut uploading = true;
    loop {
        let n = tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("reading the command's {stream:?}: {e}");
                    break;
                }
            },
            () = silent_after_exit(&mut exited) => break,
        };
        if let Some(out) = echo.as_mut()
            && out.write_all(&buf[..n]).await.is_err()
        {
            // Our own output is gone (a closed pipe): keep streaming regardless.
            echo = None;
        }
        let ts = now_ms();
        let mut lines = Vec::new();
        splitter.push(&buf[..n], |text| lines.push(LogLine { stream, text, ts }));
        lines_seen += lines.len() as u64;
        if uploading && sender.send(lines).await.is_err() {
            uploading = false;
        }
    }
    let mut last = Vec::new();
    splitter.finish(|text| last.push(LogLine::new(stream, text)));
    lines_seen += last.len() as u64;
    if uploading {
        let _ = sender.send(last).await;
    }
    if let Some(out) = echo.as_mut() {
        let _ = out.flush().await;
    }
    lines_seen
}

/// Completes once the command has exited and [`AFTER_EXIT_SILENCE`] has passed.
async fn silent_after_exit(exited: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once the command ended.
    let _ = exited.wait_for(|e| *e).await.is_ok();
    tokio::time::sleep(AFTER_EXIT_SILENCE).await;
}

/// The signals `run` passes on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            Some(()) = self.int.recv() => Signal::SIGINT,
            Some(()) = self.term.recv() => Signal::SIGTERM,
            Some(()) = self.hup.recv() => Signal::SIGHUP,
            else => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
        // Killed by SIGTERM (15) and SIGKILL (9).
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
