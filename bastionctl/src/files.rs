//! `session files ID --extract DIR`: writes each captured file of a session into DIR as
//! `INDEX-NAME`, read from bastiond a few blocks at a time (never whole in memory), and checks
//! every one against the SHA-256 recorded when it crossed.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use base64ct::{Base64, Encoding};
use bastion_core::{
    protocol::{Request, Response},
    record::files::{CapturedFile, ContentHash},
};

use crate::client;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0}")]
    Api(#[from] client::ClientError),
    #[error("bastiond sent an unexpected answer: {0}")]
    Unexpected(String),
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bastiond sent file data that is not base64")]
    Encoding,
    #[error("{0} of the files did not match their recorded SHA-256 (not written; named above)")]
    Mismatch(usize),
}

/// Extracts every captured file; returns how many were written.
pub fn extract(
    socket: &Path,
    timeout: Duration,
    id: u64,
    dir: &Path,
) -> Result<usize, ExtractError> {
    let files = match client::call(socket, &Request::SessionFiles { id }, timeout)? {
        Response::Files { files } => files,
        other => return Err(ExtractError::Unexpected(format!("{other:?}"))),
    };
    std::fs::create_dir_all(dir).map_err(|source| ExtractError::Write {
        path: dir.into(),
        source,
    })?;
    let (mut written, mut mismatched) = (0, 0);
    for f in files.iter().filter(|f| f.captured) {
        let path = dir.join(file_name(f));
        let sha = write_one(socket, timeout, id, f, &path)?;
        let want = f.sha256.clone().unwrap_or_default();
        if sha != want {
            // What cannot be vouched for is not left behind as if it could.
            let _ = std::fs::remove_file(&path);
            eprintln!(
                "bastionctl: file {} ({}): extracted SHA-256 {sha} differs from the recorded {want}",
                f.index, f.path
            );
            mismatched += 1;
            continue;
        }
        println!(
            "{}  {}  ({} bytes, sha256 {sha})",
            f.index,
            path.display(),
            f.size
        );
        written += 1;
    }
    match mismatched {
        0 => Ok(written),
        n => Err(ExtractError::Mismatch(n)),
    }
}

/// `INDEX-NAME`: the file's last path component, made safe (never a path of its own).
fn file_name(f: &CapturedFile) -> String {
    let base = f.path.rsplit('/').next().unwrap_or_default();
    let safe: String = base
        .chars()
        .map(|c| if c.is_control() || c == '\\' { '_' } else { c })
        .collect();
    let safe = match safe.as_str() {
        "" | "." | ".." => "file".to_owned(),
        _ => safe,
    };
    format!("{}-{safe}", f.index)
}

/// Streams one file's content into `path`; returns its SHA-256.
fn write_one(
    socket: &Path,
    timeout: Duration,
    id: u64,
    f: &CapturedFile,
    path: &Path,
) -> Result<String, ExtractError> {
    let io = |source| ExtractError::Write {
        path: path.into(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut ctx = ContentHash::default();
    let index = f.content_index();
    let mut from = 0;
    loop {
        let request = Request::SessionFileData { id, index, from };
        let (data, next, done) = match client::call(socket, &request, timeout)? {
            Response::FileData {
                data_base64,
                next,
                done,
            } => (
                Base64::decode_vec(&data_base64).map_err(|_| ExtractError::Encoding)?,
                next,
                done,
            ),
            other => return Err(ExtractError::Unexpected(format!("{other:?}"))),
        };
        ctx.update(&data);
        out.write_all(&data).map_err(io)?;
        if done {
            break;
        }
        from = next;
    }
    out.flush().map_err(io)?;
    Ok(ctx.finish())
}
