//! The frame codec of Polity's request-response protocols.
//!
//! A frame is an unsigned-varint length followed by that many bytes of protobuf.
//! The length is checked against [`FRAME_BYTES_MAX`] before a single payload byte is
//! read, so a peer cannot make a node allocate more than the limit; a frame that
//! breaks the rule is an `InvalidData` error, which request-response reports as a
//! failure that the event loop counts.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// Largest frame a node reads or writes: 4 MiB.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A varint for a length up to 2^63 needs at most 10 bytes.
const VARINT_BYTES_MAX: usize = 10;

/// The bytes of one request or response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame(pub Vec<u8>);

/// Length-prefixed frames, bounded by [`FRAME_BYTES_MAX`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

pub async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Frame> {
    let mut length: u64 = 0;
    for index in 0..VARINT_BYTES_MAX {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        length |= u64::from(byte[0] & 0x7f) << (7 * index);
        if byte[0] & 0x80 == 0 {
            if length > FRAME_BYTES_MAX as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {length} bytes is over the limit of {FRAME_BYTES_MAX}"),
                ));
            }
            let mut bytes = vec![0u8; length as usize];
            io.read_exact(&mut bytes).await?;
            return Ok(Frame(bytes));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "frame length varint is too long",
    ))
}

pub async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    frame: &Frame,
) -> io::Result<()> {
    if frame.0.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes is over the limit of {FRAME_BYTES_MAX}",
                frame.0.len()
            ),
        ));
    }
    let mut header = Vec::with_capacity(VARINT_BYTES_MAX);
    let mut length = frame.0.len() as u64;
    loop {
        let byte = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            header.push(byte);
            break;
        }
        header.push(byte | 0x80);
    }
    io.write_all(&header).await?;
    io.write_all(&frame.0).await?;
    io.flush().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Frame;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn check(bytes: &[u8]) -> io::Result<Frame> {
        futures::executor::block_on(read_frame(&mut Cursor::new(bytes.to_vec())))
    }

    #[test]
    fn frames_round_trip() {
        for length in [0usize, 1, 127, 128, 300, 70_000] {
            let frame = Frame(vec![7u8; length]);
            let mut buffer = Cursor::new(Vec::new());
            futures::executor::block_on(write_frame(&mut buffer, &frame)).unwrap();
            assert_eq!(check(&buffer.into_inner()).unwrap(), frame);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_payload() {
        // 2^40 as a varint, followed by nothing.
        let error = check(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("over the limit"));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert_eq!(
            check(&[0xff; 11]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            check(&[5, 1, 2]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(check(&[]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn writing_an_oversized_frame_is_refused() {
        let frame = Frame(vec![0u8; FRAME_BYTES_MAX + 1]);
        let mut buffer = Cursor::new(Vec::new());
        let error = futures::executor::block_on(write_frame(&mut buffer, &frame)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
