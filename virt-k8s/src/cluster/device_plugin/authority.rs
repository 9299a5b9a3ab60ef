//! The kubelet's calls with a `:authority` h2 accepts. The kubelet (gRPC-Go, before Kubernetes
//! 1.26's `WithAuthority("localhost")`) dials a device plugin by its socket's path and sends that
//! path as the HTTP/2 `:authority` (`/var/lib/kubelet/device-plugins/kubevirt-kvm.sock`), which
//! is no authority: h2, under tonic, resets such a stream with `PROTOCOL_ERROR` and the kubelet
//! logs `listAndWatch ended unexpectedly`. So each accepted connection goes through a small
//! relay: the client's frames pass unchanged except its header blocks, which are decoded (HPACK,
//! with the connection's table), get `localhost` for an authority that is a path, and are encoded
//! again (the relay's own encoder, so the server's decoder stays in step) into one HEADERS frame.
//! The server's frames pass unchanged.

use std::io;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{UnixListener, UnixStream};

/// The client connection preface (RFC 9113 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value: what a frame of ours may hold.
const MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are refused (the kubelet's are a few hundred bytes).
const MAX_BLOCK: usize = 1 << 20;

/// The connections `listener` accepts, each behind the relay.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<DuplexStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| relay(s));
        Some((next, l))
    })
}

/// Starts the relay of `client`; returns the server's end.
fn relay(client: UnixStream) -> DuplexStream {
    let (server_end, ours) = tokio::io::duplex(64 * 1024);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut ours_rx, mut ours_tx) = tokio::io::split(ours);
    tokio::spawn(async move {
        let up = async {
            let r = rewrite(&mut client_rx, &mut ours_tx).await;
            let _ = ours_tx.shutdown().await;
            r
        };
        let down = async {
            let _ = tokio::io::copy(&mut ours_rx, &mut client_tx).await;
            let _ = client_tx.shutdown().await;
        };
        // Either side closing ends the connection.
        tokio::select! {
            r = up => if let Err(e) = r {
                log::debug!("device plugin: a kubelet connection ended: {e}");
            },
            _ = down => {}
        }
    });
    server_end
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Whether `v` is a value h2 takes for `:authority` (what gRPC clients send over TCP): no path.
fn is_authority(v: &[u8]) -> bool {
    !v.is_empty() && !v.iter().any(|b| matches!(b, b'/' | b'?' | b'#' | b' '))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| bad("frame too large"))?;
    let mut head = [0u8; 9];
    head[..3].copy_from_slice(&len.to_be_bytes()[1..]);
    head[3] = kind;
    head[4] = flags;
    head[5..].copy_from_slice(&stream.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await
}

/// One frame: (type, flags, stream, payload); None at a clean end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    if len > MAX_BLOCK {
        return Err(bad(format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Ok(Some((head[3], head[4], stream, payload)))
}

/// Copies the client's frames from `r` to `w`, re-encoding every header block (see the module).
pub(super) async fn rewrite<R, W>(r: &mut R, w: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    r.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(bad("not an HTTP/2 connection preface"));
    }
    w.write_all(&preface).await?;
    let mut decoder = loona_hpack::Decoder::new();
    let mut encoder = loona_hpack::Encoder::new();
    while let Some((kind, flags, stream, payload)) = read_frame(r).await? {
        if kind != HEADERS {
            write_frame(w, kind, flags, stream, &payload).await?;
            continue;
        }
        // Padding and priority (RFC 9113 6.2), then the block's first fragment.
        let mut at = 0;
        let mut end = payload.len();
        if flags & PADDED != 0 {
            let pad = usize::from(*payload.first().ok_or_else(|| bad("HEADERS without its pad length"))?);
            at = 1;
            end = end.checked_sub(pad).filter(|e| *e >= at).ok_or_else(|| bad("HEADERS padding too long"))?;
        }
        let priority = if flags & PRIORITY != 0 {
            let p = payload.get(at..at + 5).ok_or_else(|| bad("HEADERS without its priority"))?.to_vec();
            at += 5;
            Some(p)
        } else {
            None
        };
        let mut block = payload.get(at..end).ok_or_else(|| bad("HEADERS too short"))?.to_vec();
        let mut done = flags & END_HEADERS != 0;
        while !done {
            let (k, f, s, p) =
                read_frame(r).await?.ok_or_else(|| bad("the stream ended in a header block"))?;
            if k != CONTINUATION || s != stream {
                return Err(bad("a header block interrupted"));
            }
            block.extend_from_slice(&p);
            if block.len() > MAX_BLOCK {
                return Err(bad("a header block too large"));
            }
            done = f & END_HEADERS != 0;
        }
        let mut headers = decoder.decode(&block).map_err(|e| bad(format!("HPACK: {e}")))?;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" && !is_authority(value) {
                *value = b"localhost".to_vec();
            }
        }
        let block = encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = priority.unwrap_or_default();
        let first_flags = (flags & END_STREAM) | if first.is_empty() { 0 } else { PRIORITY };
        // One HEADERS frame, and CONTINUATIONs for what does not fit.
        let (head, rest) = block.split_at(block.len().min(MAX_FRAME - first.len()));
        first.extend_from_slice(head);
        let ends = if rest.is_empty() { END_HEADERS } else { 0 };
        write_frame(w, HEADERS, first_flags | ends, stream, &first).await?;
        let n = rest.chunks(MAX_FRAME).len();
        for (i, c) in rest.chunks(MAX_FRAME).enumerate() {
            write_frame(w, CONTINUATION, if i + 1 == n { END_HEADERS } else { 0 }, stream, c).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gRPC-Go request as the kubelet sends it: the socket's path as `:authority`, in a padded
    /// HEADERS frame continued by a CONTINUATION, then DATA; two requests, so the second reuses
    /// the connection's HPACK table.
    #[tokio::test]
    async fn a_path_authority_becomes_localhost_and_other_frames_pass() {
        let path = b"/var/lib/kubelet/device-plugins/kubevirt-kvm.sock".as_slice();
        let req = |p: &'static [u8]| {
            vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
                (b":path".to_vec(), p.to_vec()),
                (b":authority".to_vec(), path.to_vec()),
                (b"content-type".to_vec(), b"application/grpc".to_vec()),
            ]
        };
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>| {
            let len = payload.len() as u32;
            out.extend_from_slice(&len.to_be_bytes()[1..]);
            out.extend_from_slice(&[kind, flags]);
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(payload);
        };
        frame(0x4, 0, 0, &[], &mut input); // SETTINGS
        let h = req(b"/v1beta1.DevicePlugin/ListAndWatch");
        let block = enc.encode(h.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let (a, b) = block.split_at(10);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        frame(HEADERS, PADDED, 1, &padded, &mut input);
        frame(CONTINUATION, END_HEADERS, 1, b, &mut input);
        frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0], &mut input);
        let h2 = req(b"/v1beta1.DevicePlugin/Allocate");
        let block = enc.encode(h2.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &block, &mut input);

        let mut out = Vec::new();
        rewrite(&mut input.as_slice(), &mut out).await.unwrap();

        assert_eq!(&out[..24], PREFACE);
        let mut r = &out[24..];
        let mut dec = loona_hpack::Decoder::new();
        let mut frames = Vec::new();
        while let Some(f) = read_frame(&mut r).await.unwrap() {
            frames.push(f);
        }
        let kinds: Vec<(u8, u8, u32)> = frames.iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            [
                (0x4, 0, 0),
                (HEADERS, END_HEADERS, 1),
                (0x0, END_STREAM, 1),
                (HEADERS, END_HEADERS | END_STREAM, 3)
            ]
        );
        for (i, want) in
            [(1, b"/v1beta1.DevicePlugin/ListAndWatch".as_slice()), (3, b"/v1beta1.DevicePlugin/Allocate")]
        {
            let got = dec.decode(&frames[i].3).unwrap();
            let get = |n: &[u8]| got.iter().find(|(k, _)| k.as_slice() == n).map(|(_, v)| v.clone());
            assert_eq!(get(b":authority").as_deref(), Some(b"localhost".as_slice()));
            assert_eq!(get(b":path").as_deref(), Some(want));
            assert_eq!(get(b"content-type").as_deref(), Some(b"application/grpc".as_slice()));
        }
        assert_eq!(frames[2].3, [0, 0, 0, 0, 0]);
        assert!(is_authority(b"localhost") && is_authority(b"127.0.0.1:80") && !is_authority(path));
    }
}
