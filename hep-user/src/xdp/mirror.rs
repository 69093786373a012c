//! The TC half of mirroring (`hep_mirror` in the same object as `hep_xdp`, sharing its
//! maps): attached at TCX ingress of the interfaces XDP runs on, it copies the packets
//! `hep_xdp` marked to every target of their route. While it is attached, the compiler may
//! give mirror routes to the kernel (`compile(.., kernel_mirrors = true)`); without it they
//! pass to userspace.

use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use aya::programs::{ProgramError, SchedClassifier};
use hep_common::abi::MIRROR_PROGRAM;

use super::XdpError;
use super::loader::XdpProgram;

impl XdpProgram {
    /// Attaches the mirror program to `iface` (TCX ingress, in the calling thread's network
    /// namespace) and hands over its link: the program stays attached while the link
    /// lives, and goes when it is dropped or the process dies.
    pub fn attach_mirror(&mut self, iface: &str) -> Result<SchedClassifierLink, XdpError> {
        let prog: &mut SchedClassifier = self
            .ebpf_mut()
            .program_mut(MIRROR_PROGRAM)
            .ok_or_else(|| XdpError::MissingItem(format!("program {MIRROR_PROGRAM}")))?
            .try_into()?;
        match prog.load() {
            Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
            Err(e) => return Err(e.into()),
        }
        let id = prog.attach(iface, TcAttachType::Ingress).map_err(|e| {
            if super::error::io_cause(&e).and_then(std::io::Error::raw_os_error)
                == Some(libc::ENODEV)
            {
                XdpError::InterfaceNotFound(iface.to_string())
            } else {
                e.into()
            }
        })?;
        let link = prog.take_link(id)?;
        tracing::info!(iface, "mirror program attached (TCX ingress)");
        Ok(link)
    }
}
