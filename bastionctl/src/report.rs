//! `bastionctl report`: gathers sessions, audit events, indexed commands and files, integrity
//! verdicts and grant windows over the control API (a progress line on stderr), builds the
//! numbers with [`bastion_core::report`], and writes them as JSON, CSV or one self-contained HTML
//! page whose charts are inline SVG (plotters). Every format carries the same numbers.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use bastion_core::{
    policy::{Entity, EntityKind, window::Window},
    protocol::{Request, Response},
    report::{self, Inputs, Report},
    session::{CommandHit, CommandQuery, SessionFilter},
};

use crate::client;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Html,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct Args {
    /// From (sessions started, events at): Unix seconds, YYYY-MM-DD or
    /// YYYY-MM-DDTHH:MM:SSZ (UTC). Default: 30 days before --until.
    #[arg(long, value_parser = crate::cli::parse_time)]
    pub since: Option<u64>,
    /// Before (same formats). Default: now.
    #[arg(long, value_parser = crate::cli::parse_time)]
    pub until: Option<u64>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// Working hours (UTC); sessions started outside them are after-hours.
    #[arg(long, default_value = "mon-fri 08:00-18:00")]
    pub work_hours: Window,
    #[arg(long, value_enum, default_value_t = Format::Html)]
    pub format: Format,
    /// Write here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Api(#[from] client::ClientError),
    #[error("bastiond sent an unexpected answer to {0}")]
    Unexpected(&'static str),
    #[error("--since must be before --until")]
    Range,
    #[error("drawing a chart: {0}")]
    Chart(String),
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

const DAY_SECS: u64 = 86_400;
const AUDIT_PAGE: usize = 5_000;
const SEARCH_PAGE: usize = 1_000;

pub fn run(socket: &std::path::Path, timeout: Duration, args: Args) -> Result<(), ReportError> {
    let until = args
        .until
        .unwrap_or_else(|| bastion_core::audit::now_micros() / 1_000_000 + 1);
    let since = args.since.unwrap_or(until.saturating_sub(30 * DAY_SECS));
    if since >= until {
        return Err(ReportError::Range);
    }
    let (since_micros, until_micros) = (since * 1_000_000, until * 1_000_000);
    let call =
        |r: Request| -> Result<Response, ReportError> { Ok(client::call(socket, &r, timeout)?) };
    let filter = SessionFilter {
        user: args.user.clone(),
        target: args.target.clone(),
        since_micros: Some(since_micros),
        until_micros: Some(until_micros),
        ..SessionFilter::default()
    };
    progress("sessions");
    let Response::Sessions { sessions } = call(Request::SessionList {
        filter: filter.clone(),
    })?
    else {
        return Err(ReportError::Unexpected("the session list"));
    };
    let events = audit_events(&call, since_micros, until_micros)?;
    // Commands by their own time: a session started in the range counts with everything it
    // did, after the range's end too (the report keeps only its sessions' commands).
    let commands = commands(
        &call,
        &SessionFilter {
            until_micros: None,
            ..filter.clone()
        },
    )?;
    // Each session of the range judged on its own (the whole store could take longer than
    // one answer may).
    let mut integrity = Vec::with_capacity(sessions.len());
    for (n, s) in sessions.iter().enumerate() {
        if n % 50 == 0 {
            progress(&format!("integrity ({n} of {})", sessions.len()));
        }
        let Response::Verify { sessions: v, .. } = call(Request::Verify {
            session: Some(s.id),
        })?
        else {
            return Err(ReportError::Unexpected("verify"));
        };
        integrity.extend(v);
    }
    let Response::Entities { entities } = call(Request::PolicyList {
        kind: EntityKind::Grant,
    })?
    else {
        return Err(ReportError::Unexpected("the grant list"));
    };
    let grant_windows = entities
        .into_iter()
        .filter_map(|e| match e {
            Entity::Grant(g) => g.window.map(|w| (g.id, w)),
            _ => None,
        })
        .collect();
    eprintln!(
        "\rreport: {} sessions, {} audit events, {} commands and files            ",
        sessions.len(),
        events.len(),
        commands.len()
    );
    let report = report::build(&Inputs {
        since_micros,
        until_micros,
        user: args.user.as_deref(),
        target: args.target.as_deref(),
        work_hours: args.work_hours,
        work_hours_text: args.work_hours.to_string(),
        grant_windows,
        sessions,
        events,
        commands,
        integrity,
    });
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        Format::Csv => csv(&report),
        Format::Html => crate::report_html::page(&report).map_err(ReportError::Chart)?,
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        }),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn progress(what: &str) {
    use std::io::Write;
    eprint!("\rreport: reading {what}...                    ");
    let _ = std::io::stderr().flush();
}

/// The audit stream from its start, page by page, keeping the events in range.
fn audit_events(
    call: &dyn Fn(Request) -> Result<Response, ReportError>,
    since: u64,
    until: u64,
) -> Result<Vec<bastion_core::audit::AuditEvent>, ReportError> {
    let mut kept = Vec::new();
    let mut after = 0;
    loop {
        let Response::Audit { events } = call(Request::AuditSince {
            after,
            limit: AUDIT_PAGE,
        })?
        else {
            return Err(ReportError::Unexpected("the audit stream"));
        };
        let Some(last) = events.last() else {
            return Ok(kept);
        };
        after = last.seq;
        progress(&format!("the audit stream (event {after})"));
        let past = last.time_micros >= until;
        kept.extend(
            events
                .into_iter()
                .filter(|e| e.time_micros >= since && e.time_micros < until),
        );
        if past {
            return Ok(kept);
        }
    }
}

/// Every indexed command and file of the range: searched newest first, a page at a time,
/// each page ending where the last one's oldest hit was (hits at that instant seen once).
fn commands(
    call: &dyn Fn(Request) -> Result<Response, ReportError>,
    filter: &SessionFilter,
) -> Result<Vec<CommandHit>, ReportError> {
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    let mut until = filter.until_micros;
    loop {
        progress(&format!("commands ({})", all.len()));
        let query = CommandQuery {
            filter: SessionFilter {
                until_micros: until,
                ..filter.clone()
            },
            limit: SEARCH_PAGE,
            ..CommandQuery::default()
        };
        let Response::Search { hits, .. } = call(Request::Search {
            query,
            output: false,
        })?
        else {
            return Err(ReportError::Unexpected("the command search"));
        };
        let full = hits.len() >= SEARCH_PAGE;
        let oldest = hits.last().map(|h| h.at_micros);
        let before = all.len();
        for h in hits {
            if seen.insert((h.session, h.at_micros, h.channel, h.line.clone())) {
                all.push(h);
            }
        }
        match oldest {
            Some(t) if full && all.len() > before => until = Some(t + 1),
            _ => return Ok(all),
        }
    }
}

/// One table: `section,name,sessions,duration_secs,bytes,count,detail`.
fn csv(r: &Report) -> String {
    let mut out = String::from("section,name,sessions,duration_secs,bytes,count,detail\n");
    let mut row = |section: &str,
                   name: &str,
                   usage: Option<&report::Usage>,
                   count: Option<u64>,
                   detail: &str| {
        let (s, d, b) = usage.map_or((String::new(), String::new(), String::new()), |u| {
            (
                u.sessions.to_string(),
                u.duration_secs.to_string(),
                u.bytes.to_string(),
            )
        });
        out.push_str(&format!(
            "{},{},{s},{d},{b},{},{}\n",
            field(section),
            field(name),
            count.map(|c| c.to_string()).unwrap_or_default(),
            field(detail)
        ));
    };
    row("total", "all", Some(&r.totals), None, "");
    for (section, list) in [
        ("day", &r.per_day),
        ("user", &r.per_user),
        ("target", &r.per_target),
    ] {
        for u in list {
            row(section, &u.name, Some(u), None, "");
        }
    }
    for (name, count) in [
        ("sign_ins_accepted", r.sign_ins_accepted),
        ("sign_ins_refused", r.sign_ins_refused),
        ("mfa_accepted", r.mfa_accepted),
        ("mfa_refused", r.mfa_refused),
        ("requests_approved", r.requests_approved),
        ("requests_denied", r.requests_denied),
        ("requests_expired", r.requests_expired),
        ("uploads", r.uploads.count),
        ("upload_bytes", r.uploads.bytes),
        ("downloads", r.downloads.count),
        ("download_bytes", r.downloads.bytes),
        ("after_hours", r.after_hours.len() as u64),
        ("outside_grant_window", r.outside_grant_window.len() as u64),
    ] {
        row("count", name, None, Some(count), "");
    }
    for (section, list) in [
        ("refusal", &r.refusals),
        ("command_rule", &r.command_rule_hits),
        ("top_command", &r.top_commands),
    ] {
        for c in list {
            row(section, &c.name, None, Some(c.count), "");
        }
    }
    for f in &r.denied_flows {
        row(
            "denied_flow",
            &format!("{} -> {}", f.src, f.dst),
            None,
            Some(f.count),
            "",
        );
    }
    for (status, n) in &r.integrity {
        row("integrity", status, None, Some(*n), "");
    }
    for f in r.after_hours.iter() {
        row(
            "after_hours",
            &f.session.to_string(),
            None,
            None,
            &format!("{} {} {}", f.user, f.target, f.grant),
        );
    }
    for f in r.outside_grant_window.iter() {
        row(
            "outside_grant_window",
            &f.session.to_string(),
            None,
            None,
            &format!("{} {} {}", f.user, f.target, f.grant),
        );
    }
    for f in &r.files {
        row(
            "file",
            &f.path,
            None,
            Some(f.size),
            &format!("{} {} session {}", f.direction, f.sha256, f.session),
        );
    }
    out
}

/// A CSV field, quoted when it needs to be; text a spreadsheet would run as a formula (a
/// recorded command or path starting with `=`, `+`, `-`, `@`) is kept text with a `'`.
fn field(s: &str) -> String {
    let s = match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}
