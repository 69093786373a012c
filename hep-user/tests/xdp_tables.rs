//! Compiled kernel tables installed into the loaded program's maps: the inactive bank is
//! written, the bank word flips, both banks and the allow-list trie read back exactly.
//!
//! Needs root (CAP_BPF); skips loudly otherwise, fails under `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, MapData};
use hep_common::abi::{
    ALLOW_MAP, AllowKey, KernelListener, KernelRoute, LISTENERS_MAP, MAX_LISTENERS, MAX_ROUTES,
    ROUTES_MAP, RouteAction, map_v4,
};
use hep_user::xdp::LoadOptions;
use hep_user::xdp::compile::{NetEnv, Slots, compile};

struct Net;
impl NetEnv for Net {
    fn source_for(&self, _: SocketAddr) -> Option<IpAddr> {
        Some(Ipv4Addr::new(198, 18, 0, 1).into())
    }
}

fn config(drop_first: bool) -> String {
    let drop = if drop_first {
        "[[route]]\nname = \"logs\"\nmatch = { proto = [100] }\naction = \"drop\"\n"
    } else {
        ""
    };
    format!(
        "[[listener]]\nname = \"l\"\nudp = \"127.0.0.1:9060\"\nauth_key = \"k\"\nallow = [\"198.18.0.0/15\", \"::1/128\"]\n\
         [[destination]]\nname = \"a\"\naddress = \"198.18.2.2:9061\"\n{drop}[default]\nforward = [\"a\"]\n"
    )
}

#[test]
fn tables_install_into_the_inactive_bank_and_flip() {
    let test = "tables_install_into_the_inactive_bank_and_flip";
    let Some(mut xdp) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let mut slots = Slots::default();
    let plan1 = hep_user::config::compile(Path::new("a.toml"), &config(true)).expect("config");
    let t1 = compile(&plan1, &mut slots, &Net, false);
    assert_eq!(xdp.config().unwrap().bank, 0);
    assert_eq!(xdp.install(&t1).unwrap(), 1);
    let c = xdp.config().unwrap();
    assert_eq!(
        (c.bank, c.route_count, c.listener_count),
        (1, [0, 2], [0, 1])
    );

    let plan2 = hep_user::config::compile(Path::new("b.toml"), &config(false)).expect("config");
    let t2 = compile(&plan2, &mut slots, &Net, false);
    assert_eq!(xdp.install(&t2).unwrap(), 0);
    let c = xdp.config().unwrap();
    assert_eq!(
        (c.bank, c.route_count, c.listener_count),
        (0, [1, 2], [1, 1])
    );

    let ebpf = xdp.ebpf_for_tests();
    let routes: Array<&MapData, KernelRoute> =
        Array::try_from(ebpf.map(ROUTES_MAP).unwrap()).unwrap();
    // Bank 1 still holds the first configuration; bank 0 the second.
    assert_eq!(routes.get(&(MAX_ROUTES as u32), 0).unwrap(), t1.routes[0]);
    assert_eq!(
        routes.get(&(MAX_ROUTES as u32), 0).unwrap().action,
        RouteAction::Drop as u8
    );
    assert_eq!(
        routes.get(&(MAX_ROUTES as u32 + 1), 0).unwrap(),
        t1.routes[1]
    );
    assert_eq!(routes.get(&0, 0).unwrap(), t2.routes[0]);
    assert_eq!(routes.get(&0, 0).unwrap().action, RouteAction::Steer as u8);
    // Route slots stay with the names: "default" kept its slot across configurations.
    assert_eq!(t1.routes[1].slot, t2.routes[0].slot);
    let ls: Array<&MapData, KernelListener> =
        Array::try_from(ebpf.map(LISTENERS_MAP).unwrap()).unwrap();
    let l0 = ls.get(&0, 0).unwrap();
    assert_eq!(
        (l0.id, l0.port, l0.auth_key_len, &l0.auth_key[..1]),
        (0, 9060, 1, &b"k"[..])
    );
    assert_eq!(
        ls.get(&(MAX_LISTENERS as u32), 0).unwrap().id,
        MAX_LISTENERS as u32
    );
    // Both banks' allow lists, under their own listener ids.
    let trie: LpmTrie<&MapData, AllowKey, u8> =
        LpmTrie::try_from(ebpf.map(ALLOW_MAP).unwrap()).unwrap();
    let mut ids: Vec<(u32, u32)> = trie
        .keys()
        .map(|k| {
            let k = k.unwrap();
            (u32::from_be_bytes(k.data().listener), k.prefix_len())
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [(0, 32 + 111), (0, 32 + 128), (8, 32 + 111), (8, 32 + 128)]
    );
    let probe = aya::maps::lpm_trie::Key::new(
        32 + 128,
        AllowKey {
            listener: 0u32.to_be_bytes(),
            addr: map_v4([198, 19, 1, 1]),
        },
    );
    assert_eq!(trie.get(&probe, 0).unwrap(), 1);
    let outside = aya::maps::lpm_trie::Key::new(
        32 + 128,
        AllowKey {
            listener: 0u32.to_be_bytes(),
            addr: map_v4([10, 0, 0, 1]),
        },
    );
    assert!(trie.get(&outside, 0).is_err());
}

/// The object declares exactly the maps `hep_common::abi::MAP_NAMES` names (plus aya-log's,
/// the data sections and `BENCH_MAP_NAMES`, the benchmark's minimal steer's), and each table map's value has the size the host compiler gives
/// the shared type: the kernel (Debian's rustc, bpfel) and the loader (rustup's, x86_64)
/// agree on the layout.
#[test]
fn the_object_declares_the_abi_maps_with_the_abi_layouts() {
    use hep_common::abi::{
        AllowKey, CONFIG_MAP, DESTINATIONS_MAP, KernelDestination, MAP_NAMES, XdpConfig,
    };
    let test = "the_object_declares_the_abi_maps_with_the_abi_layouts";
    let Some(prog) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let ebpf = prog.ebpf_for_tests();
    let mut got: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| !name.starts_with('.') && *name != "AYA_LOGS")
        .collect();
    got.sort_unstable();
    let mut want = MAP_NAMES.to_vec();
    // The benchmark's minimal steer lives in the same object.
    want.extend(hep_common::abi::BENCH_MAP_NAMES);
    want.sort_unstable();
    assert_eq!(got, want);
    let map = |name: &str| {
        ebpf.map(name)
            .unwrap_or_else(|| panic!("{name} is missing"))
    };
    Array::<&MapData, XdpConfig>::try_from(map(CONFIG_MAP)).expect("XdpConfig's size");
    Array::<&MapData, KernelRoute>::try_from(map(ROUTES_MAP)).expect("KernelRoute's size");
    Array::<&MapData, KernelDestination>::try_from(map(DESTINATIONS_MAP))
        .expect("KernelDestination's size");
    Array::<&MapData, KernelListener>::try_from(map(LISTENERS_MAP)).expect("KernelListener's size");
    LpmTrie::<&MapData, AllowKey, u8>::try_from(map(ALLOW_MAP)).expect("AllowKey's size");
    aya::maps::PerCpuArray::<&MapData, hep_common::abi::NextHopEntry>::try_from(map(
        hep_common::abi::NEXT_HOP_MAP,
    ))
    .expect("NextHopEntry's size");
    Array::<&MapData, u64>::try_from(map(hep_common::abi::NEXT_HOP_GENERATION_MAP))
        .expect("the generation's size");
}
