//! Maps shared by every hook. They are pinned by name under bastiond's bpffs directory, so an
//! upgraded or restarted bastiond reuses them (and their contents) instead of starting empty.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use bastion_common::{
    FLOW_RING_BYTES, MAX_ALLOWED_CGROUPS, MAX_PACKET_CGROUPS, MAX_PROTECTED_PREFIXES, Stat,
};

#[map]
pub static PROTECTED_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(MAX_PROTECTED_PREFIXES, 0);

#[map]
pub static PROTECTED_V6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(MAX_PROTECTED_PREFIXES, 0);

#[map]
pub static ALLOWED_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_ALLOWED_CGROUPS, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(Stat::COUNT, 0);

#[map]
pub static FLOWS: RingBuf = RingBuf::pinned(FLOW_RING_BYTES, 0);

#[map]
pub static FLOWS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

#[map]
pub static PACKET_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_PACKET_CGROUPS, 0);

#[map]
pub static ALLOWED_TGIDS: HashMap<u32, u32> = HashMap::pinned(MAX_ALLOWED_CGROUPS, 0);
