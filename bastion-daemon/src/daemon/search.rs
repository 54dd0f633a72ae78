//! `bastionctl search`: commands from the index (fast, in memory), or terminal output text
//! scanned from the recordings (bounded: newest sessions first, up to a budget of bytes).

use std::time::Instant;

use bastion_core::{
    protocol::Response,
    record::text,
    session::{CommandHit, CommandQuery, CommandSource},
};

use bastion_store::{Store, StoreError};

/// Largest result a search returns.
pub const MAX_HITS: usize = 1000;
/// Recorded output an output search reads at most (decompressed) before it stops.
const OUTPUT_BUDGET: u64 = 512 << 20;

pub fn search(store: &Store, mut q: CommandQuery, output: bool) -> Result<Response, StoreError> {
    q.limit = q.limit.clamp(1, MAX_HITS);
    let t0 = Instant::now();
    let (hits, searched, complete) = if output {
        search_output(store, &q)?
    } else {
        let hits = store.search_commands(&q)?;
        (hits, store.command_count() as u64, true)
    };
    Ok(Response::Search {
        hits,
        searched,
        complete,
        micros: t0.elapsed().as_micros() as u64,
    })
}

/// Output lines containing `q.text`, newest session first; `searched` counts lines read, and
/// `complete` is false when the budget ran out first.
fn search_output(
    store: &Store,
    q: &CommandQuery,
) -> Result<(Vec<CommandHit>, u64, bool), StoreError> {
    let needle = q.text.as_deref().unwrap_or("").to_lowercase();
    let sessions = store.sessions()?;
    let (mut hits, mut searched, mut budget) = (Vec::new(), 0u64, OUTPUT_BUDGET);
    for meta in sessions
        .into_iter()
        .filter(|m| q.filter.matches(m) && q.session.is_none_or(|s| s == m.id))
    {
        if budget == 0 {
            return Ok((hits, searched, false));
        }
        let frames = store.session_frames(meta.id)?;
        budget = budget.saturating_sub(frames.iter().map(|f| f.data.len() as u64).sum());
        let lines = text::output_lines(&frames);
        searched += lines.len() as u64;
        for line in lines.into_iter().rev() {
            if !line.text.to_lowercase().contains(&needle) {
                continue;
            }
            hits.push(CommandHit {
                session: meta.id,
                at_micros: meta.started_micros + line.t_micros,
                offset_micros: line.t_micros,
                channel: line.channel,
                user: meta.user.clone(),
                login: meta.login.clone(),
                target: meta.target.clone(),
                source: CommandSource::Output,
                doubts: Vec::new(),
                line: line.text,
            });
            if hits.len() >= q.limit {
                return Ok((hits, searched, true));
            }
        }
    }
    Ok((hits, searched, true))
}
