//! DNS test helpers: a scripted upstream nameserver (UDP and TCP on one port, built on
//! hickory-proto) that records what it was asked, and `dig` as the real client.
//!
//! The upstream answers, for a query of type A:
//! - a name set with [`ScriptedDns::start`]: that address (TTL 60);
//! - `big.test.`: 64 addresses, more than a plain UDP reply holds;
//! - `silent.test.`: nothing at all (for timeouts);
//! - anything else: NXDOMAIN.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// One query the upstream received: name (lower case, trailing dot), type, and "udp"/"tcp".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub name: String,
    pub qtype: String,
    pub transport: &'static str,
}

pub struct ScriptedDns {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ScriptedDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ScriptedDns {
    /// Starts on a free port of `ip` (UDP and TCP), answering `names` (name → IPv4).
    pub async fn start(ip: Ipv4Addr, names: &[(&str, Ipv4Addr)]) -> ScriptedDns {
        let names: Arc<Vec<(String, Ipv4Addr)>> = Arc::new(
            names
                .iter()
                .map(|(n, ip)| (n.to_ascii_lowercase(), *ip))
                .collect(),
        );
        let asked = Arc::new(Mutex::new(Vec::new()));
        // UDP picks the port; TCP must get the same one (retry if another process has it).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((ip, 0)).await.expect("bind upstream udp");
            let port = udp.local_addr().expect("udp address").port();
            if let Ok(tcp) = TcpListener::bind((ip, port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("udp address");
        let udp = Arc::new(udp);
        let recorded = asked.clone();
        let (n, a) = (names.clone(), asked.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = respond(&buf[..len], &n, &a, "udp") {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let (n, a) = (names.clone(), asked.clone());
                tokio::spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut query = vec![0u8; len as usize];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        if let Some(reply) = respond(&query, &n, &a, "tcp") {
                            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&reply);
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        ScriptedDns {
            addr,
            asked: recorded,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Everything asked so far.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn respond(
    query: &[u8],
    names: &[(String, Ipv4Addr)],
    asked: &Mutex<Vec<Asked>>,
    transport: &'static str,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let q = request.queries.first()?.clone();
    let name = q.name().to_ascii().to_ascii_lowercase();
    asked.lock().unwrap_or_else(|e| e.into_inner()).push(Asked {
        name: name.clone(),
        qtype: q.query_type().to_string(),
        transport,
    });
    if name == "silent.test." {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    let address = |ip: Ipv4Addr| Record::from_rdata(q.name().clone(), 60, RData::A(A(ip)));
    let known = names.iter().find(|(n, _)| *n == name);
    match (q.query_type(), known) {
        (RecordType::A, Some((_, ip))) => {
            reply.add_answer(address(*ip));
        }
        (RecordType::A, None) if name == "big.test." => {
            for i in 0..64u8 {
                reply.add_answer(address(Ipv4Addr::new(240, 0, 0, i)));
            }
        }
        (_, Some(_)) => {}
        _ => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}

/// What `dig` printed, reduced to what the tests check.
#[derive(Debug, Clone, Default)]
pub struct Dig {
    /// NOERROR, NXDOMAIN, SERVFAIL, FORMERR...; empty when no reply came.
    pub status: String,
    /// The header flags (`qr`, `aa`, `tc`, `rd`, ...).
    pub flags: Vec<String>,
    /// Answer records as `name TTL type data`, whitespace collapsed.
    pub answers: Vec<String>,
    pub output: String,
}

impl Dig {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
    /// The data of the answers of `rtype` (addresses, CNAME targets), in order.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|a| {
                let f: Vec<&str> = a.split(' ').collect();
                (f.len() >= 4 && f[2] == rtype).then(|| f[3..].join(" "))
            })
            .collect()
    }
}

/// Runs `dig @server -p port name type` with one try of 3 s, plus `extra` options
/// (`+tcp`, `+noedns`, `+ignore`, ...).
pub async fn dig(server: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> Dig {
    let output = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+tries=1", "+time=3", "+nocookie"])
        .args(extra)
        .args([name, rtype])
        .output()
        .await
        .expect("run dig (Debian package bind9-dnsutils)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut out = Dig {
        output: text.clone(),
        ..Default::default()
    };
    let mut in_answers = false;
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            out.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            out.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
        }
        if line.starts_with(";; ANSWER SECTION:") {
            in_answers = true;
            continue;
        }
        if in_answers {
            if line.trim().is_empty() {
                in_answers = false;
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            // name TTL class type data...; the class is always IN here.
            if fields.len() >= 5 {
                let mut kept = vec![fields[0], fields[1]];
                kept.extend(&fields[3..]);
                out.answers.push(kept.join(" "));
            }
        }
    }
    out
}
