//! tcx egress on the protected-side interface(s): a packet to a protected destination leaves
//! only if it comes from a socket in an allowed cgroup (bastiond's). Forwarded packets have no
//! socket, so routing through the appliance never reaches a protected host; a mark proves
//! nothing (any root process can set one), the socket's cgroup does.

use aya_ebpf::{helpers::bpf_skb_cgroup_id, macros::classifier, programs::TcContext};
use bastion_common::{FlowEvent, Hook};

use crate::decide;

/// TC_ACT_OK and TC_ACT_SHOT (the bindings' integer types differ between targets).
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Field offsets within the IPv4 and IPv6 headers.
const IPV4_PROTO: usize = 9;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_NEXT: usize = 6;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
const IPV6_HLEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

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
    let (protected, family, daddr) = match ethertype {
        ETH_P_IP => {
            let d = ctx.load::<[u8; 4]>(ETH_HLEN + IPV4_DST)?;
            (decide::protected_v4(d), 4, decide::v4_in_16(d))
        }
        ETH_P_IPV6 => {
            let d = ctx.load::<[u8; 16]>(ETH_HLEN + IPV6_DST)?;
            (decide::protected_v6(d), 6, d)
        }
        // Tagged frames could carry anything to anyone on the segment: only bastiond may send them.
        ETH_P_8021Q | ETH_P_8021AD => (true, 0, [0; 16]),
        // ARP, neighbour discovery frames of other types, LLDP...: not a path to a service.
        _ => (false, 0, [0; 16]),
    };
    if !protected {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: the kernel hands every classifier a valid skb; the helper only reads it.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if decide::allowed(cgroup) {
        // bastiond's own packets: its flows were reported when it connected.
        return Ok(TC_ACT_OK);
    }
    let mut event = decide::flow(Hook::Egress, false, family, daddr, 0);
    event.cgroup = cgroup;
    // What the packet says about itself is best effort: the drop does not depend on it.
    let _ = describe(ctx, &mut event);
    decide::report(ctx, &event);
    Ok(TC_ACT_SHOT)
}

/// Fills the protocol, source address and ports of a dropped packet into `event`.
fn describe(ctx: &TcContext, event: &mut FlowEvent) -> Result<(), i64> {
    let l4 = match event.family {
        4 => {
            let ihl = usize::from(ctx.load::<u8>(ETH_HLEN)? & 0x0f) * 4;
            event.proto = ctx.load::<u8>(ETH_HLEN + IPV4_PROTO)?;
            event.saddr = decide::v4_in_16(ctx.load::<[u8; 4]>(ETH_HLEN + IPV4_SRC)?);
            ETH_HLEN + ihl
        }
        6 => {
            event.proto = ctx.load::<u8>(ETH_HLEN + IPV6_NEXT)?;
            event.saddr = ctx.load::<[u8; 16]>(ETH_HLEN + IPV6_SRC)?;
            ETH_HLEN + IPV6_HLEN
        }
        _ => return Ok(()),
    };
    if event.proto == IPPROTO_TCP || event.proto == IPPROTO_UDP {
        event.sport = u16::from_be(ctx.load::<u16>(l4)?);
        event.dport = u16::from_be(ctx.load::<u16>(l4 + 2)?);
    }
    Ok(())
}
