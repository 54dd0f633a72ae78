//! bastionctl: the admin CLI. Human-readable output by default, `--json` for scripts.
//!
//! - `cli`: the command line, turned into one control-API request;
//! - `render`: the human-readable tables;
//! - `play`: terminal replay of a recorded session.

mod cli;
mod play;
mod render;

use std::{process::ExitCode, time::Duration};

use bastion::control::client;
use clap::Parser as _;

const TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors on one line, like every other bastionctl error; help and version as clap prints them.
        Err(e) if e.use_stderr() => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "bastionctl: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let playback = cli.command.playback();
    let request = match cli.command.into_request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bastionctl: {e}");
            return ExitCode::from(2);
        }
    };
    match client::call(&cli.socket, &request, TIMEOUT) {
        Ok(response) => {
            if let (
                Some((speed, no_wait)),
                bastion::control::protocol::Response::Export { content, .. },
            ) = (playback, &response)
            {
                return match play::play(content, speed, no_wait) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("bastionctl: replay: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            if cli.json {
                match serde_json::to_string_pretty(&response) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("bastionctl: cannot encode response: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                render::response(&response);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bastionctl: {e}");
            ExitCode::FAILURE
        }
    }
}
