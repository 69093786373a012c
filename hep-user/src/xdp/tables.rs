//! Installs compiled [`KernelTables`] into the program's maps without a moment where a
//! packet sees half of two configurations: the inactive bank is written, then the one
//! `bank` word of `XDP_CONFIG` is flipped.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData};
use hep_common::abi::{
    ALLOW_MAP, AllowKey, CONFIG_MAP, DESTINATIONS_MAP, KernelDestination, KernelListener,
    KernelRoute, LISTENERS_MAP, MAX_DESTINATIONS, MAX_LISTENERS, MAX_ROUTES, ROUTES_MAP, XdpConfig,
};

use super::XdpError;
use super::compile::KernelTables;
use super::loader::XdpProgram;

fn array<'a, T: aya::Pod>(
    ebpf: &'a mut aya::Ebpf,
    name: &str,
) -> Result<Array<&'a mut MapData, T>, XdpError> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| XdpError::MissingItem(format!("map {name}")))?;
    Ok(Array::try_from(map)?)
}

fn check(what: &str, n: usize, max: usize) -> Result<(), XdpError> {
    if n > max {
        return Err(XdpError::TableTooLarge(format!(
            "{n} {what}, the kernel holds {max}"
        )));
    }
    Ok(())
}

impl XdpProgram {
    /// The active configuration word.
    pub fn config(&mut self) -> Result<XdpConfig, XdpError> {
        let a = array::<XdpConfig>(self.ebpf_mut(), CONFIG_MAP)?;
        Ok(a.get(&0, 0)?)
    }

    /// Writes `t` into the inactive bank and makes it the active one; returns that bank.
    pub fn install(&mut self, t: &KernelTables) -> Result<u32, XdpError> {
        check("routes", t.routes.len(), MAX_ROUTES)?;
        check("destinations", t.destinations.len(), MAX_DESTINATIONS)?;
        check("listeners", t.listeners.len(), MAX_LISTENERS)?;
        let mut cfg = self.config()?;
        let bank = 1 - (cfg.bank & 1);
        let ebpf = self.ebpf_mut();
        let base = |b: u32, max: usize| b * max as u32;
        {
            let mut routes = array::<KernelRoute>(ebpf, ROUTES_MAP)?;
            for (i, r) in t.routes.iter().enumerate() {
                routes.set(base(bank, MAX_ROUTES) + i as u32, r, 0)?;
            }
        }
        {
            let mut dests = array::<KernelDestination>(ebpf, DESTINATIONS_MAP)?;
            for (i, d) in t.destinations.iter().enumerate() {
                dests.set(base(bank, MAX_DESTINATIONS) + i as u32, d, 0)?;
            }
        }
        // Listener ids (and so allow-list keys) carry the bank, so the two banks' allow
        // lists live side by side in one trie.
        let id_of = |i: u32| base(bank, MAX_LISTENERS) + i;
        {
            let mut ls = array::<KernelListener>(ebpf, LISTENERS_MAP)?;
            for (i, l) in t.listeners.iter().enumerate() {
                let mut l = *l;
                l.id = id_of(l.id);
                ls.set(base(bank, MAX_LISTENERS) + i as u32, l, 0)?;
            }
        }
        {
            let map = ebpf
                .map_mut(ALLOW_MAP)
                .ok_or_else(|| XdpError::MissingItem(format!("map {ALLOW_MAP}")))?;
            let mut trie: LpmTrie<&mut MapData, AllowKey, u8> = LpmTrie::try_from(map)?;
            let range = base(bank, MAX_LISTENERS)..base(bank + 1, MAX_LISTENERS);
            let stale: Vec<Key<AllowKey>> = trie
                .keys()
                .filter_map(Result::ok)
                .filter(|k| range.contains(&u32::from_be_bytes(k.data().listener)))
                .collect();
            for k in stale {
                trie.remove(&k)?;
            }
            for e in &t.allow {
                let mut key = e.key;
                key.listener = id_of(u32::from_be_bytes(key.listener)).to_be_bytes();
                trie.insert(&Key::new(e.prefix_len, key), 1, 0)?;
            }
        }
        cfg.route_count[bank as usize] = t.routes.len() as u32;
        cfg.listener_count[bank as usize] = t.listeners.len() as u32;
        let mut conf = array::<XdpConfig>(ebpf, CONFIG_MAP)?;
        // The counts of the new bank first (nothing reads it yet), then the flip.
        conf.set(0, cfg, 0)?;
        cfg.bank = bank;
        conf.set(0, cfg, 0)?;
        tracing::info!(
            bank,
            routes = t.routes.len(),
            destinations = t.destinations.len(),
            "kernel tables installed"
        );
        Ok(bank)
    }
}
