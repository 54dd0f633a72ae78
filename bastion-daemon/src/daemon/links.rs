//! Following the network under enforcement: on every link or route change the kernel
//! announces, the egress program is re-attached wherever a protected interface came back
//! (within the debounce below of the change), and protected prefixes routed through an
//! unprotected interface are warned about. Every change is an audit event.

use std::{future::Future, sync::Arc, time::Duration};

use bastion_core::audit::{Actor, AuditKind};

use super::{Daemon, lock};
use crate::enforce::{LinkOrigin, link_events::LinkEvents};

/// Changes come in bursts (a bridge and its ports, addresses after links): settle briefly,
/// then look once.
const SETTLE: Duration = Duration::from_millis(50);

/// Runs until `shutdown`: re-attaches and re-checks after every change.
pub(super) async fn follow(
    daemon: Arc<Daemon>,
    mut events: LinkEvents,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            changed = events.changed() => {
                if let Err(e) = changed {
                    tracing::error!(error = %e, "link events unreadable: protected interfaces are no longer followed");
                    return;
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
        let d = daemon.clone();
        let _ = tokio::task::spawn_blocking(move || {
            check_interfaces(&d);
            check_routes(&d);
        })
        .await;
    }
}

/// Re-attaches the egress program where needed and audits what changed.
pub(super) fn check_interfaces(daemon: &Daemon) {
    let changes = match lock(&daemon.enforcer).follow_interfaces() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot re-attach the egress program");
            return;
        }
    };
    let kinds: Vec<AuditKind> = changes
        .into_iter()
        .map(|c| {
            let state = match c.link {
                LinkOrigin::Missing => "missing",
                LinkOrigin::Replaced => "replaced",
                LinkOrigin::Adopted | LinkOrigin::Attached => "attached",
            };
            match c.link {
                LinkOrigin::Missing => tracing::error!(iface = %c.iface, "protected interface gone: only the static floor holds on it"),
                _ => tracing::warn!(iface = %c.iface, state, "protected interface back: egress program attached"),
            }
            AuditKind::ProtectedInterface {
                iface: c.iface,
                state: state.into(),
                detail: c.detail,
            }
        })
        .collect();
    audit(daemon, kinds);
}

/// Warns (log and audit) about protected prefixes routed through unprotected interfaces.
pub(super) fn check_routes(daemon: &Daemon) {
    let changes = lock(&daemon.enforcer).check_routes();
    let kinds = changes
        .into_iter()
        .map(|(r, resolved)| {
            if !resolved {
                tracing::warn!(prefix = %r.prefix, route = %r.route, iface = %r.iface, "protected prefix routed through an unprotected interface");
            }
            AuditKind::UnprotectedRoute {
                prefix: r.prefix.to_string(),
                route: r.route.to_string(),
                iface: r.iface,
                resolved,
            }
        })
        .collect();
    audit(daemon, kinds);
}

fn audit(daemon: &Daemon, kinds: Vec<AuditKind>) {
    if !kinds.is_empty()
        && let Err(e) = daemon.store.append_audits(Actor::Daemon, kinds)
    {
        tracing::error!(error = %e, "cannot audit an enforcement change");
    }
}
