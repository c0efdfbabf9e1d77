//! A bad setting stops the real binary at start with one line naming the variable.

use std::process::Command;

fn start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_logstream-ingest"))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_and_malformed_settings_stop_the_start_with_one_line() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "REDIS_URL"),
        (
            &[("REDIS_URL", "redis://127.0.0.1:1")],
            "LOGSTREAM_INGEST_KEY",
        ),
        (
            &[
                ("REDIS_URL", "http://nope"),
                ("LOGSTREAM_INGEST_KEY", "0123456789abcdef"),
            ],
            "REDIS_URL",
        ),
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("LOGSTREAM_INGEST_KEY", "short"),
            ],
            "LOGSTREAM_INGEST_KEY",
        ),
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("LOGSTREAM_INGEST_KEY", "0123456789abcdef"),
                ("LOGSTREAM_MAXLEN", "x"),
            ],
            "LOGSTREAM_MAXLEN",
        ),
    ];
    for (env, var) in cases {
        let (code, stderr) = start(env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var), "{var} named in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
