//! `logstream run` as a real process against `logstream dev`: every line of a command
//! arrives once and in order per stream, through server restarts and Redis stalls;
//! exit codes, signals, stages and job creation behave as the SPEC says.

use std::process::Stdio;

use crate::cli_support::*;
use crate::support::*;

/// A Perl one-liner (Perl is part of every Debian and Ubuntu base system).
fn perl(script: &str) -> Vec<String> {
    vec!["perl".into(), "-e".into(), script.into()]
}

/// A command printing `{prefix} 0` … `{prefix} {n-1}` on stdout, waiting for the file
/// `gate` to exist, then the same with `{then}` on stdout.
fn gated(prefix: &str, then: &str, n: usize, gate: &std::path::Path) -> Vec<String> {
    let mut cmd = perl(&format!(
        "$| = 1; print \"{prefix} $_\\n\" for 0..{last}; \
         select(undef, undef, undef, 0.01) until -e $ARGV[0]; \
         print \"{then} $_\\n\" for 0..{last};",
        last = n - 1
    ));
    cmd.push(gate.display().to_string());
    cmd
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

/// Asserts `got == want`, saying where they first differ (not two 50 000-line dumps).
fn assert_same_lines(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    let around = |v: &[String]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
    panic!(
        "{what}: {} lines, {} wanted; first difference at {at}: got {:?}, wanted {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    );
}

async fn last_text(env: &Env, job: &str) -> Option<String> {
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?limit=1"))
        .await;
    page["lines"][0]["text"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_hundred_thousand_interleaved_lines_arrive_once_and_in_order_per_stream() {
    let redis = logstream_testkit::redis_server::shared().unwrap();
    let env = env_with(&[("REDIS_URL", &redis.url()), ("LOGSTREAM_MAXLEN", "1000000")]).await;
    let (job, _) = env.create_job("alice").await;
    let mut cmd = logstream(&env.server.url());
    cmd.args(["run", "--quiet", "--job", &job, "--"]).args(perl(
        "for my $i (0..49999) { print STDOUT \"out $i\\n\"; print STDERR \"err $i\\n\"; }",
    ));
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);

    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    assert_same_lines(
        &texts_of(&entries, "stdout"),
        &numbered("out", 50_000),
        "stdout",
    );
    assert_same_lines(
        &texts_of(&entries, "stderr"),
        &numbered("err", 50_000),
        "stderr",
    );
    assert_eq!(
        entries.len(),
        100_002,
        "the lines and two status entries, nothing else"
    );
    assert_eq!(statuses(&entries), ["running", "ready"]);
    assert_eq!(entries[0]["status"], "running", "running comes first");
    assert_eq!(
        entries.last().unwrap()["status"],
        "ready",
        "ready comes last"
    );
}

#[tokio::test]
async fn a_server_restarted_mid_run_loses_and_doubles_nothing() {
    // The server brought back archives where the first one did (the shared folder).
    let redis = shared_redis_url();
    let pairs = [("REDIS_URL", redis.as_str())];
    let env = env_with(&pairs).await;
    let addr = env.server.addr.to_string();
    let url = env.server.url();
    let (job, _) = env.create_job("alice").await;
    let dir = tempdir("restart");
    let gate = dir.join("gate");

    let mut cmd = logstream(&url);
    cmd.args(["run", "--quiet", "--job", &job, "--"])
        .args(gated("before", "after", 10_000, &gate))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = LineReader::new(child.stderr.take().unwrap());

    wait_until("the first half stored", 60, || async {
        last_text(&env, &job).await.as_deref() == Some("before 9999")
    })
    .await;
    let Env { server, http, .. } = env;
    server.stop().await.unwrap();
    std::fs::write(&gate, b"").unwrap();
    // The second half meets a closed port: wait until `run` says it is retrying.
    stderr.until("retrying", 60).await;
    let server = dev_at(&addr, &pairs).await;

    assert_eq!(
        exit_code(&mut child).await,
        Some(0),
        "{:?}",
        stderr.rest().await
    );
    let entries = all_entries(&http, &url, &job, "alice").await;
    let mut expected = numbered("before", 10_000);
    expected.extend(numbered("after", 10_000));
    assert_eq!(texts_of(&entries, "stdout"), expected);
    assert_eq!(statuses(&entries), ["running", "ready"]);
    drop(server);
}

#[tokio::test]
async fn a_redis_stall_that_loses_answers_doubles_nothing() {
    // A Redis of its own: pausing it must not stall other tests.
    let env = env_with(&[]).await;
    let (job, _) = env.create_job("alice").await;
    let dir = tempdir("stall");
    let gate = dir.join("gate");
    let mut cmd = logstream(&env.server.url());
    cmd.env("RUST_LOG", "info")
        .args(["run", "--quiet", "--job", &job, "--"])
        .args(gated("before", "after", 5_000, &gate))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = LineReader::new(child.stderr.take().unwrap());
    wait_until("the first half stored", 60, || async {
        last_text(&env, &job).await.as_deref() == Some("before 4999")
    })
    .await;

    // Writes wait in Redis for 5 s: the service times out after 3 s and answers 503,
    // then Redis runs the queued append anyway. The retry must count as a duplicate.
    let mut redis = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5000)
        .arg("WRITE")
        .query_async(&mut redis)
        .await
        .unwrap();
    std::fs::write(&gate, b"").unwrap();
    stderr.until("503", 60).await;

    assert_eq!(exit_code(&mut child).await, Some(0));
    let said = stderr.rest().await;
    assert!(
        said.iter().any(|l| l.contains("had been stored already")),
        "the stalled append ran after all, and its retry was a duplicate: {said:?}"
    );
    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    let mut expected = numbered("before", 5_000);
    expected.extend(numbered("after", 5_000));
    assert_eq!(texts_of(&entries, "stdout"), expected);
    assert_eq!(statuses(&entries), ["running", "ready"]);
}

#[tokio::test]
async fn exit_codes_propagate_and_decide_the_final_status() {
    let env = env().await;
    let cases: [(&[&str], i32, &str); 4] = [
        (&["true"], 0, "ready"),
        (&["sh", "-c", "echo bye; exit 3"], 3, "failed"),
        (&["sh", "-c", "kill -KILL $$"], 137, "failed"),
        (&["no-such-command-for-logstream"], 127, "failed"),
    ];
    for (command, code, status) in cases {
        let (job, _) = env.create_job("alice").await;
        let mut cmd = logstream(&env.server.url());
        cmd.args(["run", "-q", "--job", &job, "--"]).args(command);
        let done = finish(cmd).await;
        assert_eq!(done.code, Some(code), "{command:?}: {}", done.stderr);
        let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
        assert_eq!(statuses(&entries), ["running", status], "{command:?}");
        // The job carries the command's exit code, and how long it ran.
        let (_, info) = env.get_as("alice", &format!("/jobs/{job}")).await;
        assert_eq!(info["exit_code"], code, "{command:?}");
        assert!(info["duration_ms"].is_u64(), "{command:?}: {info}");
        let system = texts_of(&entries, "system");
        if code == 0 {
            assert!(system.is_empty(), "{system:?}");
        } else {
            assert_eq!(system.len(), 1, "{command:?}: {system:?}");
        }
    }
    // What the log says about the last two.
    let (job, _) = env.create_job("alice").await;
    let mut cmd = logstream(&env.server.url());
    cmd.args([
        "run",
        "-q",
        "--job",
        &job,
        "--",
        "no-such-command-for-logstream",
    ]);
    let done = finish(cmd).await;
    assert!(
        done.stderr
            .contains("cannot run no-such-command-for-logstream"),
        "{}",
        done.stderr
    );
    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    assert!(
        texts_of(&entries, "system")[0]
            .starts_with("logstream: cannot run no-such-command-for-logstream")
    );
}

#[tokio::test]
async fn sigterm_is_passed_to_the_command_and_fails_the_job() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut cmd = logstream(&env.server.url());
    cmd.args(["run", "--job", &job, "--", "sh", "-c"])
        .arg("trap 'echo got TERM; exit 143' TERM; echo waiting; while :; do sleep 0.05; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (mut stdout, _stderr) = readers(&mut child);
    // Echoed by `run` once the command prints it: the command is running.
    stdout.until("waiting", 30).await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut child).await, Some(143));
    assert!(
        stdout.rest().await.contains(&"got TERM".to_owned()),
        "the command saw TERM"
    );

    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    assert_eq!(texts_of(&entries, "stdout"), ["waiting", "got TERM"]);
    let system = texts_of(&entries, "system");
    assert!(
        system[0].contains("received SIGTERM, passed it to the command"),
        "{system:?}"
    );
    assert_eq!(statuses(&entries), ["running", "failed"]);
}

#[tokio::test]
async fn a_signal_fails_the_job_even_when_the_command_then_exits_0() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut cmd = logstream(&env.server.url());
    cmd.args(["run", "--job", &job, "--", "sh", "-c"])
        .arg("trap 'exit 0' INT; echo waiting; while :; do sleep 0.05; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (mut stdout, _stderr) = readers(&mut child);
    stdout.until("waiting", 30).await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(exit_code(&mut child).await, Some(0), "the command's code");
    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    assert_eq!(statuses(&entries), ["running", "failed"]);
}

#[tokio::test]
async fn stages_wrap_each_step_and_keep_open_leaves_the_job_running_between_steps() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let steps: [(&str, &[&str], &[&str]); 2] = [
        (
            "install",
            &["--keep-open"],
            &["sh", "-c", "echo installing"],
        ),
        ("build", &[], &["sh", "-c", "echo building; echo built"]),
    ];
    for (stage, extra, command) in steps {
        let mut cmd = logstream(&env.server.url());
        cmd.args(["run", "-q", "--job", &job, "--stage", stage])
            .args(extra)
            .arg("--")
            .args(command);
        let done = finish(cmd).await;
        assert_eq!(done.code, Some(0), "{}", done.stderr);
    }
    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    assert_eq!(
        summary(&entries),
        [
            "status running",
            "stage install started",
            "stdout installing",
            "stage install succeeded",
            "stage build started",
            "stdout building",
            "stdout built",
            "stage build succeeded",
            "status ready",
        ],
        "the second run's batches were not taken for duplicates of the first's"
    );

    // A failing step fails its stage and the job, --keep-open or not.
    let (job, _) = env.create_job("alice").await;
    let mut cmd = logstream(&env.server.url());
    cmd.args([
        "run",
        "-q",
        "--job",
        &job,
        "--stage",
        "test",
        "--keep-open",
        "--",
        "false",
    ]);
    assert_eq!(finish(cmd).await.code, Some(1));
    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    let summary = summary(&entries);
    assert_eq!(summary[1], "stage test started");
    assert_eq!(
        &summary[summary.len() - 2..],
        ["stage test failed", "status failed"]
    );
}

#[tokio::test]
async fn partial_lines_invalid_utf8_crlf_and_long_lines_are_passed_on() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut cmd = logstream(&env.server.url());
    cmd.args(["run", "-q", "--job", &job, "--"]).args(perl(
        "print \"crlf\\r\\n\"; print \"bad \\xff byte\\n\"; print \"\\e[32mgreen\\e[0m\\n\"; \
         print \"x\" x 100000, \"\\n\"; print \"no newline at the end\";",
    ));
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
    let texts = texts_of(&entries, "stdout");
    assert_eq!(texts.len(), 5, "{texts:?}");
    assert_eq!(texts[0], "crlf");
    assert_eq!(texts[1], "bad \u{fffd} byte");
    assert_eq!(texts[2], "green", "the service strips colour codes");
    assert!(texts[3].starts_with("xxxx"), "the long line");
    assert!(
        texts[3].ends_with("bytes]"),
        "cut by the service: {}",
        &texts[3][16_000..]
    );
    assert!(texts[3].len() <= 16 * 1024);
    assert_eq!(texts[4], "no newline at the end");
}

#[tokio::test]
async fn output_is_echoed_unless_quiet() {
    let env = env().await;
    for quiet in [false, true] {
        let (job, _) = env.create_job("alice").await;
        let mut cmd = logstream(&env.server.url());
        cmd.args(["run", "--job", &job]);
        if quiet {
            cmd.arg("--quiet");
        }
        cmd.args(["--", "sh", "-c", "echo to-out; echo to-err >&2"]);
        let done = finish(cmd).await;
        assert_eq!(done.code, Some(0));
        assert_eq!(done.stdout, if quiet { "" } else { "to-out\n" });
        assert_eq!(done.stderr.contains("to-err"), !quiet, "{}", done.stderr);
        let entries = all_entries(&env.http, &env.server.url(), &job, "alice").await;
        assert_eq!(texts_of(&entries, "stdout"), ["to-out"]);
        assert_eq!(texts_of(&entries, "stderr"), ["to-err"]);
    }
}

#[tokio::test]
async fn create_makes_a_job_its_owner_can_read_and_reuses_an_existing_one() {
    let env = env().await;
    let job = job_id("created");
    for step in ["one", "two"] {
        let mut cmd = logstream(&env.server.url());
        cmd.env("DEPLOY_TOKEN", "hunter2-deploy-token")
            .args(["run", "-q", "--create", "--owner", "bob", "--job", &job])
            .args(["--secret-env", "DEPLOY_TOKEN", "--keep-open", "--"])
            .args(["sh", "-c", &format!("echo {step} uses $DEPLOY_TOKEN")]);
        let done = finish(cmd).await;
        assert_eq!(done.code, Some(0), "{step}: {}", done.stderr);
    }
    let (status, info) = env.get_as("bob", &format!("/jobs/{job}")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(info["status"], "running", "--keep-open");
    let entries = all_entries(&env.http, &env.server.url(), &job, "bob").await;
    assert_eq!(
        texts_of(&entries, "stdout"),
        ["one uses ***", "two uses ***"]
    );

    // Without --job the service picks the id, and run says which.
    let mut cmd = logstream(&env.server.url());
    cmd.args(["run", "-q", "--create", "--owner", "bob", "--", "true"]);
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let picked = done
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("logstream: job "))
        .expect("the job id on stderr")
        .to_owned();
    let (_, info) = env.get_as("bob", &format!("/jobs/{picked}")).await;
    assert_eq!(info["status"], "ready");
}

#[tokio::test]
async fn create_without_owner_says_what_is_missing_and_nothing_else() {
    let env = env().await;
    let mut cmd = logstream(&env.server.url());
    // The ingest key and the URL come from the environment (as `logstream` sets them).
    cmd.args([
        "run",
        "--create",
        "--job",
        &job_id("no-owner"),
        "--",
        "true",
    ]);
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(2), "a usage error: {}", done.stderr);
    assert!(
        done.stderr.contains("--create needs --owner USER"),
        "{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("--ingest-key") && !done.stderr.contains("--url"),
        "flags the environment gave are not listed as required: {}",
        done.stderr
    );
}

#[tokio::test]
async fn a_finished_job_is_refused_before_the_command_runs() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "failed").await;
    let dir = tempdir("refused");
    let marker = dir.join("ran");
    let mut cmd = logstream(&env.server.url());
    cmd.args(["run", "-q", "--job", &job, "--", "touch"])
        .arg(&marker);
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(125), "{}", done.stderr);
    assert!(
        done.stderr.contains("marking the job running"),
        "{}",
        done.stderr
    );
    assert!(!marker.exists(), "the command did not run");

    // So is an unknown job, with a hint; and a missing key.
    let unknown = job_id("unknown");
    let mut cmd = logstream(&env.server.url());
    cmd.args(["run", "-q", "--job", &unknown, "--", "true"]);
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(125));
    assert!(
        done.stderr
            .contains(&format!("job {unknown} does not exist"))
            && done.stderr.contains("--create --owner USER"),
        "{}",
        done.stderr
    );
    let mut cmd = logstream(&env.server.url());
    cmd.env_remove("LOGSTREAM_INGEST_KEY")
        .args(["run", "--job", &job, "--", "true"]);
    let done = finish(cmd).await;
    assert_eq!(done.code, Some(125));
    assert!(
        done.stderr.contains("LOGSTREAM_INGEST_KEY"),
        "{}",
        done.stderr
    );
}

/// A fresh directory under the system temp dir.
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(job_id(&format!("logstream-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_signal_while_the_service_is_down_stops_run_waiting_for_it() {
    let env = env().await;
    let url = env.server.url();
    let (job, _) = env.create_job("alice").await;
    let dir = tempdir("interrupted");
    let gate = dir.join("gate");
    let mut cmd = logstream(&url);
    cmd.args(["run", "--quiet", "--job", &job, "--"])
        .args(gated("before", "after", 1, &gate))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = LineReader::new(child.stderr.take().unwrap());
    wait_until("the first line stored", 60, || async {
        last_text(&env, &job).await.as_deref() == Some("before 0")
    })
    .await;
    env.server.stop().await.unwrap();
    std::fs::write(&gate, b"").unwrap();
    // The command has printed its last line and ended; run retries the service...
    stderr.until("retrying", 60).await;
    // ... until told to stop.
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut child).await, Some(0), "the command's code");
    let said = stderr.rest().await.join("\n");
    assert!(said.contains("was not marked finished"), "{said}");
}
