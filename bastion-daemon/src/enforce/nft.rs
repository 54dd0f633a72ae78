//! Steering with nftables, through nftnl: bastiond's own `inet` table (nothing else is touched)
//! with one prerouting chain that TPROXYs TCP to protected prefixes, arriving on an admin-side
//! interface, to bastiond's transparent listeners. nftables only steers: the eBPF programs are
//! what stops traffic that is not steered.
//!
//! The table is replaced atomically in one batch (add, delete, add: the add before the delete
//! makes the delete succeed when no table is left over), so a subnet change never opens a
//! window in which intercepted traffic is forwarded instead.

use std::{
    ffi::{CStr, CString},
    net::IpAddr,
    ptr::NonNull,
};

use nftnl::{
    Batch, Chain, FinalizedBatch, Hook, MsgType, ProtoFamily, Rule, Table,
    expr::{Expression, InterfaceName, Register},
    nft_expr,
    nftnl_sys::{self as sys, libc},
};

use bastion_core::cidr::Cidr;

/// The mangle priority: before routing decides to forward the packet.
const PRIORITY_MANGLE: i32 = -150;
const CHAIN: &CStr = c"intercept";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables table name `{0}` is not valid")]
    Name(String),
    #[error("interface name `{0}` is not valid")]
    Interface(String),
    #[error("nftables (netlink) {action}: {source}")]
    Netlink {
        action: &'static str,
        source: std::io::Error,
    },
}

/// What to steer: TCP from `interfaces` to `prefixes`; `ssh_ports` to the transparent SSH
/// listener, `relay_ports` (those some grant relays) to the TCP relay. Nothing else is steered:
/// it is forwarded, and the egress program drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steering {
    pub table: String,
    pub interfaces: Vec<String>,
    pub prefixes: Vec<Cidr>,
    pub ssh_ports: Vec<u16>,
    pub ssh_listener: u16,
    pub relay_listener: u16,
    pub relay_ports: Vec<u16>,
    /// Set on steered packets; policy routing delivers marked packets locally.
    pub mark: u32,
}

/// Installs (or atomically replaces) the table described by `s`.
pub fn install(s: &Steering) -> Result<(), NftError> {
    let name = table_name(&s.table)?;
    let table = Table::new(&name, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let mut chain = Chain::new(CHAIN, &table);
    chain.set_hook(Hook::PreRouting, PRIORITY_MANGLE);
    chain.set_policy(nftnl::Policy::Accept);
    batch.add(&chain, MsgType::Add);
    for iface in &s.interfaces {
        let iface = CString::new(iface.as_str()).map_err(|_| NftError::Interface(iface.clone()))?;
        for prefix in &s.prefixes {
            for port in &s.ssh_ports {
                let rule = steer(&chain, &iface, prefix, *port, s.ssh_listener, s.mark);
                batch.add(&rule, MsgType::Add);
            }
            for port in s.relay_ports.iter().filter(|p| !s.ssh_ports.contains(p)) {
                let rule = steer(&chain, &iface, prefix, *port, s.relay_listener, s.mark);
                batch.add(&rule, MsgType::Add);
            }
        }
    }
    send(&batch.finalize(), "install")
}

/// Removes the table; a table that is not there is not an error.
pub fn remove(table: &str) -> Result<(), NftError> {
    let name = table_name(table)?;
    let table = Table::new(&name, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize(), "remove")
}

fn table_name(name: &str) -> Result<CString, NftError> {
    CString::new(name)
        .ok()
        .filter(|n| !n.is_empty() && n.as_bytes().len() < 256)
        .ok_or_else(|| NftError::Name(name.to_owned()))
}

/// `iifname IFACE <family> daddr PREFIX tcp dport PORT tproxy to :LISTENER meta mark set MARK accept`
fn steer<'a>(
    chain: &'a Chain<'a>,
    iface: &CStr,
    prefix: &Cidr,
    port: u16,
    listener: u16,
    mark: u32,
) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    rule.add_expr(&nft_expr!(meta iifname));
    rule.add_expr(&nft_expr!(cmp == InterfaceName::Exact(iface.to_owned())));
    let family = match prefix.addr() {
        IpAddr::V4(net) => {
            rule.add_expr(&nft_expr!(meta nfproto));
            rule.add_expr(&nft_expr!(cmp == libc::NFPROTO_IPV4 as u8));
            rule.add_expr(&nft_expr!(payload ipv4 daddr));
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.prefix_len()))
                .unwrap_or(0);
            rule.add_expr(&nft_expr!(bitwise mask mask.to_be(), xor 0u32));
            rule.add_expr(&nft_expr!(cmp == net));
            libc::NFPROTO_IPV4
        }
        IpAddr::V6(net) => {
            rule.add_expr(&nft_expr!(meta nfproto));
            rule.add_expr(&nft_expr!(cmp == libc::NFPROTO_IPV6 as u8));
            rule.add_expr(&nft_expr!(payload ipv6 daddr));
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.prefix_len()))
                .unwrap_or(0);
            rule.add_expr(&nft_expr!(bitwise mask &mask.to_be_bytes()[..], xor &[0u8; 16][..]));
            rule.add_expr(&nft_expr!(cmp == net));
            libc::NFPROTO_IPV6
        }
    };
    rule.add_expr(&nft_expr!(meta l4proto));
    rule.add_expr(&nft_expr!(cmp == libc::IPPROTO_TCP as u8));
    rule.add_expr(&nft_expr!(payload tcp dport));
    rule.add_expr(&nft_expr!(cmp == port.to_be()));
    rule.add_expr(&nftnl::expr::Immediate::new(
        listener.to_be(),
        Register::Reg1,
    ));
    rule.add_expr(&Tproxy {
        family: family as u32,
        port: Register::Reg1,
    });
    rule.add_expr(&nftnl::expr::Immediate::new(mark, Register::Reg1));
    rule.add_expr(&nft_expr!(meta mark set));
    rule.add_expr(&nft_expr!(verdict accept));
    rule
}

/// The `tproxy` expression, which nftnl 0.9 does not wrap: the packet is assigned to the local
/// listener on the port in `port` (the original destination stays the socket's local address).
struct Tproxy {
    family: u32,
    port: Register,
}

impl Expression for Tproxy {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: the name is a NUL-terminated literal; the attributes set are the tproxy
        // expression's own, with u32 values, as libnftnl documents them.
        unsafe {
            let Some(expr) = NonNull::new(sys::nftnl_expr_alloc(c"tproxy".as_ptr())) else {
                std::alloc::handle_alloc_error(std::alloc::Layout::new::<u64>())
            };
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TPROXY_FAMILY as u16,
                self.family,
            );
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TPROXY_REG_PORT as u16,
                self.port.to_raw(),
            );
            expr
        }
    }
}

fn send(batch: &FinalizedBatch, action: &'static str) -> Result<(), NftError> {
    let err = |source| NftError::Netlink { action, source };
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(err)?;
    let portid = socket.portid();
    socket.send_all(batch).map_err(err)?;
    let mut buffer = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
    // One acknowledgement per message; an error in any of them aborts the whole batch.
    while !expected.is_empty() {
        for message in socket.recv(&mut buffer[..]).map_err(err)? {
            let message = message.map_err(err)?;
            let Some(seq) = expected.next() else { break };
            mnl::cb_run(message, seq, portid).map_err(err)?;
        }
    }
    Ok(())
}
