//! The crate graph runs one way, and that is checked here rather than hoped for:
//!
//! - our own crates depend on each other only as [`LAYERS`] allows (`bastion-core` ←
//!   `bastion-store` ← `bastion-record` ← `bastion-proxy` ← `bastion-daemon`; `bastionctl` on the
//!   core alone; the lab and xtask on no product crate), so a back-edge fails here with the edge
//!   named (and Cargo itself refuses the cycle it would make);
//! - the pure core (`bastion-core`) reaches no async runtime, database, eBPF or socket crate
//!   ([`IO_STACK`]); bastionctl and the archive client reach none of the appliance's own stack
//!   ([`APPLIANCE_STACK`]: they run on auditors' machines too);
//! - `cargo xtask` builds with stable Rust and nothing else, because `setup` is compiled into it:
//!   no native library, no eBPF build, no product crate with build scripts in its normal or build
//!   graph ([`NEEDS_SETUP`]).
//!
//! Edges between our crates come from `cargo metadata`. What a pure crate reaches comes from
//! `cargo tree -p`, which resolves features for that crate alone: the workspace-wide resolve in
//! `cargo metadata` unifies features across members (the daemon turns on `bastion-common/user`,
//! which pulls aya) and would blame the core for the daemon's choices.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

/// Crates that need what only `setup` installs: the daemon (libmnl/libnftnl and the nested eBPF
/// build), the eBPF build itself, and the netfilter -sys crates.
const NEEDS_SETUP: &[&str] = &["bastion-daemon", "aya-build", "mnl-sys", "nftnl-sys"];

/// Each workspace crate and the workspace crates it may depend on (normal or build edges).
const LAYERS: &[(&str, &[&str])] = &[
    ("bastion-common", &[]),
    ("bastion-ebpf", &["bastion-common"]),
    ("bastion-core", &["bastion-common"]),
    ("bastion-store", &["bastion-core"]),
    ("bastion-record", &["bastion-core", "bastion-store"]),
    ("bastion-archive", &["bastion-core"]),
    (
        "bastion-proxy",
        &["bastion-core", "bastion-store", "bastion-record"],
    ),
    (
        "bastion-daemon",
        &[
            "bastion-archive",
            "bastion-common",
            "bastion-core",
            "bastion-store",
            "bastion-record",
            "bastion-proxy",
        ],
    ),
    ("bastionctl", &["bastion-archive", "bastion-core"]),
    ("bastion-lab", &[]),
    (
        "bastion-lab-load",
        &[
            "bastion-archive",
            "bastion-core",
            "bastion-store",
            "bastion-record",
            "bastion-proxy",
            "bastion-daemon",
        ],
    ),
    ("xtask", &["bastion-lab"]),
];

/// What the pure crates must not reach: an async runtime, a database, eBPF, sockets, netfilter.
const IO_STACK: &[&str] = &[
    "tokio",
    "mio",
    "sled",
    "aya",
    "aya-build",
    "russh",
    "socket2",
    "nftnl",
    "mnl",
];

/// What the crates that run off the appliance (bastionctl, the archive client) must not reach:
/// the store, eBPF, the SSH stack, netfilter. An S3 client on tokio is theirs to use.
const APPLIANCE_STACK: &[&str] = &["sled", "aya", "aya-build", "russh", "nftnl", "mnl"];

fn cargo() -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("running cargo");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo's output is UTF-8")
}

fn metadata() -> Value {
    let out = run(cargo().args(["metadata", "--format-version", "1", "--locked"]));
    serde_json::from_str(&out).expect("cargo metadata's JSON")
}

#[test]
fn our_crates_depend_on_each_other_only_downward() {
    let metadata = metadata();
    let offending = internal_edges_not_allowed(&metadata);
    assert!(
        offending.is_empty(),
        "edges between workspace crates that LAYERS does not allow (a back-edge, or a new \
         crate to place):\n{}",
        offending.join("\n")
    );
}

/// Every normal or build edge between workspace members that [`LAYERS`] does not list.
fn internal_edges_not_allowed(metadata: &Value) -> Vec<String> {
    let members: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["source"].is_null())
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let mut offending = Vec::new();
    for node in metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
    {
        let Some(&from) = node["id"].as_str().and_then(|id| members.get(id)) else {
            continue;
        };
        let allowed = LAYERS
            .iter()
            .find(|(name, _)| *name == from)
            .map_or(&[][..], |(_, deps)| *deps);
        if !LAYERS.iter().any(|(name, _)| *name == from) {
            offending.push(format!("{from}: not placed in LAYERS"));
        }
        for dep in node["deps"].as_array().into_iter().flatten() {
            let Some(&to) = dep["pkg"].as_str().and_then(|id| members.get(id)) else {
                continue;
            };
            if not_dev(dep) && !allowed.contains(&to) {
                offending.push(format!("{from} -> {to}"));
            }
        }
    }
    offending.sort();
    offending
}

/// `kind` is null for normal dependencies, "build" or "dev" otherwise.
fn not_dev(dep: &Value) -> bool {
    dep["dep_kinds"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|k| k["kind"].is_null() || k["kind"] == "build")
}

#[test]
fn pure_crates_reach_no_io_stack() {
    // `cargo tree -p ROOT` over normal and build edges, with features resolved for ROOT alone.
    let tree = |root: &str, extra: &[&str]| {
        let base = ["tree", "--locked", "-p", root, "-e", "normal,build"];
        run(cargo().args(base).args(extra))
    };
    for (root, forbidden) in [
        ("bastion-core", IO_STACK),
        ("bastion-archive", APPLIANCE_STACK),
        ("bastionctl", APPLIANCE_STACK),
    ] {
        let listing = tree(root, &["--prefix", "none", "-f", "{p}"]);
        let reached = listing
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .find(|name| forbidden.contains(name));
        if let Some(name) = reached {
            let why = tree(root, &["-i", name]);
            panic!("{root} reaches {name}, which it must not:\n{why}");
        }
    }
}

#[test]
fn xtask_builds_without_what_setup_installs() {
    let metadata = metadata();
    let offending = forbidden_paths(&metadata, "xtask");
    assert!(
        offending.is_empty(),
        "xtask's build graph reaches crates that need setup first:\n{}",
        offending.join("\n")
    );
}

/// For each forbidden crate reachable from `root` through normal or build dependencies, the
/// chain of package names that reaches it.
fn forbidden_paths(metadata: &Value, root: &str) -> Vec<String> {
    let name_of: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root_id = *name_of
        .iter()
        .find(|(_, name)| **name == root)
        .map(|(id, _)| id)
        .expect("the root package");
    // Breadth first, remembering who reached each package, so a failure shows the whole chain.
    let mut parent: HashMap<&str, &str> = HashMap::from([(root_id, "")]);
    let mut queue = VecDeque::from([root_id]);
    while let Some(id) = queue.pop_front() {
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let Some(dep_id) = dep["pkg"].as_str() else {
                continue;
            };
            if not_dev(dep) && !parent.contains_key(dep_id) {
                parent.insert(dep_id, id);
                queue.push_back(dep_id);
            }
        }
    }
    let mut found: Vec<String> = parent
        .keys()
        .filter(|id| NEEDS_SETUP.contains(&name_of[*id]))
        .map(|&id| {
            let mut chain = vec![name_of[id]];
            let mut at = id;
            while let Some(&up) = parent.get(at).filter(|up| !up.is_empty()) {
                chain.push(name_of[up]);
                at = up;
            }
            chain.reverse();
            chain.join(" -> ")
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_forbidden_crate_is_named_with_its_path() {
    let metadata = serde_json::json!({
        "packages": [
            {"id": "x", "name": "xtask"},
            {"id": "l", "name": "bastion-lab"},
            {"id": "d", "name": "bastion-daemon"},
            {"id": "s", "name": "sled"},
        ],
        "resolve": {"nodes": [
            {"id": "x", "deps": [{"pkg": "l", "dep_kinds": [{"kind": null}]}]},
            {"id": "l", "deps": [
                {"pkg": "d", "dep_kinds": [{"kind": "build"}]},
                {"pkg": "s", "dep_kinds": [{"kind": "dev"}]},
            ]},
            {"id": "d", "deps": []},
            {"id": "s", "deps": [{"pkg": "d", "dep_kinds": [{"kind": null}]}]},
        ]},
    });
    assert_eq!(
        forbidden_paths(&metadata, "xtask"),
        vec!["xtask -> bastion-lab -> bastion-daemon"]
    );
    let dev_only = serde_json::json!({
        "packages": [{"id": "x", "name": "xtask"}, {"id": "d", "name": "bastion-daemon"}],
        "resolve": {"nodes": [
            {"id": "x", "deps": [{"pkg": "d", "dep_kinds": [{"kind": "dev"}]}]},
            {"id": "d", "deps": []},
        ]},
    });
    assert!(forbidden_paths(&dev_only, "xtask").is_empty());
}

#[test]
fn a_back_edge_between_our_crates_is_named() {
    let metadata = serde_json::json!({
        "packages": [
            {"id": "c", "name": "bastion-core", "source": null},
            {"id": "d", "name": "bastion-daemon", "source": null},
            {"id": "n", "name": "bastion-new", "source": null},
            {"id": "t", "name": "tokio", "source": "registry+https://github.com/rust-lang/crates.io-index"},
        ],
        "resolve": {"nodes": [
            {"id": "c", "deps": [
                {"pkg": "d", "dep_kinds": [{"kind": null}]},
                {"pkg": "t", "dep_kinds": [{"kind": null}]},
            ]},
            {"id": "d", "deps": [{"pkg": "c", "dep_kinds": [{"kind": null}]}]},
            {"id": "n", "deps": [{"pkg": "d", "dep_kinds": [{"kind": "dev"}]}]},
            {"id": "t", "deps": []},
        ]},
    });
    assert_eq!(
        internal_edges_not_allowed(&metadata),
        vec![
            "bastion-core -> bastion-daemon",
            "bastion-new: not placed in LAYERS"
        ]
    );
}
