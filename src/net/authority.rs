//! Repairs the `:authority` of requests from Go gRPC clients of etcd ≤ 3.4.
//!
//! etcd 3.4's clientv3 (and so etcdctl 3.4, Debian bookworm's) dials one endpoint for
//! Maintenance calls (`endpoint status`, `endpoint hashkv`, `defrag`, …) with the endpoint
//! URL itself as the target, and sends `:authority: http://host:port`. etcd's Go server
//! ignores it; the `h2` crate rejects it as malformed (hyperium/h2#525) and resets the
//! stream with PROTOCOL_ERROR, and offers no way to relax that.
//!
//! This reader sits between the socket and HTTP/2. It passes every frame through untouched
//! except a header block holding an `:authority` literal that does not parse and contains
//! `://`: that literal is rewritten to the same length (`http://h:p` → `http---h:p`, a
//! valid host name), so the HPACK dynamic tables of client and server, whose entry sizes
//! count decoded lengths, stay in step. Anything it cannot parse switches it to plain
//! pass-through, leaving the judgement to `h2`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which the server keeps.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// A header block larger than this is left alone (h2 refuses it anyway).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// HPACK static table index of `:authority`.
const AUTHORITY_INDEX: u64 = 1;

/// A HEADERS frame waiting for its CONTINUATION frames.
struct PendingHeaders {
    original: Vec<u8>,
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

pub struct AuthorityFix<S> {
    inner: S,
    /// Read from the socket, not yet looked at.
    raw: BytesMut,
    /// Ready to hand to HTTP/2.
    out: BytesMut,
    preface_left: usize,
    pending: Option<PendingHeaders>,
    passthrough: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            preface_left: PREFACE_LEN,
            pending: None,
            passthrough: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn give_up(&mut self) {
        if let Some(p) = self.pending.take() {
            self.out.extend_from_slice(&p.original);
        }
        self.passthrough = true;
    }

    fn process(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            self.out.extend_from_slice(&self.raw.split_to(n));
            self.preface_left -= n;
        }
        while !self.passthrough && self.raw.len() >= FRAME_HEADER_LEN {
            let len = (usize::from(self.raw[0]) << 16) | (usize::from(self.raw[1]) << 8) | usize::from(self.raw[2]);
            if self.raw.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame = self.raw.split_to(FRAME_HEADER_LEN + len);
            self.frame(&frame);
        }
        if self.passthrough {
            let rest = self.raw.split();
            self.out.extend_from_slice(&rest);
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let (ty, flags) = (frame[3], frame[4]);
        let stream: [u8; 4] = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER_LEN..];
        match (ty, self.pending.as_mut()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    self.out.extend_from_slice(frame);
                    self.passthrough = true;
                    return;
                };
                let pending = PendingHeaders {
                    original: frame.to_vec(),
                    stream,
                    flags,
                    priority,
                    block: fragment.to_vec(),
                };
                if flags & END_HEADERS != 0 {
                    self.emit(pending);
                } else {
                    self.pending = Some(pending);
                }
            }
            (CONTINUATION, Some(p)) if p.stream == stream && p.block.len() + payload.len() <= MAX_HEADER_BLOCK => {
                p.original.extend_from_slice(frame);
                p.block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    if let Some(p) = self.pending.take() {
                        self.emit(p);
                    }
                }
            }
            (_, Some(_)) => {
                self.give_up();
                self.out.extend_from_slice(frame);
            }
            _ => self.out.extend_from_slice(frame),
        }
    }

    fn emit(&mut self, p: PendingHeaders) {
        let Some(block) = rewrite_block(&p.block) else {
            self.out.extend_from_slice(&p.original);
            return;
        };
        // Rebuilt without padding; END_STREAM and PRIORITY kept.
        let prio_len = if p.priority.is_some() { 5 } else { 0 };
        let first_len = block.len().min(MAX_FRAME_PAYLOAD - prio_len);
        let (first, mut rest) = block.split_at(first_len);
        let mut flags = p.flags & !(PADDED | END_HEADERS);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        write_frame_header(&mut self.out, first.len() + prio_len, HEADERS, flags, p.stream);
        if let Some(prio) = p.priority {
            self.out.extend_from_slice(&prio);
        }
        self.out.extend_from_slice(first);
        while !rest.is_empty() {
            let n = rest.len().min(MAX_FRAME_PAYLOAD);
            let (chunk, tail) = rest.split_at(n);
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            write_frame_header(&mut self.out, chunk.len(), CONTINUATION, flags, p.stream);
            self.out.extend_from_slice(chunk);
            rest = tail;
        }
    }
}

fn write_frame_header(out: &mut BytesMut, len: usize, ty: u8, flags: u8, stream: [u8; 4]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&stream);
}

/// The priority fields and header block fragment of a HEADERS payload.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = usize::from(*body.first()?);
        body = &body[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(<[u8; 5]>::try_from(body.get(..5)?).ok()?);
        body = &body[5..];
    }
    let end = body.len().checked_sub(pad)?;
    Some((priority, &body[..end]))
}

/// An HPACK integer with an N-bit prefix: its value and how many bytes it took.
fn decode_int(buf: &[u8], prefix_bits: u32) -> Option<(u64, usize)> {
    let mask = (1u16 << prefix_bits) as u8 - 1;
    let first = *buf.first()? & mask;
    if first < mask {
        return Some((u64::from(first), 1));
    }
    let mut value = u64::from(mask);
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        value = value.checked_add(u64::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
    None
}

/// An HPACK string literal: its decoded bytes and how many bytes it took.
fn read_string(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let huffman = *buf.first()? & 0x80 != 0;
    let (len, n) = decode_int(buf, 7)?;
    let end = n.checked_add(usize::try_from(len).ok()?)?;
    let bytes = buf.get(n..end)?;
    let decoded = if huffman {
        let mut out = Vec::with_capacity(bytes.len() * 2);
        httlib_huffman::decode(bytes, &mut out, httlib_huffman::DecoderSpeed::FourBits).ok()?;
        out
    } else {
        bytes.to_vec()
    };
    Some((decoded, end))
}

/// A raw (not Huffman-coded) HPACK string literal.
fn encode_string(value: &[u8], out: &mut Vec<u8>) {
    let len = value.len() as u64;
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        let mut rest = len - 127;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(value);
}

/// `http://host:port` → `http---host:port`: the same length, and a valid authority.
fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let at = value.windows(3).position(|w| w == b"://")?;
    let mut fixed = value.to_vec();
    fixed[at..at + 3].copy_from_slice(b"---");
    http::uri::Authority::try_from(fixed.as_slice()).ok()?;
    Some(fixed)
}

/// The header block with its malformed `:authority` literal repaired, or `None` when
/// there is nothing to repair (or the block cannot be parsed).
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0usize;
    let mut pos = 0usize;
    while pos < block.len() {
        let b = block[pos];
        if b & 0x80 != 0 {
            pos += decode_int(&block[pos..], 7)?.1; // indexed field
            continue;
        }
        if b & 0xe0 == 0x20 {
            pos += decode_int(&block[pos..], 5)?.1; // dynamic table size update
            continue;
        }
        let prefix = if b & 0x40 != 0 { 6 } else { 4 }; // literal, with or without indexing
        let (index, n) = decode_int(&block[pos..], prefix)?;
        pos += n;
        let is_authority = if index == 0 {
            let (name, n) = read_string(&block[pos..])?;
            pos += n;
            name == b":authority"
        } else {
            index == AUTHORITY_INDEX
        };
        let value_start = pos;
        let (value, n) = read_string(&block[pos..])?;
        pos += n;
        if is_authority {
            if let Some(fixed) = repair_authority(&value) {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(block.len() + 8));
                buf.extend_from_slice(&block[copied..value_start]);
                encode_string(&fixed, buf);
                copied = pos;
            }
        }
    }
    let mut buf = out?;
    buf.extend_from_slice(&block[copied..]);
    Some(buf)
}

/// The peer address and other connection facts, as tonic sees them on the socket.
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // End of stream: hand over whatever is left as it came.
                    if let Some(p) = this.pending.take() {
                        this.out.extend_from_slice(&p.original);
                    }
                    let rest = this.raw.split();
                    this.out.extend_from_slice(&rest);
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(rb.filled());
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn huffman(s: &[u8]) -> Vec<u8> {
        let mut coded = Vec::new();
        httlib_huffman::encode(s, &mut coded).unwrap();
        let mut out = Vec::new();
        // H bit + 7-bit length (short strings only in these tests).
        out.push(0x80 | coded.len() as u8);
        out.extend_from_slice(&coded);
        out
    }

    /// A header block as Go's hpack encoder writes it: `:method POST` (indexed), then
    /// `:authority` as a literal with incremental indexing on static name index 1,
    /// Huffman-coded, then `:path` as a literal without indexing on a literal name.
    fn go_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83];
        b.push(0x41);
        b.extend_from_slice(&huffman(authority));
        b.push(0x00);
        b.extend_from_slice(&[5]);
        b.extend_from_slice(b":path");
        b.extend_from_slice(&[3]);
        b.extend_from_slice(b"/x/");
        b
    }

    #[test]
    fn repairs_a_url_authority_to_the_same_length() {
        let fixed = rewrite_block(&go_block(b"http://127.0.0.1:2379")).expect("rewritten");
        let mut want = vec![0x83, 0x41];
        encode_string(b"http---127.0.0.1:2379", &mut want);
        want.extend_from_slice(&[0x00, 5]);
        want.extend_from_slice(b":path");
        want.extend_from_slice(&[3]);
        want.extend_from_slice(b"/x/");
        assert_eq!(fixed, want);
    }

    #[test]
    fn leaves_valid_authorities_and_garbage_alone() {
        assert_eq!(rewrite_block(&go_block(b"127.0.0.1:2379")), None);
        assert_eq!(rewrite_block(&go_block(b"localhost")), None);
        assert_eq!(rewrite_block(&[0x41, 0x85]), None, "truncated string");
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], 5), Some((1337, 3)));
    }

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = BytesMut::new();
        write_frame_header(&mut f, payload.len(), ty, flags, stream.to_be_bytes());
        f.extend_from_slice(payload);
        f.to_vec()
    }

    async fn through(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            // Byte by byte, so every frame boundary is split.
            for b in input {
                client.write_all(&[b]).await.unwrap();
            }
        });
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        let reader = async {
            let mut buf = [0u8; 64];
            loop {
                let n = fixed.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        let (w, ()) = tokio::join!(writer, reader);
        w.unwrap();
        out
    }

    #[tokio::test]
    async fn frames_pass_through_and_split_headers_are_rebuilt() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let block = go_block(b"http://localhost:2379");
        let (a, b) = block.split_at(4);
        let mut padded = vec![2u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0]);
        let headers = frame(HEADERS, PADDED | 0x1, 1, &padded);
        let continuation = frame(CONTINUATION, END_HEADERS, 1, b);
        let data = frame(0x0, 0x1, 3, b"payload");
        let clean = frame(HEADERS, END_HEADERS, 5, &go_block(b"localhost:2379"));

        let input = [
            preface.clone(),
            settings.clone(),
            headers,
            continuation,
            data.clone(),
            clean.clone(),
        ]
        .concat();
        let out = through(input).await;

        let fixed_block = rewrite_block(&block).unwrap();
        let rebuilt = frame(HEADERS, 0x1 | END_HEADERS, 1, &fixed_block);
        let want = [preface, settings, rebuilt, data, clean].concat();
        assert_eq!(out, want);
    }
}
