//! The files a session moved (`bastionctl session files`): listed from the record's `File`
//! frames, and their captured contents read back a few blocks per answer, so neither side
//! holds a whole file.

use base64ct::{Base64, Encoding};
use bastion_core::{
    protocol::{ApiError, Response},
    record::files,
};
use bastion_store::Store;

use super::WATCH_BLOCKS;

/// Blocks read per answer of `data` (each up to 256 KiB of frames, half of them often the
/// transfer's own packets): a few MiB per answer, whatever the file's size.
const DATA_BLOCKS: u32 = 16;

pub fn list(store: &Store, id: u64) -> Result<Response, ApiError> {
    let meta = store
        .session(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("session {id} does not exist")))?;
    let mut listed = Vec::new();
    let mut from = 0;
    while from < meta.blocks {
        let (frames, next) = store
            .session_frames_from(id, from, WATCH_BLOCKS)
            .map_err(ApiError::internal)?;
        listed.extend(files::listed(&frames));
        if next <= from {
            break;
        }
        from = next;
    }
    Ok(Response::Files { files: listed })
}

pub fn data(store: &Store, id: u64, index: u32, from: u32) -> Result<Response, ApiError> {
    let meta = store
        .session(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("session {id} does not exist")))?;
    let (frames, next) = store
        .session_frames_from(id, from, DATA_BLOCKS)
        .map_err(ApiError::internal)?;
    let data: Vec<u8> = frames
        .iter()
        .filter_map(files::parse_data)
        .filter(|(i, _)| *i == index)
        .flat_map(|(_, d)| d.iter().copied())
        .collect();
    Ok(Response::FileData {
        data_base64: Base64::encode_string(&data),
        next,
        done: next >= meta.blocks || next <= from,
    })
}
