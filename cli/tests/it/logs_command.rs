//! `logstream logs` as a real process against `logstream dev`: the whole history in
//! order across pages, the newest N, JSON lines as the service sent them.

use crate::cli_support::*;
use crate::support::*;
use serde_json::{Value, json};

fn logs(env: &Env, user: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = logstream(&env.server.url());
    cmd.env("LOGSTREAM_TOKEN", viewer_token(user, 600))
        .arg("logs")
        .args(args);
    cmd
}

/// A finished job with 1 200 lines over three batches, a stderr line and a stage.
async fn finished_job(env: &Env) -> String {
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    for batch in 0..3 {
        env.post_lines(&job, &format!("batch{batch}"), 400).await;
    }
    env.post_json(
        &job,
        &json!({"lines": [{"stream": "stderr", "text": "careful"}]}),
    )
    .await;
    env.http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": "deploy", "status": "skipped"}))
        .send()
        .await
        .unwrap();
    env.set_status(&job, "ready").await;
    job
}

fn expected_text() -> Vec<String> {
    let mut lines = vec!["==> job running".to_owned()];
    for batch in 0..3 {
        lines.extend((0..400).map(|i| format!("batch{batch} {i}")));
    }
    lines.push("[stderr] careful".into());
    lines.push("==> stage deploy skipped".into());
    lines.push("==> job ready (after _)".into());
    lines
}

#[tokio::test]
async fn logs_prints_the_whole_history_in_order_across_pages() {
    let env = env().await;
    let job = finished_job(&env).await;
    let done = finish(logs(&env, "alice", &[&job])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let printed = any_duration(done.stdout.lines());
    assert_eq!(printed, expected_text());
}

#[tokio::test]
async fn logs_limit_prints_the_newest_entries_oldest_first() {
    let env = env().await;
    let job = finished_job(&env).await;
    let all = expected_text();
    for limit in [1usize, 3, 700, 5000] {
        let done = finish(logs(&env, "alice", &[&job, "--limit", &limit.to_string()])).await;
        assert_eq!(done.code, Some(0), "{}", done.stderr);
        let printed = any_duration(done.stdout.lines());
        let newest = &all[all.len().saturating_sub(limit)..];
        assert_eq!(printed, newest, "--limit {limit}");
    }
    let done = finish(logs(&env, "alice", &[&job, "--limit", "0"])).await;
    assert_ne!(done.code, Some(0), "a limit of 0 is refused");
}

#[tokio::test]
async fn logs_json_prints_each_entry_as_the_service_sent_it() {
    let env = env().await;
    let job = finished_job(&env).await;
    let done = finish(logs(&env, "alice", &[&job, "--json"])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let printed: Vec<Value> = done
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
        .collect();
    let stored = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    assert_eq!(printed, stored);
    assert_eq!(printed.len(), 1204);
}

#[tokio::test]
async fn logs_of_a_job_the_viewer_cannot_see_exits_2() {
    let env = env().await;
    let job = finished_job(&env).await;
    for (user, job) in [("mallory", job.clone()), ("alice", job_id("missing"))] {
        let done = finish(logs(&env, user, &[&job])).await;
        assert_eq!(done.code, Some(2));
        assert!(done.stderr.contains("not_found"), "{}", done.stderr);
        assert_eq!(done.stdout, "");
    }
}

#[tokio::test]
async fn logs_exits_like_tail_1_for_a_failed_job_0_for_one_still_running() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "line", 2).await;
    let done = finish(logs(&env, "alice", &[&job])).await;
    assert_eq!(done.code, Some(0), "running: {}", done.stderr);
    env.set_status(&job, "failed").await;
    for args in [vec![job.as_str()], vec![job.as_str(), "--limit", "1"]] {
        let done = finish(logs(&env, "alice", &args)).await;
        assert_eq!(done.code, Some(1), "{args:?}: {}", done.stderr);
        assert!(done.stdout.contains("==> job failed"), "{}", done.stdout);
    }
}

#[tokio::test]
async fn logs_raw_prints_the_raw_log_with_times_on_request_and_exits_like_tail() {
    let env = env().await;
    let job = finished_job(&env).await;
    let done = finish(logs(&env, "alice", &[&job, "--raw"])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    // The lines' text only: no markers, no stream prefix.
    let mut want: Vec<String> = Vec::new();
    for batch in 0..3 {
        want.extend((0..400).map(|i| format!("batch{batch} {i}")));
    }
    want.push("careful".into());
    assert_eq!(done.stdout.lines().collect::<Vec<_>>(), want);

    let done = finish(logs(&env, "alice", &[&job, "--raw", "--timestamps"])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let first = done.stdout.lines().next().unwrap();
    let (time, text) = first.split_once(' ').unwrap();
    assert_eq!(text, "batch0 0");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "ISO-8601 UTC with milliseconds: {time}"
    );
    assert_eq!(done.stdout.lines().count(), 1201);

    // A failed job exits 1, as `tail` and `logs` do; a wrong pair of flags is usage (2).
    let (failed, _) = env.create_job("alice").await;
    env.set_status(&failed, "failed").await;
    let done = finish(logs(&env, "alice", &[&failed, "--raw"])).await;
    assert_eq!((done.code, done.stdout.as_str()), (Some(1), ""));
    let done = finish(logs(&env, "alice", &[&job, "--raw", "--limit", "3"])).await;
    assert_eq!(done.code, Some(2), "{}", done.stderr);
    let done = finish(logs(&env, "alice", &[&job, "--timestamps"])).await;
    assert_eq!(done.code, Some(2), "{}", done.stderr);
}

#[tokio::test]
async fn the_raw_log_and_the_live_stream_come_from_the_stream_url() {
    let env = env().await;
    let job = finished_job(&env).await;
    // Everything else from --url; the raw log from where --stream-url says: nothing
    // listens there, so it fails.
    let mut cmd = logs(&env, "alice", &[&job, "--raw", "--retry-for", "1"]);
    cmd.env("LOGSTREAM_STREAM_URL", "http://127.0.0.1:1");
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(2), "{}", done.stdout);
    assert!(done.stderr.contains("no answer"), "{}", done.stderr);
    let mut cmd = logs(&env, "alice", &[&job, "--raw"]);
    cmd.env("LOGSTREAM_STREAM_URL", env.server.url());
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(done.stdout.lines().count(), 1201);
}

#[tokio::test]
async fn logs_shows_a_lines_own_colours_on_a_colour_terminal_and_its_text_elsewhere() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_json(
        &job,
        &json!({"lines": [{"text": "\u{1b}[1;32mok\u{1b}[0m \u{1b}]0;title\u{7}done"}]}),
    )
    .await;
    let done = finish(logs(&env, "alice", &[&job, "--color", "always"])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(done.stdout, "\u{1b}[1;32mok\u{1b}[0m done\u{1b}[0m\n");
    let done = finish(logs(&env, "alice", &[&job, "--color", "never"])).await;
    assert_eq!(done.stdout, "ok done\n");
}
