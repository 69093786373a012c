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

    /// Not root, and no CAP_BPF (or CAP_SYS_ADMIN).
    #[error(
        "loading the XDP program needs root, or CAP_BPF + CAP_NET_ADMIN (+ CAP_PERFMON): \
         {detail}"
    )]
    NotPrivileged {
        /// What was missing, or the kernel's answer.
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

/// Whether an error is EPERM/EACCES somewhere in its chain.
pub(crate) fn is_permission(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let io = io_cause(e)?;
    matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)).then(|| io.to_string())
}

impl From<aya::EbpfError> for XdpError {
    fn from(e: aya::EbpfError) -> Self {
        if let Some(detail) = is_permission(&e) {
            return XdpError::NotPrivileged { detail };
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
                // The verifier also answers EACCES; only without a verifier log is it a
                // missing privilege.
                let log = verifier_log.to_string();
                if log.trim().is_empty()
                    && matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
                {
                    return XdpError::NotPrivileged {
                        detail: io_error.to_string(),
                    };
                }
                XdpError::Verifier {
                    source: io_error,
                    verifier_log: log,
                }
            }
            e => match is_permission(&e) {
                Some(detail) => XdpError::NotPrivileged { detail },
                None => XdpError::Program(e),
            },
        }
    }
}

impl From<aya::maps::MapError> for XdpError {
    fn from(e: aya::maps::MapError) -> Self {
        XdpError::Map(e)
    }
}
