//! Watching bastiond's own cgroup. Its exemption from enforcement is "bastiond's cgroup and
//! bastiond's process" at connect/sendmsg, but "bastiond's cgroup" on the protected links (a
//! packet carries its socket's cgroup, not a process): a root process that writes its pid into
//! bastiond's cgroup is refused the former and may pass the latter. It cannot be prevented
//! from joining (root may write cgroupfs), so every process that joins is an ALERT audit event
//! naming it. cgroupfs announces no joins (cgroup.events only says "populated"), so the
//! members are read a few times a second (cgroupfs and procfs reads are memory reads: done
//! inline, not on the blocking pool); an intruder too quick for that is still caught when it
//! tries the protected side: the hooks report its refusal with bastiond's cgroup and another
//! pid (`Intruders::alerts_for_flows`).

use std::{
    collections::BTreeSet,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bastion_core::{
    audit::{Actor, AuditKind},
    flow::Flow,
};
use bastion_store::Store;

const EVERY: Duration = Duration::from_millis(200);

/// The pids already alerted, shared by the watch and the flow audit so one intruder is one
/// ALERT. Pids that left the cgroup are forgotten (bounded; a reused pid is seen again).
#[derive(Clone)]
pub(super) struct Intruders {
    cgroup: PathBuf,
    cgroup_id: u64,
    alerted: Arc<Mutex<BTreeSet<u32>>>,
}

impl Intruders {
    pub(super) fn new(cgroup: PathBuf, cgroup_id: u64) -> Intruders {
        Intruders {
            cgroup,
            cgroup_id,
            alerted: Arc::default(),
        }
    }

    /// ALERT events for the processes in bastiond's cgroup (other than bastiond) that the
    /// flows show being refused: they got into the cgroup and tried the protected side.
    pub(super) fn alerts_for_flows(&self, flows: &[Flow]) -> Vec<AuditKind> {
        let me = std::process::id();
        let seen: Vec<(u32, Option<String>)> = flows
            .iter()
            .filter(|f| !f.allowed && f.cgroup == self.cgroup_id)
            .filter_map(|f| f.pid.filter(|p| *p != me).map(|p| (p, f.comm.clone())))
            .collect();
        self.alert(seen)
    }

    fn alert(&self, pids: Vec<(u32, Option<String>)>) -> Vec<AuditKind> {
        let mut alerted = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
        pids.into_iter()
            .filter(|(pid, _)| alerted.insert(*pid))
            .map(|(pid, comm)| {
                tracing::error!(pid, comm = ?comm, cgroup = %self.cgroup.display(), "ALERT: a process joined bastiond's cgroup");
                AuditKind::CgroupJoined {
                    cgroup: self.cgroup.display().to_string(),
                    pid,
                    comm,
                }
            })
            .collect()
    }
}

/// Runs until `shutdown`, auditing each pid other than bastiond's found in the cgroup once.
pub(super) async fn watch(
    intruders: Intruders,
    store: Arc<Store>,
    shutdown: impl Future<Output = ()>,
) {
    let me = std::process::id();
    let cgroup = intruders.cgroup.clone();
    let procs = cgroup.join("cgroup.procs");
    let mut tick = tokio::time::interval(EVERY);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let members: BTreeSet<u32> = match std::fs::read_to_string(&procs) {
            Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(e) => {
                tracing::error!(cgroup = %cgroup.display(), error = %e, "cannot read bastiond's cgroup: joins are no longer watched");
                return;
            }
        };
        // Forget pids that left, so memory stays bounded and a pid reused later is seen again.
        // (A pid the flows alerted on may have left already: forgotten too, which is right.)
        intruders
            .alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|pid| members.contains(pid));
        let strangers: Vec<(u32, Option<String>)> = members
            .iter()
            .filter(|pid| **pid != me)
            .map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .map(|c| c.trim().to_owned());
                (*pid, comm)
            })
            .collect();
        let kinds = intruders.alert(strangers);
        if kinds.is_empty() {
            continue;
        }
        let store = store.clone();
        let written =
            tokio::task::spawn_blocking(move || store.append_audits(Actor::Daemon, kinds)).await;
        if !matches!(written, Ok(Ok(_))) {
            tracing::error!("cannot audit a process that joined bastiond's cgroup");
        }
    }
}
