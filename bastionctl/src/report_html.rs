//! The report as one self-contained HTML page: tables, and charts drawn by plotters' SVG
//! backend inlined as `<svg>` (no scripts, no network, no fonts to fetch; prints as it shows).

use bastion_core::report::{Count, Report, Usage};
use plotters::prelude::*;

use crate::replay::{escape, fill};

const WIDTH: u32 = 720;
const HEIGHT: u32 = 300;

pub fn page(r: &Report) -> Result<String, String> {
    let days: Vec<(String, u64)> = r
        .per_day
        .iter()
        .map(|u| (u.name.clone(), u.sessions))
        .collect();
    let users: Vec<(String, u64)> = r
        .per_user
        .iter()
        .take(10)
        .map(|u| (u.name.clone(), u.sessions))
        .collect();
    let targets: Vec<(String, u64)> = r
        .per_target
        .iter()
        .take(10)
        .map(|u| (u.name.clone(), u.sessions))
        .collect();
    let integrity: Vec<(String, u64)> = r.integrity.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let charts = [
        bars("Sessions per day", &days)?,
        bars("Sessions per user", &users)?,
        bars("Sessions per target", &targets)?,
        bars("Integrity of the records", &integrity)?,
    ]
    .map(|svg| format!("<figure class=\"chart\">{svg}</figure>"))
    .join("\n");
    let range = format!(
        "{} to {}",
        bastion_core::clock::rfc3339_micros(r.since_micros),
        bastion_core::clock::rfc3339_micros(r.until_micros)
    );
    let scope = match (&r.user, &r.target) {
        (None, None) => "all users and targets".to_owned(),
        (u, t) => format!(
            "user {}, target {}",
            u.as_deref().unwrap_or("any"),
            t.as_deref().unwrap_or("any")
        ),
    };
    let summary = table(
        &["", ""],
        &[
            vec!["Sessions".into(), r.totals.sessions.to_string()],
            vec!["Time connected".into(), duration(r.totals.duration_secs)],
            vec!["Bytes carried".into(), r.totals.bytes.to_string()],
            vec![
                "Sign-ins accepted / refused".into(),
                format!("{} / {}", r.sign_ins_accepted, r.sign_ins_refused),
            ],
            vec![
                "Second factor accepted / refused".into(),
                format!("{} / {}", r.mfa_accepted, r.mfa_refused),
            ],
            vec![
                "Access requests approved / denied / expired".into(),
                format!(
                    "{} / {} / {}",
                    r.requests_approved, r.requests_denied, r.requests_expired
                ),
            ],
            vec![
                "After-hours sessions".into(),
                r.after_hours.len().to_string(),
            ],
            vec![
                "Sessions outside their grant's window".into(),
                r.outside_grant_window.len().to_string(),
            ],
            vec![
                "Files uploaded (bytes)".into(),
                format!("{} ({})", r.uploads.count, r.uploads.bytes),
            ],
            vec![
                "Files downloaded (bytes)".into(),
                format!("{} ({})", r.downloads.count, r.downloads.bytes),
            ],
        ],
    );
    let usage = |list: &[Usage]| {
        table(
            &["", "sessions", "time", "bytes"],
            &list
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.sessions.to_string(),
                        duration(u.duration_secs),
                        u.bytes.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        )
    };
    let counts = |head: &str, list: &[Count]| {
        table(
            &[head, "count"],
            &list
                .iter()
                .map(|c| vec![c.name.clone(), c.count.to_string()])
                .collect::<Vec<_>>(),
        )
    };
    let flagged = |list: &[bastion_core::report::Flagged]| {
        table(
            &["session", "user", "target", "grant", "started"],
            &list
                .iter()
                .map(|f| {
                    vec![
                        f.session.to_string(),
                        f.user.clone(),
                        f.target.clone(),
                        f.grant.clone(),
                        bastion_core::clock::rfc3339_micros(f.started_micros),
                    ]
                })
                .collect::<Vec<_>>(),
        )
    };
    let body = [
        section("Summary", &summary),
        section("Charts", &charts),
        section("Sessions per day", &usage(&r.per_day)),
        section("Sessions per user", &usage(&r.per_user)),
        section("Sessions per target", &usage(&r.per_target)),
        section("Refusals", &counts("reason", &r.refusals)),
        section(
            &format!("After hours (outside {})", r.work_hours),
            &flagged(&r.after_hours),
        ),
        section(
            "Outside the grant's window",
            &flagged(&r.outside_grant_window),
        ),
        section(
            "Denied flows",
            &table(
                &["source", "destination", "count"],
                &r.denied_flows
                    .iter()
                    .map(|f| vec![f.src.clone(), f.dst.clone(), f.count.to_string()])
                    .collect::<Vec<_>>(),
            ),
        ),
        section("Command rule hits", &counts("rule", &r.command_rule_hits)),
        section("Top commands", &counts("command", &r.top_commands)),
        section(
            "Files moved",
            &table(
                &["session", "direction", "bytes", "SHA-256", "path"],
                &r.files
                    .iter()
                    .map(|f| {
                        vec![
                            f.session.to_string(),
                            f.direction.clone(),
                            f.size.to_string(),
                            f.sha256.clone(),
                            f.path.clone(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ),
        ),
        section(
            "Integrity",
            &table(
                &["verdict", "sessions"],
                &r.integrity
                    .iter()
                    .map(|(k, v)| vec![k.clone(), v.to_string()])
                    .collect::<Vec<_>>(),
            ),
        ),
    ]
    .join("\n");
    Ok(fill(
        TEMPLATE,
        &[
            ("RANGE", &escape(&range)),
            ("SCOPE", &escape(&scope)),
            (
                "GENERATED",
                &bastion_core::clock::rfc3339_micros(bastion_core::audit::now_micros()),
            ),
            ("BODY", &body),
        ],
    ))
}

/// A bar chart as an `<svg>` element (an empty range draws an empty chart).
fn bars(title: &str, data: &[(String, u64)]) -> Result<String, String> {
    let labels: Vec<&str> = data.iter().map(|(l, _)| l.as_str()).collect();
    let max = data.iter().map(|d| d.1).max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let e = |e: &dyn std::fmt::Display| format!("{title}: {e}");
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let x = if labels.is_empty() {
            vec!["(none)"]
        } else {
            labels.clone()
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(x.as_slice().into_segmented(), 0u64..max + max / 10 + 1)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("sessions")
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(s) | SegmentValue::Exact(s) => s.to_string(),
                SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(RGBColor(0x2b, 0x6c, 0xb0).filled())
                    .margin(6)
                    .data(labels.iter().zip(data.iter().map(|d| d.1))),
            )
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

fn section(title: &str, content: &str) -> String {
    format!("<section><h2>{}</h2>\n{content}\n</section>", escape(title))
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "<p class=\"none\">none</p>".into();
    }
    let mut out = String::from("<table><thead><tr>");
    for h in head {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead><tbody>\n");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            out.push_str(&format!("<td>{}</td>", escape(c)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>");
    out
}

fn duration(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

const TEMPLATE: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>bastion compliance report</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 60em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td { font-variant-numeric: tabular-nums; word-break: break-all; }
.chart { margin: 0.5em 0; } .chart svg { max-width: 100%; height: auto; }
.none { color: #777; }
@media print { body { margin: 0; } section { break-inside: avoid; } }
</style></head>
<body>
<h1>bastion compliance report</h1>
<p>{{RANGE}} (UTC), {{SCOPE}}. Generated {{GENERATED}}.</p>
{{BODY}}
</body></html>
"#;
