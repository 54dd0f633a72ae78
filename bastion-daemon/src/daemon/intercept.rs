//! Transparent mode at start-up: bind the transparent listeners, then steer to them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bastion_core::{
    config::InterceptConfig,
    policy::{Policy, Right},
};
use tokio::net::TcpListener;

use super::DaemonError;
use crate::enforce::{Enforcer, nft::Steering, route::LocalDelivery};

/// Binds the transparent listeners, then steers intercepted traffic to them.
pub(super) fn intercept(
    enforcer: &mut Enforcer,
    cfg: &InterceptConfig,
    relay_ports: Vec<u16>,
) -> Result<Intercepted, DaemonError> {
    let listeners = Intercepted {
        ssh: bind_transparent(cfg.listen_port)?,
        relay: bind_transparent(cfg.relay_port)?,
    };
    enforcer.steer(
        Steering {
            table: cfg.nft_table.clone(),
            interfaces: cfg.interfaces.clone(),
            prefixes: Vec::new(),
            ssh_ports: cfg.ssh_ports.clone(),
            ssh_listener: cfg.listen_port,
            relay_listener: cfg.relay_port,
            relay_ports,
            mark: cfg.mark,
        },
        LocalDelivery {
            mark: cfg.mark,
            table: cfg.route_table,
            priority: 100,
        },
    )?;
    tracing::info!(
        ssh = cfg.listen_port,
        relay = cfg.relay_port,
        "transparent listeners ready"
    );
    Ok(listeners)
}

/// The transparent listeners: SSH, and the TCP relay.
pub(super) struct Intercepted {
    pub ssh: Vec<TcpListener>,
    pub relay: Vec<TcpListener>,
}

/// IPv4 and (where the host has it) IPv6 transparent listeners on `port`.
fn bind_transparent(port: u16) -> Result<Vec<TcpListener>, DaemonError> {
    let mut listeners = Vec::new();
    for ip in [
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
    ] {
        let addr = SocketAddr::new(ip, port);
        match bastion_proxy::listener::bind_transparent(addr) {
            Ok(l) => listeners.push(l),
            // A host without IPv6 intercepts IPv4 only.
            Err(e) if ip.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                tracing::warn!(port, "IPv6 unavailable: intercepting IPv4 only")
            }
            Err(source) => return Err(DaemonError::Listen { addr, source }),
        }
    }
    Ok(listeners)
}

/// Every port some grant relays as raw TCP.
pub(super) fn relay_ports(policy: &Policy) -> Vec<u16> {
    let mut ports: Vec<u16> = policy
        .grants
        .values()
        .filter(|g| g.rights.contains(Right::Tcp))
        .flat_map(|g| g.tcp_ports.iter().copied())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
