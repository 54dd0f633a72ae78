//! Process limits bastiond needs raised at start.

#![forbid(unsafe_code)]

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Two sockets per session (client and target) plus the store's files: the default soft limit
/// of 1024 descriptors would cap bastiond near 500 sessions. Raises the soft limit to the hard
/// one (a soft limit never exceeds the hard one, so "differs" means "is lower").
pub fn raise_fd_limit() -> std::io::Result<()> {
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(())
}
