//! The DNS wire side: UDP and TCP listeners, screening of what arrives (as Go's miekg/dns
//! server does for pilot-agent: drop what cannot be a query, FORMERR or NOTIMP what it will not
//! serve), the answer from the table or from upstream, and truncation to what the client can
//! take. Nothing here panics on input; a bad packet costs one reply at most.

use super::forward::{self, Transport};
use super::table::{AddressType, Answer, TTL_SECONDS};
use super::Shared;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Replies to a UDP client without EDNS hold at most this (RFC 1035).
const MIN_UDP_SIZE: usize = 512;
/// The largest DNS message (TCP's two-byte length).
const MAX_MESSAGE: usize = 65535;
/// miekg/dns's TCP timeouts: the first query must arrive within 2 s, later ones within 8 s of
/// the previous, and a connection serves at most 128 queries.
const TCP_FIRST_READ: Duration = Duration::from_secs(2);
const TCP_IDLE: Duration = Duration::from_secs(8);
const TCP_MAX_QUERIES: usize = 128;

const HEADER_LEN: usize = 12;
const FLAG_QR: u16 = 0x8000;
const OPCODE_MASK: u16 = 0x7800;
const FLAG_AA: u16 = 0x0400;
const FLAG_Z: u16 = 0x0040;
const RCODE_MASK: u16 = 0x000f;
const OPCODE_QUERY: u16 = 0;
const OPCODE_NOTIFY: u16 = 4;
const RCODE_FORMERR: u16 = 1;
const RCODE_NOTIMP: u16 = 4;

pub(super) async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier replies surface here on some systems: keep serving.
                tracing::debug!(target: "dns", "udp receive: {e}");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = handle(&shared, &packet, Transport::Udp).await {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    tracing::debug!(target: "dns", "udp reply to {peer}: {e}");
                }
            }
        });
    }
}

pub(super) async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_tcp_connection(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(target: "dns", "tcp accept: {e}");
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut timeout = TCP_FIRST_READ;
    for _ in 0..TCP_MAX_QUERIES {
        let read = async {
            let len = stream.read_u16().await? as usize;
            let mut query = vec![0u8; len];
            stream.read_exact(&mut query).await?;
            Ok::<_, std::io::Error>(query)
        };
        let Ok(Ok(query)) = tokio::time::timeout(timeout, read).await else {
            return;
        };
        if let Some(reply) = handle(&shared, &query, Transport::Tcp).await {
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
        timeout = TCP_IDLE;
    }
}

/// The reply to one packet, or None to stay silent (not a query; a reply could be used to
/// amplify traffic towards a forged source).
pub(super) async fn handle(
    shared: &Shared,
    packet: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let header = packet.get(..HEADER_LEN)?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let (flags, qd, an, ns, ar) = (word(2), word(4), word(6), word(8), word(10));
    if flags & FLAG_QR != 0 {
        return None;
    }
    let opcode = (flags & OPCODE_MASK) >> 11;
    if opcode != OPCODE_QUERY && opcode != OPCODE_NOTIFY {
        return Some(header_reply(header, RCODE_NOTIMP, opcode));
    }
    // What a plain query can carry: one question, an OPT and perhaps a TSIG.
    if qd != 1 || an > 1 || ns > 1 || ar > 2 {
        return Some(header_reply(header, RCODE_FORMERR, OPCODE_QUERY));
    }
    let Ok(request) = Message::from_vec(packet) else {
        return Some(header_reply(header, RCODE_FORMERR, OPCODE_QUERY));
    };
    shared.metrics.count_request();
    let size = reply_limit(&request, transport);
    let Some(query) = request.queries.first() else {
        return encode(error(&request, ResponseCode::ServFail), size);
    };
    let hostname = query.name().to_ascii().to_ascii_lowercase();
    let hostname = if hostname.ends_with('.') {
        hostname
    } else {
        format!("{hostname}.")
    };
    let table = shared.table.load_full();
    let Some(table) = table else {
        if shared.respond_before_sync {
            return upstream(shared, packet, &request, transport, size, &hostname).await;
        }
        tracing::debug!(target: "dns", "dns request for host {hostname:?} before lookup table is loaded");
        return encode(error(&request, ResponseCode::ServFail), size);
    };
    let qtype = match query.query_type() {
        RecordType::A => Some(AddressType::A),
        RecordType::AAAA => Some(AddressType::Aaaa),
        _ => None,
    };
    match table.lookup(qtype, &hostname) {
        Some(answers) => {
            let mut reply = reply_to(&request);
            // The table is the authority for the names it holds.
            reply.metadata.authoritative = true;
            reply.answers = records(answers);
            tracing::debug!(target: "dns", "response for hostname {hostname:?} (found=true): {} records", reply.answers.len());
            encode(reply, size)
        }
        None => upstream(shared, packet, &request, transport, size, &hostname).await,
    }
}

async fn upstream(
    shared: &Shared,
    packet: &[u8],
    request: &Message,
    transport: Transport,
    size: usize,
    hostname: &str,
) -> Option<Vec<u8>> {
    shared.metrics.count_upstream();
    tracing::debug!(target: "dns", "response for hostname {hostname:?} not found in dns proxy, querying upstream");
    let started = Instant::now();
    let udp_limit = reply_limit(request, Transport::Udp);
    let reply = shared
        .forwarder
        .exchange(packet, transport, udp_limit)
        .await;
    shared.metrics.record_duration(started.elapsed());
    let Some(reply) = reply else {
        shared.metrics.count_failure();
        return encode(error(request, ResponseCode::ServFail), size);
    };
    if reply.len() <= size {
        // Passed through as received: flags, TC and records are the nameserver's.
        return Some(reply);
    }
    match Message::from_vec(&reply) {
        Ok(message) => encode(message, size),
        Err(_) => encode(error(request, ResponseCode::ServFail), size),
    }
}

/// How big a reply may be: TCP takes any message; UDP what the query's EDNS advertises, and
/// never less than 512.
fn reply_limit(request: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => MAX_MESSAGE,
        Transport::Udp => request
            .edns
            .as_ref()
            .map(|e| e.max_payload() as usize)
            .unwrap_or(0)
            .max(MIN_UDP_SIZE),
    }
}

/// A reply carrying only the request's header with `rcode`, as miekg/dns answers what it
/// refuses: the request's flags, QR set, AA and Z cleared, no sections.
fn header_reply(header: &[u8], rcode: u16, opcode: u16) -> Vec<u8> {
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let flags =
        (flags & !(OPCODE_MASK | FLAG_AA | FLAG_Z | RCODE_MASK)) | FLAG_QR | (opcode << 11) | rcode;
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&header[..2]);
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out
}

/// The start of any reply: id, opcode, RD and CD from the request, and its first question.
fn reply_to(request: &Message) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    if request.metadata.op_code == OpCode::Query {
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.checking_disabled = request.metadata.checking_disabled;
    }
    if let Some(q) = request.queries.first() {
        reply.add_query(q.clone());
    }
    reply
}

fn error(request: &Message, code: ResponseCode) -> Message {
    let mut reply = reply_to(request);
    reply.metadata.response_code = code;
    reply
}

/// CNAMEs first, then the addresses in a random order, so headless services spread their
/// clients over the endpoints as kube-dns does.
fn records(answers: Vec<Answer>) -> Vec<Record> {
    let (mut cnames, mut addresses) = (Vec::new(), Vec::new());
    for answer in answers {
        match answer {
            Answer::Cname { name, target } => {
                if let (Ok(name), Ok(target)) = (Name::from_ascii(&name), Name::from_ascii(&target))
                {
                    cnames.push(Record::from_rdata(
                        name,
                        TTL_SECONDS,
                        RData::CNAME(CNAME(target)),
                    ));
                }
            }
            Answer::Address { name, ip } => {
                let Ok(name) = Name::from_ascii(&name) else {
                    continue;
                };
                let rdata = match ip {
                    IpAddr::V4(ip) => RData::A(A(ip)),
                    IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
                };
                addresses.push(Record::from_rdata(name, TTL_SECONDS, rdata));
            }
        }
    }
    forward::shuffle(&mut addresses);
    cnames.extend(addresses);
    cnames
}

/// Encodes `message` within `size` bytes: if it does not fit, each section keeps the records
/// that fit (answers first, then authority, then additional; EDNS stays) and TC is set, as
/// miekg's `Truncate` does for pilot-agent.
fn encode(mut message: Message, size: usize) -> Option<Vec<u8>> {
    let full = message.to_vec().ok()?;
    if full.len() <= size {
        return Some(full);
    }
    let answers = std::mem::take(&mut message.answers);
    let authorities = std::mem::take(&mut message.authorities);
    let additionals = std::mem::take(&mut message.additionals);
    let mut complete = fill(&mut message, answers, size, |m| &mut m.answers);
    if complete {
        complete = fill(&mut message, authorities, size, |m| &mut m.authorities);
    }
    if complete {
        complete = fill(&mut message, additionals, size, |m| &mut m.additionals);
    }
    message.metadata.truncation |= !complete;
    message.to_vec().ok()
}

/// Puts the longest prefix of `records` into a section that keeps the message within `size`;
/// true when all of them fit. A binary search: a few encodings, not one per record.
fn fill(
    message: &mut Message,
    records: Vec<Record>,
    size: usize,
    section: fn(&mut Message) -> &mut Vec<Record>,
) -> bool {
    let (mut lo, mut hi) = (0, records.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        *section(message) = records[..mid].to_vec();
        let fits = message.to_vec().is_ok_and(|b| b.len() <= size);
        if fits {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    *section(message) = records[..lo].to_vec();
    lo == records.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_replies_keep_id_and_flags() {
        // id 0xabcd, opcode UPDATE (5), RD set, one question.
        let header = [0xab, 0xcd, 0x29, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let reply = header_reply(&header, RCODE_NOTIMP, 5);
        assert_eq!(reply[..2], [0xab, 0xcd]);
        let flags = u16::from_be_bytes([reply[2], reply[3]]);
        assert_eq!(flags & FLAG_QR, FLAG_QR);
        assert_eq!((flags & OPCODE_MASK) >> 11, 5);
        assert_eq!(flags & RCODE_MASK, RCODE_NOTIMP);
        assert_eq!(flags & 0x0100, 0x0100, "RD is kept");
        assert_eq!(reply[4..], [0u8; 8]);
    }

    #[test]
    fn truncation_keeps_what_fits_and_sets_tc() {
        let mut message = Message::response(7, OpCode::Query);
        let name = Name::from_ascii("aaaaaaaaaaaa.aaaaaa.").expect("name");
        for i in 0..64u8 {
            message.add_answer(Record::from_rdata(
                name.clone(),
                30,
                RData::A(A([240, 0, 0, i].into())),
            ));
        }
        let full = encode(message.clone(), MAX_MESSAGE).expect("encodes");
        assert!(full.len() > MIN_UDP_SIZE);
        let cut = encode(message, MIN_UDP_SIZE).expect("encodes");
        assert!(cut.len() <= MIN_UDP_SIZE);
        let parsed = Message::from_vec(&cut).expect("parses");
        assert!(parsed.metadata.truncation);
        assert!(!parsed.answers.is_empty() && parsed.answers.len() < 64);
    }
}
