//! `session export ID --format html`: one self-contained page that plays the session in a
//! browser. The asciinema player (npm `asciinema-player`, vendored under `assets/`, Apache-2.0)
//! is compiled into bastionctl and inlined with the recording, so the page needs no network.
//! Beside the player: the session's metadata, its seal as `verify` judges it, and its commands
//! (clicking one seeks there).
//!
//! For tests and kiosks, `#autoplay` in the page's URL starts playback at 8x; the page marks
//! `<body data-player="ended">` when the player reaches the last frame and records script
//! errors in `data-error`.

use bastion_core::{integrity::SessionIntegrity, record::export::Activity, session::SessionMeta};

const PLAYER_JS: &str = include_str!("../assets/asciinema-player/asciinema-player.min.js");
const PLAYER_CSS: &str = include_str!("../assets/asciinema-player/asciinema-player.css");
const PLAYER_VERSION: &str = include_str!("../assets/asciinema-player/VERSION");

/// The page for a session: its asciicast, what happened in it, and its integrity verdict.
pub fn page(
    meta: &SessionMeta,
    cast: &str,
    activity: &[Activity],
    integrity: Option<&SessionIntegrity>,
) -> String {
    let seal = match integrity {
        Some(v) => format!(
            "{} — {}",
            format!("{:?}", v.status).to_uppercase(),
            escape(&v.detail)
        ),
        None => "not checked".into(),
    };
    let mut commands = String::new();
    for a in activity.iter().filter(|a| {
        a.what.starts_with("$ ") || a.what.starts_with("exec ") || a.what.starts_with("file ")
    }) {
        let t = a.t_micros as f64 / 1e6;
        commands.push_str(&format!(
            "<li><a href=\"#\" data-t=\"{t:.3}\"><span class=\"t\">{}</span> {}</a></li>\n",
            clock(a.t_micros),
            escape(&a.what)
        ));
    }
    if commands.is_empty() {
        commands.push_str("<li class=\"none\">(no commands)</li>");
    }
    let duration = meta
        .ended_micros
        .map(|e| clock(e.saturating_sub(meta.started_micros)))
        .unwrap_or_else(|| "live".into());
    let rows = [
        ("Session", meta.id.to_string()),
        ("User", meta.user.clone()),
        ("Login", meta.login.clone()),
        ("Target", format!("{} ({})", meta.target, meta.target_addr)),
        (
            "Client",
            meta.client_addr.map(|a| a.to_string()).unwrap_or_default(),
        ),
        ("Grant", meta.grant.clone()),
        (
            "Started",
            bastion_core::clock::rfc3339_micros(meta.started_micros),
        ),
        ("Duration", duration),
        (
            "Bytes",
            format!("{} in, {} out", meta.bytes_in, meta.bytes_out),
        ),
        ("State", format!("{:?}", meta.state).to_lowercase()),
    ];
    let meta_rows: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{}</td></tr>\n", escape(v)))
        .collect();
    let sealed_class = match integrity.map(|v| v.status) {
        Some(bastion_core::integrity::Status::Sealed) => "ok",
        _ => "warn",
    };
    fill(
        TEMPLATE,
        &[
            ("TITLE", &escape(&format!("bastion session {}", meta.id))),
            ("CSS", PLAYER_CSS),
            ("META", &meta_rows),
            ("SEAL_CLASS", sealed_class),
            ("SEAL", &seal),
            ("COMMANDS", &commands),
            ("VERSION", PLAYER_VERSION.trim()),
            ("CAST", &script_string(cast)),
            ("PLAYER_JS", PLAYER_JS),
        ],
    )
}

/// Fills `{{KEY}}` placeholders in one pass: what is inserted is never scanned again, so a
/// recording that contains `{{...}}` stays as it is.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find("}}").and_then(|end| {
            let key = &after[..end];
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (end, *v))
        }) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `[H:]MM:SS` of an offset.
fn clock(micros: u64) -> String {
    let s = micros / 1_000_000;
    match s / 3600 {
        0 => format!("{:02}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", (s / 60) % 60, s % 60),
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JS string literal safe inside `<script>`: nothing in it can close the element.
fn script_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('<', "\\u003c")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="bastionctl (asciinema-player {{VERSION}})">
<title>{{TITLE}}</title>
<script>
document.documentElement.dataset.errors = "";
function bastionError(msg) {
  var b = document.body || document.documentElement;
  b.dataset.error = (b.dataset.error ? b.dataset.error + "; " : "") + msg;
}
window.addEventListener("error", function (e) { bastionError(String(e.message)); });
window.addEventListener("unhandledrejection", function (e) { bastionError(String(e.reason)); });
var consoleError = console.error;
console.error = function () {
  bastionError(Array.prototype.join.call(arguments, " "));
  consoleError.apply(console, arguments);
};
</script>
<style>{{CSS}}</style>
<style>
body { font-family: sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.3em; }
.layout { display: flex; gap: 1.5em; align-items: flex-start; }
#player { flex: 3; min-width: 0; }
aside { flex: 1; min-width: 18em; }
table { border-collapse: collapse; font-size: 0.9em; }
th { text-align: left; padding-right: 1em; color: #555; }
.seal { padding: 0.3em 0.6em; border-radius: 4px; margin: 0.6em 0; font-size: 0.9em; }
.seal.ok { background: #e3f5e1; } .seal.warn { background: #fbe3e3; }
ol { padding-left: 1.2em; font-family: monospace; font-size: 0.85em; }
ol a { color: #124; text-decoration: none; } ol a:hover { text-decoration: underline; }
.t { color: #888; }
@media print { .layout { display: block; } }
</style></head>
<body>
<h1>{{TITLE}}</h1>
<div class="layout">
<div id="player"></div>
<aside>
<table>{{META}}</table>
<div class="seal {{SEAL_CLASS}}">Integrity: {{SEAL}}</div>
<h2>Commands</h2>
<ol id="commands">{{COMMANDS}}</ol>
</aside>
</div>
<script>{{PLAYER_JS}}</script>
<script>
(function () {
  var cast = {{CAST}};
  var auto = location.hash.indexOf("autoplay") >= 0;
  var player = AsciinemaPlayer.create({ data: cast }, document.getElementById("player"),
    { autoPlay: auto, speed: auto ? 8 : 1, fit: "width", controls: true });
  document.body.dataset.player = "created";
  player.addEventListener("playing", function () { document.body.dataset.player = "playing"; });
  player.addEventListener("ended", function () { document.body.dataset.player = "ended"; });
  document.querySelectorAll("#commands a").forEach(function (a) {
    a.addEventListener("click", function (e) {
      e.preventDefault();
      player.seek(parseFloat(a.dataset.t)).then(function () { return player.play(); });
    });
  });
  window.bastionPlayer = player;
})();
</script>
</body></html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_once_and_text_cannot_close_the_script() {
        assert_eq!(
            fill("a{{X}}b{{Y}}c{{Z}}", &[("X", "{{Y}}"), ("Y", "1")]),
            "a{{Y}}b1c{{Z}}"
        );
        let s = script_string("</script><b>\u{2028}");
        assert!(!s.contains('<'), "{s}");
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
