//! [`XdpError`]: typed errors of the XDP loader.

use std::io;

/// An error loading, attaching or reading the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The binary was built with `AYA_BUILD_SKIP=1`: it embeds no XDP program.
    #[error(
        "this hepfwd was built without the XDP program (AYA_BUILD_SKIP=1); rebuild it with \
         `cargo xtask build` to use XDP, or run without XDP"
    )]
    NotBuilt,

    /// The kernel refused a BPF load, attach or map operation (EPERM/EACCES), or the
    /// process is not root and lacks CAP_BPF (and CAP_SYS_ADMIN).
    #[error(
        "the XDP data path needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root); {missing}: \
         {detail}"
    )]
    NotPrivileged {
        /// Which of the three the effective set lacks ("missing CAP_NET_ADMIN"), from
        /// [`missing_capabilities`].
        missing: String,
        /// The kernel's answer, or what the check found.
        detail: String,
    },

    /// No interface of that name in this network namespace.
    #[error("interface {0:?} not found (in this network namespace)")]
    InterfaceNotFound(String),

    /// Another XDP program (not attached through a bpf_link) holds the interface.
    #[error(
        "interface {iface}: another XDP program is already attached (EBUSY); remove it \
         with `ip link set dev {iface} xdp off` if it is a leftover"
    )]
    InterfaceBusy {
        /// The interface.
        iface: String,
    },

    /// The driver cannot run XDP in the requested mode.
    #[error(
        "interface {iface}: XDP {mode} mode is not supported by its driver ({source}); try skb mode"
    )]
    ModeNotSupported {
        /// The interface.
        iface: String,
        /// The mode asked for.
        mode: &'static str,
        /// The kernel's error.
        source: io::Error,
    },

    /// Asked to detach from an interface the program is not attached to.
    #[error("the XDP program is not attached to {0:?}")]
    NotAttached(String),

    /// Already attached to this interface.
    #[error("the XDP program is already attached to {0:?}")]
    AlreadyAttached(String),

    /// The kernel verifier rejected the program.
    #[error("the kernel rejected hep_xdp ({source}); verifier log:\n{verifier_log}")]
    Verifier {
        /// The errno of `BPF_PROG_LOAD`.
        source: io::Error,
        /// The whole verifier trace.
        verifier_log: String,
    },

    /// The object lacks an expected program, map or global (a mismatched build).
    #[error("the embedded XDP object has no {0}; hep-ebpf and hep-user are out of step")]
    MissingItem(String),

    /// A configuration's tables do not fit the kernel's maps.
    #[error("the kernel tables do not fit: {0}")]
    TableTooLarge(String),

    /// Loading the object (maps, relocations, BTF).
    #[error("loading the XDP object: {0}")]
    Load(#[source] aya::EbpfError),

    /// Any other program error (attach, detach, query).
    #[error("XDP program: {0}")]
    Program(#[source] aya::programs::ProgramError),

    /// Reading a map.
    #[error("XDP map: {0}")]
    Map(#[source] aya::maps::MapError),

    /// Duplicating a map's file descriptor (for a handle of its own).
    #[error("duplicating the descriptor of XDP map {map}: {source}")]
    MapFd {
        /// The map.
        map: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// Starting the aya-log drain.
    #[error("XDP log drain: {0}")]
    Log(#[source] aya_log::Error),

    /// Registering the log ring with tokio.
    #[error("XDP log drain: {0}")]
    LogIo(#[source] io::Error),
}

/// The first `io::Error` in an error's source chain.
pub(crate) fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// A capability of the XDP data path: its name and its number (`linux/capability.h`).
const CAPABILITIES: [(&str, u32); 3] =
    [("CAP_BPF", 39), ("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38)];
/// CAP_SYS_ADMIN, which the kernel also accepts for CAP_BPF and CAP_PERFMON.
const CAP_SYS_ADMIN: u32 = 21;

/// The effective capability set of this process (`CapEff:` of `/proc/self/status`);
/// `None` when it cannot be read.
pub(crate) fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Which of CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON the effective set `effective` lacks
/// (CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as in the kernel).
pub(crate) fn missing_from(effective: u64) -> Vec<&'static str> {
    let has = |bit: u32| effective & (1u64 << bit) != 0;
    CAPABILITIES
        .iter()
        .filter(|(name, bit)| {
            let implied = *name != "CAP_NET_ADMIN" && has(CAP_SYS_ADMIN);
            !has(*bit) && !implied
        })
        .map(|(name, _)| *name)
        .collect()
}

/// The missing capabilities of this process as a phrase for an error: `missing
/// CAP_NET_ADMIN`, `missing CAP_BPF, CAP_PERFMON`, or what else is known.
pub(crate) fn missing_capabilities() -> String {
    match effective_capabilities() {
        None => "the effective capability set is unreadable".to_string(),
        Some(effective) => {
            let missing = missing_from(effective);
            if missing.is_empty() {
                format!("none of them is missing (CapEff {effective:#x})")
            } else {
                format!("missing {} (CapEff {effective:#x})", missing.join(", "))
            }
        }
    }
}

/// An [`XdpError::NotPrivileged`] with `detail`, naming what this process lacks.
pub(crate) fn not_privileged(detail: String) -> XdpError {
    XdpError::NotPrivileged {
        missing: missing_capabilities(),
        detail,
    }
}

/// Whether an error is EPERM/EACCES somewhere in its chain.
pub(crate) fn is_permission(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let io = io_cause(e)?;
    matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)).then(|| io.to_string())
}

impl From<aya::EbpfError> for XdpError {
    fn from(e: aya::EbpfError) -> Self {
        if let Some(detail) = is_permission(&e) {
            return not_privileged(detail);
        }
        XdpError::Load(e)
    }
}

impl From<aya::programs::ProgramError> for XdpError {
    fn from(e: aya::programs::ProgramError) -> Self {
        use aya::programs::ProgramError;
        match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                // The verifier also answers EACCES. Without a verifier log it is a missing
                // privilege; with one, it is too when a capability is missing: without
                // CAP_PERFMON the verifier forbids the pointer arithmetic the program
                // does ("prohibited for !root"), so the log's first line is the detail.
                let log = verifier_log.to_string();
                let denied = matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES));
                // Only CAP_BPF and CAP_PERFMON change what the verifier allows.
                let lacking = effective_capabilities().is_some_and(|e| {
                    missing_from(e)
                        .iter()
                        .any(|c| matches!(*c, "CAP_BPF" | "CAP_PERFMON"))
                });
                if denied && (log.trim().is_empty() || lacking) {
                    let first = log
                        .lines()
                        .find(|l| l.contains("!root"))
                        .or(log.lines().next());
                    let detail = match first {
                        Some(line) if !line.trim().is_empty() => {
                            format!("{io_error}; the verifier: {}", line.trim())
                        }
                        _ => io_error.to_string(),
                    };
                    return not_privileged(detail);
                }
                XdpError::Verifier {
                    source: io_error,
                    verifier_log: log,
                }
            }
            e => match is_permission(&e) {
                Some(detail) => not_privileged(detail),
                None => XdpError::Program(e),
            },
        }
    }
}

impl From<aya::maps::MapError> for XdpError {
    fn from(e: aya::maps::MapError) -> Self {
        if let Some(detail) = is_permission(&e) {
            return not_privileged(detail);
        }
        XdpError::Map(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_capability_is_named() {
        let bit = |b: u32| 1u64 << b;
        let all = bit(39) | bit(12) | bit(38);
        assert!(missing_from(all).is_empty());
        assert_eq!(missing_from(all & !bit(39)), ["CAP_BPF"]);
        assert_eq!(missing_from(all & !bit(12)), ["CAP_NET_ADMIN"]);
        assert_eq!(missing_from(all & !bit(38)), ["CAP_PERFMON"]);
        assert_eq!(missing_from(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        // CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON, not CAP_NET_ADMIN.
        assert_eq!(missing_from(bit(21)), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn the_message_names_what_is_missing() {
        let e = XdpError::NotPrivileged {
            missing: "missing CAP_PERFMON (CapEff 0x8000001000)".to_string(),
            detail: "Permission denied (os error 13)".to_string(),
        };
        let text = e.to_string();
        assert!(text.contains("missing CAP_PERFMON"), "{text}");
        assert!(text.contains("os error 13"), "{text}");
    }
}
