//! A client of the daemons' protocol, under an identity of its own: it holds the
//! cluster's pre-shared key, connects to a daemon and writes requests on the message
//! protocol as raw bytes (a frame is a 4-byte length and the payload, see [`frame`]),
//! whatever they hold. For tools and for the tests that play an authenticated but
//! hostile peer: malformed bytes, or well-formed messages no honest daemon would send.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::pnet::PreSharedKey;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, Multiaddr, PeerId, StreamProtocol, Swarm};

use crate::net::{transport, MESSAGE_PROTOCOL};
use crate::protocol::{self, Ack, WireError};

/// Most bytes read back from an answer.
const MAX_ANSWER: u64 = 1 << 20;

/// Writes a request's bytes as they are (no framing of its own); reads whatever comes back.
#[derive(Clone, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(MAX_ANSWER).read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        self.write_request(p, io, res).await
    }
}

/// `payload` with its 4-byte big-endian length in front, as the daemon reads a request.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(payload);
    v
}

/// What came back for one request.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The daemon's acknowledgement (`Ack::Rejected` names why).
    Ack(Ack),
    /// The stream closed without an answer (the request could not even be read).
    Closed,
    /// The request failed on the way (connection lost, timeout).
    Failed(String),
}

pub struct Client {
    swarm: Swarm<request_response::Behaviour<RawCodec>>,
}

impl Client {
    /// A client with a fresh identity and the cluster's key.
    pub fn new(psk: PreSharedKey) -> anyhow::Result<Client> {
        Client::with_identity(identity::Keypair::generate_ed25519(), psk)
    }

    /// A client under `identity` (e.g. one on the daemons' allow-list).
    pub fn with_identity(identity: identity::Keypair, psk: PreSharedKey) -> anyhow::Result<Client> {
        let swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
            .with_tokio()
            .with_other_transport(|k| transport(k, psk))
            .context("cannot build the transport")?
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    RawCodec,
                    [(MESSAGE_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10)),
                )
            })
            .context("cannot build the behaviour")?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        Ok(Client { swarm })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Connects to the daemon at `addr` within `limit`; its peer id.
    pub async fn connect(&mut self, addr: Multiaddr, limit: Duration) -> anyhow::Result<PeerId> {
        self.swarm.dial(addr.clone())?;
        let wait = async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        bail!("cannot connect to {addr}: {error}")
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .with_context(|| format!("no connection to {addr} within {limit:?}"))?
    }

    /// Sends every request (raw bytes, see [`frame`]) to `peer` and waits up to `limit`
    /// for their answers, returned in the requests' order.
    pub async fn send_raw(
        &mut self,
        peer: PeerId,
        requests: Vec<Vec<u8>>,
        limit: Duration,
    ) -> Vec<Answer> {
        let ids: Vec<OutboundRequestId> = requests
            .into_iter()
            .map(|r| self.swarm.behaviour_mut().send_request(&peer, r))
            .collect();
        let mut answers: Vec<Option<Answer>> = ids.iter().map(|_| None).collect();
        let slot = |id: &OutboundRequestId| ids.iter().position(|i| i == id);
        let collect = async {
            while answers.iter().any(Option::is_none) {
                let (id, answer) = match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    }) => (request_id, read_answer(&response)),
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    }) => (request_id, Answer::Failed(error.to_string())),
                    _ => continue,
                };
                if let Some(i) = slot(&id) {
                    answers[i] = Some(answer);
                }
            }
        };
        let _ = tokio::time::timeout(limit, collect).await;
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Answer::Failed(format!("no answer within {limit:?}"))))
            .collect()
    }

    /// Encodes and sends messages (see [`protocol::encode_message`]).
    pub async fn send(
        &mut self,
        peer: PeerId,
        messages: &[dvms_core::node::Message<crate::NodeId>],
        limit: Duration,
    ) -> Result<Vec<Answer>, WireError> {
        let requests = messages
            .iter()
            .map(|m| protocol::encode_message(m).map(|b| frame(&b)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.send_raw(peer, requests, limit).await)
    }
}

/// A framed acknowledgement, or a closed stream.
fn read_answer(bytes: &[u8]) -> Answer {
    match bytes.get(4..).filter(|a| !a.is_empty()) {
        None => Answer::Closed,
        Some(ack) => match protocol::decode::<Ack>(ack) {
            Ok(a) => Answer::Ack(a),
            Err(e) => Answer::Failed(format!("unreadable acknowledgement: {e}")),
        },
    }
}
