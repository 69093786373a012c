//! `hep_steer_min` (hep-ebpf `bench_min.rs`), the minimal steer of `cargo xtask bench
//! --all`, for the privileged tests that load it, and the IPv4/UDP frames they feed it.
//! Shared by `xdp_steer_min.rs`, `contenders_bench.rs` and `xdp_bench.rs` (each uses a
//! part).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::Ebpf;
use aya::maps::{Array, PerCpuArray};
use aya::programs::{ProgramInfo, Xdp, XdpMode, xdp::XdpLinkId};
use hep_common::abi::{BENCH_COUNTERS_MAP, BENCH_DEST_MAP};

/// The program's name in the object.
pub const PROGRAM: &str = "hep_steer_min";

/// The loaded minimal steer (with the rest of the object's maps, unused).
pub struct SteerMin {
    ebpf: Ebpf,
}

impl SteerMin {
    /// Loads the program from hepfwd's embedded object; `None` when the build has no XDP
    /// object (AYA_BUILD_SKIP=1). Panics when loading fails.
    pub fn load() -> Option<SteerMin> {
        let object = hep_user::xdp::loader::OBJECT;
        if object.is_empty() {
            return None;
        }
        let mut ebpf = Ebpf::load(object).expect("load the XDP object");
        let p: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .expect("hep_steer_min in the object")
            .try_into()
            .expect("an XDP program");
        p.load().expect("verify hep_steer_min");
        Some(SteerMin { ebpf })
    }

    /// Steers datagrams to `listen_port` to `collector`, from `source` (the node's address
    /// toward it) and the listener port.
    pub fn set_dest(&mut self, collector: SocketAddrV4, source: Ipv4Addr, listen_port: u16) {
        let mut v = [0u8; 12];
        v[0..4].copy_from_slice(&collector.ip().octets());
        v[4..8].copy_from_slice(&source.octets());
        v[8..10].copy_from_slice(&collector.port().to_be_bytes());
        v[10..12].copy_from_slice(&listen_port.to_be_bytes());
        let mut m: Array<_, [u8; 12]> =
            Array::try_from(self.ebpf.map_mut(BENCH_DEST_MAP).expect("MIN_DEST")).expect("array");
        m.set(0, v, 0).expect("set MIN_DEST");
    }

    /// The program.
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .expect("hep_steer_min")
            .try_into()
            .expect("an XDP program")
    }

    /// Attaches natively to `iface` (in the calling thread's namespace).
    pub fn attach(&mut self, iface: &str) -> XdpLinkId {
        self.program()
            .attach(iface, XdpMode::Driver)
            .expect("attach hep_steer_min")
    }

    /// The kernel's information on the program (run time and count with bpf_stats).
    pub fn info(&mut self) -> ProgramInfo {
        self.program().info().expect("program info")
    }

    /// The per-CPU counters summed: [steered, passed, fallback].
    pub fn counters(&self) -> [u64; 3] {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(BENCH_COUNTERS_MAP).expect("MIN_COUNTERS"))
                .expect("per-CPU array");
        [0u32, 1, 2].map(|i| m.get(&i, 0).expect("counter").iter().sum())
    }
}

/// The 20-byte IPv4 header checksum (RFC 1071, computed in full).
pub fn ipv4_checksum(header: &[u8]) -> [u8; 2] {
    let sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    (!(((sum & 0xffff) + (sum >> 16)) as u16)).to_be_bytes()
}

/// An Ethernet/IPv4/UDP frame (IP id 0, DF, no options; UDP checksum `udp_check`).
pub fn ipv4_udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    payload: &[u8],
    udp_check: [u8; 2],
) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&udp_check);
    udp.extend_from_slice(payload);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, 17, 0, 0];
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum);
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// The `xdp_md` a test run starts from: a frame of `len` bytes received on `ifindex`.
pub fn xdp_ctx(len: usize, ifindex: u32) -> Vec<u8> {
    let mut ctx = Vec::new();
    for v in [0, len as u32, 0, ifindex, 0, 0] {
        ctx.extend_from_slice(&v.to_ne_bytes());
    }
    ctx
}
