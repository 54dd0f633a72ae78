//! `cargo xtask lab up|down|status`.

use anyhow::bail;
use bastion_lab::{
    Lab,
    cleanup::{self, OwnerState},
    names::LabName,
};
use clap::Subcommand;

use crate::util::{build_bins, require_root};

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build a lab that stays up after this command (remove it with `lab down`).
    Up {
        /// Print one JSON object describing the lab instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lab (by name) or every lab on this machine whose owner is gone or that was kept.
    Down { name: Option<String> },
    /// List the labs on this machine.
    Status,
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    require_root("cargo xtask lab")?;
    match cmd {
        LabCommand::Up { json } => {
            build_bins()?;
            let lab = Lab::up_kept()?;
            if json {
                println!("{}", serde_json::to_string_pretty(lab.info())?);
            } else {
                print_enter(&lab);
            }
            Ok(())
        }
        LabCommand::Down { name } => {
            let names = match name {
                Some(n) => match LabName::parse(&n) {
                    Some(n) => vec![n],
                    None => bail!("`{n}` is not a lab name (they look like bastionlab-0123abcd)"),
                },
                None => cleanup::all_labs()?
                    .into_iter()
                    .filter(|n| OwnerState::read(n).is_none_or(|s| s.keep || !s.owner_alive()))
                    .collect(),
            };
            if names.is_empty() {
                println!("no labs to remove");
            }
            for n in names {
                cleanup::teardown(&n)?;
                println!("removed {n}");
            }
            Ok(())
        }
        LabCommand::Status => {
            let names = cleanup::all_labs()?;
            if names.is_empty() {
                println!("no labs");
            }
            for n in names {
                let state = match OwnerState::read(&n) {
                    Some(s) if s.keep => "kept (remove with `cargo xtask lab down`)".to_owned(),
                    Some(s) if s.owner_alive() => format!("in use by pid {}", s.owner_pid),
                    Some(_) => "stale (owner gone; swept by the next lab)".to_owned(),
                    None => "orphaned traces (no state file)".to_owned(),
                };
                println!("{n}  {state}");
            }
            Ok(())
        }
    }
}

/// How to use a kept lab by hand.
pub fn print_enter(lab: &Lab) {
    let i = lab.info();
    println!("lab {} is up ({}):", i.name, i.run_dir.display());
    println!(
        "  admin     ip netns exec {} bash      # {}",
        i.admin.netns, i.admin.addr
    );
    println!(
        "  bastion   ip netns exec {} bash      # {} / {}",
        i.bastion.netns, i.bastion.admin_addr, i.bastion.protected_addr
    );
    for h in &i.hosts {
        println!(
            "  {:<9} ip netns exec {} bash      # {} (sshd)",
            h.name, h.netns, h.addr
        );
    }
    println!(
        "  ssh to a host from admin:  ip netns exec {} ssh -i {} root@{}",
        i.admin.netns,
        i.admin_key.display(),
        i.hosts[0].addr
    );
    println!(
        "  bastiond:  target/debug/bastiond --config {} --netns {}",
        i.bastiond.config.display(),
        i.bastion.netns
    );
    println!(
        "  bastionctl --socket {} status",
        i.bastiond.control_socket.display()
    );
    println!(
        "  note: `ip netns exec` remounts /sys; start bastiond with --netns instead, as above"
    );
    println!("  remove:    cargo xtask lab down {}", i.name);
}
