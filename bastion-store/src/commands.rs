//! The command index: every shell line and exec command of every session, searchable.
//!
//! Stored in the `commands` tree, keyed by session, offset in the session (µs), channel and a
//! sequence number (all big endian, so a session's commands read in order and go with it):
//!
//! ```text
//! value: version u8 (1) | source u8 | doubts u8 | line (UTF-8)
//! ```
//!
//! written in the same transaction as the block that recorded them. A copy is held in memory,
//! newest last, with the lines lowercased in one arena: a search walks it backwards with
//! `memmem`, which answers over a million commands in milliseconds, and reads the original line
//! of each hit back from the tree.

use std::collections::HashMap;

use bastion_core::{
    record::{block, commands::Doubt},
    session::{CommandHit, CommandQuery, CommandSource, NewCommand, SessionFilter, SessionMeta},
};

use super::{Store, StoreError};

pub(super) const COMMANDS_TREE: &str = "commands";
const VALUE_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy)]
struct Entry {
    session: u64,
    at_micros: u64,
    offset_micros: u64,
    channel: u32,
    seq: u32,
    text_at: usize,
    text_len: u32,
    source: CommandSource,
    doubts: u8,
}

/// The in-memory copy (pure; the store keeps it in step with the tree).
#[derive(Default)]
pub struct CommandIndex {
    /// Ordered by `at_micros`.
    entries: Vec<Entry>,
    lower: Vec<u8>,
    sessions: HashMap<u64, SessionMeta>,
}

impl CommandIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn session(&mut self, meta: &SessionMeta) {
        self.sessions.entry(meta.id).or_insert_with(|| {
            // Only who, where and when are searched by.
            SessionMeta {
                seal: None,
                chain: None,
                ..meta.clone()
            }
        });
    }

    fn add(&mut self, session: &SessionMeta, seq: u32, c: &NewCommand) {
        let entry = self.entry(session, seq, c);
        // Live sessions' blocks arrive out of order by a few seconds at most: insert near the end.
        let at = self
            .entries
            .partition_point(|e| e.at_micros <= entry.at_micros);
        self.entries.insert(at, entry);
    }

    /// Adds without keeping the order; [`CommandIndex::sort`] restores it (loading a whole
    /// tree, whose key order is by session, not by time).
    fn push(&mut self, session: &SessionMeta, seq: u32, c: &NewCommand) {
        let entry = self.entry(session, seq, c);
        self.entries.push(entry);
    }

    fn sort(&mut self) {
        self.entries.sort_by_key(|e| e.at_micros);
    }

    fn entry(&mut self, session: &SessionMeta, seq: u32, c: &NewCommand) -> Entry {
        self.session(session);
        let text_at = self.lower.len();
        self.lower.extend(c.line.to_lowercase().bytes());
        Entry {
            session: session.id,
            at_micros: session.started_micros + c.t_micros,
            offset_micros: c.t_micros,
            channel: c.channel,
            seq,
            text_at,
            text_len: (self.lower.len() - text_at) as u32,
            source: c.source,
            doubts: Doubt::to_bits(&c.doubts),
        }
    }

    fn remove_sessions(&mut self, ids: &[u64]) {
        self.entries.retain(|e| !ids.contains(&e.session));
        for id in ids {
            self.sessions.remove(id);
        }
        // The arena keeps the dead text until the next start: retention runs hourly at most.
    }

    /// Matches newest first, at most `q.limit` (keys to read the original lines with).
    fn search(&self, q: &CommandQuery) -> Vec<(Entry, &SessionMeta)> {
        let needle = q.text.as_ref().map(|t| t.to_lowercase());
        let finder = needle
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(|n| memchr::memmem::Finder::new(n.as_bytes()));
        let mut verdicts: HashMap<u64, bool> = HashMap::new();
        let mut out = Vec::new();
        let time = SessionFilter {
            since_micros: None,
            until_micros: None,
            ..q.filter.clone()
        };
        for e in self.entries.iter().rev() {
            if out.len() >= q.limit {
                break;
            }
            if q.filter.since_micros.is_some_and(|t| e.at_micros < t) {
                break;
            }
            if q.filter.until_micros.is_some_and(|t| e.at_micros >= t)
                || q.session.is_some_and(|s| s != e.session)
                || q.source.is_some_and(|s| s != e.source)
            {
                continue;
            }
            if let Some(f) = &finder
                && f.find(&self.lower[e.text_at..e.text_at + e.text_len as usize])
                    .is_none()
            {
                continue;
            }
            let Some(meta) = self.sessions.get(&e.session) else {
                continue;
            };
            if *verdicts
                .entry(e.session)
                .or_insert_with(|| time.matches(meta))
            {
                out.push((*e, meta));
            }
        }
        out
    }
}

fn key(session: u64, offset: u64, channel: u32, seq: u32) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..16].copy_from_slice(&offset.to_be_bytes());
    k[16..20].copy_from_slice(&channel.to_be_bytes());
    k[20..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn value(c: &NewCommand) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + c.line.len());
    v.extend([VALUE_VERSION, c.source as u8, Doubt::to_bits(&c.doubts)]);
    v.extend(c.line.as_bytes());
    v
}

/// Decodes a stored command (`None`: not a version this build reads).
fn decode(k: &[u8], v: &[u8]) -> Option<(u64, u32, NewCommand)> {
    let k: &[u8; 24] = k.try_into().ok()?;
    if v.len() < 3 || v[0] != VALUE_VERSION {
        return None;
    }
    let session = u64::from_be_bytes(k[..8].try_into().ok()?);
    let seq = u32::from_be_bytes(k[20..].try_into().ok()?);
    Some((
        session,
        seq,
        NewCommand {
            t_micros: u64::from_be_bytes(k[8..16].try_into().ok()?),
            channel: u32::from_be_bytes(k[16..20].try_into().ok()?),
            source: CommandSource::from_u8(v[1]),
            doubts: Doubt::from_bits(v[2]),
            line: String::from_utf8_lossy(&v[3..]).into_owned(),
        },
    ))
}

/// Inserts `commands` of `meta`'s session (`seq` numbers them after `first_seq`).
pub(super) fn insert(
    tree: &sled::Tree,
    meta: &SessionMeta,
    first_seq: u32,
    commands: &[NewCommand],
) -> Result<(), sled::Error> {
    for (i, c) in commands.iter().enumerate() {
        let seq = first_seq + i as u32;
        tree.insert(key(meta.id, c.t_micros, c.channel, seq), value(c))?;
    }
    Ok(())
}

/// Schema step 5: indexes the exec requests of sessions recorded before the index existed.
pub(super) fn backfill(db: &sled::Db) -> Result<(), sled::Error> {
    let tree = db.open_tree(COMMANDS_TREE)?;
    let blocks = db.open_tree(super::sessions::LEGACY_BLOCKS_TREE)?;
    for item in db.open_tree(super::sessions::SESSIONS_TREE)?.iter() {
        let (k, _) = item?;
        let mut seq = 0u32;
        for b in blocks.scan_prefix(&k) {
            let (_, stored) = b?;
            // A block that does not decode is reported by `verify`; it has no commands to give.
            let frames = block::decompress(&stored).unwrap_or_default();
            for c in frames.iter().filter_map(NewCommand::from_frame) {
                let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default());
                tree.insert(key(id, c.t_micros, c.channel, seq), value(&c))?;
                seq += 1;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Fills the in-memory index from the tree (at open).
    pub(super) fn load_commands(&self) -> Result<CommandIndex, StoreError> {
        let metas: HashMap<u64, SessionMeta> =
            self.sessions()?.into_iter().map(|m| (m.id, m)).collect();
        let mut index = CommandIndex::default();
        for item in self.tree(COMMANDS_TREE)?.iter() {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let Some((session, seq, c)) = decode(&k, &v) else {
                continue;
            };
            if let Some(meta) = metas.get(&session) {
                index.push(meta, seq, &c);
            }
        }
        index.sort();
        Ok(index)
    }

    /// Records `commands` in the in-memory index once their transaction committed.
    pub(super) fn index_commands(
        &self,
        meta: &SessionMeta,
        first_seq: u32,
        commands: &[NewCommand],
    ) {
        if let Ok(mut index) = self.commands.write() {
            for (i, c) in commands.iter().enumerate() {
                index.add(meta, first_seq + i as u32, c);
            }
        }
    }

    pub(super) fn unindex_sessions(&self, ids: &[u64]) {
        if let Ok(mut index) = self.commands.write() {
            index.remove_sessions(ids);
        }
    }

    /// Commands matching `q`, newest first.
    pub fn search_commands(&self, q: &CommandQuery) -> Result<Vec<CommandHit>, StoreError> {
        let found: Vec<(Entry, SessionMeta)> = match self.commands.read() {
            Ok(index) => index
                .search(q)
                .into_iter()
                .map(|(e, m)| (e, m.clone()))
                .collect(),
            Err(_) => return Err(StoreError::Task("command index poisoned".into())),
        };
        let tree = self.tree(COMMANDS_TREE)?;
        let mut hits = Vec::with_capacity(found.len());
        for (e, meta) in found {
            let k = key(e.session, e.offset_micros, e.channel, e.seq);
            let Some(v) = tree.get(k).map_err(|err| self.io(err))? else {
                continue;
            };
            let Some((_, _, c)) = decode(&k, &v) else {
                continue;
            };
            hits.push(CommandHit {
                session: e.session,
                at_micros: e.at_micros,
                offset_micros: e.offset_micros,
                channel: e.channel,
                user: meta.user,
                login: meta.login,
                target: meta.target,
                source: e.source,
                doubts: Doubt::from_bits(e.doubts),
                line: c.line,
            });
        }
        Ok(hits)
    }

    /// How many commands the index holds.
    pub fn command_count(&self) -> usize {
        self.commands.read().map(|i| i.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, user: &str, started: u64) -> SessionMeta {
        SessionMeta {
            user: user.into(),
            target: "web1".into(),
            login: "root".into(),
            started_micros: started,
            ..SessionMeta::starting(id, "203.0.113.10:22".parse().unwrap())
        }
    }

    fn cmd(t: u64, line: &str) -> NewCommand {
        NewCommand {
            t_micros: t,
            channel: 0,
            source: CommandSource::Shell,
            doubts: vec![],
            line: line.into(),
        }
    }

    fn found(index: &CommandIndex, q: CommandQuery) -> Vec<(u64, u64)> {
        index
            .search(&CommandQuery { limit: 10, ..q })
            .into_iter()
            .map(|(e, _)| (e.session, e.offset_micros))
            .collect()
    }

    #[test]
    fn newest_first_filtered_case_insensitive() {
        let mut index = CommandIndex::default();
        let (a, b) = (meta(1, "alice", 1_000), meta(2, "bob", 2_000));
        index.add(&a, 0, &cmd(10, "ls /etc"));
        index.add(&b, 0, &cmd(10, "cat /etc/Passwd"));
        index.add(&a, 1, &cmd(5_000, "rm -rf /tmp/x"));
        let q = |text: &str| CommandQuery {
            text: Some(text.into()),
            ..Default::default()
        };
        assert_eq!(found(&index, q("/etc")), vec![(2, 10), (1, 10)]);
        assert_eq!(found(&index, q("passwd")), vec![(2, 10)]);
        assert_eq!(found(&index, q("")), vec![(1, 5_000), (2, 10), (1, 10)]);
        let mut by_user = q("");
        by_user.filter.user = Some("alice".into());
        assert_eq!(found(&index, by_user), vec![(1, 5_000), (1, 10)]);
        let mut since = q("");
        since.filter.since_micros = Some(2_005);
        assert_eq!(found(&index, since), vec![(1, 5_000), (2, 10)]);
        let mut session = q("");
        session.session = Some(2);
        assert_eq!(found(&index, session), vec![(2, 10)]);
        index.remove_sessions(&[1]);
        assert_eq!(found(&index, q("")), vec![(2, 10)]);

        // Loading pushes in key order (by session) and sorts once.
        let mut loaded = CommandIndex::default();
        loaded.push(&a, 0, &cmd(10, "ls /etc"));
        loaded.push(&a, 1, &cmd(5_000, "rm -rf /tmp/x"));
        loaded.push(&b, 0, &cmd(10, "cat /etc/Passwd"));
        loaded.sort();
        assert_eq!(found(&loaded, q("")), vec![(1, 5_000), (2, 10), (1, 10)]);
    }

    #[test]
    fn stored_form_round_trips() {
        let c = NewCommand {
            doubts: vec![Doubt::NoEcho],
            source: CommandSource::Exec,
            ..cmd(7, "uptime")
        };
        let k = key(3, 7, 0, 1);
        assert_eq!(decode(&k, &value(&c)), Some((3, 1, c)));
        assert_eq!(decode(&k, &[9, 0, 0]), None);
    }
}
