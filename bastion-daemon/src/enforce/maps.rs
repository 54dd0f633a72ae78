//! The enforcement maps as typed userspace handles, and the idempotent "make the map hold exactly
//! this set" updates that start-up and later subnet changes use.

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::{HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use bastion_common::{ALLOWED, PROTECTED, Stat, map_names};
use bastion_core::cidr::Cidr;

use super::EnforceError;

pub(super) struct Maps {
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    allowed: HashMap<MapData, u64, u32>,
    packet: HashMap<MapData, u64, u32>,
    tgids: HashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<T, EnforceError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| EnforceError::Missing(format!("map {name}")))?;
    T::try_from(map).map_err(|source| EnforceError::Map { name, source })
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> EnforceError {
    move |source| EnforceError::Map { name, source }
}

impl Maps {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Maps, EnforceError> {
        Ok(Maps {
            v4: take(ebpf, map_names::PROTECTED_V4)?,
            v6: take(ebpf, map_names::PROTECTED_V6)?,
            allowed: take(ebpf, map_names::ALLOWED_CGROUPS)?,
            packet: take(ebpf, map_names::PACKET_CGROUPS)?,
            tgids: take(ebpf, map_names::ALLOWED_TGIDS)?,
            stats: take(ebpf, map_names::STATS)?,
        })
    }

    /// Makes the allowed-cgroup set exactly `ids`: new ids first, then stale ones out.
    pub(super) fn set_allowed_cgroups(&mut self, ids: &[u64]) -> Result<(), EnforceError> {
        sync_set(&mut self.allowed, ids, map_names::ALLOWED_CGROUPS)
    }

    /// Makes the set of bastiond processes exactly `tgids`.
    pub(super) fn set_allowed_tgids(&mut self, tgids: &[u32]) -> Result<(), EnforceError> {
        sync_set(&mut self.tgids, tgids, map_names::ALLOWED_TGIDS)
    }

    /// Makes the packet-socket allow-list exactly `ids`.
    pub(super) fn set_packet_cgroups(&mut self, ids: &[u64]) -> Result<(), EnforceError> {
        sync_set(&mut self.packet, ids, map_names::PACKET_CGROUPS)
    }

    /// Makes the protected tries hold exactly `cidrs`: new prefixes first, then stale ones out.
    pub(super) fn set_protected(&mut self, cidrs: &[Cidr]) -> Result<(), EnforceError> {
        self.sync_protected(cidrs, true)
    }

    /// Adds `cidrs` to the protected tries and keeps what they hold already: at start-up, before
    /// the store says which stored prefixes are still wanted, nothing an earlier bastiond
    /// protected may open.
    pub(super) fn add_protected(&mut self, cidrs: &[Cidr]) -> Result<(), EnforceError> {
        self.sync_protected(cidrs, false)
    }

    fn sync_protected(&mut self, cidrs: &[Cidr], remove_stale: bool) -> Result<(), EnforceError> {
        let mut want4 = BTreeSet::new();
        let mut want6 = BTreeSet::new();
        for c in cidrs {
            match c.addr() {
                IpAddr::V4(a) => want4.insert((u32::from(c.prefix_len()), a.octets())),
                IpAddr::V6(a) => want6.insert((u32::from(c.prefix_len()), a.octets())),
            };
        }
        sync_trie(&mut self.v4, &want4, remove_stale, map_names::PROTECTED_V4)?;
        sync_trie(&mut self.v6, &want6, remove_stale, map_names::PROTECTED_V6)
    }

    /// (denied, allowed) summed over CPUs.
    pub(super) fn counters(&self) -> Result<(u64, u64), EnforceError> {
        let e = map_err(map_names::STATS);
        let sum = |s: Stat| -> Result<u64, EnforceError> {
            Ok(self.stats.get(&(s as u32), 0).map_err(&e)?.iter().sum())
        };
        Ok((sum(Stat::Denied)?, sum(Stat::Allowed)?))
    }
}

/// Makes a cgroup-id set hold exactly `ids`: new ids first, then stale ones out.
fn sync_set<K: aya::Pod + PartialEq>(
    set: &mut HashMap<MapData, K, u32>,
    ids: &[K],
    name: &'static str,
) -> Result<(), EnforceError> {
    let e = map_err(name);
    for id in ids {
        set.insert(id, ALLOWED, 0).map_err(&e)?;
    }
    let stale: Vec<K> = set
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(&e)?
        .into_iter()
        .filter(|k| !ids.contains(k))
        .collect();
    for id in stale {
        set.remove(&id).map_err(&e)?;
    }
    Ok(())
}

fn sync_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    want: &BTreeSet<(u32, [u8; N])>,
    remove_stale: bool,
    name: &'static str,
) -> Result<(), EnforceError>
where
    [u8; N]: aya::Pod,
{
    let e = map_err(name);
    for (len, data) in want {
        trie.insert(&Key::new(*len, *data), PROTECTED, 0)
            .map_err(&e)?;
    }
    if !remove_stale {
        return Ok(());
    }
    let have: Vec<Key<[u8; N]>> = trie.keys().collect::<Result<_, _>>().map_err(&e)?;
    for key in have {
        if !want.contains(&(key.prefix_len(), key.data())) {
            trie.remove(&key).map_err(&e)?;
        }
    }
    Ok(())
}
