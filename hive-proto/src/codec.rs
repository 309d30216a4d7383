//! Byte-level framing for both protocols, and nothing else: the operator RPC's
//! u32-big-endian length-delimited postcard frames ([`FrameCodec`]) and the
//! agent protocol's newline-delimited lines ([`LineCodec`]). Every limit is a
//! named constant; every malformed input becomes a [`DecodeError`], never a
//! panic. Neither codec looks inside a frame beyond decoding it.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// Largest operator RPC frame body, in bytes (DESIGN §3).
pub const MAX_FRAME: usize = 1024 * 1024;

/// Largest agent protocol line, in bytes, newline excluded. A longer line
/// closes the connection: we cannot know where the next request starts.
pub const MAX_LINE: usize = 128 * 1024;

/// Why bytes from a peer could not be turned into a frame or a line.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    #[error("line is over the {MAX_LINE}-byte limit")]
    LineTooLong,
    #[error("frame does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("frame could not be encoded: {0}")]
    Encode(postcard::Error),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Decodes frames of type `In` and encodes frames of type `Out`, each a
/// postcard body behind a u32 big-endian length.
///
/// The length is read only at a frame boundary and the header stays in the
/// buffer until the whole body has arrived, so a frame split across any
/// number of reads decodes the same as one that arrived whole; an announced
/// length over [`MAX_FRAME`] is refused before any body byte is buffered.
pub struct FrameCodec<In, Out> {
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes in a frame's length header.
const HEADER: usize = 4;

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, DecodeError> {
        let Some(header) = src.get(..HEADER) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::FrameTooLarge(len));
        }
        if src.len() < HEADER + len {
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        let body = src.split_to(len);
        Ok(Some(postcard::from_bytes(&body)?))
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = DecodeError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), DecodeError> {
        let body = postcard::to_stdvec(&item).map_err(DecodeError::Encode)?;
        if body.len() > MAX_FRAME {
            return Err(DecodeError::FrameTooLarge(body.len()));
        }
        dst.reserve(4 + body.len());
        dst.put_u32(body.len() as u32);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// Decodes one complete frame body from a byte slice: the entry point for
/// fuzzing and for tests that hold a whole frame.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    FrameCodec::<T, ()>::new().decode(&mut buf)
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes. It yields
/// raw bytes: UTF-8 and JSON are the next layer's business, so that a bad
/// line gets an error reply instead of killing the connection. A trailing
/// `\r` is dropped so `socat` users on CRLF terminals are understood.
#[derive(Debug, Default)]
pub struct LineCodec {
    /// How far into the buffer we have already looked for `\n`.
    scanned: usize,
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        let start = self.scanned.min(src.len());
        match src[start..].iter().position(|b| *b == b'\n') {
            Some(off) => {
                let end = start + off;
                self.scanned = 0;
                if end > MAX_LINE {
                    return Err(DecodeError::LineTooLong);
                }
                let mut line = src.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                Ok(Some(line.freeze()))
            }
            None if src.len() > MAX_LINE => Err(DecodeError::LineTooLong),
            None => {
                self.scanned = src.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        match self.decode(src)? {
            Some(line) => Ok(Some(line)),
            // A last line without its newline still counts.
            None if !src.is_empty() => {
                self.scanned = 0;
                let line = src.split_to(src.len());
                Ok(Some(line.freeze()))
            }
            None => Ok(None),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for LineCodec {
    type Error = DecodeError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), DecodeError> {
        let item = item.as_ref();
        dst.reserve(item.len() + 1);
        dst.put_slice(item);
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// Splits a whole buffer into lines as the server would: the fuzzing entry
/// point for [`LineCodec`].
pub fn split_lines(bytes: &[u8]) -> Result<Vec<Bytes>, DecodeError> {
    let mut codec = LineCodec::default();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(line) = codec.decode_eof(&mut buf)? {
        out.push(line);
        if buf.remaining() == 0 {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_limits() {
        let mut codec = FrameCodec::<Vec<u32>, Vec<u32>>::new();
        let mut buf = BytesMut::new();
        codec.encode(vec![1, 2, 3], &mut buf).unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 4]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(vec![1, 2, 3]));

        let mut big = BytesMut::from(&((MAX_FRAME + 1) as u32).to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut big),
            Err(DecodeError::FrameTooLarge(n)) if n == MAX_FRAME + 1
        ));

        // A partial frame is not an error, just not yet a frame.
        let mut part = BytesMut::from(&[0u8, 0, 0, 9, 1][..]);
        assert!(codec.decode(&mut part).unwrap().is_none());
    }

    #[test]
    fn frames_split_across_reads_decode_whole() {
        // Two frames well over one read's worth, delivered in odd-sized
        // chunks: each must come out once, intact, and never be mistaken
        // for an oversized header halfway through its body.
        let first: Vec<u32> = (0..20_000).collect();
        let second: Vec<u32> = (0..3).collect();
        let mut codec = FrameCodec::<Vec<u32>, Vec<u32>>::new();
        let mut wire = BytesMut::new();
        codec.encode(first.clone(), &mut wire).unwrap();
        codec.encode(second.clone(), &mut wire).unwrap();

        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in wire.chunks(4093) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, vec![first, second]);
        assert!(buf.is_empty());
    }

    #[test]
    fn lines_split_and_limit() {
        let lines = split_lines(b"a\r\nb\n\nc").unwrap();
        assert_eq!(lines, vec![&b"a"[..], &b"b"[..], &b""[..], &b"c"[..]]);
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(matches!(split_lines(&long), Err(DecodeError::LineTooLong)));
        let mut exact = vec![b'x'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(split_lines(&exact).unwrap()[0].len(), MAX_LINE);
    }
}
