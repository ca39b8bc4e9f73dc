//! Release artifacts served to the boxes: `GET /releases/SHA256` on central's HTTP listener,
//! answering range requests (`Range: bytes=N-` and `bytes=N-M`), so a box resumes a download
//! where a cut link left it. The artifact is read from the store once into a local cache
//! (checked against its SHA-256, then renamed into place) and streamed from there: many boxes
//! downloading at once cost neither the store nor memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::store::{Database, StoreError};

/// The bytes read from the cache file per piece of the response.
const PIECE: usize = 64 * 1024;

#[derive(Clone)]
struct Artifacts {
    db: Arc<Database>,
    cache: Arc<PathBuf>,
    /// One filler at a time: a hundred boxes asking at once read the store once.
    filling: Arc<tokio::sync::Mutex<()>>,
}

/// The routes that serve artifacts from `db`, cached in `cache`.
pub fn router(db: Database, cache: PathBuf) -> Router {
    Router::new()
        .route("/releases/:sha256", get(serve))
        .with_state(Artifacts {
            db: Arc::new(db),
            cache: Arc::new(cache),
            filling: Arc::default(),
        })
}

/// Where central caches artifacts unless told: beside an SQLite store, else the user's cache
/// directory.
pub fn default_cache(db: &Database) -> PathBuf {
    match db {
        Database::Sqlite(path) => path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("releases"),
        Database::Postgres(_) => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("cuntong")
            .join("releases"),
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

async fn serve(
    State(a): State<Artifacts>,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let sha256 = sha256.to_ascii_lowercase();
    if sha256.len() != 64 || cuntong_terminal::hex::decode(&sha256).is_none() {
        return plain(
            StatusCode::NOT_FOUND,
            "a release is named by its SHA-256 (64 hex digits)\n",
        );
    }
    let path = a.cache.join(&sha256);
    if !path.is_file() {
        let _one = a.filling.lock().await;
        if !path.is_file() {
            let (db, cache, sha) = (a.db.clone(), a.cache.clone(), sha256.clone());
            match tokio::task::spawn_blocking(move || fill(&db, &cache, &sha)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return plain(StatusCode::NOT_FOUND, "no such release\n"),
                Ok(Err(e)) => {
                    tracing::error!(release = %sha256, error = %e, "cannot serve a release");
                    return plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the release cannot be read now\n",
                    );
                }
                Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "the reader crashed\n"),
            }
        }
    }
    match ranged(&path, headers.get(header::RANGE)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(release = %sha256, error = %e, "cannot serve a release");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the release cannot be read now\n",
            )
        }
    }
}

/// Why an artifact could not be copied from the store into the cache.
#[derive(Debug, thiserror::Error)]
enum FillError {
    /// The cache directory cannot be made, or a file staged in it.
    #[error("{}: {source}", path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store cannot be read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The staged copy cannot be written.
    #[error("{0}")]
    Write(#[from] std::io::Error),
    /// The stored bytes are not the release they are stored as.
    #[error("the stored artifact's SHA-256 is {got}")]
    Sha256 { got: String },
    /// The staged copy cannot be renamed into place.
    #[error("{0}")]
    Persist(#[from] tempfile::PersistError),
}

/// Copies the artifact from the store into the cache; false if the store has no such release.
fn fill(db: &Database, cache: &Path, sha256: &str) -> Result<bool, FillError> {
    let in_cache = |source| FillError::Cache {
        path: cache.to_owned(),
        source,
    };
    std::fs::create_dir_all(cache).map_err(in_cache)?;
    let staged = tempfile::NamedTempFile::new_in(cache).map_err(in_cache)?;
    let store = db.open_read_only()?;
    let file_guard = staged.as_file().try_clone()?;
    let mut out = Hashing {
        file: std::io::BufWriter::new(file_guard),
        digest: digest::Context::new(&digest::SHA256),
    };
    if !store.release_artifact(sha256, &mut out)? {
        return Ok(false);
    }
    let Hashing { file, digest } = out;
    file.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    let got = cuntong_terminal::hex::encode(digest.finish().as_ref());
    if got != sha256 {
        return Err(FillError::Sha256 { got });
    }
    staged.persist(cache.join(sha256))?;
    Ok(true)
}

struct Hashing<W> {
    file: W,
    digest: digest::Context,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The first and last byte a `Range` header asks for, of `size` bytes: `None` if it asks for
/// none that exist (416); the whole file without a header, or with one this does not read.
pub fn range(value: Option<&str>, size: u64) -> Option<(u64, u64, bool)> {
    let whole = Some((0, size.saturating_sub(1), false));
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return whole;
    };
    let Some((from, to)) = spec.split_once('-') else {
        return whole;
    };
    if spec.contains(',') {
        return whole;
    }
    let (from, to) = (from.trim(), to.trim());
    let (first, last) = if from.is_empty() {
        // The last N bytes.
        let n: u64 = to.parse().ok()?;
        if n == 0 {
            return None;
        }
        (size.saturating_sub(n), size.checked_sub(1)?)
    } else {
        let first: u64 = from.parse().ok()?;
        let last = if to.is_empty() {
            size.checked_sub(1)?
        } else {
            to.parse::<u64>().ok()?.min(size.checked_sub(1)?)
        };
        (first, last)
    };
    (first <= last && last < size).then_some((first, last, true))
}

async fn ranged(
    path: &Path,
    range_header: Option<&header::HeaderValue>,
) -> std::io::Result<Response> {
    let mut file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let asked = range_header.and_then(|v| v.to_str().ok());
    let Some((first, last, partial)) = range(asked, size) else {
        return Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response());
    };
    file.seek(std::io::SeekFrom::Start(first)).await?;
    let length = if size == 0 { 0 } else { last - first + 1 };
    let body = futures_util::stream::unfold((file, length), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; PIECE.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes");
    if partial {
        response = response.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{size}"),
        );
    }
    response
        .body(Body::from_stream(body))
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range(None, 100), Some((0, 99, false)));
        assert_eq!(range(Some("bytes=10-"), 100), Some((10, 99, true)));
        assert_eq!(range(Some("bytes=10-19"), 100), Some((10, 19, true)));
        assert_eq!(range(Some("bytes=90-200"), 100), Some((90, 99, true)));
        assert_eq!(range(Some("bytes=-5"), 100), Some((95, 99, true)));
        // Past the end: nothing to send.
        assert_eq!(range(Some("bytes=100-"), 100), None);
        assert_eq!(range(Some("bytes=20-10"), 100), None);
        assert_eq!(range(Some("bytes=x-"), 100), None);
        // Forms this does not read get the whole file.
        assert_eq!(range(Some("items=1-2"), 100), Some((0, 99, false)));
        assert_eq!(range(Some("bytes=1-2,5-6"), 100), Some((0, 99, false)));
    }
}
