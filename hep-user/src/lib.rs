//! hepfwd userspace: the daemon and its tools.
