//! The S3 client: one bucket and prefix, reached through object_store's S3 backend with its
//! own retries off (bastiond retries per record, with backoff, for as long as it takes) and
//! short timeouts, so that an unreachable archive is an error within seconds, not minutes.

use std::{io::Read, path::PathBuf, sync::Arc, time::Duration};

use bastion_core::archive::Location;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder},
    multipart::{MultipartStore, PartId},
    path::Path,
};

use crate::credentials::{Credentials, CredentialsError};

/// Where the archive is and how to sign in to it: bastiond's `[archive]`, or bastionctl's
/// `--archive-*` options.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub credentials_file: PathBuf,
}

impl Settings {
    pub fn from_config(c: &bastion_core::config::ArchiveConfig) -> Settings {
        Settings {
            url: c.url.clone(),
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            credentials_file: c.credentials_file.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("archive url: {0}")]
    Url(String),
    #[error("archive credentials: {0}")]
    Credentials(#[from] CredentialsError),
    #[error("archive client: {0}")]
    Client(object_store::Error),
    #[error("archive: {key} not found")]
    NotFound { key: String },
    /// The store refused or could not be reached: worth retrying.
    #[error("archive: {op} {key}: {source}")]
    Request {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
}

impl RemoteError {
    fn of(op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> RemoteError {
        let key = key.to_owned();
        move |source| match source {
            object_store::Error::NotFound { .. } => RemoteError::NotFound { key },
            source => RemoteError::Request { op, key, source },
        }
    }
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

#[derive(Clone)]
pub struct Remote {
    s3: Arc<AmazonS3>,
    pub location: Location,
}

impl Remote {
    pub fn connect(s: &Settings) -> Result<Remote, RemoteError> {
        let location = Location::parse(&s.url).map_err(RemoteError::Url)?;
        let creds = Credentials::load(&s.credentials_file)?;
        // reqwest is built with rustls and no crypto provider of its own: ring is installed
        // as the process's provider once (Err: already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(60))
            .with_pool_idle_timeout(Duration::from_secs(30));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 0,
            retry_timeout: Duration::from_secs(10),
        };
        let mut b = AmazonS3Builder::new()
            .with_region(&s.region)
            .with_bucket_name(&location.bucket)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key.expose())
            .with_virtual_hosted_style_request(false)
            // The body is not hashed into the signature (a pass over every byte on both ends):
            // every object is read back and its size, SHA-256, chain and seal checked anyway,
            // and the signature still covers who may write where.
            .with_unsigned_payload(true)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        Ok(Remote {
            s3: Arc::new(b.build().map_err(RemoteError::Client)?),
            location,
        })
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), RemoteError> {
        self.s3
            .put(&Path::from(key), PutPayload::from(data))
            .await
            .map(drop)
            .map_err(RemoteError::of("put", key))
    }

    /// Begins a multipart upload; the id is what [`Remote::abort`] needs after a restart.
    pub async fn begin_multipart(&self, key: &str) -> Result<String, RemoteError> {
        self.s3
            .create_multipart(&Path::from(key))
            .await
            .map_err(RemoteError::of("begin upload of", key))
    }

    pub async fn put_part(
        &self,
        key: &str,
        upload: &str,
        index: usize,
        data: Bytes,
    ) -> Result<PartId, RemoteError> {
        self.s3
            .put_part(
                &Path::from(key),
                &upload.to_owned(),
                index,
                PutPayload::from(data),
            )
            .await
            .map_err(RemoteError::of("upload part of", key))
    }

    pub async fn complete(
        &self,
        key: &str,
        upload: &str,
        parts: Vec<PartId>,
    ) -> Result<(), RemoteError> {
        self.s3
            .complete_multipart(&Path::from(key), &upload.to_owned(), parts)
            .await
            .map(drop)
            .map_err(RemoteError::of("complete upload of", key))
    }

    pub async fn abort(&self, key: &str, upload: &str) -> Result<(), RemoteError> {
        match self
            .s3
            .abort_multipart(&Path::from(key), &upload.to_owned())
            .await
            .map_err(RemoteError::of("abort upload of", key))
        {
            // Already gone (completed, aborted, or cleaned up by the store): nothing to undo.
            Err(RemoteError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// A whole (small) object.
    pub async fn get(&self, key: &str) -> Result<Bytes, RemoteError> {
        let path = Path::from(key);
        let got = self
            .s3
            .get(&path)
            .await
            .map_err(RemoteError::of("get", key))?;
        got.bytes().await.map_err(RemoteError::of("get", key))
    }

    /// An object as a stream of chunks (any size, bounded memory).
    pub async fn open(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, RemoteError>>, RemoteError> {
        let got = self
            .s3
            .get(&Path::from(key))
            .await
            .map_err(RemoteError::of("get", key))?;
        let key = key.to_owned();
        Ok(got
            .into_stream()
            .map_err(move |e| RemoteError::of("read", &key)(e))
            .boxed())
    }

    /// The bytes `from..to` of an object (a session's header, for search).
    pub async fn get_range(&self, key: &str, from: u64, to: u64) -> Result<Bytes, RemoteError> {
        self.s3
            .get_range(&Path::from(key), from..to)
            .await
            .map_err(RemoteError::of("get", key))
    }

    pub async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        self.s3
            .delete(&Path::from(key))
            .await
            .map_err(RemoteError::of("delete", key))
    }

    /// Every object under `prefix` (a key prefix ending in `/`), in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        let path = Path::from(prefix.trim_end_matches('/'));
        let mut out: Vec<Listed> = self
            .s3
            .list(Some(&path))
            .map_ok(|m| Listed {
                key: m.location.to_string(),
                size: m.size,
            })
            .try_collect()
            .await
            .map_err(RemoteError::of("list", prefix))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The appliances with records under the archive's prefix.
    pub async fn appliances(&self) -> Result<Vec<String>, RemoteError> {
        let prefix = self.location.prefix.clone();
        let path = (!prefix.is_empty()).then(|| Path::from(prefix.as_str()));
        let listed = self
            .s3
            .list_with_delimiter(path.as_ref())
            .await
            .map_err(RemoteError::of("list", &prefix))?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .filter(|id| bastion_core::archive::check_appliance_id(id).is_ok())
            .collect();
        out.sort();
        Ok(out)
    }
}

/// A stream of chunks read as `std::io::Read`, on a thread that may block (the blocking pool,
/// or bastionctl's main thread outside the runtime): records are parsed by the pure,
/// synchronous readers of bastion-core while the bytes arrive.
pub struct StreamReader {
    handle: tokio::runtime::Handle,
    stream: BoxStream<'static, Result<Bytes, RemoteError>>,
    chunk: Bytes,
}

impl StreamReader {
    pub fn new(
        handle: tokio::runtime::Handle,
        stream: BoxStream<'static, Result<Bytes, RemoteError>>,
    ) -> Self {
        StreamReader {
            handle,
            stream,
            chunk: Bytes::new(),
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
