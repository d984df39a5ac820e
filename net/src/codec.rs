//! The frame codec of Polity's request-response protocols.
//!
//! A frame is an unsigned-varint length followed by that many bytes of protobuf.
//! The length is checked against [`FRAME_BYTES_MAX`] before a single payload byte is
//! read, so a peer cannot make a node allocate more than the limit, and the payload
//! is read in chunks into a buffer that grows with what arrived, so a half-sent frame
//! holds only its bytes, not its announced length; a frame that
//! breaks the rule is an `InvalidData` error, which request-response reports as a
//! failure that the event loop counts.
//!
//! Inbound requests being read share one byte budget per node
//! ([`INBOUND_READING_BYTES_MAX`]): a request whose announced length does not fit
//! what is left is refused before its payload is read. Many streams of many peers
//! cannot together make the node read (and hold) more than that at once; what the
//! node keeps after reading is its own budgets' business.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// Largest frame a node reads or writes: 4 MiB.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A varint for a length up to 2^63 needs at most 10 bytes.
const VARINT_BYTES_MAX: usize = 10;
/// A frame's bytes are read in chunks of at most this size, and its buffer grows
/// with what arrived (doubling from one chunk, capped at the announced length): a
/// peer that announces 4 MiB and sends one byte makes the node hold 16 KiB, not 4 MiB.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The bytes of one request or response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame(pub Vec<u8>);

/// Bytes of inbound requests a node reads at once, across all streams and peers.
pub const INBOUND_READING_BYTES_MAX: usize = 48 << 20;

/// Length-prefixed frames, bounded by [`FRAME_BYTES_MAX`]; the codecs of one node
/// share their inbound reading budget.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    reading: Arc<ReadingBudget>,
}

/// The bytes of inbound requests being read now, out of a limit.
#[derive(Debug)]
pub struct ReadingBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ReadingBudget {
    pub fn new(limit: usize) -> Arc<ReadingBudget> {
        Arc::new(ReadingBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Reserves `bytes`, or `None` when they do not fit.
    fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reserved> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + bytes > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Reserved {
                        budget: Arc::clone(self),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes reserved while one request is read; given back when dropped.
struct Reserved {
    budget: Arc<ReadingBudget>,
    bytes: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl FrameCodec {
    /// A codec reading requests within `reading` (share one per node).
    pub fn new(reading: Arc<ReadingBudget>) -> FrameCodec {
        FrameCodec { reading }
    }
}

/// Reads a request frame within `budget`: the announced length is reserved before
/// the payload is read, and a length that does not fit is refused.
async fn read_request_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    budget: &Arc<ReadingBudget>,
) -> io::Result<Frame> {
    let length = read_length(io).await?;
    let Some(_reserved) = budget.reserve(length) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the node is reading its budget of inbound requests; {length} bytes refused"),
        ));
    };
    read_body(io, length).await.map(Frame)
}

pub async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Frame> {
    let length = read_length(io).await?;
    read_body(io, length).await.map(Frame)
}

/// A frame's varint length, checked against [`FRAME_BYTES_MAX`].
async fn read_length<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
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
            return Ok(length as usize);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "frame length varint is too long",
    ))
}

/// Reads exactly `length` bytes, holding no more memory than what has arrived
/// (rounded up to the next doubling, never past `length`). Each byte of the buffer
/// is zeroed once, when the buffer grows, and reads ask for a chunk at a time.
async fn read_body<T: AsyncRead + Unpin + Send>(io: &mut T, length: usize) -> io::Result<Vec<u8>> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut filled = 0;
    while filled < length {
        if filled == bytes.len() {
            let grown = (bytes.len() * 2).clamp(READ_CHUNK_BYTES.min(length), length);
            bytes.reserve_exact(grown - bytes.len());
            bytes.resize(grown, 0);
        }
        let end = (filled + READ_CHUNK_BYTES).min(bytes.len());
        let read = io.read(&mut bytes[filled..end]).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("frame ended after {filled} of {length} bytes"),
            ));
        }
        filled += read;
    }
    Ok(bytes)
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
        read_request_frame(io, &self.reading).await
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
    fn requests_over_the_reading_budget_are_refused_and_the_budget_comes_back() {
        let budget = ReadingBudget::new(100);
        let frame = |length: usize| {
            let mut buffer = Cursor::new(Vec::new());
            futures::executor::block_on(write_frame(&mut buffer, &Frame(vec![1; length]))).unwrap();
            buffer.into_inner()
        };
        let held = budget.reserve(60).unwrap();
        let read = |length| {
            futures::executor::block_on(read_request_frame(
                &mut Cursor::new(frame(length)),
                &budget,
            ))
        };
        let error = read(50).unwrap_err();
        assert!(error.to_string().contains("budget"), "{error}");
        assert_eq!(read(40).unwrap().0.len(), 40);
        drop(held);
        assert_eq!(read(100).unwrap().0.len(), 100);
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
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

    /// Serves `bytes`, and remembers the largest read it was asked for.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        largest_read: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buffer: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.largest_read = self.largest_read.max(buffer.len());
            let n = buffer.len().min(self.bytes.len() - self.at);
            buffer[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn a_frame_is_read_in_chunks_into_a_buffer_of_exactly_its_size() {
        for length in [
            1usize,
            READ_CHUNK_BYTES,
            READ_CHUNK_BYTES + 1,
            FRAME_BYTES_MAX,
        ] {
            let mut reader = Trickle {
                bytes: vec![3u8; length],
                at: 0,
                largest_read: 0,
            };
            let body = futures::executor::block_on(read_body(&mut reader, length)).unwrap();
            assert_eq!(body.len(), length);
            assert_eq!(body.capacity(), length, "no slack past the frame");
            assert!(reader.largest_read <= READ_CHUNK_BYTES);
        }
    }

    #[test]
    fn a_half_sent_frame_is_an_error_holding_only_what_arrived() {
        // 4 MiB announced, one chunk sent: the read asks for a chunk at a time, so
        // what the peer did not send was never allocated.
        let mut reader = Trickle {
            bytes: vec![3u8; 1000],
            at: 0,
            largest_read: 0,
        };
        let error = futures::executor::block_on(read_body(&mut reader, FRAME_BYTES_MAX));
        assert_eq!(error.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(reader.largest_read <= READ_CHUNK_BYTES);
    }

    #[test]
    fn writing_an_oversized_frame_is_refused() {
        let frame = Frame(vec![0u8; FRAME_BYTES_MAX + 1]);
        let mut buffer = Cursor::new(Vec::new());
        let error = futures::executor::block_on(write_frame(&mut buffer, &frame)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
