//! cgroup v2 facts bastiond needs: where the hierarchy is mounted, which cgroup a process is in,
//! a cgroup's id (the inode number of its directory, which is what `bpf_get_current_cgroup_id`
//! returns), and moving bastiond into its own cgroup.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} has no cgroup v2 entry (`0::/...`)", path.display())]
    NoEntry { path: PathBuf },
    #[error("cannot create cgroup {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot move bastiond (pid {pid}) into cgroup {}: {source}", path.display())]
    Move {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
}

/// The mount point of the cgroup v2 hierarchy (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })?;
    mount_from_mountinfo(&text).ok_or(CgroupError::NoCgroup2)
}

fn mount_from_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        // "id parent maj:min root mountpoint opts [optional...] - fstype source superopts"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The absolute directory of the cgroup process `pid` ("self" for the caller) is in.
pub fn cgroup_of(pid: &str) -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read {
        path: path.clone(),
        source,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(CgroupError::NoEntry { path })?;
    Ok(cgroup2_mount()?.join(rel.trim_start_matches('/')))
}

/// The cgroup id of the cgroup directory `dir`.
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })
}

/// Creates `dir` if needed and moves this whole process (every thread) into it.
pub fn enter(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
        path: dir.to_owned(),
        source,
    })?;
    let pid = std::process::id();
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Move {
        path: dir.to_owned(),
        pid,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let text = "\
35 24 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
44 35 0:39 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            mount_from_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mount_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
