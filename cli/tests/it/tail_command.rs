//! `logstream tail` as a real process against `logstream dev`: markers, stderr
//! distinguishable, exit code from the final status, and a resume across a forced
//! disconnect with no gap and no duplicate.

use std::process::Stdio;

use crate::cli_support::*;
use crate::support::*;
use serde_json::json;

async fn post_stage(env: &Env, job: &str, name: &str, status: &str) {
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": name, "status": status}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
}

fn tail(env_url: &str, user: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = logstream(env_url);
    cmd.env("LOGSTREAM_TOKEN", viewer_token(user, 600))
        .arg("tail")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn tail_from_start_prints_lines_and_markers_then_exits_0_on_ready() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    post_stage(&env, &job, "build", "started").await;
    env.post_json(
        &job,
        &json!({"lines": [{"text": "compiling"}, {"stream": "stderr", "text": "warning: unused"}]}),
    )
    .await;
    let mut child = tail(&env.server.url(), "alice", &[&job, "--from-start"])
        .spawn()
        .unwrap();
    let (mut stdout, stderr) = readers(&mut child);
    stdout.until("warning: unused", 30).await;
    // Live from here on.
    env.post_lines(&job, "live", 2).await;
    post_stage(&env, &job, "build", "succeeded").await;
    env.set_status(&job, "ready").await;
    assert_eq!(
        exit_code(&mut child).await,
        Some(0),
        "{:?}",
        stderr.rest().await
    );
    assert_eq!(
        any_duration(stdout.rest().await),
        [
            "==> job running",
            "==> stage build started",
            "compiling",
            "[stderr] warning: unused",
            "live 0",
            "live 1",
            "==> stage build succeeded (after _)",
            "==> job ready (after _)",
        ]
    );
}

#[tokio::test]
async fn tail_without_from_start_shows_only_new_entries_and_exits_1_on_failed() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "old", 3).await;
    let mut child = tail(&env.server.url(), "alice", &[&job]).spawn().unwrap();
    let (stdout, stderr) = readers(&mut child);
    // Connected: the service has a feed for the job.
    wait_until("tail connected", 30, || async {
        env.server.sse().hub().feeds() == 1
    })
    .await;
    env.post_lines(&job, "new", 1).await;
    env.set_status(&job, "failed").await;
    assert_eq!(
        exit_code(&mut child).await,
        Some(1),
        "{:?}",
        stderr.rest().await
    );
    assert_eq!(
        any_duration(stdout.rest().await),
        ["new 0", "==> job failed (after _)"]
    );
}

#[tokio::test]
async fn stderr_is_red_on_a_terminal_unless_no_color_and_prefixed_elsewhere() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_json(
        &job,
        &json!({"lines": [{"stream": "stderr", "text": "boom"}]}),
    )
    .await;
    env.set_status(&job, "failed").await;
    let red = "\x1b[31mboom\x1b[0m";
    let plain = "[stderr] boom";
    // On a pipe.
    for (args, expected) in [
        (&["--color", "always"][..], red),
        (&["--color", "never"][..], plain),
        (&[][..], plain),
    ] {
        let mut cmd = tail(&env.server.url(), "alice", &[&job, "--from-start"]);
        cmd.args(args);
        let done = finish(cmd).await;
        assert_eq!(done.code, Some(1));
        assert_eq!(done.stdout.lines().next(), Some(expected), "{args:?}");
    }
    // On a terminal: util-linux `script` runs tail in a pseudo-terminal.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED the terminal half: `script` (util-linux) is not installed");
        return;
    }
    for (no_color, expected) in [(None, red), (Some("1"), plain)] {
        let inner = format!(
            "{} tail {job} --from-start",
            env!("CARGO_BIN_EXE_logstream")
        );
        let mut cmd = tokio::process::Command::new("script");
        cmd.env_remove("NO_COLOR")
            .env("LOGSTREAM_URL", env.server.url())
            .env("LOGSTREAM_TOKEN", viewer_token("alice", 600))
            .args(["-q", "-e", "-c", &inner, "/dev/null"])
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let done = finish(cmd).await;
        assert_eq!(done.code, Some(1), "{}", done.stderr);
        let first = done.stdout.lines().next().map(|l| l.trim_end_matches('\r'));
        assert_eq!(first, Some(expected), "NO_COLOR={no_color:?}");
    }
}

#[tokio::test]
async fn tail_resumes_across_a_forced_disconnect_without_gap_or_duplicate() {
    let redis = logstream_testkit::redis_server::shared().unwrap();
    let redis_url = redis.url();
    let pairs = [("REDIS_URL", redis_url.as_str())];
    let env = env_with(&pairs).await;
    let (job, _) = env.create_job("alice").await;
    let url = env.server.url();
    let addr = env.server.addr.to_string();
    env.post_lines(&job, "first", 500).await;
    let mut child = tail(&url, "alice", &[&job, "--from-start"])
        .spawn()
        .unwrap();
    let (mut stdout, mut stderr) = readers(&mut child);
    stdout.until("first 499", 30).await;

    // Stopping the server ends the stream without `done`; tail must notice and retry.
    let Env {
        server,
        http,
        archive_dir,
        keep_archive_dir,
    } = env;
    server.stop().await.unwrap();
    stderr.until("reconnecting", 30).await;
    let env = Env {
        server: dev_at(&addr, &pairs).await,
        http,
        archive_dir,
        keep_archive_dir,
    };
    // Some lines before tail is back, some after: both must come through once.
    env.post_lines(&job, "second", 500).await;
    stdout.until("second 499", 30).await;
    env.post_lines(&job, "third", 500).await;
    env.set_status(&job, "failed").await;
    assert_eq!(exit_code(&mut child).await, Some(1));

    let printed = any_duration(stdout.rest().await);
    let mut expected: Vec<String> = Vec::new();
    for prefix in ["first", "second", "third"] {
        expected.extend((0..500).map(|i| format!("{prefix} {i}")));
    }
    expected.push("==> job failed (after _)".into());
    assert_eq!(printed, expected, "every line once, in order");
}

#[tokio::test]
async fn tail_without_a_token_or_for_someone_elses_job_exits_2() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut cmd = logstream(&env.server.url());
    cmd.args(["tail", &job]);
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(2));
    assert!(done.stderr.contains("LOGSTREAM_TOKEN"), "{}", done.stderr);

    let done = finish(tail(
        &env.server.url(),
        "mallory",
        &[&job, "--from-start", "--wait", "0"],
    ))
    .await;
    assert_eq!(done.code, Some(2));
    assert!(done.stderr.contains("not_found"), "{}", done.stderr);
    // Waited for, within the bound, then given up on.
    let started = std::time::Instant::now();
    let done = finish(tail(&env.server.url(), "mallory", &[&job, "--wait", "2"])).await;
    assert_eq!(done.code, Some(2));
    assert!(done.stderr.contains("waiting up to 2 s"), "{}", done.stderr);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    let done = finish(tail(&env.server.url(), "alice", &["bad id"])).await;
    assert_eq!(done.code, Some(2));
}

#[tokio::test]
async fn tail_waits_for_a_job_that_does_not_exist_yet_then_follows_it() {
    let env = env().await;
    let job = job_id("later");
    let mut child = tail(&env.server.url(), "alice", &[&job]).spawn().unwrap();
    let (mut stdout, mut stderr) = readers(&mut child);
    stderr.until("does not exist yet", 30).await;
    let res = env.create_job_as(&job, "alice").await;
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    env.set_status(&job, "running").await;
    // The job is followed live from when tail finds it: keep posting until a line
    // shows up, then end the job.
    let mut n = 0;
    let started = std::time::Instant::now();
    loop {
        env.post_lines(&job, &format!("round {n}"), 1).await;
        let seen = tokio::time::timeout(
            std::time::Duration::from_millis(1500),
            stdout.until("round", 2),
        )
        .await;
        if seen.is_ok() {
            break;
        }
        n += 1;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "tail never showed a line"
        );
    }
    env.set_status(&job, "ready").await;
    assert_eq!(
        exit_code(&mut child).await,
        Some(0),
        "{:?}",
        stderr.rest().await
    );
}

#[tokio::test]
async fn tail_of_a_job_that_has_ended_prints_it_whole_and_exits_with_its_status() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "line", 3).await;
    env.set_status(&job, "failed").await;
    let done = finish(tail(&env.server.url(), "alice", &[&job])).await;
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    assert_eq!(
        any_duration(done.stdout.lines()),
        [
            "==> job running",
            "line 0",
            "line 1",
            "line 2",
            "==> job failed (after _)"
        ]
    );
}

#[tokio::test]
async fn tail_of_a_job_deleted_meanwhile_says_so_and_exits_2() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "before", 1).await;
    let mut child = tail(&env.server.url(), "alice", &[&job, "--from-start"])
        .spawn()
        .unwrap();
    let (mut stdout, stderr) = readers(&mut child);
    stdout.until("before 0", 30).await;
    let res = env
        .http
        .delete(env.url(&format!("/jobs/{job}")))
        .bearer_auth(INGEST_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::NO_CONTENT);
    // 2, as for every view that could not go on (0 and 1 are the job's own ending).
    assert_eq!(exit_code(&mut child).await, Some(2));
    let said = stderr.rest().await;
    assert!(
        said.iter()
            .any(|line| line == &format!("logstream tail: job {job} was deleted")),
        "{said:?}"
    );
}
