//! tcx egress on the protected-side interface(s): a packet to a protected destination leaves
//! only if it comes from a socket in an allowed cgroup (bastiond's). Forwarded packets have no
//! socket, so routing through the appliance never reaches a protected host; a mark proves
//! nothing (any root process can set one), the socket's cgroup does.

use aya_ebpf::{helpers::bpf_skb_cgroup_id, macros::classifier, programs::TcContext};

use crate::decide;

/// TC_ACT_OK and TC_ACT_SHOT (the bindings' integer types differ between targets).
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Destination address offsets within the IPv4 and IPv6 headers.
const IPV4_DST: usize = 16;
const IPV6_DST: usize = 24;

#[classifier]
pub fn egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(verdict) => verdict,
        // An IP frame too short to read is not a packet anyone needs delivered.
        Err(_) => TC_ACT_SHOT,
    }
}

fn try_egress(ctx: &TcContext) -> Result<i32, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    let protected = match ethertype {
        ETH_P_IP => decide::protected_v4(ctx.load::<[u8; 4]>(ETH_HLEN + IPV4_DST)?),
        ETH_P_IPV6 => decide::protected_v6(ctx.load::<[u8; 16]>(ETH_HLEN + IPV6_DST)?),
        // Tagged frames could carry anything to anyone on the segment: only bastiond may send them.
        ETH_P_8021Q | ETH_P_8021AD => true,
        // ARP, neighbour discovery frames of other types, LLDP...: not a path to a service.
        _ => false,
    };
    if !protected {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: the kernel hands every classifier a valid skb; the helper only reads it.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    Ok(if decide::allowed(cgroup) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    })
}
