//! eBPF enforcement: the floor under every session. Nothing below the configured cgroup root may
//! connect to (or send to) a protected prefix unless it is bastiond (its cgroup and process),
//! or use the socket options that bypass tcx (packet qdisc bypass, AF_XDP) unless it is
//! bastiond or allow-listed; and no frame leaves a protected interface unless it is bastiond's
//! (default deny, see `bastion-ebpf/src/egress.rs`).
//!
//! Start-up order is what keeps enforcement gap-free across restarts and upgrades:
//! 1. load the object, reusing the maps pinned by an earlier bastiond (contents included);
//! 2. fill the maps: add this bastiond's cgroup and the configured prefixes *before* removing stale
//!    entries, so the set only shrinks once the new state is in;
//! 3. for each hook, swap the new program into the pinned link atomically (`BPF_LINK_UPDATE`), or
//!    attach and pin a new link when there is none;
//! 4. only then unpin links left for a cgroup root the config no longer names.
//!
//! Programs, maps and links stay pinned when bastiond exits, for any reason: enforcement fails closed.

mod cgroup;
pub mod flows;
pub mod kernel_log;
pub mod link_events;
mod maps;
pub mod nft;
mod programs;
pub mod route;
mod routes;
mod sys;

use std::path::{Path, PathBuf};

pub use cgroup::{CgroupError, cgroup_id, cgroup_of, cgroup2_mount, enter as enter_cgroup};

use bastion_core::{
    cidr::Cidr,
    config::{EnforceConfig, strictly_below},
};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "bastiond runs in cgroup {}, which is not strictly below enforce.cgroup_root {}: \
         its own connections would be held to the rules, or others would share its exemption",
        daemon.display(), root.display()
    )]
    DaemonCgroupOutsideRoot { daemon: PathBuf, root: PathBuf },
    #[error("bpffs {}: {source}", path.display())]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not on a bpf filesystem; mount one (mount -t bpf bpf /sys/fs/bpf)", path.display())]
    NotBpffs { path: PathBuf },
    #[error("cannot open cgroup root {}: {source}", path.display())]
    CgroupRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF program `{name}`: {what}: {source}")]
    Link {
        name: &'static str,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "protected interface `{iface}`: cannot attach the egress program (does it exist in bastiond's network namespace?): {source}"
    )]
    Interface {
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF object lacks {0}")]
    Missing(String),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("interception: {0}")]
    Steer(#[from] nft::NftError),
    #[error("interception: {0}")]
    Route(#[from] route::RouteError),
}

pub use bastion_core::protocol::{EnforceStatus, HookStatus, LinkOrigin};

/// Ids of the cgroups allowed the tcx-bypassing socket options. A cgroup that does not exist (yet) is
/// skipped with a warning: its service has not started, and the next bastiond start finds it.
fn packet_cgroup_ids(dirs: &[PathBuf]) -> Vec<u64> {
    dirs.iter()
        .filter_map(|dir| match cgroup_id(dir) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "enforce.packet_socket_cgroups: cgroup not found, not allowed to bypass tcx");
                None
            }
        })
        .collect()
}

/// Running enforcement: owns the loaded programs (to re-attach egress when a protected
/// interface comes back) and the maps (counters, prefixes).
pub struct Enforcer {
    ebpf: aya::Ebpf,
    maps: maps::Maps,
    links_dir: PathBuf,
    interfaces: Vec<String>,
    /// Interface changes found at start, not yet handed to the audit stream.
    unreported: Vec<InterfaceChange>,
    status: EnforceStatus,
    steering: Option<(nft::Steering, route::LocalDelivery)>,
    /// Handed to the daemon's background tasks once (`take_readers`).
    readers: Option<(flows::FlowSource, Option<kernel_log::KernelLog>)>,
}

/// A protected interface's egress link changed (an audit event and a log line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceChange {
    pub iface: String,
    pub link: LinkOrigin,
    /// Why it is missing, when it is.
    pub detail: Option<String>,
}

impl Enforcer {
    /// Loads, fills, attaches and pins the enforcement programs, adopting earlier pins.
    /// `protected` is added to what the pinned maps protect already (an earlier bastiond's
    /// prefixes stay until [`Enforcer::set_protected`] names the exact set), so bastiond can
    /// enforce before it has opened its store. A protected interface that does not exist is not
    /// an error: it is reported [`LinkOrigin::Missing`] and attached when it appears
    /// ([`Enforcer::follow_interfaces`]).
    pub fn start(cfg: &EnforceConfig, protected: &[Cidr]) -> Result<Enforcer, EnforceError> {
        let daemon_cgroup = cgroup_of("self")?;
        if !strictly_below(&daemon_cgroup, &cfg.cgroup_root) {
            return Err(EnforceError::DaemonCgroupOutsideRoot {
                daemon: daemon_cgroup,
                root: cfg.cgroup_root.clone(),
            });
        }
        let daemon_cgroup_id = cgroup_id(&daemon_cgroup)?;
        let root_id = cgroup_id(&cfg.cgroup_root)?;
        let dirs = PinDirs::prepare(&cfg.bpffs_dir)?;

        let mut ebpf = programs::load(&dirs.maps)?;
        let mut maps = maps::Maps::take(&mut ebpf)?;
        let flow_source = flows::FlowSource::take(&mut ebpf)?;
        let kernel_log = kernel_log::KernelLog::take(&mut ebpf);
        // bastiond's own process first, then its cgroup: both must match at connect/sendmsg.
        maps.set_allowed_tgids(&[std::process::id()])?;
        maps.set_allowed_cgroups(&[daemon_cgroup_id])?;
        maps.set_packet_cgroups(&packet_cgroup_ids(&cfg.packet_socket_cgroups))?;
        maps.add_protected(protected)?;
        let hooks =
            programs::attach_cgroup_hooks(&mut ebpf, &cfg.cgroup_root, root_id, &dirs.links)?;
        programs::load_egress(&mut ebpf)?;

        let (denied, allowed) = maps.counters()?;
        let status = EnforceStatus {
            bpffs_dir: cfg.bpffs_dir.clone(),
            cgroup_root: cfg.cgroup_root.clone(),
            daemon_cgroup,
            daemon_cgroup_id,
            hooks,
            protected_subnets: protected.to_vec(),
            denied,
            allowed,
            unprotected_routes: Vec::new(),
            intercept_table: None,
        };
        let mut enforcer = Enforcer {
            ebpf,
            maps,
            links_dir: dirs.links,
            interfaces: cfg.protected_interfaces.clone(),
            unreported: Vec::new(),
            status,
            steering: None,
            readers: Some((flow_source, kernel_log)),
        };
        // What needs saying at start (an interface missing, a defunct link replaced) is
        // reported with the first changes the daemon audits.
        enforcer.unreported = enforcer
            .follow_interfaces()?
            .into_iter()
            .filter(|c| matches!(c.link, LinkOrigin::Missing | LinkOrigin::Replaced))
            .collect();
        programs::remove_stale_egress(&enforcer.links_dir, &enforcer.interfaces)?;
        for h in &enforcer.status.hooks {
            tracing::info!(program = %h.program, link = ?h.link, pin = %h.pin.display(), "enforcing");
        }
        Ok(enforcer)
    }

    /// Makes the egress program hold on every protected interface that exists: attaches it to
    /// an interface that appeared, replaces a defunct link (interface re-created). Returns what
    /// changed since the last call (at start: everything), for the audit stream. Called at
    /// start and on every link event.
    pub fn follow_interfaces(&mut self) -> Result<Vec<InterfaceChange>, EnforceError> {
        let mut changes = std::mem::take(&mut self.unreported);
        for iface in self.interfaces.clone() {
            let program = format!("{} on {iface}", programs::EGRESS);
            let before = self
                .status
                .hooks
                .iter()
                .find(|h| h.program == program)
                .map(|h| h.link);
            let (mut hook, detail) =
                match programs::attach_egress(&mut self.ebpf, &iface, &self.links_dir) {
                    Ok(hook) => (hook, None),
                    Err(EnforceError::Interface { source, .. }) => (
                        HookStatus {
                            program: program.clone(),
                            link: LinkOrigin::Missing,
                            pin: programs::egress_pin(&self.links_dir, &iface),
                        },
                        Some(source.to_string()),
                    ),
                    Err(e) => return Err(e),
                };
            // Adopting our own link again is no change (and keeps saying how it came to be);
            // anything else is.
            let changed = match (before, hook.link) {
                (Some(earlier), LinkOrigin::Adopted) if earlier != LinkOrigin::Missing => {
                    hook.link = earlier;
                    false
                }
                (Some(LinkOrigin::Missing), LinkOrigin::Missing) => false,
                _ => true,
            };
            if changed {
                changes.push(InterfaceChange {
                    iface: iface.clone(),
                    link: hook.link,
                    detail,
                });
            }
            match self.status.hooks.iter_mut().find(|h| h.program == program) {
                Some(h) => *h = hook,
                None => self.status.hooks.push(hook),
            }
        }
        Ok(changes)
    }

    /// Compares the routes to the protected prefixes with the protected interfaces; returns
    /// the routes that became unprotected (`false`) or stopped being so (`true`).
    pub fn check_routes(&mut self) -> Vec<(bastion_core::protocol::UnprotectedRoute, bool)> {
        let now = routes::unprotected(
            &self.status.protected_subnets,
            &routes::read(),
            &self.interfaces,
        );
        let before = std::mem::replace(&mut self.status.unprotected_routes, now.clone());
        let appeared = now
            .iter()
            .filter(|r| !before.contains(r))
            .map(|r| (r.clone(), false));
        let gone = before
            .iter()
            .filter(|r| !now.contains(r))
            .map(|r| (r.clone(), true));
        appeared.chain(gone).collect()
    }

    /// The protected interfaces (from the config).
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// The flow ring buffer and the eBPF log, for the tasks that read them (once).
    pub fn take_readers(&mut self) -> Option<(flows::FlowSource, Option<kernel_log::KernelLog>)> {
        self.readers.take()
    }

    /// Starts steering intercepted traffic to bastiond: policy routing first, so the first
    /// steered packet is already delivered locally. The steered prefixes follow the protected set.
    pub fn steer(
        &mut self,
        mut steering: nft::Steering,
        delivery: route::LocalDelivery,
    ) -> Result<(), EnforceError> {
        delivery.install()?;
        steering.prefixes = self.status.protected_subnets.clone();
        nft::install(&steering)?;
        tracing::info!(table = %steering.table, interfaces = ?steering.interfaces, "intercepting");
        self.status.intercept_table = Some(steering.table.clone());
        self.steering = Some((steering, delivery));
        Ok(())
    }

    /// Steers exactly `ports` (those some grant relays) to the TCP relay, live.
    pub fn set_relay_ports(&mut self, ports: &[u16]) -> Result<(), EnforceError> {
        if let Some((steering, _)) = &mut self.steering
            && steering.relay_ports != ports
        {
            steering.relay_ports = ports.to_vec();
            nft::install(steering)?;
        }
        Ok(())
    }

    /// Removes the steering table and routing (clean stop). The eBPF floor stays pinned, so
    /// protected prefixes stay closed: intercepted SSH now fails instead of passing.
    pub fn stop_steering(&mut self) -> Result<(), EnforceError> {
        if let Some((steering, delivery)) = self.steering.take() {
            nft::remove(&steering.table)?;
            delivery.remove()?;
            self.status.intercept_table = None;
        }
        Ok(())
    }

    /// Makes the kernel protect exactly `protected`, live (additions land before removals),
    /// and steers exactly those prefixes.
    pub fn set_protected(&mut self, protected: &[Cidr]) -> Result<(), EnforceError> {
        self.maps.set_protected(protected)?;
        self.status.protected_subnets = protected.to_vec();
        if let Some((steering, _)) = &mut self.steering {
            steering.prefixes = protected.to_vec();
            nft::install(steering)?;
        }
        Ok(())
    }

    /// The current status, with fresh counters.
    pub fn status(&self) -> Result<EnforceStatus, EnforceError> {
        let mut status = self.status.clone();
        (status.denied, status.allowed) = self.maps.counters()?;
        Ok(status)
    }
}

/// `<bpffs_dir>/maps` and `<bpffs_dir>/links`, on a bpf filesystem.
struct PinDirs {
    maps: PathBuf,
    links: PathBuf,
}

impl PinDirs {
    fn prepare(dir: &Path) -> Result<PinDirs, EnforceError> {
        let bpffs = |source| EnforceError::Bpffs {
            path: dir.to_owned(),
            source,
        };
        // The conventional mount point may be missing on a minimal system; mount it ourselves
        // rather than fail, but never mount over anything else.
        let conventional = Path::new("/sys/fs/bpf");
        if dir.starts_with(conventional) && !sys::is_bpffs(conventional).map_err(bpffs)? {
            sys::mount_bpffs(conventional).map_err(bpffs)?;
        }
        std::fs::create_dir_all(dir).map_err(bpffs)?;
        if !sys::is_bpffs(dir).map_err(bpffs)? {
            return Err(EnforceError::NotBpffs {
                path: dir.to_owned(),
            });
        }
        let dirs = PinDirs {
            maps: dir.join("maps"),
            links: dir.join("links"),
        };
        std::fs::create_dir_all(&dirs.maps).map_err(bpffs)?;
        std::fs::create_dir_all(&dirs.links).map_err(bpffs)?;
        Ok(dirs)
    }
}
