//! Shared by the privileged XDP tests: load the embedded program, or skip loudly (not
//! root, or a build without the XDP object) / fail under `HEPFWD_REQUIRE_PRIVILEGED=1`.

use hep_user::xdp::{LoadOptions, XdpError, XdpProgram};
use hepfwd_harness::privileged;

/// Loads the program with `opts`, or returns `None` after the skip rules said so.
pub fn load_or_skip(test: &str, opts: &LoadOptions) -> Option<XdpProgram> {
    if !privileged::available(test) {
        return None;
    }
    match XdpProgram::load(opts) {
        Ok(p) => Some(p),
        Err(XdpError::NotBuilt) => {
            privileged::skip(
                test,
                "hepfwd was built with AYA_BUILD_SKIP=1 (no XDP program)",
            );
            None
        }
        Err(e) => panic!("{test}: loading the XDP program failed: {e}"),
    }
}
