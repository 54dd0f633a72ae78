//! tcx egress on the protected-side interface(s): default deny. A frame leaves only if
//! - it comes from a full socket in an allowed cgroup (bastiond's), or
//! - it is what bastiond's own traffic needs from the kernel: ARP, IPv6 neighbour discovery
//!   (hop limit 255, which a forwarded packet can never have), MLD reports to link-scoped
//!   groups (never forwarded), and the TCP control segments a TIME_WAIT socket answers with.
//!
//! Everything else is dropped and reported, whatever its destination: unicast in or out of the
//! protected prefixes, broadcast, multicast, link-local, IPv6 of any scope, other ethertypes.
//! Forwarded packets have no socket, so routing through the appliance never reaches the
//! protected side; a mark proves nothing (any root process can set one), the socket's cgroup
//! does. The options that make frames skip tcx egress (packet sockets' PACKET_QDISC_BYPASS,
//! AF_XDP's rings) are refused one step earlier (`setsockopt`).

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::{bpf_sk_fullsock, bpf_skb_cgroup_id},
    macros::classifier,
    programs::TcContext,
};
use bastion_common::{FlowEvent, Hook};

use crate::decide;

/// TC_ACT_OK and TC_ACT_SHOT (the bindings' integer types differ between targets).
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
/// Field offsets within the IPv4 and IPv6 headers.
const IPV4_PROTO: usize = 9;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_NEXT: usize = 6;
const IPV6_HOP_LIMIT: usize = 7;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
const IPV6_HLEN: usize = 40;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 types bastiond's IPv6 traffic needs from the kernel.
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const MLD_LISTENER_REPORT: u8 = 131;
const MLD_LISTENER_DONE: u8 = 132;
const MLD2_LISTENER_REPORT: u8 = 143;
/// `tcp_state` of a TIME_WAIT (or FIN_WAIT2-after-close) socket.
const TCP_TIME_WAIT: u32 = 6;
const TCP_FLAGS: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_FIN: u8 = 0x01;

#[classifier]
pub fn egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(verdict) => verdict,
        // A frame too short to read is not a frame anyone needs delivered.
        Err(_) => TC_ACT_SHOT,
    }
}

fn try_egress(ctx: &TcContext) -> Result<i32, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    if ethertype == ETH_P_ARP {
        // Resolving the next hop: bastiond's connections need it, and ARP reaches no service.
        return Ok(TC_ACT_OK);
    }
    // SAFETY: the kernel hands every classifier a valid skb; the helper only reads it.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // 0 is no full socket (forwarded, or a kernel control packet): never an allowed cgroup.
    if cgroup != 0 && decide::is_allowed(cgroup) {
        // bastiond's own packets: its flows were reported when it connected.
        return Ok(TC_ACT_OK);
    }
    let mut event = decide::flow(Hook::Egress, false, 0, [0; 16], 0);
    event.cgroup = cgroup;
    match ethertype {
        ETH_P_IP => {
            event.family = 4;
            event.daddr = decide::v4_in_16(ctx.load::<[u8; 4]>(ETH_HLEN + IPV4_DST)?);
            let proto = ctx.load::<u8>(ETH_HLEN + IPV4_PROTO)?;
            if kernel_reply(ctx, cgroup, proto, ETH_HLEN + ipv4_header_len(ctx)?)? {
                return Ok(TC_ACT_OK);
            }
        }
        ETH_P_IPV6 => {
            event.family = 6;
            event.daddr = ctx.load::<[u8; 16]>(ETH_HLEN + IPV6_DST)?;
            if neighbour_discovery(ctx, &event.daddr)?
                || kernel_reply(
                    ctx,
                    cgroup,
                    ctx.load::<u8>(ETH_HLEN + IPV6_NEXT)?,
                    ETH_HLEN + IPV6_HLEN,
                )?
            {
                return Ok(TC_ACT_OK);
            }
        }
        // VLAN-tagged frames, LLDP, anything else: only bastiond may send them, and it does not.
        other => event.dport = other,
    }
    // What the packet says about itself is best effort: the drop does not depend on it.
    let _ = describe(ctx, &mut event);
    decide::count_denied();
    decide::report(ctx, &event);
    Ok(TC_ACT_SHOT)
}

fn ipv4_header_len(ctx: &TcContext) -> Result<usize, i64> {
    Ok(usize::from(ctx.load::<u8>(ETH_HLEN)? & 0x0f) * 4)
}

/// IPv6 neighbour discovery and MLD as only the kernel sends them: ND with hop limit 255 (a
/// forwarded packet has at most 254: RFC 4861 receivers drop anything else), MLD reports with
/// hop limit 1 to a link-scoped multicast group (never forwarded).
fn neighbour_discovery(ctx: &TcContext, daddr: &[u8; 16]) -> Result<bool, i64> {
    let hop_limit = ctx.load::<u8>(ETH_HLEN + IPV6_HOP_LIMIT)?;
    let mut next = ctx.load::<u8>(ETH_HLEN + IPV6_NEXT)?;
    let mut l4 = ETH_HLEN + IPV6_HLEN;
    if next == IPPROTO_HOPOPTS {
        // MLD reports carry a Router Alert option in a hop-by-hop header.
        next = ctx.load::<u8>(l4)?;
        l4 += (usize::from(ctx.load::<u8>(l4 + 1)?) + 1) * 8;
    }
    if next != IPPROTO_ICMPV6 {
        return Ok(false);
    }
    let link_scoped_multicast = daddr[0] == 0xff && daddr[1] & 0x0f == 0x02;
    Ok(match ctx.load::<u8>(l4)? {
        ND_ROUTER_SOLICIT | ND_NEIGHBOR_SOLICIT | ND_NEIGHBOR_ADVERT => hop_limit == 255,
        MLD_LISTENER_REPORT | MLD_LISTENER_DONE | MLD2_LISTENER_REPORT => {
            hop_limit == 1 && link_scoped_multicast
        }
        _ => false,
    })
}

/// A TCP segment the kernel sends for a TIME_WAIT socket (the ACK of the peer's FIN, or a RST):
/// it has no full socket, so no cgroup, but a TIME_WAIT socket only exists for a connection
/// that was established, and every connection to the protected side that got that far was
/// bastiond's. Only bare control segments (no SYN, no FIN, no payload) pass.
fn kernel_reply(ctx: &TcContext, cgroup: u64, proto: u8, l4: usize) -> Result<bool, i64> {
    if cgroup != 0 || proto != IPPROTO_TCP {
        return Ok(false);
    }
    // SAFETY: reading the skb's socket pointer, which the verifier types as nullable.
    let sk: *mut bpf_sock = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(false);
    }
    // SAFETY: `sk` is a non-null socket pointer from the skb; `state` is a sock_common field,
    // readable for every socket kind; the helper returns null for a full socket's absence.
    let (state, full) = unsafe { ((*sk).state, !bpf_sk_fullsock(sk).is_null()) };
    if full || state != TCP_TIME_WAIT {
        return Ok(false);
    }
    let flags = ctx.load::<u8>(l4 + TCP_FLAGS)?;
    let data_offset = usize::from(ctx.load::<u8>(l4 + 12)? >> 4) * 4;
    let bare = ctx.len() as usize <= l4 + data_offset;
    Ok(flags & (TCP_SYN | TCP_FIN) == 0 && bare)
}

/// Fills the protocol, source address and ports of a dropped packet into `event`.
fn describe(ctx: &TcContext, event: &mut FlowEvent) -> Result<(), i64> {
    let l4 = match event.family {
        4 => {
            event.proto = ctx.load::<u8>(ETH_HLEN + IPV4_PROTO)?;
            event.saddr = decide::v4_in_16(ctx.load::<[u8; 4]>(ETH_HLEN + IPV4_SRC)?);
            ETH_HLEN + ipv4_header_len(ctx)?
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
