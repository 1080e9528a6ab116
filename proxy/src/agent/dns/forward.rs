//! Forwarding a query the table does not answer to the resolv.conf nameservers, as pilot-agent
//! does: over the transport the client used, one fresh socket per exchange, the nameservers in
//! a shuffled order one after another (or all at once with `DNS_FORWARD_PARALLEL`), the first
//! answer winning. No retries beyond the list, no caching.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct Forwarder {
    pub servers: Vec<SocketAddr>,
    pub parallel: bool,
    pub timeout: Duration,
}

impl Forwarder {
    /// The first nameserver's reply to `query` (raw bytes, same id), or None when none
    /// answered. `udp_limit` is the most a UDP reply may hold: what the query advertises
    /// (EDNS) or 512; a bigger datagram counts as a failure, as it does for Istio's client.
    pub async fn exchange(
        &self,
        query: &[u8],
        transport: Transport,
        udp_limit: usize,
    ) -> Option<Vec<u8>> {
        if self.servers.is_empty() {
            return None;
        }
        if self.parallel {
            return self.exchange_parallel(query, transport, udp_limit).await;
        }
        let mut servers = self.servers.clone();
        shuffle(&mut servers);
        for server in servers {
            match self.exchange_one(server, query, transport, udp_limit).await {
                Ok(reply) => return Some(reply),
                Err(e) => tracing::info!(target: "dns", "upstream failure: {server}: {e}"),
            }
        }
        None
    }

    async fn exchange_parallel(
        &self,
        query: &[u8],
        transport: Transport,
        udp_limit: usize,
    ) -> Option<Vec<u8>> {
        let mut tasks = tokio::task::JoinSet::new();
        for server in self.servers.clone() {
            let this = self.clone();
            let query = query.to_vec();
            tasks.spawn(async move {
                let result = this
                    .exchange_one(server, &query, transport, udp_limit)
                    .await;
                (server, result)
            });
        }
        // Dropping the set aborts the slower exchanges once one has answered.
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(reply))) => return Some(reply),
                Ok((server, Err(e))) => {
                    tracing::info!(target: "dns", "parallel querying upstream failure: {server}: {e}")
                }
                Err(e) => tracing::info!(target: "dns", "upstream query task failed: {e}"),
            }
        }
        tracing::info!(target: "dns", "all upstream failed");
        None
    }

    async fn exchange_one(
        &self,
        server: SocketAddr,
        query: &[u8],
        transport: Transport,
        udp_limit: usize,
    ) -> std::io::Result<Vec<u8>> {
        let exchange = async {
            match transport {
                Transport::Udp => udp_exchange(server, query, udp_limit).await,
                Transport::Tcp => tcp_exchange(server, query).await,
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "i/o timeout"))?
    }
}

fn id_of(message: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*message.first()?, *message.get(1)?]))
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string())
}

async fn udp_exchange(server: SocketAddr, query: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let id = id_of(query);
    // One byte more than allowed, to tell "exactly full" from "cut off".
    let mut buf = vec![0u8; limit + 1];
    loop {
        let n = socket.recv(&mut buf).await?;
        let reply = &buf[..n];
        // A late reply to an earlier query on a reused port is not ours: keep waiting.
        if id_of(reply) != id {
            continue;
        }
        if n > limit {
            return Err(invalid("reply larger than the query's UDP buffer"));
        }
        check_reply(reply)?;
        return Ok(reply.to_vec());
    }
}

async fn tcp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| invalid("query too long for TCP"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let id = id_of(query);
    loop {
        let len = stream.read_u16().await? as usize;
        let mut reply = vec![0u8; len];
        stream.read_exact(&mut reply).await?;
        if id_of(&reply) == id {
            check_reply(&reply)?;
            return Ok(reply);
        }
    }
}

/// A reply must parse as DNS to count as an answer (else the next nameserver is tried).
fn check_reply(reply: &[u8]) -> std::io::Result<()> {
    hickory_proto::op::Message::from_vec(reply)
        .map(|_| ())
        .map_err(|e| invalid(&format!("unparsable reply: {e}")))
}

/// Fisher–Yates with the proxy's fast random source: spreads load over the nameservers.
pub fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = crate::random::below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}
