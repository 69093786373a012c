//! The pinned layout of every type that crosses the kernel boundary: size, alignment and
//! field offsets, checked at compile time. The kernel program and the loader are built by
//! two compilers (Debian's rustc for `bpfel-unknown-none`, rustup's for the host) from this
//! one definition; these assertions make any change to it a deliberate one: edit the
//! numbers here in the same commit, and both sides are rebuilt together.
//!
//! Hidden padding cannot exist: the types derive [`bytemuck::Pod`], which refuses to
//! compile a struct whose fields do not cover it exactly.

use core::mem::{align_of, offset_of, size_of};

use super::{
    AllowKey, KernelDestination, KernelEdit, KernelListener, KernelPrefix, KernelRoute, MirrorMeta,
    NextHopEntry, XdpConfig,
};

/// Asserts at compile time: `size_of`, `align_of`, and `offset_of` each listed field.
macro_rules! pin {
    ($t:ty, size = $size:expr, align = $align:expr, { $($field:ident = $off:expr),* $(,)? }) => {
        const _: () = {
            assert!(size_of::<$t>() == $size, concat!("size of ", stringify!($t), " changed"));
            assert!(align_of::<$t>() == $align, concat!("alignment of ", stringify!($t), " changed"));
            $(assert!(
                offset_of!($t, $field) == $off,
                concat!("offset of ", stringify!($t), "::", stringify!($field), " changed")
            );)*
        };
    };
}

pin!(XdpConfig, size = 20, align = 4, {
    bank = 0,
    route_count = 4,
    listener_count = 12,
});

pin!(KernelPrefix, size = 20, align = 1, { addr = 0, len = 16, _pad = 17 });

pin!(KernelRoute, size = 760, align = 8, {
    kind = 0,
    action = 1,
    mode = 2,
    n_targets = 3,
    flags = 4,
    slot = 8,
    sample_ppm = 12,
    proto = 16,
    capture = 48,
    ports = 80,
    status = 96,
    n_capture = 112,
    n_ports = 113,
    n_source = 114,
    n_inner_src = 115,
    n_inner_dst = 116,
    n_node_names = 117,
    n_status = 118,
    _pad = 119,
    sip_methods = 120,
    source = 124,
    inner_src = 204,
    inner_dst = 284,
    node_names = 364,
    node_name_lens = 492,
    targets = 496,
    seeds = 528,
    edits = 592,
    n_edits = 752,
    _pad_end = 753,
});

pin!(KernelEdit, size = 40, align = 2, { vendor = 0, kind = 2, len = 4, _pad = 5, value = 8 });

pin!(MirrorMeta, size = 24, align = 4, {
    magic = 0,
    bank = 4,
    route = 8,
    edit_offsets = 12,
    edits = 20,
    _pad = 21,
});

// `src_addr` right after `addr`: the kernel checksums both (32 bytes) in one helper call.
pin!(KernelDestination, size = 84, align = 4, {
    addr = 0,
    src_addr = 16,
    port = 32,
    family = 34,
    _pad = 35,
    slot = 36,
    auth = 40,
    address_sum = 80,
});

pin!(KernelListener, size = 60, align = 4, {
    port = 0,
    auth_key_len = 2,
    has_allow = 3,
    id = 4,
    auth_key = 8,
    addr = 40,
    wildcard = 56,
    _pad = 57,
});

pin!(AllowKey, size = 20, align = 1, { listener = 0, addr = 4 });

pin!(NextHopEntry, size = 72, align = 8, {
    generation = 0,
    addr = 8,
    src_addr = 24,
    ifindex = 40,
    in_ifindex = 44,
    max_tot_len_ok = 48,
    sport = 50,
    dport = 52,
    tos = 54,
    valid = 55,
    dmac = 56,
    smac = 62,
    _pad = 68,
});
