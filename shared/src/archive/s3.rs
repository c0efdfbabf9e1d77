//! The S3 archive backend (the Lambdas), with aws-sdk-s3.
//!
//! A log goes up as it is read from Redis, never held whole: chunks gather in a buffer
//! of [`S3Archive::part_size`]; a log that stays under one part is a single `PutObject`,
//! a larger one a multipart upload whose parts are sent while the next one is being
//! filled (at most one part in flight, so memory stays near two parts). A failed upload
//! is aborted; the bucket's lifecycle rule for incomplete multipart uploads cleans up
//! after a process that died mid-way.
//!
//! Against an S3-compatible server (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`: moto,
//! MinIO, LocalStack) the client uses path-style addressing, which such servers need.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::BehaviorVersion;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::{ArchiveError, MANIFEST_FILE, PREFIX, Uploaded};
use logstream_core::ids::JobId;

/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Default part size: a typical 50 000-line log fits in one or two parts.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Object metadata key holding the job's owner (`x-amz-meta-owner`).
pub const OWNER_METADATA: &str = "owner";

/// How long one S3 request may take before it is abandoned (and retried by the SDK,
/// within [`OPERATION_TIMEOUT`]): far more than an 8 MiB part needs, far less than a
/// visit's lease. Without it a request to an S3 that stopped answering would hold a
/// visit until the Lambda's own timeout.
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long one S3 operation may take, its retries included.
pub const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// The timeouts every S3 client of the archive gets.
pub fn timeouts() -> aws_sdk_s3::config::timeout::TimeoutConfig {
    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Archives in one S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Archive {
    /// Made on first use by [`S3Archive::from_env`] archives: history only needs it when
    /// a job is no longer in Redis, and loading the AWS configuration at start was most
    /// of its cold start.
    client: Arc<OnceCell<Client>>,
    bucket: String,
    part_size: usize,
}

/// Sorts an SDK error into "try again later" and "refused".
fn s3_error<E>(op: &'static str, err: SdkError<E>) -> ArchiveError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status());
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => status.is_some_and(|s| s.is_server_error() || s.as_u16() == 429),
    };
    let message = DisplayErrorContext(&err).to_string();
    if transient {
        ArchiveError::Unavailable { op, message }
    } else {
        ArchiveError::Refused { op, message }
    }
}

impl S3Archive {
    /// An archive in `bucket` through `client`.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client: Arc::new(OnceCell::new_with(Some(client))),
            bucket: bucket.into(),
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// An archive in `bucket` through a client from the usual AWS sources (the
    /// Lambda's role, `AWS_*` variables), path-style when an endpoint URL points at an
    /// S3-compatible server. The client is made on first use, once per process.
    pub fn from_env(bucket: impl Into<String>) -> Self {
        Self {
            client: Arc::new(OnceCell::new()),
            bucket: bucket.into(),
            part_size: DEFAULT_PART_SIZE,
        }
    }

    async fn client_from_env() -> Client {
        let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
        let custom_endpoint =
            sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom_endpoint)
            .timeout_config(timeouts())
            .build();
        Client::from_conf(config)
    }

    /// A client for a local S3-compatible server at `endpoint_url` (tests, the
    /// benchmark): path-style, region `us-east-1`, static throwaway credentials.
    pub fn local_client(endpoint_url: &str) -> Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint_url)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "local",
            ))
            .force_path_style(true)
            .timeout_config(timeouts())
            .build();
        Client::from_conf(config)
    }

    /// Uses parts of `bytes` (at least S3's 5 MiB) for large logs.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    /// The part size of multipart uploads.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The S3 client (made now if it was not yet).
    pub async fn client(&self) -> &Client {
        self.client.get_or_init(Self::client_from_env).await
    }

    /// The key of `file` in `job`'s archive.
    pub fn key(job: &JobId, file: &str) -> String {
        format!("{PREFIX}/{job}/{file}")
    }

    pub(super) async fn read_manifest(&self, job: &JobId) -> Result<Option<Vec<u8>>, ArchiveError> {
        Ok(self
            .read_whole(job, MANIFEST_FILE)
            .await?
            .map(|body| body.to_vec()))
    }

    pub(super) async fn write_manifest(
        &self,
        job: &JobId,
        owner: &str,
        body: Vec<u8>,
    ) -> Result<(), ArchiveError> {
        self.client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(Self::key(job, MANIFEST_FILE))
            .content_type("application/json")
            .metadata(OWNER_METADATA, owner)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error("PutObject manifest", e))?;
        Ok(())
    }

    pub(super) async fn read_log(
        &self,
        job: &JobId,
        file: &str,
        start: u64,
        end: u64,
    ) -> Result<Bytes, ArchiveError> {
        let out = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(Self::key(job, file))
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| s3_error("GetObject log", e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ArchiveError::Unavailable {
                op: "GetObject log",
                message: e.to_string(),
            })?;
        let bytes = body.into_bytes();
        if bytes.len() as u64 != end - start {
            return Err(ArchiveError::Corrupt(format!(
                "log of {job}: asked for {} bytes, got {}",
                end - start,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// The whole of `file`; `None` when there is no such object.
    pub(super) async fn read_whole(
        &self,
        job: &JobId,
        file: &str,
    ) -> Result<Option<Bytes>, ArchiveError> {
        let got = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(Self::key(job, file))
            .send()
            .await;
        let out = match got {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error("GetObject", e)),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ArchiveError::Unavailable {
                op: "GetObject",
                message: e.to_string(),
            })?;
        Ok(Some(body.into_bytes()))
    }

    /// The names (relative to the job's folder) of the objects under `folder/`; of all
    /// the job's objects when `folder` is empty.
    pub(super) async fn list(
        &self,
        job: &JobId,
        folder: &str,
    ) -> Result<Vec<String>, ArchiveError> {
        let prefix = match folder {
            "" => Self::key(job, ""),
            folder => format!("{}/", Self::key(job, folder)),
        };
        let job_prefix = format!("{}/", Self::key(job, "").trim_end_matches('/'));
        let mut names = Vec::new();
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("ListObjectsV2", e))?;
            names.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key()?.strip_prefix(&job_prefix).map(str::to_owned)),
            );
        }
        Ok(names)
    }

    pub(super) async fn remove(&self, job: &JobId, files: &[String]) -> Result<(), ArchiveError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        // DeleteObjects takes up to 1 000 keys per request.
        for chunk in files.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|f| ObjectIdentifier::builder().key(Self::key(job, f)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ArchiveError::Corrupt(format!("delete request: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| ArchiveError::Corrupt(format!("delete request: {e}")))?;
            let out = self
                .client()
                .await
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3_error("DeleteObjects", e))?;
            if let Some(failed) = out.errors().first() {
                return Err(ArchiveError::Refused {
                    op: "DeleteObjects",
                    message: format!(
                        "{}: {}",
                        failed.key().unwrap_or("?"),
                        failed.message().unwrap_or("refused")
                    ),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn upload(&self, job: &JobId, file: &str, owner: &str) -> S3Upload {
        S3Upload {
            client: self.client().await.clone(),
            bucket: self.bucket.clone(),
            key: Self::key(job, file),
            owner: owner.to_owned(),
            part_size: self.part_size,
            buf: Vec::new(),
            multipart: None,
        }
    }
}

/// A log on its way up: one `PutObject`, or a multipart upload once it outgrows a part.
#[derive(Debug)]
pub struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    owner: String,
    part_size: usize,
    buf: Vec<u8>,
    multipart: Option<Multipart>,
}

#[derive(Debug)]
struct Multipart {
    upload_id: String,
    done: Vec<CompletedPart>,
    in_flight: Option<JoinHandle<Result<CompletedPart, ArchiveError>>>,
    next_number: i32,
}

impl S3Upload {
    pub(super) async fn write(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.part_size + 256 * 1024);
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= self.part_size {
            self.send_part().await?;
        }
        Ok(())
    }

    /// Sends the buffer as the next part, after the previous part has landed.
    async fn send_part(&mut self) -> Result<(), ArchiveError> {
        if self.multipart.is_none() {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type("application/x-ndjson")
                .metadata(OWNER_METADATA, &self.owner)
                .send()
                .await
                .map_err(|e| s3_error("CreateMultipartUpload", e))?;
            let upload_id = created
                .upload_id()
                .ok_or_else(|| {
                    ArchiveError::Corrupt("CreateMultipartUpload gave no upload id".into())
                })?
                .to_owned();
            self.multipart = Some(Multipart {
                upload_id,
                done: Vec::new(),
                in_flight: None,
                next_number: 1,
            });
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Ok(());
        };
        multipart.land().await?;
        let body = std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.part_size + 256 * 1024),
        );
        let number = multipart.next_number;
        multipart.next_number += 1;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&multipart.upload_id)
            .part_number(number)
            .body(ByteStream::from(body));
        multipart.in_flight = Some(tokio::spawn(async move {
            let out = request
                .send()
                .await
                .map_err(|e| s3_error("UploadPart", e))?;
            Ok(CompletedPart::builder()
                .set_e_tag(out.e_tag().map(str::to_owned))
                .part_number(number)
                .build())
        }));
        Ok(())
    }

    pub(super) async fn finish(mut self) -> Result<Uploaded, ArchiveError> {
        match self.complete().await {
            Ok(done) => Ok(done),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn complete(&mut self) -> Result<Uploaded, ArchiveError> {
        if self.multipart.is_none() {
            let body = std::mem::take(&mut self.buf);
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type("application/x-ndjson")
                .metadata(OWNER_METADATA, &self.owner)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| s3_error("PutObject log", e))?;
            return Ok(Uploaded { parts: 1 });
        }
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Err(ArchiveError::Corrupt("multipart upload vanished".into()));
        };
        multipart.land().await?;
        let parts = multipart.done.clone();
        let count = parts.len() as u32;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&multipart.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", e))?;
        // Nothing left to abort.
        self.multipart = None;
        Ok(Uploaded { parts: count })
    }

    pub(super) async fn abort(mut self) {
        let Some(mut multipart) = self.multipart.take() else {
            return;
        };
        if let Some(task) = multipart.in_flight.take() {
            task.abort();
        }
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&multipart.upload_id)
            .send()
            .await
        {
            tracing::warn!(
                key = %self.key,
                error = %DisplayErrorContext(&e),
                "could not abort a multipart upload; the bucket's lifecycle rule will"
            );
        }
    }
}

impl Multipart {
    /// Waits for the part in flight, if any, and records it.
    async fn land(&mut self) -> Result<(), ArchiveError> {
        if let Some(task) = self.in_flight.take() {
            let part = task.await.map_err(|e| ArchiveError::Unavailable {
                op: "UploadPart",
                message: format!("upload task failed: {e}"),
            })??;
            self.done.push(part);
        }
        Ok(())
    }
}
