//! The chunked transfer coding (RFC 9112 §7.1).
//!
//! The decoder finds where a chunked body ends and hands out the chunk data without copying
//! it (slices of the read buffer). It is as strict as hyper's: CRLF line ends only, hex sizes
//! that must fit in 64 bits, chunk extensions skipped but bounded, trailer fields skipped but
//! bounded. A byte out of place is an error naming the place, never a guess: a lenient chunk
//! parser in front of a strict one is how responses get smuggled onto a reused connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Chunk extensions are skipped; this bounds how many bytes of them a body may carry in
/// total (hyper uses the same figure), so that a body of extensions cannot pin the CPU.
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;
/// Trailer fields are skipped (they are not forwarded); bounded like the extensions.
const MAX_TRAILER_BYTES: u64 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("unexpected byte {byte:#04x} in the chunk {place}")]
    Unexpected { byte: u8, place: &'static str },
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("chunk extensions longer than {MAX_EXTENSION_BYTES} bytes")]
    ExtensionsTooLong,
    #[error("trailer section longer than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk size; `digits` counts them.
    Size,
    /// Whitespace after the size (hyper and nginx accept it before `;` or CR).
    SizeSpace,
    /// `;name=value...` up to CR.
    Extension,
    /// CR seen after the size line, LF expected.
    SizeLf,
    /// `size` bytes of data to go.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What [`ChunkedDecoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Chunk data, split off the front of the buffer.
    Data(Bytes),
    /// The buffer is used up before the end: read more.
    More,
    /// The last chunk and the trailer section are complete; bytes after them stay in the buffer.
    Done,
}

/// Incremental decoder: feed it the read buffer as it fills.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    extension_bytes: u64,
    trailer_bytes: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// Consumes framing bytes from the front of `buf` and returns the next piece of data, or
    /// says that more input is needed, or that the body is complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Data => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    // `size` > 0 here; the cast cannot truncate: it is bounded by `buf.len()`.
                    let n = self.size.min(buf.len() as u64) as usize;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                _ => {}
            }
            let Some(&byte) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            self.state = self.next(byte)?;
        }
    }

    fn next(&mut self, byte: u8) -> Result<State, ChunkError> {
        let unexpected = |place| Err(ChunkError::Unexpected { byte, place });
        Ok(match self.state {
            State::Size => match byte {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = match byte {
                        b'0'..=b'9' => byte - b'0',
                        b'a'..=b'f' => byte - b'a' + 10,
                        _ => byte - b'A' + 10,
                    };
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                        .ok_or(ChunkError::SizeOverflow)?;
                    self.digits = self.digits.saturating_add(1);
                    State::Size
                }
                _ if self.digits == 0 => return unexpected("size"),
                b' ' | b'\t' => State::SizeSpace,
                b';' => State::Extension,
                b'\r' => State::SizeLf,
                _ => return unexpected("size"),
            },
            State::SizeSpace => match byte {
                b' ' | b'\t' => State::SizeSpace,
                b';' => State::Extension,
                b'\r' => State::SizeLf,
                _ => return unexpected("size line"),
            },
            State::Extension => match byte {
                b'\r' => State::SizeLf,
                // A bare LF inside an extension: some parsers end the line there, some do
                // not. Refuse rather than pick one.
                b'\n' => return unexpected("extension"),
                _ => {
                    self.extension_bytes += 1;
                    if self.extension_bytes > MAX_EXTENSION_BYTES {
                        return Err(ChunkError::ExtensionsTooLong);
                    }
                    State::Extension
                }
            },
            State::SizeLf => match byte {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => State::Data,
                _ => return unexpected("size line end"),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return unexpected("data end"),
            },
            State::DataLf => match byte {
                b'\n' => {
                    self.digits = 0;
                    State::Size
                }
                _ => return unexpected("data end"),
            },
            State::TrailerStart => match byte {
                b'\r' => State::EndLf,
                b'\n' => return unexpected("trailer section"),
                _ => self.trailer_byte(State::Trailer)?,
            },
            State::Trailer => match byte {
                b'\r' => State::TrailerLf,
                b'\n' => return unexpected("trailer field"),
                _ => self.trailer_byte(State::Trailer)?,
            },
            State::TrailerLf => match byte {
                b'\n' => State::TrailerStart,
                _ => return unexpected("trailer field end"),
            },
            State::EndLf => match byte {
                b'\n' => State::Done,
                _ => return unexpected("body end"),
            },
            // Handled by `decode` before a byte is taken.
            State::Data | State::Done => return unexpected("body"),
        })
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailersTooLong);
        }
        Ok(next)
    }
}

/// Appends one chunk (size line, data, CRLF) to `out`. Empty data writes nothing: a
/// zero-size chunk would end the body.
pub(crate) fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    push_hex(data.len() as u64, out);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn push_hex(mut n: u64, out: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in one piece; the data, and what is left after the end.
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut buf = BytesMut::from(input);
        let mut data = Vec::new();
        loop {
            match d.decode(&mut buf)? {
                Step::Data(b) => data.extend_from_slice(&b),
                Step::More => panic!("incomplete input: {:?}", String::from_utf8_lossy(input)),
                Step::Done => return Ok((data, buf.to_vec())),
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let (data, rest) =
            decode_all(b"5\r\nhello\r\n6;ext=1;q=\"a\"\r\n world\r\n0\r\n\r\nNEXT").expect("valid");
        assert_eq!(data, b"hello world");
        assert_eq!(rest, b"NEXT");
        let (data, rest) = decode_all(b"A \t\r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n")
            .expect("valid");
        assert_eq!(data, b"0123456789");
        assert!(rest.is_empty());
        let (data, _) = decode_all(b"000\r\n\r\n").expect("leading zeros");
        assert!(data.is_empty());
    }

    #[test]
    fn malformed_framing_is_refused_with_the_place() {
        let cases: &[(&[u8], &str)] = &[
            (b"\r\n", "no size"),
            (b"x\r\n", "not hex"),
            (b"-1\r\n", "sign"),
            (b"0x10\r\n", "0x prefix"),
            (b" 5\r\nhello\r\n", "leading space"),
            (b"5\nhello\r\n", "bare LF after size"),
            (b"5\r\nhelloX\r\n", "data longer than size"),
            (b"5\r\nhello\n0\r\n\r\n", "bare LF after data"),
            (b"5;a\nb\r\nhello\r\n", "LF inside extension"),
            (b"5 x\r\n", "garbage after size"),
            (b"0\r\nX: 1\n\r\n", "bare LF in trailer"),
            (b"0\r\n\n", "bare LF at end"),
            (b"0\r\n\rX", "CR not followed by LF"),
        ];
        for (input, why) in cases {
            let mut d = ChunkedDecoder::new();
            let mut buf = BytesMut::from(*input);
            let mut result = Ok(Step::More);
            for _ in 0..64 {
                result = d.decode(&mut buf);
                if !matches!(result, Ok(Step::Data(_))) {
                    break;
                }
            }
            assert!(
                matches!(result, Err(ChunkError::Unexpected { .. })),
                "{why}: {result:?}"
            );
        }
    }

    #[test]
    fn size_overflow_and_unbounded_extensions_are_refused() {
        let mut d = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"1ffffffffffffffff\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Err(ChunkError::SizeOverflow));
        // The largest size is fine (it is the data that will never come).
        let mut d = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Step::More));

        let mut d = ChunkedDecoder::new();
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', 20_000));
        let mut buf = BytesMut::from(&long[..]);
        assert_eq!(d.decode(&mut buf), Err(ChunkError::ExtensionsTooLong));

        let mut d = ChunkedDecoder::new();
        let mut long = b"0\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 20_000));
        let mut buf = BytesMut::from(&long[..]);
        assert_eq!(d.decode(&mut buf), Err(ChunkError::TrailersTooLong));
    }

    #[test]
    fn encoder_writes_what_the_decoder_reads() {
        let mut out = BytesMut::new();
        encode_chunk(b"", &mut out);
        assert!(out.is_empty(), "an empty chunk would end the body");
        encode_chunk(&[b'x'; 300], &mut out);
        out.put_slice(LAST_CHUNK);
        assert!(out.starts_with(b"12c\r\n"));
        let (data, rest) = decode_all(&out).expect("valid");
        assert_eq!(data, vec![b'x'; 300]);
        assert!(rest.is_empty());
    }

    proptest! {
        /// Any body, cut into any chunks, encoded, then fed to the decoder in any pieces,
        /// comes back whole, and the bytes after the body are left untouched.
        #[test]
        fn round_trip_with_random_splits(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk_cuts in proptest::collection::vec(1usize..300, 0..16),
            feed_cuts in proptest::collection::vec(1usize..64, 1..64),
        ) {
            let mut encoded = BytesMut::new();
            let mut rest = &body[..];
            for cut in &chunk_cuts {
                let n = (*cut).min(rest.len());
                encode_chunk(&rest[..n], &mut encoded);
                rest = &rest[n..];
            }
            encode_chunk(rest, &mut encoded);
            encoded.put_slice(LAST_CHUNK);
            encoded.put_slice(b"GET /next");

            let mut d = ChunkedDecoder::new();
            let mut buf = BytesMut::new();
            let mut input = &encoded[..];
            let mut out = Vec::new();
            let mut feeds = feed_cuts.iter().cycle();
            loop {
                match d.decode(&mut buf) {
                    Ok(Step::Data(b)) => out.extend_from_slice(&b),
                    Ok(Step::More) => {
                        prop_assert!(!input.is_empty(), "decoder wants more after the end");
                        let n = (*feeds.next().unwrap_or(&1)).min(input.len());
                        buf.extend_from_slice(&input[..n]);
                        input = &input[n..];
                    }
                    Ok(Step::Done) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            }
            prop_assert_eq!(out, body);
            let mut left = buf.to_vec();
            left.extend_from_slice(input);
            prop_assert_eq!(left, b"GET /next".to_vec());
        }

        /// Garbage never panics and never loops: it ends in data, an error, or a request for
        /// more input.
        #[test]
        fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = ChunkedDecoder::new();
            let mut buf = BytesMut::from(&input[..]);
            for _ in 0..1024 {
                match d.decode(&mut buf) {
                    Ok(Step::Data(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
