//! The sock_addr hooks' verdict: a protected destination is refused (EPERM) unless the calling
//! task runs in an allowed cgroup.

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use bastion_common::verdict;

use crate::decide;

#[inline(always)]
pub fn for_destination(protected: bool) -> i32 {
    if !protected {
        return verdict::ALLOW;
    }
    // SAFETY: a plain helper call with no arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if decide::allowed(cgroup) {
        verdict::ALLOW
    } else {
        verdict::DENY
    }
}
