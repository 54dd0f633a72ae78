//! The embedded eBPF object, and attaching its hooks with pinned, adoptable links.
//!
//! Every link is pinned under `<bpffs_dir>/links` so it outlives bastiond. A restart swaps its
//! freshly loaded program into each pinned link (`BPF_LINK_UPDATE`: the hook never runs
//! without a program); a pinned link that went defunct (its interface was deleted) is replaced
//! by a new one.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SchedClassifier, TcAttachType, links::FdLink,
};

use super::{EnforceError, HookStatus, LinkOrigin, sys};

/// The object aya-build compiled from bastion-ebpf (see build.rs).
static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bastion-ebpf-programs"));

/// The sock_addr hooks bastiond attaches to the cgroup root. Names are the program (function) names.
pub const HOOKS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// The cgroup setsockopt hook refusing the options that bypass tcx egress.
pub const SETSOCKOPT: &str = "setsockopt";
/// The tcx egress program on protected interfaces.
pub const EGRESS: &str = "egress";

pub(super) fn load(map_pin_dir: &Path) -> Result<aya::Ebpf, EnforceError> {
    Ok(aya::EbpfLoader::new()
        .default_map_pin_directory(map_pin_dir)
        .load(OBJECT)?)
}

/// Pin name of a cgroup hook's link: the cgroup root's id is part of it so a link is only ever
/// adopted for the cgroup it is attached to.
fn link_pin(links_dir: &Path, hook: &str, root_id: u64) -> PathBuf {
    links_dir.join(format!("{hook}-cg{root_id}"))
}

/// Pin name of the egress link on `iface`.
pub(super) fn egress_pin(links_dir: &Path, iface: &str) -> PathBuf {
    links_dir.join(format!("{EGRESS}-{iface}"))
}

/// Attaches (or adopts) the cgroup hooks: the sock_addr hooks and `setsockopt`.
pub(super) fn attach_cgroup_hooks(
    ebpf: &mut aya::Ebpf,
    cgroup_root: &Path,
    root_id: u64,
    links_dir: &Path,
) -> Result<Vec<HookStatus>, EnforceError> {
    let root = std::fs::File::open(cgroup_root).map_err(|source| EnforceError::CgroupRoot {
        path: cgroup_root.to_owned(),
        source,
    })?;
    let mut hooks = Vec::with_capacity(HOOKS.len() + 1);
    for name in HOOKS {
        let program: &mut CgroupSockAddr = program_mut(ebpf, name)?;
        program
            .load()
            .map_err(|source| EnforceError::Program { name, source })?;
        let pin = link_pin(links_dir, name, root_id);
        let link = adopt_or_attach(name, &pin, prog_fd(program.fd(), name)?, || {
            let id = program
                .attach(&root, CgroupAttachMode::Single)
                .map_err(|source| EnforceError::Program { name, source })?;
            let link = program
                .take_link(id)
                .map_err(|source| EnforceError::Program { name, source })?;
            pin_link(link, name, &pin)
        })?;
        hooks.push(HookStatus {
            program: name.to_owned(),
            link,
            pin,
        });
    }
    hooks.push(attach_setsockopt(ebpf, &root, root_id, links_dir)?);
    remove_stale_links(links_dir, root_id)?;
    Ok(hooks)
}

fn attach_setsockopt(
    ebpf: &mut aya::Ebpf,
    root: &std::fs::File,
    root_id: u64,
    links_dir: &Path,
) -> Result<HookStatus, EnforceError> {
    const NAME: &str = SETSOCKOPT;
    let link_err = |source| EnforceError::Link {
        name: NAME,
        what: "attaching to the cgroup root",
        source,
    };
    let program: &mut CgroupSockopt = program_mut(ebpf, NAME)?;
    program
        .load()
        .map_err(|source| EnforceError::Program { name: NAME, source })?;
    let pin = link_pin(links_dir, NAME, root_id);
    let prog = prog_fd(program.fd(), NAME)?;
    // aya 0.14 has no fd link for this program type (nothing to pin): bpf(2) directly.
    let link = adopt_or_attach(NAME, &pin, prog.try_clone().map_err(link_err)?, || {
        let link = sys::link_create(prog.as_fd(), root.as_fd(), sys::BPF_CGROUP_SETSOCKOPT)
            .map_err(link_err)?;
        sys::obj_pin(link.as_fd(), &pin).map_err(|source| EnforceError::Link {
            name: NAME,
            what: "pinning link",
            source,
        })
    })?;
    Ok(HookStatus {
        program: NAME.to_owned(),
        link,
        pin,
    })
}

/// Loads the egress program (once; attaching it to each interface is [`attach_egress`]).
pub(super) fn load_egress(ebpf: &mut aya::Ebpf) -> Result<(), EnforceError> {
    let program: &mut SchedClassifier = program_mut(ebpf, EGRESS)?;
    program.load().map_err(|source| EnforceError::Program {
        name: EGRESS,
        source,
    })
}

/// The loaded egress program on `iface`: adopted from its pin, replaced if that link is
/// defunct (the interface was deleted and re-created), or attached and pinned.
pub(super) fn attach_egress(
    ebpf: &mut aya::Ebpf,
    iface: &str,
    links_dir: &Path,
) -> Result<HookStatus, EnforceError> {
    const NAME: &str = EGRESS;
    let program: &mut SchedClassifier = program_mut(ebpf, NAME)?;
    let pin = egress_pin(links_dir, iface);
    // A link follows its device, not the name: if `iface` is now another device (deleted and
    // re-created, or another one renamed to it), the pinned link guards the wrong one.
    let elsewhere = pin.exists()
        && sys::obj_get(&pin)
            .and_then(|link| sys::tcx_link_ifindex(link.as_fd()))
            .is_ok_and(|index| Some(index) != sys::ifindex(iface));
    if elsewhere {
        tracing::warn!(pin = %pin.display(), iface, "pinned egress link guards another device (or none): replacing it");
        std::fs::remove_file(&pin).map_err(|source| EnforceError::Bpffs {
            path: pin.clone(),
            source,
        })?;
    }
    let link = adopt_or_attach(NAME, &pin, prog_fd(program.fd(), NAME)?, || {
        let id = program
            .attach(iface, TcAttachType::Egress)
            .map_err(|source| EnforceError::Interface {
                iface: iface.to_owned(),
                source,
            })?;
        let link = program
            .take_link(id)
            .map_err(|source| EnforceError::Program { name: NAME, source })?;
        pin_link(link, NAME, &pin)
    })?;
    let link = match link {
        LinkOrigin::Attached if elsewhere => LinkOrigin::Replaced,
        other => other,
    };
    Ok(HookStatus {
        program: format!("{NAME} on {iface}"),
        link,
        pin,
    })
}

/// Unpins egress links of interfaces the config no longer names (after the wanted ones hold).
pub(super) fn remove_stale_egress(
    links_dir: &Path,
    interfaces: &[String],
) -> Result<(), EnforceError> {
    let wanted: Vec<String> = interfaces.iter().map(|i| format!("{EGRESS}-{i}")).collect();
    remove_pins(links_dir, |file| {
        file.starts_with("egress-") && !wanted.iter().any(|w| w == file)
    })
}

fn program_mut<'a, P>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut P, EnforceError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| EnforceError::Missing(format!("program {name}")))?
        .try_into()
        .map_err(|source| EnforceError::Program { name, source })
}

/// An owned copy of a loaded program's fd, so attaching can borrow the program again.
fn prog_fd(
    fd: Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
    name: &'static str,
) -> Result<OwnedFd, EnforceError> {
    let fd = fd.map_err(|source| EnforceError::Program { name, source })?;
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|source| EnforceError::Link {
            name,
            what: "duplicating the program fd",
            source,
        })
}

/// Swaps `prog` into the link pinned at `pin` (adopted), or runs `attach` when there is no pin
/// (attached) or the pinned link is defunct (replaced: its pin is removed first).
fn adopt_or_attach(
    name: &'static str,
    pin: &Path,
    prog: OwnedFd,
    attach: impl FnOnce() -> Result<(), EnforceError>,
) -> Result<LinkOrigin, EnforceError> {
    if !pin.exists() {
        attach()?;
        return Ok(LinkOrigin::Attached);
    }
    match swap_into(prog.as_fd(), pin) {
        Ok(()) => Ok(LinkOrigin::Adopted),
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
            tracing::warn!(pin = %pin.display(), "pinned link is defunct (its interface was deleted): replacing it");
            std::fs::remove_file(pin).map_err(|source| EnforceError::Bpffs {
                path: pin.to_owned(),
                source,
            })?;
            attach()?;
            Ok(LinkOrigin::Replaced)
        }
        Err(source) => Err(EnforceError::Link {
            name,
            what: "swapping program into pinned link",
            source,
        }),
    }
}

/// Makes the link pinned at `pin` run `prog`: the hook never runs without a program.
fn swap_into(prog: BorrowedFd<'_>, pin: &Path) -> std::io::Result<()> {
    let link = sys::obj_get(pin)?;
    sys::link_update(link.as_fd(), prog)
}

/// Pins an attached link so it outlives bastiond.
fn pin_link<L>(link: L, name: &'static str, pin: &Path) -> Result<(), EnforceError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let link = FdLink::try_from(link).map_err(|e| EnforceError::Link {
        name,
        what: "converting to fd link",
        source: std::io::Error::other(e.to_string()),
    })?;
    link.pin(pin).map_err(|e| EnforceError::Link {
        name,
        what: "pinning link",
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}

/// Unpins cgroup links attached to a cgroup root the config no longer names (after the new
/// ones hold).
fn remove_stale_links(links_dir: &Path, root_id: u64) -> Result<(), EnforceError> {
    let suffix = format!("-cg{root_id}");
    remove_pins(links_dir, |file| {
        HOOKS
            .iter()
            .chain(&[SETSOCKOPT])
            .any(|h| file.starts_with(&format!("{h}-cg")))
            && !file.ends_with(&suffix)
    })
}

/// Unpins every link in `links_dir` whose file name `stale` selects.
fn remove_pins(links_dir: &Path, stale: impl Fn(&str) -> bool) -> Result<(), EnforceError> {
    let entries = std::fs::read_dir(links_dir).map_err(|source| EnforceError::Bpffs {
        path: links_dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let file = entry.file_name();
        if stale(&file.to_string_lossy()) {
            tracing::warn!(pin = %entry.path().display(), "unpinning a link the config no longer names");
            std::fs::remove_file(entry.path()).map_err(|source| EnforceError::Bpffs {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}
