//! Team access over HTTP and WebSocket through `logstream dev`: a job created with an
//! `org` is read by members of that org (the JWT's org claim) on every read route,
//! exactly as its owner reads it, including once Redis has forgotten the job; anyone
//! else still gets 404.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;
use logstream_testkit::fixtures::viewer_token_with;
use logstream_testkit::sse::SseClient;

/// Creates a job of `owner` in `org`; returns its id.
async fn create_in_org(env: &Env, owner: &str, org: &Value) -> (StatusCode, Value) {
    let res = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"owner": owner, "org": org}))
        .send()
        .await
        .unwrap();
    let code = res.status();
    (code, res.json().await.unwrap())
}

/// The status of every read route of `job` for `token`: info, a page, a search, the
/// raw log, the SSE stream and a WebSocket connection.
pub async fn read_statuses(env: &Env, job: &str, token: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for path in [
        format!("/jobs/{job}"),
        format!("/jobs/{job}/logs"),
        format!("/jobs/{job}/logs?q=hello"),
        format!("/jobs/{job}/logs/raw"),
    ] {
        let res = env
            .http
            .get(env.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        out.push(res.status().as_u16());
    }
    let res = env
        .http
        .get(env.url(&format!("/jobs/{job}/logs/stream?from=start")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    out.push(res.status().as_u16());
    drop(res);
    let url = format!(
        "ws://{}/ws?job_id={job}&access_token={token}",
        env.server.addr
    );
    out.push(match tokio_tungstenite::connect_async(url).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("websocket: {other}"),
    });
    out
}

pub const READ: [u16; 6] = [200, 200, 200, 200, 200, 101];
pub const HIDDEN: [u16; 6] = [404, 404, 404, 404, 404, 404];

#[tokio::test]
async fn members_of_the_jobs_org_read_it_everywhere_and_others_get_404() {
    let env = env().await;
    let (code, created) = create_in_org(&env, "alice", &json!("acme")).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let job = created["job_id"].as_str().unwrap().to_owned();
    env.post_lines(&job, "hello", 3).await;

    let (_, info) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(info["org"], "acme");
    assert_eq!(
        read_statuses(&env, &job, &viewer_token("alice", 300)).await,
        READ
    );
    let bob_in_acme = viewer_token_with("bob", json!({"org_id": "acme"}));
    assert_eq!(read_statuses(&env, &job, &bob_in_acme).await, READ);
    let page: Value = env
        .http
        .get(env.url(&format!("/jobs/{job}/logs?q=hello")))
        .bearer_auth(&bob_in_acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["lines"].as_array().unwrap().len(), 3);
    for other in [
        viewer_token_with("bob", json!({"org_id": "other"})),
        viewer_token_with("bob", json!({"org_id": "ACME"})),
        viewer_token_with("bob", json!({})),
        viewer_token_with("bob", json!({"o": {"id": "acme"}})),
    ] {
        assert_eq!(read_statuses(&env, &job, &other).await, HIDDEN);
    }

    // A job without an org stays its owner's alone, and its info has no `org`.
    let (plain, _) = env.create_job("alice").await;
    assert_eq!(read_statuses(&env, &plain, &bob_in_acme).await, HIDDEN);
    let (_, info) = env.get_as("alice", &format!("/jobs/{plain}")).await;
    assert_eq!(info["job_id"], plain.as_str());
    assert!(info.get("org").is_none(), "{info}");
}

#[tokio::test]
async fn the_org_claim_can_be_a_dotted_path_and_the_org_rule_holds_from_the_archive() {
    let env = env_with(&[("LOGSTREAM_JWT_ORG_CLAIM", "o.id")]).await;
    let (_, created) = create_in_org(&env, "alice", &json!("org_2abc")).await;
    let job = created["job_id"].as_str().unwrap().to_owned();
    env.set_status(&job, "running").await;
    env.post_lines(&job, "hello", 2).await;
    env.set_status(&job, "ready").await;
    let v2 = viewer_token_with("bob", json!({"o": {"id": "org_2abc", "rol": "admin"}}));
    let flat = viewer_token_with("bob", json!({"org_id": "org_2abc"}));
    let get = |token: String, path: String| {
        let env = &env;
        async move {
            env.http
                .get(env.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        get(v2.clone(), format!("/jobs/{job}/logs")).await,
        StatusCode::OK
    );
    assert_eq!(
        get(flat.clone(), format!("/jobs/{job}/logs")).await,
        StatusCode::NOT_FOUND,
        "only the configured claim counts"
    );

    // Archived, then forgotten by Redis: the manifest carries the org.
    env.wait_for_manifest(&job, "archived whole", |m| m["complete"] == true)
        .await;
    env.forget_in_redis(&job).await;
    let res = env
        .http
        .get(env.url(&format!("/jobs/{job}")))
        .bearer_auth(&v2)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["org"], "org_2abc");
    assert_eq!(
        get(v2, format!("/jobs/{job}/logs/raw")).await,
        StatusCode::OK
    );
    assert_eq!(
        get(flat, format!("/jobs/{job}")).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_org_must_be_1_to_128_of_letters_digits_underscore_and_dash() {
    let env = env().await;
    for bad in [
        json!(""),
        json!("a b"),
        json!("acme/eng"),
        json!("é"),
        json!("x".repeat(129)),
        json!(42),
    ] {
        let (code, body) = create_in_org(&env, "alice", &bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad} → {body}");
    }
    let (code, _) = create_in_org(&env, "alice", &json!("x".repeat(128))).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = create_in_org(&env, "alice", &json!("Org_2-x")).await;
    assert_eq!(code, StatusCode::CREATED);
}

/// `POST /jobs/{job}/share` with `body` as the holder of `token`.
async fn share(env: &Env, job: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/share")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let code = res.status();
    (code, res.json().await.unwrap_or(Value::Null))
}

/// `DELETE /jobs/{job}/share` as the holder of `token`.
async fn revoke(env: &Env, job: &str, token: &str) -> StatusCode {
    env.http
        .delete(env.url(&format!("/jobs/{job}/share")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

const REFUSED: [u16; 6] = [401, 401, 401, 401, 401, 401];

#[tokio::test]
async fn a_share_link_reads_its_job_only_until_revoked_or_expired() {
    let env = env().await;
    let (_, created) = create_in_org(&env, "alice", &json!("acme")).await;
    let job = created["job_id"].as_str().unwrap().to_owned();
    env.post_lines(&job, "hello", 2).await;
    let (other, _) = env.create_job("alice").await;
    let alice = viewer_token("alice", 300);

    let before = logstream_core::model::now_ms();
    let (code, link) = share(&env, &job, &alice, json!({})).await;
    assert_eq!(code, StatusCode::CREATED, "{link}");
    let token = link["token"].as_str().unwrap().to_owned();
    let expires_at = link["expires_at"].as_u64().unwrap();
    let day = 24 * 3600 * 1000;
    assert!((before + day - 1_000..=before + day + 2_000).contains(&expires_at));

    // Every read route of this job; nothing of another job; no writes, no sharing.
    assert_eq!(read_statuses(&env, &job, &token).await, READ);
    assert_eq!(read_statuses(&env, &other, &token).await, HIDDEN);
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/logs")))
        .bearer_auth(&token)
        .json(&json!({"lines": [{"text": "forged"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "no writes");
    assert_eq!(
        share(&env, &job, &token, json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(revoke(&env, &job, &token).await, StatusCode::FORBIDDEN);

    // Revoked: this link and every other of the job, at once; a new one works.
    let (_, second) = share(&env, &job, &alice, json!({"ttl_secs": 600})).await;
    let second = second["token"].as_str().unwrap().to_owned();
    let bob_in_acme = viewer_token_with("bob", json!({"org_id": "acme"}));
    assert_eq!(
        revoke(&env, &job, &bob_in_acme).await,
        StatusCode::NO_CONTENT,
        "org members may"
    );
    assert_eq!(read_statuses(&env, &job, &token).await, REFUSED);
    assert_eq!(read_statuses(&env, &job, &second).await, REFUSED);
    // Expiry is in whole seconds: a 3 s link issued late in a second still reads for
    // over 2 s, and has expired 4.1 s after it was made.
    let (_, third) = share(&env, &job, &alice, json!({"ttl_secs": 3})).await;
    let made = std::time::Instant::now();
    let third = third["token"].as_str().unwrap().to_owned();
    assert_eq!(read_statuses(&env, &job, &third).await, READ);
    tokio::time::sleep(std::time::Duration::from_millis(4_100).saturating_sub(made.elapsed()))
        .await;
    assert_eq!(read_statuses(&env, &job, &third).await, REFUSED, "expired");

    // A link cannot be stretched or moved: any change breaks its signature.
    let forged = second.replacen(&job, &other, 1);
    assert_eq!(read_statuses(&env, &other, &forged).await, REFUSED);
}

#[tokio::test]
async fn sharing_refuses_bad_ttls_strangers_and_someone_elses_job() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let alice = viewer_token("alice", 300);
    for bad in [json!(0), json!(-1), json!(604_801), json!("60"), json!(1.5)] {
        let (code, body) = share(&env, &job, &alice, json!({ "ttl_secs": bad })).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad} → {body}");
    }
    assert_eq!(
        share(&env, &job, &alice, json!({"ttl_secs": 604_800}))
            .await
            .0,
        StatusCode::CREATED
    );
    let mallory = viewer_token("mallory", 300);
    assert_eq!(
        share(&env, &job, &mallory, json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(revoke(&env, &job, &mallory).await, StatusCode::NOT_FOUND);
    assert_eq!(
        share(&env, "no-such-job", &alice, json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/share")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_open_stream_of_a_share_link_ends_when_the_link_is_revoked() {
    let env = env_with(&[("LOGSTREAM_HEARTBEAT_SECS", "1")]).await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "before", 1).await;
    let alice = viewer_token("alice", 300);
    let (_, link) = share(&env, &job, &alice, json!({})).await;
    let token = link["token"].as_str().unwrap();
    let mut stream = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?from=start&access_token={token}"),
        &[],
    )
    .await;
    assert_eq!(stream.status, StatusCode::OK);
    let mut texts = Vec::new();
    while !texts.iter().any(|t: &String| t == "before 0") {
        let frame = stream.next_entry().await.expect("replayed");
        texts.extend(frame.json()["text"].as_str().map(str::to_owned));
    }
    assert_eq!(revoke(&env, &job, &alice).await, StatusCode::NO_CONTENT);
    // Closed within a heartbeat interval or two, without `done`.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match stream.next(std::time::Duration::from_secs(5)).await {
                None => return true,
                Some(frame) if frame.event.as_deref() == Some("done") => return false,
                Some(_) => {}
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true), "the stream closed, without done");
}

#[tokio::test]
async fn an_archived_jobs_id_stays_taken_once_redis_forgets_it_and_its_share_links_read_only_it() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "alice's", 3).await;
    env.set_status(&job, "ready").await;
    let (code, link) = share(&env, &job, &viewer_token("alice", 60), json!({})).await;
    assert_eq!(code, StatusCode::CREATED);
    let link = link["token"].as_str().unwrap().to_owned();
    env.wait_for_manifest(&job, "archived whole", |m| m["complete"] == true)
        .await;
    env.forget_in_redis(&job).await;

    // The id is the archived job's: creating another job under it is refused.
    let res = env.create_job_as(&job, "mallory").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "job_exists"
    );
    // So the old job is still whole, its owner's, and its share link reads it.
    assert_eq!(
        env.get_as("mallory", &format!("/jobs/{job}")).await.0,
        StatusCode::NOT_FOUND
    );
    let res = env
        .http
        .get(env.url(&format!("/jobs/{job}/logs?access_token={link}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = res.json().await.unwrap();
    assert_eq!(
        texts(&page["lines"]),
        ["alice's 0", "alice's 1", "alice's 2"]
    );
}

#[tokio::test]
async fn creating_a_job_while_the_archive_cannot_be_asked_is_503_and_a_retry_creates_it() {
    let env = env().await;
    let job = job_id("unasked");
    // A file where the job's archive folder would be: reading its manifest fails
    // (not a directory), as an unreachable archive store would.
    let blocker = env.archive_dir.join("build-logs").join(&job);
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a folder").unwrap();
    let create = || env.create_job_as(&job, "alice");
    let res = create().await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );
    std::fs::remove_file(&blocker).unwrap();
    assert_eq!(create().await.status(), StatusCode::CREATED);
}

/// Range reads (`XRANGE`, `XREVRANGE`) Redis has served so far.
async fn range_reads(env: &Env) -> u64 {
    let mut redis = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_xrange:") || l.starts_with("cmdstat_xrevrange:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn a_search_by_someone_who_cannot_read_the_job_reads_none_of_it() {
    // A Redis of its own, and no segment due during the test: range reads are ours.
    let env = env_with(&[("LOGSTREAM_SEGMENT_LINES", "1000000")]).await;
    let (job, _) = env.create_job("alice").await;
    for batch in 0..3 {
        env.post_lines(&job, &format!("batch {batch}"), 5_000).await;
    }
    let path = format!("/jobs/{job}/logs?q=matches-nothing");
    let before = range_reads(&env).await;
    assert_eq!(env.get_as("mallory", &path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        range_reads(&env).await,
        before,
        "mallory's search read the job"
    );
    // The owner's search does read it (what the count above would have shown).
    let (code, found) = env.get_as("alice", &path).await;
    assert_eq!(code, StatusCode::OK);
    assert!(found["lines"].as_array().unwrap().is_empty(), "{found}");
    assert!(range_reads(&env).await > before);
}

#[tokio::test]
async fn share_links_stop_working_when_redis_loses_their_record_and_revoked_ones_stay_dead() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let owner = viewer_token("alice", 60);
    let (_, revoked) = share(&env, &job, &owner, json!({})).await;
    assert_eq!(revoke(&env, &job, &owner).await, StatusCode::NO_CONTENT);
    let (_, live) = share(&env, &job, &owner, json!({})).await;
    let read = |link: &Value| {
        let url = env.url(&format!(
            "/jobs/{job}?access_token={}",
            link["token"].as_str().unwrap()
        ));
        let http = env.http.clone();
        async move { http.get(url).send().await.unwrap().status() }
    };
    assert_eq!(read(&revoked).await, StatusCode::UNAUTHORIZED);
    assert_eq!(read(&live).await, StatusCode::OK);

    // The record is evicted: neither link reads the job; the revoked one is not back.
    let mut redis = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("job:{{{job}}}:share"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(read(&revoked).await, StatusCode::UNAUTHORIZED);
    assert_eq!(read(&live).await, StatusCode::UNAUTHORIZED);
    // A link made since works, and only it.
    let (_, fresh) = share(&env, &job, &owner, json!({})).await;
    assert_eq!(read(&fresh).await, StatusCode::OK);
    assert_eq!(read(&live).await, StatusCode::UNAUTHORIZED);
}
