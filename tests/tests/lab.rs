//! The lab itself: it must leave nothing behind, also when a test panics or its owner dies.

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use bastion_lab::{
    Lab,
    cleanup::{self, OwnerState},
    names::LabName,
    topology,
};

fn traces(name: &LabName) -> Vec<String> {
    let mut found = Vec::new();
    for p in [name.run_dir(), name.cgroup(), name.bpffs_dir()] {
        if p.exists() {
            found.push(p.display().to_string());
        }
    }
    for ns in topology::list_netns().expect("ip netns list") {
        if ns.starts_with(name.as_str()) {
            found.push(format!("netns {ns}"));
        }
    }
    found
}

fn pid_alive(pid: u32) -> bool {
    bastion_lab::sys::alive(pid)
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let handle = std::thread::spawn(|| {
        let lab = Lab::up().expect("lab");
        let bastiond = lab.start_bastiond().expect("bastiond");
        let pids = (lab.name().clone(), bastiond.pid().unwrap());
        // Everything exists at this point...
        assert!(Path::new(&lab.info().bpffs_dir).join("links").exists());
        std::panic::panic_any(pids);
    });
    let payload = handle.join().expect_err("the thread panics");
    let (name, pid) = payload
        .downcast_ref::<(LabName, u32)>()
        .expect("payload")
        .clone();
    assert_eq!(
        traces(&name),
        Vec::<String>::new(),
        "left behind after panic"
    );
    assert!(!pid_alive(pid), "bastiond {pid} survived");
}

#[test]
fn a_lab_whose_owner_died_is_swept() {
    let lab = Lab::up().expect("lab");
    let name = lab.name().clone();
    let sshd_pids: Vec<u32> = std::fs::read_to_string(name.hosts_cgroup().join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(sshd_pids.len(), 2);
    // Pretend the owner crashed: drop the handle without teardown and hand the lab to a dead pid.
    std::mem::forget(lab);
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    OwnerState {
        owner_pid: dead_pid,
        owner_start: 0,
        keep: false,
    }
    .write(&name)
    .unwrap();

    let swept = cleanup::sweep_stale().unwrap();
    assert!(swept.contains(&name), "{swept:?}");
    assert_eq!(traces(&name), Vec::<String>::new());
    for pid in sshd_pids {
        assert!(!pid_alive(pid), "sshd {pid} survived the sweep");
    }
}

#[test]
fn hosts_run_real_sshd_reachable_through_the_bastion_router() {
    let lab = Lab::up().expect("lab");
    let info = lab.info();
    // From the admin namespace, routed through the bastion namespace, with the lab's admin key.
    for host in &info.hosts {
        let out = lab
            .command("admin", "ssh")
            .unwrap()
            .args(lab.ssh_options())
            .args(["-o", "ConnectTimeout=5"])
            .arg(format!("root@{}", host.addr))
            .arg("cat /proc/sys/kernel/hostname; ip -brief addr show eth0")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ssh to {}: {}",
            host.addr,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&host.addr), "{stdout}");
    }
}
