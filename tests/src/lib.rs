//! The network-namespace lab and helpers for bastion's end-to-end tests.
//!
//! Layout:
//! - [`names`]: per-run unique names and everything derived from them (namespaces, cgroups, pins);
//! - [`sys`]: running `ip`/`ssh-keygen`, and spawning processes inside a namespace and cgroup;
//! - [`topology`]: namespaces, veth links, the protected bridge, addresses and routes;
//! - [`sshd`]: a real OpenSSH server on each protected host;
//! - [`bastiond`]: writing a bastiond config for the lab, starting it, calling bastionctl;
//! - [`cleanup`]: teardown by name, the registry used on Ctrl-C, and the sweep of stale runs;
//! - [`lab`]: [`Lab`], which ties them together and tears everything down on drop;
//! - [`interactive`]: [`interactive::Interactive`], an `ssh -tt` session a test types at;
//! - [`services`]: beside the appliance: a Garage cluster (the archive), rsyslog, an auditor;
//! - [`tools`]: ssh-audit, as setup installs it;
//! - [`wait`]: bounded waits for what a test cannot be told about directly.
//!
//! Network rules (shared/notes/lab-network.md): only 198.51.100.0/24 (admin side) and
//! 203.0.113.0/24 (protected side), inside namespaces the lab creates, with no route out; nothing
//! attached to the root namespace or the root cgroup.

pub mod bastiond;
pub mod cleanup;
pub mod interactive;
pub mod lab;
pub mod names;
pub mod services;
pub mod sshd;
pub mod sys;
pub mod tools;
pub mod topology;
pub mod wait;

pub use lab::{Lab, LabInfo};
