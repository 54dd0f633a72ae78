//! Schema migrations. Version N's step turns a version N-1 store into a version N store; steps
//! are append-only and never edited once released, because appliances in the field run them.

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 8;

/// Why a migration step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Segment(#[from] super::SegmentError),
}

/// Migrates `db` (with its segment directory `segments`) from `to - 1` to `to`.
pub(super) fn step(db: &sled::Db, segments: &std::path::Path, to: u32) -> Result<(), StepError> {
    Ok(match to {
        // 1: the initial layout: the `meta` tree (schema version). Nothing to convert.
        1 => db.open_tree("meta").map(drop),
        // 2: the policy trees (one per kind, JSON values keyed by name) and the audit stream
        //    (JSON events keyed by big-endian sequence number). New trees only: nothing to convert.
        2 => {
            for kind in bastion_core::policy::EntityKind::ALL {
                db.open_tree(super::policy::tree_name(kind))?;
            }
            db.open_tree(super::policy::AUDIT_TREE).map(drop)
        }
        // 3: session records: metadata (JSON by id) and recorded blocks (by id, block number).
        3 => {
            db.open_tree(super::sessions::SESSIONS_TREE)?;
            db.open_tree(super::sessions::LEGACY_BLOCKS_TREE).map(drop)
        }
        // 4: sealed target-account keys.
        4 => db.open_tree(super::accounts::ACCOUNTS_TREE).map(drop),
        // 5: the command index, filled from the exec requests already recorded.
        5 => super::commands::backfill(db),
        // 6: recorded blocks' bytes move out of sled into segment files, session by session;
        //    sled keeps a reference per block.
        6 => return super::to_segments::move_blocks_to_segments(db, segments),
        // 7: where integrity began (`meta` `integrity_since`): records unchained now may stay
        //    legacy; a chain missing from any later one was stripped.
        7 => super::since::record(db),
        // 8: the block index leaves sled (whose memory follows its entries): each block's
        //    chain value moves into its segment header, and the references give way to one
        //    `record_segments` start per segment.
        8 => return super::to_segments::drop_block_refs(db, segments),
        // `Store::migrate` never asks for a version above SCHEMA_VERSION.
        _ => Ok(()),
    }?)
}
