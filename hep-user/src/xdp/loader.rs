//! [`XdpProgram`]: load the embedded `hep_xdp` object, attach it, read it.

use std::ffi::CString;

use aya::maps::{MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode, xdp::XdpLink, xdp::XdpLinkId};
use aya::{Ebpf, EbpfLoader};
use hep_common::abi::{COUNTERS_MAP, DEFAULT_HEP_PORT, HEP_PORT_GLOBAL, XDP_PROGRAM};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::error::is_permission;
use super::{XdpCounters, XdpError};
pub use crate::config::plan::AttachMode;

/// The XDP object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hep-xdp"));

/// Whether this binary embeds the XDP program (false when built with `AYA_BUILD_SKIP=1`).
pub fn built_with_xdp() -> bool {
    !OBJECT.is_empty()
}

/// The aya attach flags of an [`AttachMode`].
const fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    }
}

/// Load-time settings of the program.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The HEP UDP destination port the program classifies (default 9060).
    pub hep_port: u16,
    /// The most verbose kernel log level kept; the verifier removes the log calls above it,
    /// so they cost nothing (default `WARN`).
    pub log_level: tracing::Level,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            hep_port: DEFAULT_HEP_PORT,
            log_level: tracing::Level::WARN,
        }
    }
}

struct Attached {
    iface: String,
    mode: AttachMode,
    link: XdpLinkId,
}

/// The loaded `hep_xdp` program and the interfaces it is attached to.
///
/// Attachments are bpf_links owned by this value: dropping it (or the process dying)
/// detaches them all.
pub struct XdpProgram {
    ebpf: Ebpf,
    attached: Vec<Attached>,
    logger: Option<aya_log::EbpfLogger<TracingLog>>,
    hep_port: u16,
}

impl XdpProgram {
    /// Loads the embedded object into the kernel (maps and the verified program), with
    /// `HEP_PORT` set. Nothing is attached yet.
    pub fn load(opts: &LoadOptions) -> Result<Self, XdpError> {
        Self::load_object(OBJECT, opts)
    }

    /// Loads the XDP object `object` (e.g. [`OBJECT`]); see [`XdpProgram::load`].
    pub fn load_object(object: &[u8], opts: &LoadOptions) -> Result<Self, XdpError> {
        if object.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        if let Err(detail) = check_privileges() {
            return Err(super::error::not_privileged(detail));
        }
        let level = aya_level(opts.log_level) as u8;
        let mut ebpf = EbpfLoader::new()
            .override_global(HEP_PORT_GLOBAL, &opts.hep_port, true)
            .override_global(aya_log::LEVEL, &level, false)
            .load(object)?;
        // The log ring is taken before the program is loaded and kept for its lifetime.
        let logger = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, TracingLog) {
            Ok(l) => Some(l),
            Err(aya_log::Error::MapNotFound) => {
                tracing::warn!("XDP program has no log ring (no log statements): kernel logs off");
                None
            }
            Err(e) => return Err(XdpError::Log(e)),
        };
        let prog = program_mut(&mut ebpf)?;
        prog.load()?;
        Ok(XdpProgram {
            ebpf,
            attached: Vec::new(),
            logger,
            hep_port: opts.hep_port,
        })
    }

    /// Attaches to interface `iface` (in the calling thread's network namespace) through a
    /// bpf_link.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), XdpError> {
        if self.attached.iter().any(|a| a.iface == iface) {
            return Err(XdpError::AlreadyAttached(iface.to_string()));
        }
        let ifindex = if_index(iface)?;
        let prog = program_mut(&mut self.ebpf)?;
        let link = prog
            .attach_to_if_index(ifindex, xdp_mode(mode))
            .map_err(|e| attach_error(iface, mode, e))?;
        self.attached.push(Attached {
            iface: iface.to_string(),
            mode,
            link,
        });
        tracing::info!(iface, %mode, hep_port = self.hep_port, "XDP program attached");
        Ok(())
    }

    /// Detaches from `iface`.
    pub fn detach(&mut self, iface: &str) -> Result<(), XdpError> {
        let a = self.take_attached(iface)?;
        program_mut(&mut self.ebpf)?.detach(a.link)?;
        tracing::info!(iface, "XDP program detached");
        Ok(())
    }

    /// Hands over the link of `iface`: the program stays attached until the returned link is
    /// dropped (or pinned with `FdLink::try_from(link)?.pin(path)` to outlive the process).
    pub fn take_link(&mut self, iface: &str) -> Result<XdpLink, XdpError> {
        let a = self.take_attached(iface)?;
        Ok(program_mut(&mut self.ebpf)?.take_link(a.link)?)
    }

    /// The interfaces the program is attached to, with their mode.
    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> + '_ {
        self.attached.iter().map(|a| (a.iface.as_str(), a.mode))
    }

    /// The HEP port the program was loaded with.
    pub fn hep_port(&self) -> u16 {
        self.hep_port
    }

    /// The kernel's id of the loaded program (as in `bpftool prog`, `ip -d link`).
    pub fn program_id(&self) -> Result<u32, XdpError> {
        Ok(self.program_info()?.id())
    }

    /// The kernel's information on the loaded program: id, tag, sizes, the number of
    /// instructions the verifier processed, run statistics (with
    /// `kernel.bpf_stats_enabled=1`).
    pub fn program_info(&self) -> Result<aya::programs::ProgramInfo, XdpError> {
        let prog: &Xdp = self
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or_else(|| XdpError::MissingItem(format!("program {XDP_PROGRAM}")))?
            .try_into()?;
        Ok(prog.info()?)
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or_else(|| XdpError::MissingItem(format!("map {COUNTERS_MAP}")))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        XdpCounters::read(&arr)
    }

    /// The loaded object, read-only (tests inspect its maps).
    #[doc(hidden)]
    pub fn ebpf_for_tests(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object (maps), for the counter readers.
    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object (maps), for the table installer.
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The program itself, e.g. to run it on test frames with `aya::TestRun`.
    pub fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        program_mut(&mut self.ebpf)
    }

    /// Starts the task that drains the kernel log ring into `tracing` (target
    /// `hepfwd::xdp::kernel`). `None` when the program has no log ring or the drain was
    /// already started. Must be called inside a tokio runtime.
    pub fn spawn_log_drain(&mut self) -> Result<Option<tokio::task::JoinHandle<()>>, XdpError> {
        let Some(logger) = self.logger.take() else {
            return Ok(None);
        };
        // SAFETY: the logger owns its ring buffer's fd (a `MapData`), which stays open and
        // the same for as long as the logger lives, i.e. as long as the `AsyncFd` owns it.
        let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(|e| XdpError::LogIo(e.into_parts().1))?;
        Ok(Some(tokio::spawn(async move {
            loop {
                let mut guard = match fd.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(error = %e, "XDP log drain stopped");
                        return;
                    }
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        })))
    }

    fn take_attached(&mut self, iface: &str) -> Result<Attached, XdpError> {
        let pos = self
            .attached
            .iter()
            .position(|a| a.iface == iface)
            .ok_or_else(|| XdpError::NotAttached(iface.to_string()))?;
        Ok(self.attached.swap_remove(pos))
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    Ok(ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| XdpError::MissingItem(format!("program {XDP_PROGRAM}")))?
        .try_into()?)
}

fn if_index(iface: &str) -> Result<u32, XdpError> {
    let c = CString::new(iface).map_err(|_| XdpError::InterfaceNotFound(iface.to_string()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(XdpError::InterfaceNotFound(iface.to_string()));
    }
    Ok(idx)
}

fn attach_error(iface: &str, mode: AttachMode, e: aya::programs::ProgramError) -> XdpError {
    if let Some(detail) = is_permission(&e) {
        return super::error::not_privileged(detail);
    }
    if let Some(io) = super::error::io_cause(&e) {
        match io.raw_os_error() {
            Some(libc::EBUSY | libc::EEXIST) => {
                return XdpError::InterfaceBusy {
                    iface: iface.to_string(),
                };
            }
            Some(libc::EOPNOTSUPP | libc::EINVAL) => {
                return XdpError::ModeNotSupported {
                    iface: iface.to_string(),
                    mode: mode.name(),
                    source: std::io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(0)),
                };
            }
            _ => {}
        }
    }
    XdpError::from(e)
}

/// Root, or CAP_BPF / CAP_SYS_ADMIN in the effective set (from `/proc/self/status`).
fn check_privileges() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let eff = super::error::effective_capabilities().unwrap_or(0);
    if !super::error::missing_from(eff).contains(&"CAP_BPF") {
        return Ok(());
    }
    Err("not root, and neither CAP_BPF nor CAP_SYS_ADMIN is in the effective set".to_string())
}

fn aya_level(l: tracing::Level) -> aya_log::Level {
    match l {
        tracing::Level::ERROR => aya_log::Level::Error,
        tracing::Level::WARN => aya_log::Level::Warn,
        tracing::Level::INFO => aya_log::Level::Info,
        tracing::Level::DEBUG => aya_log::Level::Debug,
        _ => aya_log::Level::Trace,
    }
}

/// Forwards aya-log records (the `log` crate) to `tracing`.
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let msg = r.args();
        match r.level() {
            log::Level::Error => tracing::error!(target: "hepfwd::xdp::kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "hepfwd::xdp::kernel", "{msg}"),
            log::Level::Info => tracing::info!(target: "hepfwd::xdp::kernel", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "hepfwd::xdp::kernel", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "hepfwd::xdp::kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_object_means_built_without_xdp() {
        // Needs no privileges: the check comes first.
        assert!(matches!(
            XdpProgram::load_object(&[], &LoadOptions::default()),
            Err(XdpError::NotBuilt)
        ));
        assert!(
            XdpError::NotBuilt.to_string().contains("AYA_BUILD_SKIP"),
            "the message must say why"
        );
    }

    #[test]
    fn interface_errors_name_the_interface() {
        let e = if_index("hepfwd-none0").expect_err("no such interface");
        assert!(matches!(&e, XdpError::InterfaceNotFound(n) if n == "hepfwd-none0"));
        assert!(e.to_string().contains("\"hepfwd-none0\" not found"));
        assert!(matches!(
            if_index("a\0b"),
            Err(XdpError::InterfaceNotFound(_))
        ));
    }
}
