//! `cargo xtask image [--test]`: the appliance disk image from `appliance-image/`, without loop
//! devices or mounts: mmdebstrap builds the root tree (overlay, bastiond and bastionctl in it),
//! mkfs.erofs makes it a read-only image, mkfs.ext4 the empty data partition, objcopy a unified
//! kernel image (kernel + initramfs + command line) that UEFI boots directly from the ESP
//! (mkfs.vfat + mtools), and sfdisk + dd lay the three partitions into one GPT disk. qemu-img
//! converts it to qcow2. `--test` boots it under QEMU (software emulation: no KVM here) and
//! reads the appliance's boot self-check from the serial console. `--break X` builds the image
//! with one thing wrong, and the boot test then expects the self-check to notice it (or, for
//! broken keys, to show the protected side closed although bastiond cannot start).

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::util::{cargo, require_root, step, workspace};

/// Tools the build needs, by the binary that proves each is there.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.erofs", "erofs-utils"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("sfdisk", "fdisk"),
    ("objcopy", "binutils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
];
const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// Files the build needs, by the package that provides each.
const FILES: &[(&str, &str)] = &[(EFI_STUB, "systemd-boot-efi"), (OVMF, "ovmf")];
/// Fixed timestamps and filesystem ids, so equal inputs give equal filesystem metadata.
const SOURCE_DATE_EPOCH: &str = "1767225600"; // 2026-01-01T00:00:00Z
const ROOT_UUID: &str = "b4570000-0000-4000-8000-000000000001";
const DATA_UUID: &str = "b4570000-0000-4000-8000-000000000002";
const DATA_MIB: u64 = 256;
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// The key file `--break keys` spoils (bastiond's host key, see bastion-proxy's `keys.rs`).
const BROKEN_KEY: &str = "host_ed25519";
/// Every check the appliance's self-check reports. The boot test requires a line for each, so a
/// check that silently stops running fails it too.
const CHECKS: &[&str] = &[
    "bastiond",
    "ebpf-pinned",
    "nftables-baseline",
    "floor-covers-protected",
    "cgroupfs-ro",
    "root-ro",
    "data-rw",
    "no-sshd",
    "sysctls",
    "lockdown",
    "no-password-login",
    "protected-closed-local",
    "protected-closed-forward",
];

/// What the boot test requires of the self-check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Every check ok, verdict pass.
    AllPass,
    /// bastiond cannot start (its host key is garbage): its check fails naming the key file,
    /// `ebpf-pinned` may fail (it asks bastiond), every other check is ok (the protected side
    /// closed above all), and the verdict is fail.
    KeysBroken,
}

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Boot the image under QEMU and run the appliance's self-check.
    #[arg(long)]
    test: bool,
    /// Build the image with one thing broken: `nftables-baseline`, `sysctls` or `lockdown`
    /// (a hardening setting removed: the boot test fails), or `keys` (garbage in bastiond's host
    /// key on the data partition: the boot test passes only if the self-check reports bastiond
    /// failed with the key error and the protected side still closed).
    #[arg(long)]
    r#break: Option<String>,
}

/// What `--break` breaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Broken {
    NftablesBaseline,
    Sysctls,
    Lockdown,
    Keys,
}

impl Broken {
    fn parse(name: &str) -> anyhow::Result<Broken> {
        Ok(match name {
            "nftables-baseline" => Broken::NftablesBaseline,
            "sysctls" => Broken::Sysctls,
            "lockdown" => Broken::Lockdown,
            "keys" => Broken::Keys,
            b => bail!("--break {b}: expected nftables-baseline, sysctls, lockdown or keys"),
        })
    }
}

impl ImageArgs {
    /// Build, then boot-test, the image as defined (what `cargo xtask test` runs).
    pub fn boot_test() -> ImageArgs {
        ImageArgs {
            test: true,
            r#break: None,
        }
    }
}

pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    run_with(args, None)
}

/// [`run`], with the root tree already being built in the background (`cargo xtask test`
/// starts it beside the tests: mostly downloads and unpacking, it takes little CPU from them).
pub fn run_with(args: ImageArgs, prepared: Option<PreparedRoot>) -> anyhow::Result<()> {
    let broken = args.r#break.as_deref().map(Broken::parse).transpose()?;
    require_root("cargo xtask image")?;
    crate::setup::run()?;
    tools()?;
    let t0 = Instant::now();
    let src = workspace().join("appliance-image");
    let out = workspace().join("target/image");
    std::fs::create_dir_all(&out)?;
    step(
        "build release bastiond and bastionctl",
        &mut release_build(),
    )?;
    let bins = workspace().join("target/release");
    let rootfs = out.join("rootfs");
    match prepared {
        Some(p) if broken.is_none() => p.finish(&rootfs)?,
        _ => {
            if rootfs.exists() {
                std::fs::remove_dir_all(&rootfs).context("removing the previous root tree")?;
            }
            step(
                "root tree (mmdebstrap bookworm + overlay)",
                &mut rootfs_tree(&src, &rootfs, broken)?,
            )?;
        }
    }
    install_bins(&rootfs, &bins)?;
    let manifest = manifest(&rootfs, &bins)?;
    let manifest_path = out.join("manifest.txt");
    // Same inputs, same package set and binaries: say whether this build kept them.
    if let Ok(previous) = std::fs::read_to_string(&manifest_path) {
        if previous == manifest {
            eprintln!("    manifest: same package set and binary hashes as the previous build");
        } else {
            let old: std::collections::BTreeSet<&str> = previous.lines().collect();
            let new: std::collections::BTreeSet<&str> = manifest.lines().collect();
            eprintln!("    manifest changed since the previous build:");
            for l in old.difference(&new) {
                eprintln!("      - {l}");
            }
            for l in new.difference(&old) {
                eprintln!("      + {l}");
            }
        }
    }
    std::fs::write(&manifest_path, &manifest)?;

    let root_img = out.join("root.erofs");
    step(
        "root filesystem (erofs, read-only)",
        Command::new("mkfs.erofs")
            .args([
                "-zlz4hc",
                "--all-root",
                "-T",
                SOURCE_DATE_EPOCH,
                "-U",
                ROOT_UUID,
            ])
            .arg(&root_img)
            .arg(&rootfs)
            .stdout(Stdio::null()),
    )?;
    let data_img = out.join("data.ext4");
    let _ = std::fs::remove_file(&data_img);
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args([
        "-q",
        "-L",
        "bastion-data",
        "-U",
        DATA_UUID,
        "-E",
        "root_owner=0:0",
    ]);
    let what = if broken == Some(Broken::Keys) {
        // `-d` fills the filesystem from a directory without mounting it.
        mkfs.arg("-d").arg(broken_keys_seed(&out)?);
        "data partition (ext4, with a broken host key)"
    } else {
        "data partition (ext4, empty)"
    };
    step(
        what,
        mkfs.arg(&data_img)
            .arg(format!("{DATA_MIB}M"))
            .env("E2FSPROGS_FAKE_TIME", SOURCE_DATE_EPOCH),
    )?;
    let mut cmdline = std::fs::read_to_string(src.join("cmdline"))?
        .trim()
        .to_owned();
    if broken == Some(Broken::Lockdown) {
        cmdline = cmdline.replace(" lockdown=integrity", "");
    }
    let esp_img = esp(&out, &rootfs, &cmdline)?;
    let disk = out.join("bastion-appliance.raw");
    gpt(
        &disk,
        &[
            (&esp_img, "ESP", ESP_TYPE),
            (&root_img, "bastion-root", ROOT_TYPE),
            (&data_img, "bastion-data", LINUX_TYPE),
        ],
    )?;
    let qcow = out.join("bastion-appliance.qcow2");
    let _ = std::fs::remove_file(&qcow);
    step(
        "qcow2",
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&disk)
            .arg(&qcow),
    )?;
    for image in [&disk, &qcow] {
        println!(
            "{}  {:.1} MiB  sha256 {}",
            image.display(),
            std::fs::metadata(image)?.len() as f64 / (1 << 20) as f64,
            sha256(image)?
        );
    }
    println!(
        "{}  (packages and binary hashes)",
        out.join("manifest.txt").display()
    );
    eprintln!("    image built in {:.0}s", t0.elapsed().as_secs_f64());
    if args.test {
        let expect = match broken {
            Some(Broken::Keys) => Expect::KeysBroken,
            _ => Expect::AllPass,
        };
        boot_test(&disk, &out, expect)?;
    }
    Ok(())
}

/// The build of what the image ships: release bastiond and bastionctl.
pub fn release_build() -> Command {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--locked",
        "--release",
        "-p",
        "bastion-daemon",
        "-p",
        "bastionctl",
        "--bins",
    ]);
    cmd
}

/// The data partition's contents for `--break keys`: bastiond's keys directory with its host
/// key replaced by text that is no OpenSSH key (mode 0600, so the key loader gets as far as
/// parsing it and fails on the content, not on the permissions).
fn broken_keys_seed(out: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let seed = out.join("data-seed");
    if seed.exists() {
        std::fs::remove_dir_all(&seed).context("removing the previous data seed")?;
    }
    let keys = seed.join("keys");
    std::fs::create_dir_all(&keys)?;
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700))?;
    let host_key = keys.join(BROKEN_KEY);
    std::fs::write(&host_key, "this is not an OpenSSH private key\n")?;
    std::fs::set_permissions(&host_key, std::fs::Permissions::from_mode(0o600))?;
    Ok(seed)
}

/// Installs the image tools that are missing. qemu-img comes from bookworm's qemu-utils: a
/// newer one from backports may be registered without its files, so the binary decides.
fn tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .chain(
            FILES
                .iter()
                .filter(|(file, _)| !Path::new(file).exists())
                .map(|(_, pkg)| *pkg),
        )
        .collect();
    if !missing.is_empty() {
        crate::setup::apt_install(&missing, &[])?;
    }
    if !on_path("qemu-img") {
        crate::setup::apt_install(&["qemu-utils"], &["-t", "bookworm", "--allow-downgrades"])?;
    }
    Ok(())
}

pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// The mirrors this machine uses (deb.debian.org by default).
pub fn mirrors() -> (String, String) {
    let sources =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let uris: Vec<&str> = sources
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .collect();
    let main = uris
        .iter()
        .find(|u| !u.contains("security"))
        .unwrap_or(&"http://deb.debian.org/debian");
    let security = uris
        .iter()
        .find(|u| u.contains("security"))
        .unwrap_or(&"http://deb.debian.org/debian-security");
    (main.to_string(), security.to_string())
}

/// The root tree's build, started in the background; [`PreparedRoot::finish`] waits for it.
pub struct PreparedRoot {
    child: std::process::Child,
    dir: PathBuf,
    log: PathBuf,
    started: Instant,
}

impl PreparedRoot {
    /// Starts mmdebstrap for the image as defined (no `--break`) into a directory of its own.
    pub fn start() -> anyhow::Result<PreparedRoot> {
        tools()?;
        let out = workspace().join("target/image");
        std::fs::create_dir_all(&out)?;
        let dir = out.join("rootfs.next");
        if dir.exists() {
            // Never remove a tree with something mounted in it (a bind-mounted /dev).
            let mounted = crate::fresh_check::mounts_under(&dir)?;
            if !mounted.is_empty() {
                bail!("{} has mounts in it: {}", dir.display(), mounted.join(" "));
            }
            std::fs::remove_dir_all(&dir).context("removing an unfinished root tree")?;
        }
        let log = out.join("rootfs.log");
        let mut cmd = rootfs_tree(&workspace().join("appliance-image"), &dir, None)?;
        let file = std::fs::File::create(&log)?;
        eprintln!(
            "==> image root tree, in the background (log: {})",
            log.display()
        );
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting mmdebstrap")?;
        Ok(PreparedRoot {
            child,
            dir,
            log,
            started: Instant::now(),
        })
    }

    /// Waits for the tree and moves it to `rootfs`.
    fn finish(mut self, rootfs: &Path) -> anyhow::Result<()> {
        eprintln!("==> root tree (mmdebstrap bookworm + overlay, started in the background)");
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "mmdebstrap failed ({status}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if rootfs.exists() {
            std::fs::remove_dir_all(rootfs).context("removing the previous root tree")?;
        }
        std::fs::rename(&self.dir, rootfs)?;
        eprintln!(
            "    root tree: ok, {:.1}s after it started",
            self.started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

impl Drop for PreparedRoot {
    /// Not used (the tests failed): still waited for, never killed, so that mmdebstrap
    /// unmounts what it mounted in the tree.
    fn drop(&mut self) {
        let _ = self.child.wait();
    }
}

/// Copies bastiond and bastionctl into the root tree.
fn install_bins(rootfs: &Path, bins: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (bin, dir) in [("bastiond", "usr/sbin"), ("bastionctl", "usr/bin")] {
        let to = rootfs.join(dir).join(bin);
        std::fs::copy(bins.join(bin), &to)
            .with_context(|| format!("copying {bin} into the root tree"))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// mmdebstrap building the root tree at `rootfs` (packages, overlay, units, initramfs), every
/// part but bastion's binaries.
fn rootfs_tree(src: &Path, rootfs: &Path, broken: Option<Broken>) -> anyhow::Result<Command> {
    let packages: Vec<String> = std::fs::read_to_string(src.join("packages"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let (main, security) = mirrors();
    let overlay = src.join("overlay");
    let q = |p: &Path| format!("'{}'", p.display());
    let mut hooks = vec![
        format!("sync-in {} /", q(&overlay)),
        format!("mkdir -p \"$1/usr/share/doc/bastion\" \"$1/var/lib/bastion\""),
        format!("copy-in {} /usr/share/doc/bastion", q(&src.join("SECURITY.md"))),
        "chroot \"$1\" systemctl enable nftables.service bastiond.service bastion-console.service bastion-selfcheck.service".into(),
        "chroot \"$1\" passwd -l root".into(),
        "chroot \"$1\" update-initramfs -u -k all".into(),
        ": > \"$1/etc/machine-id\"".into(),
        "rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin \"$1\"/var/log/*".into(),
    ];
    match broken {
        // Broken on the command line and on the data partition, not in the root tree.
        None | Some(Broken::Lockdown | Broken::Keys) => {}
        Some(Broken::NftablesBaseline) => {
            hooks.push("printf 'flush ruleset\\n' > \"$1/etc/nftables.conf\"".into())
        }
        Some(Broken::Sysctls) => hooks.push("rm \"$1/etc/sysctl.d/90-bastion.conf\"".into()),
    }
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--quiet",
    ])
    .arg("--aptopt=APT::Install-Recommends \"false\"")
    .arg("--dpkgopt=path-exclude=/usr/share/man/*")
    .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
    .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
    .arg(format!("--include={}", packages.join(",")))
    .args(hooks.iter().map(|h| format!("--customize-hook={h}")))
    .arg("bookworm")
    .arg(rootfs)
    .arg(format!("deb {main} bookworm main"))
    .arg(format!("deb {main} bookworm-updates main"))
    .arg(format!("deb {security} bookworm-security main"))
    .arg(format!("deb {main} bookworm-backports main"))
    .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH);
    Ok(cmd)
}

/// Every installed package with its version, and the hashes of the binaries bastion ships.
fn manifest(rootfs: &Path, bins: &Path) -> anyhow::Result<String> {
    let out = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            rootfs.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Package} ${Version}\\n"])
        .output()?;
    if !out.status.success() {
        bail!("listing the image's packages failed");
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    for b in ["bastiond", "bastionctl"] {
        text += &format!("{b} sha256 {}\n", sha256(&bins.join(b))?);
    }
    Ok(text)
}

/// The EFI system partition: the unified kernel image as the default boot path.
fn esp(out: &Path, rootfs: &Path, cmdline: &str) -> anyhow::Result<PathBuf> {
    let newest = |prefix: &str| -> anyhow::Result<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(rootfs.join("boot"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        found.sort();
        found
            .pop()
            .with_context(|| format!("no /boot/{prefix}* in the root tree"))
    };
    let (kernel, initrd) = (newest("vmlinuz-")?, newest("initrd.img-")?);
    let cmdline_file = out.join("cmdline.txt");
    std::fs::write(&cmdline_file, format!("{cmdline}\0"))?;
    let uki = out.join("bastion.efi");
    let section = |name: &str, file: &Path, vma: &str| {
        [
            "--add-section".to_owned(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_owned(),
            format!("{name}={vma}"),
        ]
    };
    let mut cmd = Command::new("objcopy");
    cmd.args(section(
        ".osrel",
        &rootfs.join("usr/lib/os-release"),
        "0x20000",
    ))
    .args(section(".cmdline", &cmdline_file, "0x30000"))
    .args(section(".linux", &kernel, "0x2000000"))
    .args(section(".initrd", &initrd, "0x3000000"))
    .arg(EFI_STUB)
    .arg(&uki);
    step(
        "unified kernel image (kernel + initramfs + command line)",
        &mut cmd,
    )?;
    let esp = out.join("esp.vfat");
    let _ = std::fs::remove_file(&esp);
    let kib = (std::fs::metadata(&uki)?.len() / 1024 + 8 * 1024).next_multiple_of(1024);
    step(
        "EFI system partition",
        Command::new("mkfs.vfat")
            .args(["-C", "-n", "ESP", "-i", "b4570001"])
            .arg(&esp)
            .arg(kib.to_string())
            .stdout(Stdio::null()),
    )?;
    let esp_s = esp.display().to_string();
    step(
        "ESP directories",
        Command::new("mmd").args(["-i", &esp_s, "::/EFI", "::/EFI/BOOT"]),
    )?;
    step(
        "ESP boot file",
        Command::new("mcopy")
            .args(["-i", &esp_s])
            .arg(&uki)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    )?;
    Ok(esp)
}

const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The discoverable-partitions type of an x86-64 root.
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Lays `parts` (image, name, type) into a GPT disk at 1 MiB boundaries, without a loop device.
fn gpt(disk: &Path, parts: &[(&Path, &str, &str)]) -> anyhow::Result<()> {
    const MIB: u64 = 1 << 20;
    let mut layout = String::from("label: gpt\nlabel-id: B4570000-0000-4000-8000-0000000000D1\n");
    let mut start = MIB;
    let mut placed = Vec::new();
    for (i, (img, name, ty)) in parts.iter().enumerate() {
        let size = std::fs::metadata(img)?.len().next_multiple_of(MIB);
        layout += &format!(
            "start={}, size={}, type={ty}, name=\"{name}\", uuid=B4570000-0000-4000-8000-00000000000{}\n",
            start / 512,
            size / 512,
            i + 1
        );
        placed.push((*img, start));
        start += size;
    }
    let _ = std::fs::remove_file(disk);
    let f = std::fs::File::create(disk)?;
    f.set_len(start + MIB)?; // room for the backup GPT
    drop(f);
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(Stdio::piped())
        .spawn()
        .context("running sfdisk")?;
    std::io::Write::write_all(
        &mut sfdisk.stdin.take().context("sfdisk stdin")?,
        layout.as_bytes(),
    )?;
    if !sfdisk.wait()?.success() {
        bail!("sfdisk could not write the partition table");
    }
    for (img, offset) in placed {
        step(
            &format!("write {} at {} MiB", img.display(), offset / MIB),
            Command::new("dd")
                .arg(format!("if={}", img.display()))
                .arg(format!("of={}", disk.display()))
                .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
                .arg(format!("seek={}", offset / MIB)),
        )?;
    }
    Ok(())
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Boots `disk` (changes discarded) with two restricted user-mode NICs (admin side, protected
/// side; nothing routes beyond QEMU), waits, bounded, for the self-check's verdict and judges its
/// lines against `expect`.
fn boot_test(disk: &Path, out: &Path, expect: Expect) -> anyhow::Result<()> {
    let console = out.join("boot-console.log");
    let _ = std::fs::remove_file(&console);
    eprintln!("==> boot test (QEMU, software emulation; typically 1-3 minutes)");
    let t0 = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1024",
        ])
        .args(["-bios", OVMF, "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,snapshot=on",
            disk.display()
        ))
        .args([
            "-netdev",
            "user,id=admin,restrict=on",
            "-device",
            "virtio-net-pci,netdev=admin",
        ])
        .args([
            "-netdev",
            "user,id=protected,restrict=on",
            "-device",
            "virtio-net-pci,netdev=protected",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let verdict = loop {
        // The console log holds the guest's bytes as they came; not all of them are UTF-8.
        let text = std::fs::read(&console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if text.contains("BASTION-SELFCHECK done") {
            break Some(text);
        }
        if t0.elapsed() > BOOT_TIMEOUT || qemu.try_wait()?.is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    let Some(text) = verdict else {
        let mut tail = String::new();
        let _ = std::fs::File::open(&console).and_then(|mut f| f.read_to_string(&mut tail));
        let tail: Vec<&str> = tail.lines().rev().take(30).collect();
        bail!(
            "no self-check verdict within {}s; console tail:\n{}",
            BOOT_TIMEOUT.as_secs(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    for l in text
        .lines()
        .filter(|l| l.contains("BASTION-SELFCHECK") || l.contains("@cert-authority"))
    {
        println!("    {}", l.trim());
    }
    println!(
        "    boot to verdict: {:.0}s (console: {})",
        t0.elapsed().as_secs_f64(),
        console.display()
    );
    let lines = selfcheck_lines(&text);
    if expect == Expect::KeysBroken {
        for l in lines
            .iter()
            .filter(|l| l.name == "bastiond" || l.name.starts_with("protected-closed-"))
        {
            println!(
                "    expected with a broken key: {} {}: {}",
                l.name,
                if l.ok { "ok" } else { "FAIL" },
                l.detail
            );
        }
    }
    let problems = judge(&lines, expect);
    if !problems.is_empty() {
        bail!(
            "the appliance's boot self-check did not meet {expect:?}:\n  {}",
            problems.join("\n  ")
        );
    }
    match expect {
        Expect::AllPass => println!("    every self-check passed"),
        Expect::KeysBroken => println!(
            "    as expected: bastiond failed on its broken key, and the protected side is closed"
        ),
    }
    Ok(())
}

/// One `BASTION-SELFCHECK <name> ok|FAIL <detail>` line (the verdict: `done pass|fail`).
#[derive(Debug)]
struct CheckLine<'a> {
    name: &'a str,
    ok: bool,
    detail: &'a str,
}

/// The self-check's lines in the console text (each after its journal prefix).
fn selfcheck_lines(console: &str) -> Vec<CheckLine<'_>> {
    console
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("BASTION-SELFCHECK ")?;
            let (name, rest) = rest.split_once(' ')?;
            let (status, detail) = rest.split_once(' ').unwrap_or((rest, ""));
            let ok = match status.trim() {
                "ok" | "pass" => true,
                "FAIL" | "fail" => false,
                _ => return None,
            };
            Some(CheckLine {
                name,
                ok,
                detail: detail.trim(),
            })
        })
        .collect()
}

/// What is wrong with `lines` for `expect`; empty when they meet it.
fn judge(lines: &[CheckLine<'_>], expect: Expect) -> Vec<String> {
    let mut problems = Vec::new();
    let find = |name: &str| lines.iter().find(|l| l.name == name);
    match (find("done"), expect) {
        (None, _) => problems.push("no verdict line".to_owned()),
        (Some(d), Expect::AllPass) if !d.ok => problems.push("verdict: fail".to_owned()),
        (Some(d), Expect::KeysBroken) if d.ok => {
            problems.push("verdict: pass although bastiond cannot start".to_owned())
        }
        _ => {}
    }
    for name in CHECKS {
        if find(name).is_none() {
            problems.push(format!("no line for the check {name}"));
        }
    }
    for l in lines.iter().filter(|l| l.name != "done") {
        let problem = match (expect, l.name) {
            (Expect::KeysBroken, "bastiond") if l.ok => Some("ok, expected FAIL".to_owned()),
            (Expect::KeysBroken, "bastiond") if !l.detail.contains(BROKEN_KEY) => Some(format!(
                "FAIL without naming the broken key {BROKEN_KEY}: {}",
                l.detail
            )),
            (Expect::KeysBroken, "bastiond" | "ebpf-pinned") => None,
            _ if !l.ok => Some(format!("FAIL: {}", l.detail)),
            _ => None,
        };
        if let Some(p) = problem {
            problems.push(format!("{}: {p}", l.name));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console as the appliance prints it, every check ok but those in `fail`.
    fn console(fail: &[(&str, &str)], verdict: &str) -> String {
        let mut text = String::from("[    1.0] Booting\n");
        for name in CHECKS {
            match fail.iter().find(|(n, _)| n == name) {
                Some((_, detail)) => {
                    text += &format!(
                        "[   29.4] selfcheck[433]: BASTION-SELFCHECK {name} FAIL {detail}\n"
                    )
                }
                None => {
                    text += &format!("[   29.4] selfcheck[433]: BASTION-SELFCHECK {name} ok fine\n")
                }
            }
        }
        text + &format!("[   31.9] selfcheck[433]: BASTION-SELFCHECK done {verdict}\n")
    }

    fn judged(text: &str, expect: Expect) -> Vec<String> {
        judge(&selfcheck_lines(text), expect)
    }

    const KEY_ERROR: &str = "state activating after 3 restarts: bastiond: key \
        /var/lib/bastion/keys/host_ed25519: PEM Base64 error";

    #[test]
    fn a_clean_boot_passes_only_with_every_check_ok() {
        assert!(judged(&console(&[], "pass"), Expect::AllPass).is_empty());
        let p = judged(
            &console(&[("protected-closed-forward", "x")], "fail"),
            Expect::AllPass,
        );
        assert_eq!(p.len(), 2, "{p:?}");
        let missing = console(&[], "pass").replace("BASTION-SELFCHECK lockdown ok", "");
        assert_eq!(
            judged(&missing, Expect::AllPass),
            vec!["no line for the check lockdown"]
        );
        // A broken key is not a clean boot.
        let keys = console(&[("bastiond", KEY_ERROR), ("ebpf-pinned", "x")], "fail");
        assert!(!judged(&keys, Expect::AllPass).is_empty());
    }

    #[test]
    fn broken_keys_pass_only_with_bastiond_failed_on_the_key_and_the_protected_side_closed() {
        let keys = console(&[("bastiond", KEY_ERROR), ("ebpf-pinned", "x")], "fail");
        assert!(judged(&keys, Expect::KeysBroken).is_empty());
        // bastiond up after all, or down for another reason.
        assert!(!judged(&console(&[], "pass"), Expect::KeysBroken).is_empty());
        let other = console(&[("bastiond", "state failed: store locked")], "fail");
        assert!(!judged(&other, Expect::KeysBroken).is_empty());
        // The protected side open while bastiond is down.
        for open in ["protected-closed-local", "protected-closed-forward"] {
            let text = console(&[("bastiond", KEY_ERROR), (open, "tcp connected")], "fail");
            assert_eq!(judged(&text, Expect::KeysBroken).len(), 1, "{open}");
        }
        let silent = keys.replace("BASTION-SELFCHECK protected-closed-local ok fine", "");
        assert!(!judged(&silent, Expect::KeysBroken).is_empty());
    }
}
