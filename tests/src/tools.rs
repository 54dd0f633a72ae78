//! Tools `cargo xtask setup` installs for the lab besides OpenSSH, from PyPI, pinned, in a
//! virtual environment of their own (xtask's setup names the same path): ssh-audit, and
//! paramiko for `tests/scripts/hostile_ssh.py`, a client that sends what OpenSSH never would.

use anyhow::Context;

use crate::Lab;

pub const SSH_AUDIT: &str = "/opt/bastion-lab/venv/bin/ssh-audit";
pub const PYTHON: &str = "/opt/bastion-lab/venv/bin/python";

/// What ssh-audit found on one listener.
pub struct Audit {
    /// Every `[fail]` and `[warn]` note, as `"fail kex curve25519-sha256: ..."`.
    pub findings: Vec<String>,
    /// Its additional notes (the connection-rate note is one).
    pub notes: Vec<String>,
    pub compression: Vec<String>,
    pub kex: Vec<String>,
}

impl Lab {
    /// Runs ssh-audit from the admin workstation (its namespace, not held to the appliance's
    /// enforcement) against `host:port`, in JSON. Its exit code only says whether it found
    /// warnings, which the caller judges from the findings.
    pub fn ssh_audit(&self, host: &str, port: u16) -> anyhow::Result<Audit> {
        let out = self
            .command_unenforced("admin", SSH_AUDIT)?
            .args(["-j", "-t", "20", "-p", &port.to_string(), host])
            .output()
            .context("running ssh-audit (installed by cargo xtask setup)")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "ssh-audit printed no JSON (exit {:?}): {}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut findings = Vec::new();
        for list in ["kex", "key", "enc", "mac"] {
            for alg in json[list].as_array().into_iter().flatten() {
                let name = alg["algorithm"].as_str().unwrap_or("?");
                for level in ["fail", "warn"] {
                    for note in strings(&alg["notes"][level]) {
                        findings.push(format!("{level} {list} {name}: {note}"));
                    }
                }
            }
        }
        let kex = json["kex"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["algorithm"].as_str().map(str::to_owned))
            .collect();
        Ok(Audit {
            findings,
            notes: strings(&json["additional_notes"]),
            compression: strings(&json["compression"]),
            kex,
        })
    }
}
