//! The daemon's libp2p stack: TCP, then the pre-shared key (pnet: only members of the
//! private network get past the first bytes), noise authentication, yamux; identify,
//! ping (RTTs for Vivaldi), an optional peer allow-list, and request-response carrying
//! length-prefixed frames whose size is bounded before anything is read.

use std::io;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, identify, identity, noise, ping, tcp, yamux};
use libp2p::{PeerId, StreamProtocol, Swarm, Transport};

use crate::protocol::MAX_MESSAGE_BYTES;

pub const MESSAGE_PROTOCOL: StreamProtocol = StreamProtocol::new("/dvms/msg/1");
pub const IDENTIFY_PROTOCOL: &str = "/dvms/1";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub messages: request_response::Behaviour<FrameCodec>,
}

/// What the swarm needs beyond the identity.
pub struct NetConfig {
    pub psk: PreSharedKey,
    /// `None`: any peer holding the pre-shared key; `Some`: only these (and this node).
    pub allow: Option<Vec<PeerId>>,
    pub ping_interval: Duration,
    /// Long enough that ring neighbours stay connected between gossip rounds.
    pub idle_timeout: Duration,
}

pub fn build_swarm(
    key: identity::Keypair,
    cfg: &NetConfig,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Swarm<Behaviour>> {
    let psk = cfg.psk;
    let me = key.public().to_peer_id();
    let allow = cfg.allow.as_ref().map(|peers| {
        let mut b = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
        b.allow_peer(me);
        for p in peers {
            b.allow_peer(*p);
        }
        b
    });
    let (ping_interval, idle_timeout) = (cfg.ping_interval, cfg.idle_timeout);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| transport(key, psk))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| Behaviour {
            allow: allow.into(),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval)),
            messages: request_response::Behaviour::with_codec(
                FrameCodec,
                [(MESSAGE_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(10))
                    .with_max_concurrent_streams(64),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build();
    Ok(swarm)
}

/// TCP, then the pre-shared key, then noise and yamux: what every daemon (and a test
/// client that must get past the key) speaks.
pub fn transport(
    key: &identity::Keypair,
    psk: PreSharedKey,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let noise = noise::Config::new(key)?;
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(20))
            .boxed(),
    )
}

/// Frames: a 4-byte big-endian length, then that many bytes (at most
/// [`MAX_MESSAGE_BYTES`]). The content is decoded and validated by the caller
/// ([`crate::protocol`]), which knows who sent it and logs why a message is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

/// What was read from a stream: a frame, or why there is none. An unreadable frame is a
/// value, not an I/O error, so that the daemon sees it (libp2p only debug-logs read
/// errors) and can log and count it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Bytes(Vec<u8>),
    Invalid(String),
}

pub async fn read_frame<T: futures::AsyncRead + Unpin>(io: &mut T) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok(Frame::Invalid(
                "stream ended inside the length prefix".into(),
            ))
        }
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Ok(Frame::Invalid(format!(
            "frame of {len} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    let mut buf = vec![0u8; len];
    match io.read_exact(&mut buf).await {
        Ok(()) => Ok(Frame::Bytes(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Frame::Invalid(format!(
            "stream ended before the {len} bytes its length prefix announced"
        ))),
        Err(e) => Err(e),
    }
}

pub async fn write_frame<T: futures::AsyncWrite + Unpin>(
    io: &mut T,
    frame: Frame,
) -> io::Result<()> {
    let Frame::Bytes(data) = frame else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a frame"));
    };
    let len = u32::try_from(data.len())
        .ok()
        .filter(|l| *l as usize <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&data).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Frame;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Frame,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, res).await
    }
}

/// A connection error in words an operator can act on. A peer with another pre-shared
/// key shows up as a garbled or reset handshake, never as a clear refusal, so say so.
pub fn explain_connection_error(err: &(dyn std::error::Error + 'static)) -> String {
    // libp2p nests the same message several times; keep each distinct part once.
    let mut parts: Vec<String> = Vec::new();
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = src {
        let text = e.to_string();
        for part in text.split(": ") {
            if !part.is_empty() && !parts.iter().any(|p| p == part) {
                parts.push(part.to_owned());
            }
        }
        src = e.source();
    }
    let chain = parts.join(": ");
    let lower = chain.to_lowercase();
    if lower.contains("not allowed") || lower.contains("notallowed") {
        format!("{chain} (peer not on the allow-list)")
    } else if lower.contains("connection refused") {
        format!("{chain} (no daemon listening there)")
    } else if lower.contains("timed out")
        || lower.contains("no route")
        || lower.contains("unreachable")
    {
        chain
    } else {
        format!("{chain} (handshake failed: a different pre-shared key on the two sides is the likely cause; compare the key fingerprints in both logs)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(bytes: &[u8]) -> io::Result<Frame> {
        futures::executor::block_on(read_frame(&mut futures::io::Cursor::new(bytes)))
    }

    #[test]
    fn frames_round_trip_and_bad_ones_say_why() {
        let mut buf = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(write_frame(&mut buf, Frame::Bytes(b"hello".to_vec())))
            .unwrap();
        assert_eq!(
            read(buf.get_ref()).unwrap(),
            Frame::Bytes(b"hello".to_vec())
        );
        let Frame::Invalid(why) = read(&[0xff, 0xff, 0xff, 0xff]).unwrap() else {
            panic!()
        };
        assert!(why.contains("exceeds the limit"), "{why}");
        let Frame::Invalid(why) = read(&[0, 0, 0, 9, 1, 2]).unwrap() else {
            panic!()
        };
        assert!(why.contains("9 bytes"), "{why}");
        assert!(matches!(read(&[0]).unwrap(), Frame::Invalid(_)));
    }

    proptest! {
        #[test]
        fn arbitrary_streams_never_panic_nor_yield_oversized_frames(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Frame::Bytes(b)) = read(&bytes) {
                prop_assert!(b.len() <= MAX_MESSAGE_BYTES && b.len() + 4 <= bytes.len());
            }
        }
    }
}
