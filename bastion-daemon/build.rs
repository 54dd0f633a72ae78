//! Builds the eBPF programs (bastion-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, so that a plain `cargo build` of the daemon embeds them (see `enforce::programs`).
//! `cargo xtask setup` installs what this needs.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("bastion-daemon has no parent directory"))?;
    let ebpf_dir = workspace.join("bastion-ebpf");
    let common_dir = workspace.join("bastion-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bastion-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
