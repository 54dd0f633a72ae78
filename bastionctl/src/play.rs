//! `session play`: writes an asciicast v2 recording's output events to the terminal with their
//! original timing (scaled by `speed`), from `from` seconds in: what came before is written at
//! once, so the screen is as it was at that moment.

use std::{
    io::Write,
    time::{Duration, Instant},
};

pub fn play(asciicast: &str, speed: f64, no_wait: bool, from: f64) -> Result<(), String> {
    let speed = if speed > 0.0 { speed } else { 1.0 };
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    for (n, line) in asciicast.lines().enumerate().skip(1) {
        let event: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("event {n}: {e}"))?;
        let (Some(t), Some(kind), Some(data)) =
            (event[0].as_f64(), event[1].as_str(), event[2].as_str())
        else {
            return Err(format!("event {n}: not [time, kind, data]"));
        };
        if kind != "o" {
            continue;
        }
        if !no_wait && t >= from {
            let due = Duration::from_secs_f64(((t - from) / speed).max(0.0));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        out.write_all(data.as_bytes()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
