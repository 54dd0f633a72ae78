//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Stdio},
    time::Instant,
};

use crate::util::{build_bins, cargo, require_root, step, workspace};

pub fn run(extra: &[String], image: bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    require_root("cargo xtask test")?;
    crate::setup::run()?;
    step("rustfmt", cargo().args(["fmt", "--all", "--check"]))?;
    // --workspace on every cargo call keeps one feature set for the userspace crates.
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
    // Both beside the tests: the release build at the lowest priority takes the CPU the
    // tests leave idle (started before clippy, it only slowed clippy and the build: measured),
    // and the root tree is mostly downloads and unpacking.
    let release = image.then(ReleaseBuild::start).transpose()?;
    let root = image.then(crate::image::PreparedRoot::start).transpose()?;
    step(
        "unit and end-to-end tests",
        cargo()
            .args(["test", "--locked", "--workspace"])
            .args(extra),
    )?;
    if let Some(release) = release {
        release.wait();
        // The appliance image is part of the product: built and boot-tested like the rest.
        crate::image::run_with(crate::image::ImageArgs::boot_test(), root)?;
    }
    println!(
        "==> all checks passed in {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The image's release build, started at the lowest CPU priority while the tests run. The
/// end-to-end tests spend much of their time waiting on the lab's network and processes, and
/// the release build, CI's longest single step, takes up that idle CPU without slowing them.
/// The image step then runs the same build in the foreground: a no-op when this one finished,
/// and where a failure is reported in full.
struct ReleaseBuild {
    child: Option<Child>,
}

impl ReleaseBuild {
    fn start() -> anyhow::Result<ReleaseBuild> {
        let release = crate::image::release_build();
        let log_path = workspace().join("target/release-build.log");
        let log = std::fs::File::create(&log_path)?;
        eprintln!(
            "==> release build for the image, in the background at low priority (log: {})",
            log_path.display()
        );
        let child = std::process::Command::new("nice")
            .args(["-n", "19"])
            .arg(release.get_program())
            .args(release.get_args())
            .current_dir(workspace())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group, so that stopping it stops the compilers it started.
            .process_group(0)
            .spawn()?;
        Ok(ReleaseBuild { child: Some(child) })
    }

    /// Waits for the build; its outcome is the foreground build's to report.
    fn wait(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for ReleaseBuild {
    /// The tests failed: the build is not needed.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id() as i32;
            // SAFETY: kill has no memory preconditions; the group is the one this build leads.
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}
