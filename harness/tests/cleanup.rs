//! The harness's promise: namespaces (and the links in them) are gone after the guard is
//! dropped, also when the test panicked while holding them.
//!
//! Needs root; skips loudly otherwise, fails under `HEPFWD_REQUIRE_PRIVILEGED=1`.

use std::path::Path;

use hepfwd_harness::lab::Lab;
use hepfwd_harness::netns::{Netns, VethPair, unique_base};
use hepfwd_harness::privileged;
use hepfwd_harness::topology::{Ns, Topology};

/// Whether namespace `name` exists.
fn exists(name: &str) -> bool {
    Path::new(&format!("/var/run/netns/{name}")).exists()
}

#[test]
fn namespaces_are_deleted_when_a_test_panics() {
    if !privileged::available("namespaces_are_deleted_when_a_test_panics") {
        return;
    }
    let mut names = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let base = unique_base("cleanup");
        let a = Netns::create(format!("{base}-a"));
        let b = Netns::create(format!("{base}-b"));
        a.add_veth(&VethPair::new("cl0", "cl1").peer_in(&b));
        let lab = Lab::with_ends("cleanup");
        let topology = Topology::new("cleanup");
        names.extend([a.name(), b.name()].map(str::to_string));
        names
            .extend([lab.namespace(), lab.sender(), lab.collector()].map(|n| n.name().to_string()));
        names.extend([Ns::Snd, Ns::Fwd, Ns::Col].map(|ns| topology.name(ns).to_string()));
        assert!(names.iter().all(|name| exists(name)), "created: {names:?}");
        panic!("the test fails while holding them");
    }));
    assert!(outcome.is_err(), "the closure panics");
    assert_eq!(names.len(), 8);
    let left: Vec<&String> = names.iter().filter(|name| exists(name)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
