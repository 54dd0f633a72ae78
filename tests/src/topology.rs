//! The lab network:
//!
//! ```text
//!  admin ns                 bastion ns (router, ip_forward=1)              webN ns
//!  eth0 198.51.100.10 ── adm0 198.51.100.1   prot0 (bridge) 203.0.113.1 ── eth0 203.0.113.10/11
//! ```
//! Veth pairs are created directly inside the namespaces, never in the root namespace, and no
//! namespace has a route beyond these two subnets.

use crate::{
    names::{
        ADMIN_ADDR, ADMIN_ADDR2, BASTION_ADMIN_ADDR, BASTION_ADMIN_IF, BASTION_PROTECTED_ADDR,
        BASTION_PROTECTED_IF, HOSTS, LabName,
    },
    sys::{ip, run},
};

pub fn create(name: &LabName) -> anyhow::Result<()> {
    for role in LabName::roles() {
        let ns = name.netns(role);
        run("ip", &["netns", "add", &ns])?;
        ip(&ns, &["link", "set", "lo", "up"])?;
    }
    let admin = name.netns("admin");
    let bastion = name.netns("bastion");

    // admin <-> bastion
    ip(
        &admin,
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            BASTION_ADMIN_IF,
            "netns",
            &bastion,
        ],
    )?;
    ip(
        &admin,
        &["addr", "add", &format!("{ADMIN_ADDR}/24"), "dev", "eth0"],
    )?;
    ip(
        &admin,
        &["addr", "add", &format!("{ADMIN_ADDR2}/24"), "dev", "eth0"],
    )?;
    ip(&admin, &["link", "set", "eth0", "up"])?;
    ip(
        &admin,
        &["route", "add", "default", "via", BASTION_ADMIN_ADDR],
    )?;
    ip(
        &bastion,
        &[
            "addr",
            "add",
            &format!("{BASTION_ADMIN_ADDR}/24"),
            "dev",
            BASTION_ADMIN_IF,
        ],
    )?;
    ip(&bastion, &["link", "set", BASTION_ADMIN_IF, "up"])?;

    // bastion's protected side: one bridge, one port per host.
    ip(
        &bastion,
        &["link", "add", BASTION_PROTECTED_IF, "type", "bridge"],
    )?;
    ip(
        &bastion,
        &[
            "addr",
            "add",
            &format!("{BASTION_PROTECTED_ADDR}/24"),
            "dev",
            BASTION_PROTECTED_IF,
        ],
    )?;
    ip(&bastion, &["link", "set", BASTION_PROTECTED_IF, "up"])?;
    for (host, addr) in HOSTS {
        let ns = name.netns(host);
        ip(
            &ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", &bastion,
            ],
        )?;
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(
            &ns,
            &["route", "add", "default", "via", BASTION_PROTECTED_ADDR],
        )?;
        ip(
            &bastion,
            &["link", "set", host, "master", BASTION_PROTECTED_IF],
        )?;
        ip(&bastion, &["link", "set", host, "up"])?;
    }
    run(
        "ip",
        &[
            "netns",
            "exec",
            &bastion,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    Ok(())
}

/// Deletes every namespace of `name` that exists; missing ones are fine.
pub fn destroy(name: &LabName) -> anyhow::Result<()> {
    let existing = list_netns()?;
    for role in LabName::all_roles() {
        let ns = name.netns(role);
        if existing.contains(&ns) {
            run("ip", &["netns", "del", &ns])?;
        }
    }
    Ok(())
}

pub fn list_netns() -> anyhow::Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}
