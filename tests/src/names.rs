//! Every lab resource is named after one per-run id, so teardown and the stale sweep need nothing
//! but the name, and parallel labs never collide.

use std::path::PathBuf;

/// Prefix of every lab name; the sweep only ever touches resources carrying it.
pub const PREFIX: &str = "bastionlab-";
/// Where labs keep their files (keys, configs, logs, the store). On disk, not tmpfs.
pub const RUN_ROOT: &str = "/var/tmp/bastion-lab";
/// The cgroup v2 mount on this machine kind.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup/unified";
pub const BPFFS: &str = "/sys/fs/bpf";

/// The protected hosts: (short name, address).
pub const HOSTS: [(&str, &str); 2] = [("web1", "203.0.113.10"), ("web2", "203.0.113.11")];
pub const ADMIN_ADDR: &str = "198.51.100.10";
/// A second address of the admin host, for tests that need two client sources.
pub const ADMIN_ADDR2: &str = "198.51.100.11";
pub const BASTION_ADMIN_ADDR: &str = "198.51.100.1";
pub const BASTION_PROTECTED_ADDR: &str = "203.0.113.1";
pub const PROTECTED_SUBNET: &str = "203.0.113.0/24";
pub const ADMIN_SUBNET: &str = "198.51.100.0/24";
/// The services beside the appliance (`services.rs`): (role, address).
pub const SERVICES: [(&str, &str); 5] = [
    ("s3a", "198.51.100.50"),
    ("s3b", "198.51.100.51"),
    ("s3c", "198.51.100.52"),
    ("syslog", "198.51.100.55"),
    ("auditor", "198.51.100.60"),
];
pub const SERVICES_BRIDGE: &str = "svc0";
pub const SERVICES_ROUTER_ADDR: &str = "198.51.100.2";
pub const SERVICES_ROUTE: &str = "198.51.100.48/28";
/// Interface names inside the bastion namespace.
pub const BASTION_ADMIN_IF: &str = "adm0";
pub const BASTION_PROTECTED_IF: &str = "prot0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabName(String);

impl LabName {
    /// A fresh, unique name: pid plus clock plus a process-wide counter.
    pub fn fresh() -> LabName {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mix = (std::process::id() as u64) << 32 ^ (nanos as u64) ^ (n as u64) << 20;
        LabName(format!("{PREFIX}{:08x}", (mix ^ (mix >> 29)) as u32))
    }

    /// Accepts an existing lab name (as found by the sweep or given to `lab down`).
    pub fn parse(s: &str) -> Option<LabName> {
        let hex = s.strip_prefix(PREFIX)?;
        (hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| LabName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn netns(&self, role: &str) -> String {
        format!("{}-{role}", self.0)
    }

    /// The namespace roles every lab has.
    pub fn roles() -> Vec<&'static str> {
        let mut roles = vec!["admin", "bastion"];
        roles.extend(HOSTS.iter().map(|(h, _)| *h));
        roles
    }

    /// Every namespace role a lab may have: [`LabName::roles`] and the services made on
    /// demand (`services.rs`). Teardown removes whichever exist.
    pub fn all_roles() -> Vec<&'static str> {
        let mut roles = Self::roles();
        roles.extend(SERVICES.iter().map(|(s, _)| *s));
        roles
    }

    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(RUN_ROOT).join(&self.0)
    }

    /// The lab's own cgroup; everything it starts lives below it.
    pub fn cgroup(&self) -> PathBuf {
        PathBuf::from(CGROUP_MOUNT).join(&self.0)
    }

    /// Where the sshds run (not subject to enforcement).
    pub fn hosts_cgroup(&self) -> PathBuf {
        self.cgroup().join("hosts")
    }

    /// bastiond's `enforce.cgroup_root`: everything below it is held to the rules.
    pub fn enforced_cgroup(&self) -> PathBuf {
        self.cgroup().join("enforced")
    }

    pub fn bastiond_cgroup(&self) -> PathBuf {
        self.enforced_cgroup().join("bastiond")
    }

    /// Where test processes (would-be bypassers) run.
    pub fn clients_cgroup(&self) -> PathBuf {
        self.enforced_cgroup().join("clients")
    }

    pub fn bpffs_dir(&self) -> PathBuf {
        PathBuf::from(BPFFS).join(&self.0)
    }
}

impl std::fmt::Display for LabName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_parse_and_differ() {
        let a = LabName::fresh();
        let b = LabName::fresh();
        assert_ne!(a, b);
        assert_eq!(LabName::parse(a.as_str()), Some(a.clone()));
        assert_eq!(LabName::parse("bastionlab-xyz"), None);
        assert_eq!(LabName::parse("other-0123abcd"), None);
    }
}
