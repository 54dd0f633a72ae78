//! Builds the eBPF programs (bastion-ebpf) for bpfel-unknown-none with the pinned nightly
//! (bastion-ebpf/rust-toolchain.toml) and bpf-linker, so that a plain `cargo build` of the daemon
//! embeds them (see `enforce::programs`). `cargo xtask setup` installs what this needs; when
//! something is missing or mismatched this stops with one line that says what and how to fix it,
//! before aya-build would fail deep inside the nested build (e.g. LLVM's "Invalid record").

use std::path::{Path, PathBuf};

use anyhow::bail;

#[path = "../bastion-ebpf/toolchain.rs"]
mod toolchain;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("bastion-daemon has no parent directory"))?;
    let ebpf_dir = workspace.join("bastion-ebpf");
    let common_dir = workspace.join("bastion-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join(toolchain::PIN_FILE).display()
    );
    let pin = toolchain::Pin::read(workspace).map_err(anyhow::Error::msg)?;
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        check(&pin)?;
    }
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let out_dir = PathBuf::from(
        std::env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("OUT_DIR not set"))?,
    );
    let shared = shared_dir(&out_dir);
    std::fs::create_dir_all(&shared)?;
    // aya-build keeps its nested cargo's target directory under OUT_DIR, which is new for every
    // profile the daemon is built in (check, dev, test, release): `cargo xtask test` compiled
    // core and the eBPF crate four times, about a minute each. Pointed at one directory under
    // the workspace's target directory instead, the nested cargo's own fingerprints make every
    // build after the first a no-op; the programs are then copied where `enforce::programs`
    // includes them from.
    // SAFETY: a build script is single-threaded; aya-build reads OUT_DIR once, before it spawns.
    unsafe { std::env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: "bastion-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&pin.channel),
    );
    // SAFETY: as above.
    unsafe { std::env::set_var("OUT_DIR", &out_dir) };
    built?;
    std::fs::copy(shared.join(PROGRAMS), out_dir.join(PROGRAMS))?;
    Ok(())
}

/// The binary of bastion-ebpf that holds every program.
const PROGRAMS: &str = "bastion-ebpf-programs";

/// `<target>/ebpf` for an OUT_DIR of `<target>/<profile>/build/bastion-daemon-<hash>/out`.
fn shared_dir(out_dir: &Path) -> PathBuf {
    match out_dir.ancestors().nth(4) {
        Some(target) => target.join("ebpf"),
        // An unexpected layout only loses the sharing, not the build.
        None => out_dir.join("ebpf"),
    }
}

/// The pinned toolchain is installed with rust-src, and its LLVM is bpf-linker's.
fn check(pin: &toolchain::Pin) -> anyhow::Result<()> {
    let channel = &pin.channel;
    let Some(rustc_llvm) = pin.llvm_major() else {
        bail!(
            "the eBPF toolchain {channel} ({}) is not installed: run `cargo xtask setup`",
            toolchain::PIN_FILE
        );
    };
    if !pin.has_rust_src() {
        bail!("the eBPF toolchain {channel} has no rust-src: run `cargo xtask setup`");
    }
    let Some(linker_llvm) = toolchain::bpf_linker_llvm_major() else {
        bail!("bpf-linker is not installed (or not on PATH): run `cargo xtask setup`");
    };
    if linker_llvm != rustc_llvm {
        bail!(
            "LLVM mismatch: {channel} uses LLVM {rustc_llvm} but bpf-linker is built against LLVM {linker_llvm}; run `cargo xtask setup` to rebuild bpf-linker against LLVM {rustc_llvm}"
        );
    }
    Ok(())
}
