//! `cargo xtask` must build with stable Rust and nothing else, because `setup` is compiled into it:
//! no native library, no eBPF build, no product crate with build scripts in its normal or build
//! dependency graph. This reads `cargo metadata` and names the path to any crate that breaks that.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

/// Crates that need what only `setup` installs: the daemon (libmnl/libnftnl and the nested eBPF
/// build), the eBPF build itself, and the netfilter -sys crates.
const FORBIDDEN: &[&str] = &["bastion-daemon", "aya-build", "mnl-sys", "nftnl-sys"];

#[test]
fn xtask_builds_without_what_setup_installs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
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
            // `kind` is null for normal dependencies, "build" or "dev" otherwise.
            let not_dev = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if not_dev && !parent.contains_key(dep_id) {
                parent.insert(dep_id, id);
                queue.push_back(dep_id);
            }
        }
    }
    let mut found: Vec<String> = parent
        .keys()
        .filter(|id| FORBIDDEN.contains(&name_of[*id]))
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
