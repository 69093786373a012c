//! Reads HEP out of pcap and pcapng files: UDP datagrams (IPv4 fragments reassembled) and
//! TCP streams (reassembled in sequence order, then framed).
//!
//! Link types: Ethernet (with VLAN tags), Linux cooked v1/v2, raw IP, BSD loopback.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etherparse::defrag::IpDefragPool;
use etherparse::{NetSlice, SlicedPacket, TransportSlice, UdpSlice};
use hep_common::framing::MAX_FRAME_LEN;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

use super::framer::StreamFramer;

/// Transport a HEP message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One HEP message per datagram.
    Udp,
    /// A frame cut from a stream.
    Tcp,
}

impl Transport {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// What the reader found at one place of the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureItem {
    /// A HEP message candidate (a UDP payload or a TCP frame).
    Message {
        /// 1-based number of the capture record that completed it.
        frame: u64,
        /// Transport.
        transport: Transport,
        /// Sender.
        src: SocketAddr,
        /// Receiver.
        dst: SocketAddr,
        /// Capture time.
        ts: Duration,
        /// The message bytes.
        data: Vec<u8>,
    },
    /// Something in the capture that should have been HEP but could not be read.
    Error {
        /// 1-based number of the capture record.
        frame: u64,
        /// What went wrong.
        message: String,
        /// Offset (in the TCP stream, or 0).
        offset: usize,
    },
}

/// Which packets of the capture are taken as HEP.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureFilter {
    /// Take every UDP/TCP packet to or from this port (and report it if it is not HEP);
    /// without it, only payloads that look like HEP (version detection) are taken.
    pub port: Option<u16>,
}

struct Flow {
    next_seq: Option<u32>,
    framer: StreamFramer,
    /// The stream is known to be HEP (port filter, or its first bytes were `HEP3`).
    confirmed: bool,
    dead: bool,
}

/// Reads every HEP message of a pcap or pcapng stream, in capture order, passing each
/// [`CaptureItem`] to `sink`.
pub fn read_capture<R: Read>(
    reader: R,
    filter: CaptureFilter,
    mut sink: impl FnMut(CaptureItem),
) -> Result<()> {
    let mut reader = std::io::BufReader::new(reader);
    let magic = {
        use std::io::BufRead;
        let buf = reader
            .fill_buf()
            .context("reading the capture file header")?;
        if buf.len() < 4 {
            bail!("not a pcap or pcapng file: only {} bytes", buf.len());
        }
        [buf[0], buf[1], buf[2], buf[3]]
    };
    let mut st = State {
        filter,
        defrag: IpDefragPool::new(),
        flows: HashMap::new(),
    };
    match magic {
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            let mut r = PcapNgReader::new(reader).context("reading the pcapng section header")?;
            let mut links: Vec<u32> = Vec::new();
            let mut frame = 0u64;
            while let Some(block) = r.next_block() {
                let block = block.context("reading a pcapng block")?;
                match block {
                    Block::SectionHeader(_) => links.clear(),
                    Block::InterfaceDescription(idb) => links.push(u32::from(idb.linktype)),
                    Block::EnhancedPacket(epb) => {
                        frame += 1;
                        let link = links.get(epb.interface_id as usize).copied().unwrap_or(1);
                        st.packet(frame, link, epb.timestamp, &epb.data, &mut sink);
                    }
                    Block::SimplePacket(spb) => {
                        frame += 1;
                        let link = links.first().copied().unwrap_or(1);
                        st.packet(frame, link, Duration::ZERO, &spb.data, &mut sink);
                    }
                    Block::Packet(pb) => {
                        frame += 1;
                        let link = links.get(pb.interface_id as usize).copied().unwrap_or(1);
                        st.packet(
                            frame,
                            link,
                            Duration::from_micros(pb.timestamp),
                            &pb.data,
                            &mut sink,
                        );
                    }
                    _ => {}
                }
            }
        }
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => {
            let mut r = PcapReader::new(reader).context("reading the pcap header")?;
            let link = u32::from(r.header().datalink);
            let mut frame = 0u64;
            while let Some(pkt) = r.next_packet() {
                let pkt = pkt.context("reading a pcap record")?;
                frame += 1;
                st.packet(frame, link, pkt.timestamp, &pkt.data, &mut sink);
            }
        }
        m => bail!("not a pcap or pcapng file (magic {m:02x?})"),
    }
    for ((src, dst), flow) in st.flows {
        if !flow.dead && flow.framer.pending() > 0 {
            sink(CaptureItem::Error {
                frame: 0,
                message: format!(
                    "tcp {src} -> {dst}: capture ends inside a HEP frame ({} bytes pending)",
                    flow.framer.pending()
                ),
                offset: flow.framer.offset(),
            });
        }
    }
    Ok(())
}

struct State {
    filter: CaptureFilter,
    defrag: IpDefragPool,
    flows: HashMap<(SocketAddr, SocketAddr), Flow>,
}

const LINKTYPE_NULL: u32 = 0;
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LOOP: u32 = 108;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;

impl State {
    fn wanted(&self, sport: u16, dport: u16, payload: &[u8], transport: Transport) -> bool {
        match self.filter.port {
            Some(p) => sport == p || dport == p,
            None => match transport {
                Transport::Udp => hep_common::version::detect(payload).is_some(),
                Transport::Tcp => payload.starts_with(b"HEP3"),
            },
        }
    }

    fn packet(
        &mut self,
        frame: u64,
        link: u32,
        ts: Duration,
        data: &[u8],
        sink: &mut impl FnMut(CaptureItem),
    ) {
        let sliced = match link {
            LINKTYPE_ETHERNET => SlicedPacket::from_ethernet(data),
            LINKTYPE_LINUX_SLL => SlicedPacket::from_linux_sll(data),
            LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => SlicedPacket::from_ip(data),
            LINKTYPE_NULL | LINKTYPE_LOOP => match data.get(4..) {
                Some(ip) => SlicedPacket::from_ip(ip),
                None => return,
            },
            LINKTYPE_LINUX_SLL2 => match data.get(20..) {
                Some(ip) => SlicedPacket::from_ip(ip),
                None => return,
            },
            other => {
                sink(CaptureItem::Error {
                    frame,
                    message: format!("unsupported link type {other}"),
                    offset: 0,
                });
                return;
            }
        };
        // Packets that are not IP/UDP/TCP are not HEP: skip them silently.
        let Ok(p) = sliced else { return };
        let (src_ip, dst_ip): (IpAddr, IpAddr) = match &p.net {
            Some(NetSlice::Ipv4(v4)) => (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(v6)) => (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
            ),
            _ => return,
        };
        match self.defrag.process_sliced_packet(&p, (), ()) {
            Ok(Some(whole)) => {
                if whole.ip_number == etherparse::IpNumber::UDP
                    && let Ok(udp) = UdpSlice::from_slice(&whole.payload)
                {
                    self.udp(frame, ts, src_ip, dst_ip, &udp, sink);
                }
                self.defrag.return_buf(whole);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                sink(CaptureItem::Error {
                    frame,
                    message: format!("ip reassembly failed: {e}"),
                    offset: 0,
                });
                return;
            }
        }
        if p.is_ip_payload_fragmented() {
            return; // waiting for the other fragments
        }
        match &p.transport {
            Some(TransportSlice::Udp(udp)) => self.udp(frame, ts, src_ip, dst_ip, udp, sink),
            Some(TransportSlice::Tcp(tcp)) => {
                let src = SocketAddr::new(src_ip, tcp.source_port());
                let dst = SocketAddr::new(dst_ip, tcp.destination_port());
                self.tcp(frame, ts, src, dst, tcp, sink);
            }
            _ => {}
        }
    }

    fn udp(
        &mut self,
        frame: u64,
        ts: Duration,
        s: IpAddr,
        d: IpAddr,
        udp: &UdpSlice<'_>,
        sink: &mut impl FnMut(CaptureItem),
    ) {
        let payload = udp.payload();
        if !self.wanted(
            udp.source_port(),
            udp.destination_port(),
            payload,
            Transport::Udp,
        ) {
            return;
        }
        sink(CaptureItem::Message {
            frame,
            transport: Transport::Udp,
            src: SocketAddr::new(s, udp.source_port()),
            dst: SocketAddr::new(d, udp.destination_port()),
            ts,
            data: payload.to_vec(),
        });
    }

    fn tcp(
        &mut self,
        frame: u64,
        ts: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        tcp: &etherparse::TcpSlice<'_>,
        sink: &mut impl FnMut(CaptureItem),
    ) {
        let key = (src, dst);
        let payload = tcp.payload();
        if tcp.syn() {
            self.flows.remove(&key);
            let port_ok = self
                .filter
                .port
                .is_none_or(|p| src.port() == p || dst.port() == p);
            if port_ok {
                self.flows.insert(
                    key,
                    Flow {
                        next_seq: Some(tcp.sequence_number().wrapping_add(1)),
                        framer: StreamFramer::new(MAX_FRAME_LEN),
                        confirmed: self.filter.port.is_some(),
                        dead: false,
                    },
                );
            }
            return;
        }
        if !payload.is_empty()
            && !self.flows.contains_key(&key)
            && self.wanted(src.port(), dst.port(), payload, Transport::Tcp)
        {
            // Stream picked up mid-way (no SYN in the capture): start at this segment.
            self.flows.insert(
                key,
                Flow {
                    next_seq: None,
                    framer: StreamFramer::new(MAX_FRAME_LEN),
                    confirmed: true,
                    dead: false,
                },
            );
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        if !payload.is_empty() && !flow.dead {
            let seq = tcp.sequence_number();
            let next = *flow.next_seq.get_or_insert(seq);
            // Signed distance in sequence space (wrapping).
            let ahead = seq.wrapping_sub(next) as i32;
            let data = if ahead > 0 {
                flow.dead = true;
                sink(CaptureItem::Error {
                    frame,
                    message: format!(
                        "tcp {src} -> {dst}: {ahead} bytes missing from the capture; stream abandoned"
                    ),
                    offset: flow.framer.offset() + flow.framer.pending(),
                });
                &[][..]
            } else {
                let skip = (-ahead) as usize;
                payload.get(skip..).unwrap_or(&[])
            };
            if !data.is_empty() && !flow.confirmed {
                if !data.starts_with(b"HEP3") {
                    // Not a HEP stream: forget it without a report.
                    self.flows.remove(&key);
                    return;
                }
                flow.confirmed = true;
            }
            if !data.is_empty() {
                flow.next_seq = Some(next.wrapping_add(data.len() as u32));
                flow.framer.push(data);
                loop {
                    match flow.framer.next_frame() {
                        Ok(Some(f)) => sink(CaptureItem::Message {
                            frame,
                            transport: Transport::Tcp,
                            src,
                            dst,
                            ts,
                            data: f.to_vec(),
                        }),
                        Ok(None) => break,
                        Err(e) => {
                            flow.dead = true;
                            sink(CaptureItem::Error {
                                frame,
                                message: format!("tcp {src} -> {dst}: {e}; stream abandoned"),
                                offset: flow.framer.offset(),
                            });
                            break;
                        }
                    }
                }
            }
        }
        if (tcp.fin() || tcp.rst())
            && let Some(flow) = self.flows.remove(&key)
            && !flow.dead
            && flow.framer.pending() > 0
        {
            sink(CaptureItem::Error {
                frame,
                message: format!("tcp {src} -> {dst}: stream closed inside a HEP frame"),
                offset: flow.framer.offset(),
            });
        }
    }
}
