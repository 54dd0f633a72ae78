//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::time::Instant;

use crate::util::{build_bins, cargo, require_root, step};

pub fn run(extra: &[String], image: bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    require_root("cargo xtask test")?;
    crate::setup::run()?;
    step("rustfmt", cargo().args(["fmt", "--all", "--check"]))?;
    // --workspace on every cargo call keeps one feature set, so the nested eBPF build runs once.
    step(
        "clippy (userspace and eBPF crates, -D warnings)",
        cargo().args([
            "clippy",
            "--locked",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    build_bins()?;
    step(
        "unit and end-to-end tests",
        cargo()
            .args(["test", "--locked", "--workspace"])
            .args(extra),
    )?;
    if image {
        // The appliance image is part of the product: built and boot-tested like the rest.
        crate::image::run(crate::image::ImageArgs::boot_test())?;
    }
    println!(
        "==> all checks passed in {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
