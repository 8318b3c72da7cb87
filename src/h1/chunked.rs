//! The chunked transfer coding of an upstream response (RFC 9112 §7.1), decoded as bytes
//! arrive. Data is handed on as slices of the read buffer (no copy); chunk extensions are
//! skipped and trailer fields dropped (the gateway forwards nothing it did not look at).
//! Every line it reads is bounded, so a hostile or broken upstream cannot grow memory.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size, extensions) and longest trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size line longer than {MAX_LINE} bytes")]
    LongLine,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("trailer section longer than {MAX_TRAILERS} bytes")]
    LongTrailers,
}

/// What one step of decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer holds no complete next piece: read more.
    NeedMore,
    /// The last chunk and the trailer section were read.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading `1*HEXDIG`; `value` so far, `digits` read.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: whitespace and extensions up to CR.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section; `at_line_start` when the previous bytes ended a line.
    Trailer {
        at_line_start: bool,
    },
    TrailerLf {
        at_line_start: bool,
    },
    Done,
}

#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Bytes of the current size line, or of the whole trailer section.
    seen: usize,
    /// The size of the chunk whose line is being read.
    size: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            seen: 0,
            size: 0,
        }
    }
}

impl Chunked {
    /// Consume framing bytes from `buf` until a piece of data, the end, or the end of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkedError> {
        loop {
            if let State::Data(left) = self.state {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Step::Data(data));
            }
            if self.state == State::Done {
                return Ok(Step::Done);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Step::NeedMore);
            };
            buf.advance(1);
            self.framing_byte(byte)?;
        }
    }

    fn framing_byte(&mut self, byte: u8) -> Result<(), ChunkedError> {
        self.seen += 1;
        self.state = match self.state {
            State::Size { value, digits } => {
                if self.seen > MAX_LINE {
                    return Err(ChunkedError::LongLine);
                }
                match (byte as char).to_digit(16) {
                    Some(d) => {
                        // 16 hex digits fill a u64; more would overflow.
                        if digits >= 16 {
                            return Err(ChunkedError::Size);
                        }
                        State::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(ChunkedError::Size),
                    None => {
                        self.size = value;
                        self.after_size(byte)?
                    }
                }
            }
            State::Extension => {
                if self.seen > MAX_LINE {
                    return Err(ChunkedError::LongLine);
                }
                self.after_size(byte)?
            }
            State::SizeLf => {
                if byte != b'\n' {
                    return Err(ChunkedError::Size);
                }
                self.seen = 0;
                if self.size == 0 {
                    State::Trailer {
                        at_line_start: true,
                    }
                } else {
                    State::Data(self.size)
                }
            }
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => {
                self.seen = 0;
                State::Size {
                    value: 0,
                    digits: 0,
                }
            }
            State::DataCr | State::DataLf => return Err(ChunkedError::DataEnd),
            State::Trailer { at_line_start } => {
                if self.seen > MAX_TRAILERS {
                    return Err(ChunkedError::LongTrailers);
                }
                if byte == b'\r' {
                    State::TrailerLf { at_line_start }
                } else {
                    State::Trailer {
                        at_line_start: false,
                    }
                }
            }
            State::TrailerLf { at_line_start } => match byte {
                b'\n' if at_line_start => State::Done,
                b'\n' => State::Trailer {
                    at_line_start: true,
                },
                _ => return Err(ChunkedError::Size),
            },
            // Handled by `step` before a byte is taken.
            State::Data(_) | State::Done => self.state,
        };
        Ok(())
    }

    /// A byte after the size digits: whitespace or an extension until CR (RFC 9112 §7.1.1).
    fn after_size(&mut self, byte: u8) -> Result<State, ChunkedError> {
        match byte {
            b'\r' => Ok(State::SizeLf),
            // A bare LF or other control bytes end nothing: refused rather than guessed at.
            b'\n' | 0..=0x08 | 0x0a..=0x1f | 0x7f => Err(ChunkedError::Size),
            _ => Ok(State::Extension),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in pieces of `piece` bytes; the data, and whether the end was seen.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, bool), ChunkedError> {
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in input.chunks(piece.max(1)) {
            buf.extend_from_slice(part);
            loop {
                match chunked.step(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::Done => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunks_extensions_and_trailers_in_any_split() {
        let input =
            b"5;ext=1\r\nhello\r\n6 ; a=\"b\"\r\n world\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n";
        for piece in [1, 2, 3, 7, input.len()] {
            assert_eq!(
                decode(input, piece),
                Ok((b"hello world".to_vec(), true)),
                "{piece}"
            );
        }
        assert_eq!(
            decode(b"A\r\n0123456789\r\n0\r\n\r\n", 4),
            Ok((b"0123456789".to_vec(), true))
        );
    }

    #[test]
    fn bytes_after_the_end_stay_in_the_buffer() {
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(
            chunked.step(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"a")))
        );
        assert_eq!(chunked.step(&mut buf), Ok(Step::Done));
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5\r\nhello\rX",
            b"11111111111111111\r\n",
            b"5\x00\r\n",
            b"0\r\nX: 1\rX",
        ] {
            assert!(
                decode(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lines_are_bounded() {
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        assert_eq!(decode(&long, 100), Err(ChunkedError::LongLine));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 8 + 1 {
            trailers.extend_from_slice(b"X: abc\r\n");
        }
        assert_eq!(decode(&trailers, 64), Err(ChunkedError::LongTrailers));
        // The largest size that fits a u64 is read, not refused.
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            chunked.step(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"ab")))
        );
        assert_eq!(chunked.step(&mut buf), Ok(Step::NeedMore));
    }
}
