//! The history routes once Redis has forgotten a job: served from the S3 archive (a
//! real S3-compatible server started by the test support) with the same pages, and
//! the same ownership rule.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use logstream_archiver::{Archiver, Outcome, Settings};
use logstream_core::ids::JobId;
use logstream_core::model::{JobStatus, now_ms};
use logstream_history::HistoryState;
use logstream_shared::archive::Archive;
use logstream_shared::archive::s3::S3Archive;
use logstream_shared::store::LogStore;
use logstream_testkit::fixtures::{
    job_id, numbered_lines, seed_job, test_config, unique, viewer_token,
};
use logstream_testkit::{redis_server, s3_server};

struct Setup {
    store: LogStore,
    router: Router,
    archiver: Archiver,
}

/// History and the archiver over the shared Redis and a fresh bucket, with `ttl` seconds
/// of retention.
async fn setup(ttl: &str) -> Setup {
    let url = redis_server::shared().unwrap().url();
    let config = test_config(&[("REDIS_URL", &url), ("LOGSTREAM_TTL_SECS", ttl)]);
    let store = LogStore::open(&url, config.retention(true)).unwrap();
    let client = S3Archive::local_client(&s3_server::shared().unwrap().url());
    let bucket = unique("history");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let archive = Archive::S3(S3Archive::new(client, bucket));
    let viewers = config.viewer_auth(reqwest::Client::new()).unwrap();
    let state = HistoryState::with_archive(store.clone(), viewers, Some(archive.clone()));
    Setup {
        router: logstream_history::router(state, &config.cors_origins),
        archiver: Archiver::new(store.clone(), Some(archive), Settings::default()),
        store,
    }
}

/// A finished job of `owner` with `lines` lines "line {i}".
async fn finished_job(store: &LogStore, owner: &str, lines: usize) -> JobId {
    let job = job_id("hist");
    seed_job(store, &job, owner).await;
    store
        .set_status(&job, JobStatus::Running, now_ms(), None)
        .await
        .unwrap();
    store
        .append(&job, "g", None, &numbered_lines(lines))
        .await
        .unwrap();
    store
        .set_status(&job, JobStatus::Ready, now_ms(), None)
        .await
        .unwrap();
    job
}

async fn get(router: &Router, user: &str, path: &str) -> (StatusCode, Value) {
    let request = Request::get(path)
        .header(
            "authorization",
            format!("Bearer {}", viewer_token(user, 600)),
        )
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn texts(page: &Value) -> Vec<String> {
    page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "line")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_job_past_its_two_second_ttl_is_served_from_the_archive() {
    let Setup {
        store,
        router,
        archiver,
    } = setup("2").await;
    let job = finished_job(&store, "alice", 1_200).await;
    assert!(matches!(
        archiver.archive_job(&job).await.unwrap(),
        Outcome::Archived(_)
    ));

    // Wait for Redis to forget the job (its keys have a 2 s TTL).
    let waited = Instant::now();
    while store.job_meta(&job).await.unwrap().is_some() {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the job never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (code, meta) = get(&router, "alice", &format!("/jobs/{job}")).await;
    assert_eq!(code, StatusCode::OK, "{meta}");
    assert_eq!(meta["status"], "ready");
    assert_eq!(meta["archived"], true);
    assert!(meta["finished_at"].as_u64().unwrap() >= meta["created_at"].as_u64().unwrap());

    let (code, newest) = get(&router, "alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(code, StatusCode::OK, "{newest}");
    assert_eq!(newest["source"], "archive");
    assert_eq!(newest["status"], "ready");
    assert_eq!(
        newest["lines"].as_array().unwrap().len(),
        100,
        "default limit"
    );
    assert_eq!(newest["lines"][99]["kind"], "status", "newest last");
    assert_eq!(newest["has_more"], true);

    // "Load earlier" all the way back.
    let mut seen: Vec<String> = Vec::new();
    let mut path = format!("/jobs/{job}/logs?limit=500");
    let mut pages = 0;
    let first_id = loop {
        let (code, page) = get(&router, "alice", &path).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(page["source"], "archive");
        pages += 1;
        let mut t = texts(&page);
        t.append(&mut seen);
        seen = t;
        match page["next_before"].as_str() {
            Some(id) => path = format!("/jobs/{job}/logs?limit=500&before={id}"),
            None => break page["lines"][0]["id"].as_str().unwrap().to_owned(),
        }
    };
    assert_eq!(pages, 3, "1 202 entries in pages of 500");
    let expected: Vec<String> = (0..1_200).map(|i| format!("line {i}")).collect();
    assert_eq!(seen, expected);

    // And forwards from the first entry.
    let (_, forward) = get(
        &router,
        "alice",
        &format!("/jobs/{job}/logs?after={first_id}&limit=3"),
    )
    .await;
    assert_eq!(texts(&forward), ["line 0", "line 1", "line 2"]);
    assert_eq!(forward["has_more"], true);
    assert_eq!(
        forward["next_before"], forward["lines"][0]["id"],
        "older entries exist"
    );

    // Someone else's archived job is exactly a missing one.
    for path in [format!("/jobs/{job}"), format!("/jobs/{job}/logs")] {
        let theirs = get(&router, "mallory", &path).await;
        let missing = get(
            &router,
            "mallory",
            &path.replace(job.as_str(), &unique("nope")),
        )
        .await;
        assert_eq!(theirs.0, StatusCode::NOT_FOUND);
        assert_eq!(theirs, missing, "{path}");
    }
    let (code, _) = get(
        &router,
        "alice",
        &format!("/jobs/{job}/logs?before=nonsense"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn archive_answers_equal_the_redis_answers_but_for_the_source() {
    let Setup {
        store,
        router,
        archiver,
    } = setup("600").await;
    let job = finished_job(&store, "alice", 700).await;
    assert!(matches!(
        archiver.archive_job(&job).await.unwrap(),
        Outcome::Archived(_)
    ));

    let (_, newest) = get(&router, "alice", &format!("/jobs/{job}/logs?limit=500")).await;
    let ids: Vec<String> = newest["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let mut paths = vec![format!("/jobs/{job}"), format!("/jobs/{job}/logs")];
    for limit in ["1", "7", "256", "500", "9999"] {
        paths.push(format!("/jobs/{job}/logs?limit={limit}"));
        for id in [&ids[0], &ids[1], &ids[250], &ids[499]] {
            paths.push(format!("/jobs/{job}/logs?limit={limit}&before={id}"));
            paths.push(format!("/jobs/{job}/logs?limit={limit}&after={id}"));
        }
        paths.push(format!("/jobs/{job}/logs?limit={limit}&after=0-0"));
        paths.push(format!("/jobs/{job}/logs?limit={limit}&before=0-0"));
    }
    let mut from_redis = Vec::new();
    for path in &paths {
        from_redis.push(get(&router, "alice", path).await);
    }

    // Forget the job, as the TTL would.
    let mut conn = redis::Client::open(redis_server::shared().unwrap().url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("job:{{{job}}}:meta"))
        .arg(format!("job:{{{job}}}:logs"))
        .query_async(&mut conn)
        .await
        .unwrap();

    for (path, (code, mut redis_body)) in paths.iter().zip(from_redis) {
        let (archive_code, archive_body) = get(&router, "alice", path).await;
        assert_eq!(archive_code, code, "{path}");
        if redis_body.get("source").is_some() {
            assert_eq!(redis_body["source"], "redis");
            assert_eq!(archive_body["source"], "archive");
            redis_body["source"] = "archive".into();
        }
        assert_eq!(archive_body, redis_body, "{path}");
    }
}
