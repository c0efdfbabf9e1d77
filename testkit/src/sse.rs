//! A minimal Server-Sent Events client over reqwest, parsing frames as a browser's
//! EventSource does, for the tests of the live path.

use serde_json::Value;

/// One Server-Sent Events frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// A minimal SSE client over reqwest, parsing frames as a browser would.
pub struct SseClient {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseClient {
    /// Opens `url` with extra headers (the viewer token in the query or a header).
    pub async fn connect(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut req = http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("GET stream");
        SseClient {
            status: res.status(),
            headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ended. Panics after `wait` without one.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<Frame> {
        use futures_util::StreamExt;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in raw.lines() {
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => frame.id = Some(value.to_owned()),
                        "event" => frame.event = Some(value.to_owned()),
                        "data" => frame.data.push_str(value),
                        "retry" => frame.retry = value.parse().ok(),
                        _ => {}
                    }
                }
                return Some(frame);
            }
            match tokio::time::timeout(wait, self.body.next())
                .await
                .expect("no SSE frame in time")
            {
                Some(Ok(chunk)) => self
                    .buf
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8")),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next frame that is not a heartbeat or the `retry:` preamble.
    pub async fn next_entry(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next(std::time::Duration::from_secs(10)).await?;
            let preamble = frame.retry.is_some() && frame.event.is_none();
            if frame.event.as_deref() != Some("heartbeat") && !preamble {
                return Some(frame);
            }
        }
    }
}
