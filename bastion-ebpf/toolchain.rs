//! The toolchain that builds the eBPF programs: read from `rust-toolchain.toml` beside this file,
//! probed with `rustc -vV`, and checked against bpf-linker's LLVM.
//!
//! Not a module of the eBPF crate: bastion-daemon's build.rs (which builds the programs) and
//! xtask's setup (which installs what that needs) both include this file with `#[path]`, so the
//! pin is read and checked the same way in both. Std only, no dependencies.

#![allow(dead_code)] // each includer uses part of it

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Where the pin lives, relative to the workspace root.
pub const PIN_FILE: &str = "bastion-ebpf/rust-toolchain.toml";

/// The eBPF toolchain as pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The rustup toolchain name, e.g. `nightly-2026-05-20`.
    pub channel: String,
}

impl Pin {
    /// Reads the pin from the workspace at `workspace`.
    pub fn read(workspace: &Path) -> Result<Pin, String> {
        let path = workspace.join(PIN_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading the eBPF toolchain pin {}: {e}", path.display()))?;
        Pin::parse(&text).ok_or_else(|| {
            format!(
                "{}: no `channel = \"nightly-YYYY-MM-DD\"` under [toolchain]",
                path.display()
            )
        })
    }

    /// The `channel` under `[toolchain]`, which must name a dated nightly.
    pub fn parse(text: &str) -> Option<Pin> {
        let mut in_toolchain = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_toolchain = line == "[toolchain]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if in_toolchain && key.trim() == "channel" {
                let channel = value.trim().strip_prefix('"')?.strip_suffix('"')?;
                let pin = Pin {
                    channel: channel.to_owned(),
                };
                return pin.date().is_some().then_some(pin);
            }
        }
        None
    }

    /// The nightly's date (`YYYY-MM-DD`), as rustup's channel manifest states it.
    pub fn date(&self) -> Option<&str> {
        let date = self.channel.strip_prefix("nightly-")?;
        let ok = date.len() == 10
            && date.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        ok.then_some(date)
    }

    /// `rustup run <channel> <tool>`.
    pub fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", &self.channel, tool]);
        cmd
    }

    /// The installed toolchain's LLVM major, or `None` when rustup cannot run it.
    pub fn llvm_major(&self) -> Option<u32> {
        rustc_llvm_major(&stdout_of(self.command("rustc").arg("-vV"))?)
    }

    /// The installed toolchain's sysroot.
    pub fn sysroot(&self) -> Option<PathBuf> {
        let out = stdout_of(self.command("rustc").args(["--print", "sysroot"]))?;
        Some(PathBuf::from(out.trim()))
    }

    /// Whether the toolchain has rust-src (`-Z build-std=core` compiles core from it).
    pub fn has_rust_src(&self) -> bool {
        self.sysroot()
            .is_some_and(|s| s.join("lib/rustlib/src/rust/library/core").is_dir())
    }
}

/// The LLVM major in `rustc -vV` output (`LLVM version: 22.1.4`).
pub fn rustc_llvm_major(verbose_version: &str) -> Option<u32> {
    let version = verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?;
    major(version.trim())
}

/// The LLVM major bpf-linker was built against. LLVM's own option parser answers `--version`
/// (`Debian LLVM version 22.1.8`) before any input is read, whether LLVM is linked statically
/// or not.
pub fn bpf_linker_llvm_major() -> Option<u32> {
    let out = stdout_of(Command::new("bpf-linker").args([
        "--llvm-args=--version",
        "--output",
        "/dev/null",
        "/dev/null",
    ]))?;
    linker_llvm_major(&out)
}

/// The LLVM major in LLVM's `--version` text.
pub fn linker_llvm_major(text: &str) -> Option<u32> {
    let at = text.find("LLVM version ")? + "LLVM version ".len();
    major(&text[at..])
}

fn major(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A command's stdout when it succeeds (its stderr discarded).
pub fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pinned_channel() {
        let text = "# x\n[other]\nchannel = \"stable\"\n[toolchain]\nchannel = \"nightly-2026-05-20\"\ncomponents = [\"rust-src\"]\n";
        let pin = Pin::parse(text).expect("pin");
        assert_eq!(pin.channel, "nightly-2026-05-20");
        assert_eq!(pin.date(), Some("2026-05-20"));
    }

    #[test]
    fn only_a_dated_nightly_is_a_pin() {
        for bad in [
            "[toolchain]\nchannel = \"nightly\"\n",
            "[toolchain]\nchannel = \"stable\"\n",
            "[toolchain]\nchannel = \"nightly-2026-5-20\"\n",
            "[toolchain]\nchannel = nightly-2026-05-20\n",
            "channel = \"nightly-2026-05-20\"\n",
        ] {
            assert_eq!(Pin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn llvm_majors() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(rustc_llvm_major(vv), Some(22));
        assert_eq!(rustc_llvm_major("rustc 1.95.0\n"), None);
        assert_eq!(
            linker_llvm_major("Debian LLVM version 22.1.8\n  Optimized build.\n"),
            Some(22)
        );
        assert_eq!(
            linker_llvm_major("LLVM (http://llvm.org/):\n  LLVM version 23.0.0git\n"),
            Some(23)
        );
        assert_eq!(linker_llvm_major("bpf-linker 0.13.0\n"), None);
    }
}
