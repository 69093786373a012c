//! Compiles a configuration [`Plan`] into the kernel's route tables
//! ([`hep_common::abi`]), and says for every route where it runs and why.
//!
//! One pure function ([`compile`]) with one rule: the kernel does only what it does
//! exactly as the userspace engine would; everything else becomes a pass (the action runs
//! in userspace) or an opaque route (userspace decides whether it matches). So the kernel
//! and userspace together always implement the whole configuration.
//!
//! | the route has… | becomes |
//! | --- | --- |
//! | a `correlation` key, a `node_name` longer than [`MAX_NODE_NAME`] bytes, or more values in a key than the kernel holds ([`MAX_MATCH_VALUES`]) | opaque: every packet reaching it goes to userspace |
//! | `continue`, `dedup`, a `rewrite` that deletes, sets more than [`MAX_KERNEL_EDITS`] chunks or a value longer than [`MAX_EDIT_VALUE`] bytes, mode `failover`, more targets than [`MAX_TARGETS`], a target that is TCP, HEPv2, has a `set_auth_key` longer than [`MAX_EDIT_VALUE`] bytes, or whose source address is unknown; a mirror to a destination with a `set_auth_key` | pass: the kernel matches it, userspace acts |
//! | mode `all` with several targets | mirror when the kernel mirrors, else pass |
//! | `action = "drop"` | drop in the kernel (after sampling) |
//! | one target, `hash` or `round-robin` over UDP HEPv3 targets | steer in the kernel; its `set` rewrites and the target's `set_auth_key` are written in place ([`hep_common::inplace`]) when the packet carries each chunk once with a value of the new length, else the packet goes to userspace |
//!
//! Listeners: a UDP listener's auth key longer than [`MAX_AUTH_KEY`] makes the kernel pass
//! every packet of that listener (userspace checks it); allow lists go to the LPM trie.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hep_common::abi::{
    AUTH_IN_USERSPACE, AllowKey, KernelDestination, KernelEdit, KernelListener, KernelPrefix,
    KernelRoute, MAX_AUTH_KEY, MAX_DESTINATIONS, MAX_EDIT_VALUE, MAX_KERNEL_EDITS, MAX_LISTENERS,
    MAX_MATCH_VALUES, MAX_NODE_NAME, MAX_ROUTES, MAX_SLOTS, MAX_TARGETS, RouteAction, RouteKind,
    SteerMode, addr16, map_v4, match_flags,
};
use hep_common::chunk::{self, ChunkId};
use ipnet::IpNet;

use crate::config::plan::{
    Action, DestinationPlan, Edit, ForwardMode, Matcher, Plan, RoutePlan, Transport,
};

/// Where a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// Matched and acted on in the kernel.
    Kernel,
    /// Matched in the kernel; its action runs in userspace.
    UserspaceAction,
    /// Only userspace can tell whether it matches: packets reaching it go to userspace.
    Userspace,
}

/// A route's placement, for `hepfwd check-config --plan` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Route name.
    pub route: String,
    /// Where it runs.
    pub runs: Runs,
    /// Why, in words.
    pub why: String,
}

/// One allow-list entry of the LPM trie: its key and prefix length in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowEntry {
    /// The key (listener id + address).
    pub key: AllowKey,
    /// 32 (listener id) + the address prefix over 128 bits.
    pub prefix_len: u32,
}

/// The kernel tables of one configuration (empty: the kernel passes everything).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelTables {
    /// Routes in order, `[default]` last.
    pub routes: Vec<KernelRoute>,
    /// Destinations the kernel can steer to (index = what routes name).
    pub destinations: Vec<KernelDestination>,
    /// Destination names, same order (for counters and logs).
    pub destination_names: Vec<String>,
    /// UDP listeners.
    pub listeners: Vec<KernelListener>,
    /// Allow-list entries.
    pub allow: Vec<AllowEntry>,
    /// Where every route runs, in order.
    pub placements: Vec<Placement>,
}

/// Counter slots by name, stable across reloads (a route or destination that keeps its
/// name keeps its slot, so kernel counters keep counting).
#[derive(Debug, Clone, Default)]
pub struct Slots {
    routes: HashMap<String, u32>,
    destinations: HashMap<String, u32>,
}

impl Slots {
    fn slot(map: &mut HashMap<String, u32>, name: &str) -> Option<u32> {
        if let Some(s) = map.get(name) {
            return Some(*s);
        }
        let used: Vec<u32> = map.values().copied().collect();
        let free = (0..MAX_SLOTS as u32).find(|s| !used.contains(s))?;
        map.insert(name.to_string(), free);
        Some(free)
    }

    /// The slot of a route.
    pub fn route(&mut self, name: &str) -> Option<u32> {
        Self::slot(&mut self.routes, name)
    }

    /// The slot of a destination.
    pub fn destination(&mut self, name: &str) -> Option<u32> {
        Self::slot(&mut self.destinations, name)
    }

    /// Route slots by name.
    pub fn routes(&self) -> impl Iterator<Item = (&str, u32)> {
        self.routes.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Destination slots by name.
    pub fn destinations(&self) -> impl Iterator<Item = (&str, u32)> {
        self.destinations.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// What the compiler needs from the host: the node's source address toward a destination.
pub trait NetEnv {
    /// The local address the kernel would use to reach `dest`, `None` if unroutable.
    fn source_for(&self, dest: SocketAddr) -> Option<IpAddr>;
}

/// The routing table of the current network namespace, asked through a UDP `connect`.
pub struct HostNet;

impl NetEnv for HostNet {
    fn source_for(&self, dest: SocketAddr) -> Option<IpAddr> {
        let bind: SocketAddr = if dest.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .ok()?;
        let s = std::net::UdpSocket::bind(bind).ok()?;
        s.connect(dest).ok()?;
        Some(s.local_addr().ok()?.ip())
    }
}

fn prefix(n: &IpNet) -> KernelPrefix {
    let (addr, len) = match n {
        IpNet::V4(p) => (map_v4(p.network().octets()), 96 + p.prefix_len()),
        IpNet::V6(p) => (p.network().octets(), p.prefix_len()),
    };
    KernelPrefix {
        addr,
        len,
        _pad: [0; 3],
    }
}

/// Why a destination cannot be steered to by the kernel, if it cannot.
fn dest_blocker(d: &DestinationPlan) -> Option<String> {
    if d.transport == Transport::Tcp {
        return Some(format!("{} is TCP", d.name));
    }
    if !d.resolved() {
        return Some(format!("{}'s host name has not resolved", d.name));
    }
    if d.hep_version != 3 {
        return Some(format!("{} takes HEPv{}", d.name, d.hep_version));
    }
    if let Some(key) = &d.set_auth_key
        && key.len() > MAX_EDIT_VALUE
    {
        return Some(format!(
            "{} sets an auth key longer than {MAX_EDIT_VALUE} bytes",
            d.name
        ));
    }
    None
}

/// The destination's `set_auth_key` as the kernel writes it in place (none: `len` 0).
fn auth_edit(d: &DestinationPlan) -> KernelEdit {
    d.set_auth_key
        .as_deref()
        .and_then(|key| KernelEdit::set(ChunkId::generic(chunk::AUTH_KEY), key))
        .unwrap_or(KernelEdit::NONE)
}

/// The route's rewrite as in-place edits in `r`, or why the kernel cannot write it: for
/// each chunk the last edit decides (as in the rewrite); every decision must be a `set`
/// of 1 to [`MAX_EDIT_VALUE`] bytes, and at most [`MAX_KERNEL_EDITS`] chunks.
fn kernel_edits(rewrite: &[Edit], r: &mut KernelRoute) -> Result<(), String> {
    let mut decided: Vec<&Edit> = Vec::new();
    for e in rewrite.iter().rev() {
        if !decided.iter().any(|d| d.id == e.id) {
            decided.push(e);
        }
    }
    decided.reverse();
    if decided.len() > MAX_KERNEL_EDITS {
        return Err(format!("rewrite of more than {MAX_KERNEL_EDITS} chunks"));
    }
    for (k, e) in decided.iter().enumerate() {
        let Some(value) = &e.value else {
            return Err("rewrite deletes a chunk".into());
        };
        r.edits[k] = KernelEdit::set(e.id, value).ok_or_else(|| {
            format!(
                "rewrite sets a value of {} bytes (the kernel writes 1 to {MAX_EDIT_VALUE})",
                value.len()
            )
        })?;
    }
    r.n_edits = decided.len() as u8;
    Ok(())
}

/// The kernel's match of a route, or why it cannot evaluate it.
fn kernel_match(m: &Matcher, r: &mut KernelRoute) -> Result<(), String> {
    if m.correlation.is_some() {
        return Err("match on correlation".into());
    }
    let too_many = |n: usize, key: &str| {
        if n > MAX_MATCH_VALUES {
            Err(format!("more than {MAX_MATCH_VALUES} values in {key}"))
        } else {
            Ok(())
        }
    };
    if let Some(names) = &m.node_name {
        too_many(names.len(), "node_name")?;
        if names.iter().any(|n| n.len() > MAX_NODE_NAME) {
            return Err(format!("a node_name longer than {MAX_NODE_NAME} bytes"));
        }
        r.flags |= match_flags::NODE_NAME;
        for (i, n) in names.iter().enumerate() {
            r.node_names[i][..n.len()].copy_from_slice(n);
            r.node_name_lens[i] = n.len() as u8;
        }
        r.n_node_names = names.len() as u8;
    }
    if let Some(p) = &m.proto {
        r.flags |= match_flags::PROTO;
        for t in p {
            r.proto[(*t / 64) as usize] |= 1 << (t % 64);
        }
    }
    if let Some(c) = &m.capture_id {
        too_many(c.len(), "capture_id")?;
        r.flags |= match_flags::CAPTURE_ID;
        for (i, range) in c.iter().enumerate() {
            r.capture[i] = [*range.start(), *range.end()];
        }
        r.n_capture = c.len() as u8;
    }
    if let Some(p) = &m.inner_port {
        too_many(p.len(), "inner_port")?;
        r.flags |= match_flags::INNER_PORT;
        for (i, range) in p.iter().enumerate() {
            r.ports[i] = [*range.start(), *range.end()];
        }
        r.n_ports = p.len() as u8;
    }
    if let Some(mask) = m.sip_method {
        r.flags |= match_flags::SIP_METHOD;
        r.sip_methods = mask;
    }
    if let Some(s) = &m.sip_status {
        too_many(s.len(), "sip_status")?;
        r.flags |= match_flags::SIP_STATUS;
        for (i, range) in s.iter().enumerate() {
            r.status[i] = [*range.start(), *range.end()];
        }
        r.n_status = s.len() as u8;
    }
    for (list, flag, key) in [
        (&m.source, match_flags::SOURCE, "source"),
        (&m.inner_src, match_flags::INNER_SRC, "inner_src"),
        (&m.inner_dst, match_flags::INNER_DST, "inner_dst"),
    ] {
        let Some(nets) = list else { continue };
        too_many(nets.len(), key)?;
        r.flags |= flag;
        let (slots, n) = match flag {
            match_flags::SOURCE => (&mut r.source, &mut r.n_source),
            match_flags::INNER_SRC => (&mut r.inner_src, &mut r.n_inner_src),
            _ => (&mut r.inner_dst, &mut r.n_inner_dst),
        };
        for (i, net) in nets.iter().enumerate() {
            slots[i] = prefix(net);
        }
        *n = nets.len() as u8;
    }
    Ok(())
}

/// Compiles `plan` (see the module docs). `kernel_mirrors`: whether the loaded program can
/// mirror (TC clone path). Routes past [`MAX_ROUTES`] are cut: the last kept one becomes
/// opaque so nothing after it is decided in the kernel.
pub fn compile(
    plan: &Plan,
    slots: &mut Slots,
    net: &dyn NetEnv,
    kernel_mirrors: bool,
) -> KernelTables {
    let mut destinations = Vec::new();
    let mut destination_names = Vec::new();
    // Plan destination index → kernel destination index, or why not.
    let mut dmap: Vec<Result<u32, String>> = Vec::new();
    for d in &plan.destinations {
        let res = match dest_blocker(d) {
            Some(why) => Err(why),
            None if destinations.len() >= MAX_DESTINATIONS => {
                Err(format!("more than {MAX_DESTINATIONS} kernel destinations"))
            }
            None => match (net.source_for(d.address), slots.destination(&d.name)) {
                (None, _) => Err(format!("no route to {} ({})", d.name, d.address)),
                (_, None) => Err(format!("more than {MAX_SLOTS} destination slots")),
                (Some(src), Some(slot)) if src.is_ipv4() == d.address.is_ipv4() => {
                    let (addr, src_addr) = (addr16(d.address.ip()), addr16(src));
                    let family = if d.address.is_ipv4() { 4 } else { 6 };
                    destinations.push(KernelDestination {
                        addr,
                        src_addr,
                        port: d.address.port(),
                        family,
                        _pad: 0,
                        slot,
                        auth: auth_edit(d),
                        address_sum: KernelDestination::address_sum(family, &src_addr, &addr),
                    });
                    destination_names.push(d.name.clone());
                    Ok((destinations.len() - 1) as u32)
                }
                (Some(src), _) => Err(format!("source {src} and {} differ in family", d.address)),
            },
        };
        dmap.push(res);
    }
    let mut routes = Vec::new();
    let mut placements = Vec::new();
    let all: Vec<&RoutePlan> = plan.routes.iter().chain(plan.default.iter()).collect();
    for (i, rp) in all.iter().enumerate() {
        let mut r = KernelRoute::EMPTY;
        r.slot = slots.route(&rp.name).unwrap_or(MAX_SLOTS as u32 - 1);
        r.sample_ppm = rp.sample_ppm.unwrap_or(1_000_000);
        let last = i + 1 == MAX_ROUTES && all.len() > MAX_ROUTES;
        let (runs, why) = if last {
            (
                Runs::Userspace,
                format!(
                    "the kernel holds {MAX_ROUTES} routes; this and later ones are decided in userspace"
                ),
            )
        } else if let Err(why) = kernel_match(&rp.matcher, &mut r) {
            (Runs::Userspace, why)
        } else {
            r.kind = RouteKind::Evaluable as u8;
            action(rp, &dmap, &plan.destinations, &mut r, kernel_mirrors)
        };
        if runs == Runs::Userspace {
            r = KernelRoute {
                kind: RouteKind::Opaque as u8,
                slot: r.slot,
                ..KernelRoute::EMPTY
            };
        }
        routes.push(r);
        placements.push(Placement {
            route: rp.name.clone(),
            runs,
            why,
        });
        if last {
            break;
        }
    }
    let mut listeners = Vec::new();
    let mut allow = Vec::new();
    for (i, l) in plan
        .listeners
        .iter()
        .filter(|l| l.udp.is_some())
        .enumerate()
        .take(MAX_LISTENERS)
    {
        let Some(udp) = l.udp else { continue };
        let id = i as u32;
        let wildcard = match udp.ip() {
            IpAddr::V4(a) if a.is_unspecified() => 4,
            IpAddr::V6(a) if a.is_unspecified() => 6,
            _ => 0,
        };
        let mut kl = KernelListener {
            port: udp.port(),
            auth_key_len: 0,
            has_allow: 0,
            id,
            auth_key: [0; MAX_AUTH_KEY],
            addr: addr16(udp.ip()),
            wildcard,
            _pad: [0; 3],
        };
        if let Some(k) = &l.auth_key {
            if k.len() <= MAX_AUTH_KEY && k.len() < AUTH_IN_USERSPACE as usize {
                kl.auth_key[..k.len()].copy_from_slice(k);
                kl.auth_key_len = k.len() as u8;
            } else {
                kl.auth_key_len = AUTH_IN_USERSPACE;
            }
        }
        if let Some(nets) = &l.allow {
            kl.has_allow = 1;
            for n in nets {
                let p = prefix(n);
                allow.push(AllowEntry {
                    key: AllowKey {
                        listener: id.to_be_bytes(),
                        addr: p.addr,
                    },
                    prefix_len: 32 + u32::from(p.len),
                });
            }
        }
        listeners.push(kl);
    }
    KernelTables {
        routes,
        destinations,
        destination_names,
        listeners,
        allow,
        placements,
    }
}

/// The kernel action of a matchable route, and the placement it gets.
fn action(
    rp: &RoutePlan,
    dmap: &[Result<u32, String>],
    dests: &[DestinationPlan],
    r: &mut KernelRoute,
    kernel_mirrors: bool,
) -> (Runs, String) {
    let pass = |why: String| (Runs::UserspaceAction, why);
    if rp.continue_ {
        return pass("continue = true".into());
    }
    if rp.dedup.is_some() {
        return pass("dedup".into());
    }
    let (targets, mode) = match &rp.action {
        Action::Drop => {
            r.action = RouteAction::Drop as u8;
            return (Runs::Kernel, "drop".into());
        }
        Action::Forward { targets, mode } => (targets, *mode),
    };
    if let Err(why) = kernel_edits(&rp.rewrite, r) {
        return pass(why);
    }
    if mode == ForwardMode::Failover {
        return pass("failover needs destination health".into());
    }
    if targets.len() > MAX_TARGETS {
        return pass(format!("more than {MAX_TARGETS} destinations"));
    }
    let mut names = Vec::new();
    for (k, t) in targets.iter().enumerate() {
        match dmap.get(*t) {
            Some(Ok(kd)) => {
                r.targets[k] = *kd;
                r.seeds[k] = dests.get(*t).map_or(0, |d| d.hash_seed);
                names.push(dests.get(*t).map_or("?", |d| d.name.as_str()));
            }
            Some(Err(why)) => return pass(why.clone()),
            None => return pass("unknown destination".into()),
        }
    }
    r.n_targets = targets.len() as u8;
    let list = names.join(", ");
    // Rewritten in place: said in the placement.
    let auth_keyed = targets
        .iter()
        .any(|t| dests.get(*t).is_some_and(|d| d.set_auth_key.is_some()));
    let edited = r.n_edits > 0 || auth_keyed;
    let in_place = if edited { ", rewritten in place" } else { "" };
    match (mode, targets.len()) {
        // One auth key per copy: the copies would differ in their payload.
        (ForwardMode::All, n) if n > 1 && auth_keyed => {
            pass("mirror to a destination with an auth key".into())
        }
        (ForwardMode::All, n) if n > 1 => {
            if kernel_mirrors {
                r.action = RouteAction::Mirror as u8;
                (Runs::Kernel, format!("mirror to {list}{in_place}"))
            } else {
                pass("mirror (the kernel mirror path is not loaded)".into())
            }
        }
        (_, 1) => {
            r.action = RouteAction::Steer as u8;
            r.mode = SteerMode::Single as u8;
            (Runs::Kernel, format!("steer to {list}{in_place}"))
        }
        (ForwardMode::Hash, _) => {
            r.action = RouteAction::Steer as u8;
            r.mode = SteerMode::Hash as u8;
            (
                Runs::Kernel,
                format!("steer call-sticky over {list}{in_place}"),
            )
        }
        (_, _) => {
            r.action = RouteAction::Steer as u8;
            r.mode = SteerMode::RoundRobin as u8;
            (
                Runs::Kernel,
                format!("steer round-robin over {list}{in_place}"),
            )
        }
    }
}

/// The placement lines of `hepfwd check-config --plan`.
pub fn describe(t: &KernelTables) -> String {
    let mut s = String::new();
    for p in &t.placements {
        let runs = match p.runs {
            Runs::Kernel => "kernel",
            Runs::UserspaceAction => "kernel match, userspace action",
            Runs::Userspace => "userspace",
        };
        s.push_str(&format!("  route {:?}: {runs}: {}\n", p.route, p.why));
    }
    s
}

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;
