//! The embedded eBPF object, and attaching its hooks with pinned, adoptable links.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, links::FdLink,
};

use super::{EnforceError, HookStatus, LinkOrigin, sys};

/// The object aya-build compiled from bastion-ebpf (see build.rs).
static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bastion-ebpf-programs"));

/// Every hook bastiond attaches to the cgroup root. Names are the program (function) names.
pub const HOOKS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

pub(super) fn load(map_pin_dir: &Path) -> Result<aya::Ebpf, EnforceError> {
    Ok(aya::EbpfLoader::new()
        .default_map_pin_directory(map_pin_dir)
        .load(OBJECT)?)
}

/// Pin name of a hook's link: the cgroup root's id is part of it so a link is only ever adopted
/// for the cgroup it is attached to.
fn link_pin(links_dir: &Path, hook: &str, root_id: u64) -> PathBuf {
    links_dir.join(format!("{hook}-cg{root_id}"))
}

pub(super) fn attach_all(
    ebpf: &mut aya::Ebpf,
    cgroup_root: &Path,
    root_id: u64,
    links_dir: &Path,
) -> Result<Vec<HookStatus>, EnforceError> {
    let root = std::fs::File::open(cgroup_root).map_err(|source| EnforceError::CgroupRoot {
        path: cgroup_root.to_owned(),
        source,
    })?;
    let mut hooks = Vec::with_capacity(HOOKS.len());
    for name in HOOKS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| EnforceError::Missing(format!("program {name}")))?
            .try_into()
            .map_err(|source| EnforceError::Program { name, source })?;
        program
            .load()
            .map_err(|source| EnforceError::Program { name, source })?;
        let pin = link_pin(links_dir, name, root_id);
        let link = if pin.exists() {
            swap_into(program.fd(), name, &pin)?;
            LinkOrigin::Adopted
        } else {
            attach(program, name, &root, &pin)?;
            LinkOrigin::Attached
        };
        hooks.push(HookStatus {
            program: name.to_owned(),
            link,
            pin,
        });
    }
    remove_stale_links(links_dir, root_id)?;
    Ok(hooks)
}

/// The tcx egress program on each protected-side interface, adopted from its pin or attached
/// and pinned; pins for interfaces no longer configured are removed afterwards.
pub(super) fn attach_egress(
    ebpf: &mut aya::Ebpf,
    interfaces: &[String],
    links_dir: &Path,
) -> Result<Vec<HookStatus>, EnforceError> {
    const NAME: &str = "egress";
    let mut hooks = Vec::with_capacity(interfaces.len());
    if !interfaces.is_empty() {
        let program: &mut SchedClassifier = ebpf
            .program_mut(NAME)
            .ok_or_else(|| EnforceError::Missing(format!("program {NAME}")))?
            .try_into()
            .map_err(|source| EnforceError::Program { name: NAME, source })?;
        program
            .load()
            .map_err(|source| EnforceError::Program { name: NAME, source })?;
        for iface in interfaces {
            let pin = links_dir.join(format!("{NAME}-{iface}"));
            let link = if pin.exists() {
                swap_into(program.fd(), NAME, &pin)?;
                LinkOrigin::Adopted
            } else {
                let id = program
                    .attach(iface, TcAttachType::Egress)
                    .map_err(|source| EnforceError::Interface {
                        iface: iface.clone(),
                        source,
                    })?;
                let link = program
                    .take_link(id)
                    .map_err(|source| EnforceError::Program { name: NAME, source })?;
                pin_link(link, NAME, &pin)?;
                LinkOrigin::Attached
            };
            hooks.push(HookStatus {
                program: format!("{NAME} on {iface}"),
                link,
                pin,
            });
        }
    }
    let wanted: Vec<String> = interfaces.iter().map(|i| format!("{NAME}-{i}")).collect();
    remove_pins(links_dir, |file| {
        file.starts_with("egress-") && !wanted.iter().any(|w| w == file)
    })?;
    Ok(hooks)
}

/// Swaps the program behind `prog_fd` into the link pinned at `pin`: the hook never runs
/// without a program.
fn swap_into(
    prog_fd: Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
    name: &'static str,
    pin: &Path,
) -> Result<(), EnforceError> {
    let link = sys::obj_get(pin).map_err(|source| EnforceError::Link {
        name,
        what: "opening pinned link",
        source,
    })?;
    let prog_fd = prog_fd.map_err(|source| EnforceError::Program { name, source })?;
    sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(|source| EnforceError::Link {
        name,
        what: "swapping program into pinned link",
        source,
    })
}

fn attach(
    program: &mut CgroupSockAddr,
    name: &'static str,
    root: &std::fs::File,
    pin: &Path,
) -> Result<(), EnforceError> {
    let prog_err = |source| EnforceError::Program { name, source };
    let id = program
        .attach(root, CgroupAttachMode::Single)
        .map_err(prog_err)?;
    pin_link(program.take_link(id).map_err(prog_err)?, name, pin)
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

/// Unpins links attached to a cgroup root the config no longer names (after the new ones hold).
fn remove_stale_links(links_dir: &Path, root_id: u64) -> Result<(), EnforceError> {
    let suffix = format!("-cg{root_id}");
    remove_pins(links_dir, |file| {
        HOOKS.iter().any(|h| file.starts_with(&format!("{h}-cg"))) && !file.ends_with(&suffix)
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
