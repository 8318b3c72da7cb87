//! The request head the gateway writes and the response head it reads back: the response is
//! parsed with httparse, its header values kept as slices of the bytes read (no copy per
//! header), and the framing of the body that follows decided by RFC 9112 §6.3.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Most header fields in a response head (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// Largest response head, in bytes (about hyper's default read buffer limit).
pub const MAX_HEAD: usize = 400 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("response head with an invalid header")]
    Header,
    #[error("response with an invalid or conflicting Content-Length")]
    ContentLength,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A response head as read.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Offsets of one header field in the head's bytes.
#[derive(Clone, Copy, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Write `METHOD target HTTP/1.1`, the headers and the blank line into `out`. The parts are
/// valid by construction (`http` refuses CR and LF in names, values and targets).
pub fn write_request(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether `buf` may hold a complete head: an empty line (`\n\n` or `\n\r\n`, as httparse
/// accepts) after the first `searched` bytes, which are known to hold none; `searched` moves
/// on so the next call looks only at new bytes.
pub fn may_be_complete(buf: &[u8], searched: &mut usize) -> bool {
    // The end may straddle what was searched and what is new: look two bytes back.
    let from = searched.saturating_sub(2);
    let rest = buf.get(from..).unwrap_or_default();
    // Line to line (memchr's vector search), not byte by byte: this runs on every response.
    let found = memchr::memchr_iter(b'\n', rest).any(|i| match rest.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => rest.get(i + 2) == Some(&b'\n'),
        _ => false,
    });
    if !found {
        *searched = buf.len();
    }
    found
}

/// Take a complete response head off the front of `buf`; `None` while it is incomplete.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, HeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut fields = [Field::default(); MAX_HEADERS];
    let (len, code, version, count) = {
        let mut response = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        )? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(None),
        };
        // The head is at most MAX_HEAD bytes (the caller stops reading beyond), so offsets fit.
        let offset = |s: &[u8]| {
            let start = (s.as_ptr() as usize - base) as u32;
            (start, start + s.len() as u32)
        };
        for (field, h) in fields.iter_mut().zip(response.headers.iter()) {
            *field = Field {
                name: offset(h.name.as_bytes()),
                value: offset(h.value),
            };
        }
        (
            len,
            response.code.unwrap_or(0),
            response.version.unwrap_or(1),
            response.headers.len(),
        )
    };
    let bytes = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Header)?;
    let mut headers = HeaderMap::with_capacity(count);
    for field in &fields[..count] {
        let range = |(a, b): (u32, u32)| a as usize..b as usize;
        let name =
            HeaderName::from_bytes(&bytes[range(field.name)]).map_err(|_| HeadError::Header)?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(range(field.value)))
            .map_err(|_| HeadError::Header)?;
        headers.append(name, value);
    }
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// How the body of `head` is delimited and whether the connection can carry another request
/// after it (RFC 9112 §6.3, §9.3). A response with both Transfer-Encoding and Content-Length
/// is read by its transfer coding, loses the Content-Length, and closes its connection.
pub fn framing(head: &mut Head, request: &Method) -> Result<(Framing, bool), HeadError> {
    let mut keep_alive =
        head.version == Version::HTTP_11 && !connection_has(&head.headers, "close");
    let status = head.status.as_u16();
    if request == Method::HEAD || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok((Framing::Empty, keep_alive));
    }
    let headers = &mut head.headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .map(<[u8]>::trim_ascii);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => {
                (Framing::Chunked, keep_alive)
            }
            _ => (Framing::UntilClose, false),
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::ContentLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse(&mut buf).unwrap().unwrap()
    }

    fn frame(raw: &str, method: Method) -> Result<(Framing, bool), HeadError> {
        framing(&mut head(raw), &method)
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_with_its_fields_in_order() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nX-Name: caf\xe9\r\nset-cookie: b=2\r\nContent-Length: 2\r\n\r\nokHTTP"[..],
        );
        let h = parse(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.version, Version::HTTP_11);
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h.headers["x-name"].as_bytes(), b"caf\xe9");
        assert_eq!(&buf[..], b"okHTTP");
        // Incomplete: nothing taken.
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: b\r\n"[..]);
        assert!(parse(&mut partial).unwrap().is_none());
        assert_eq!(partial.len(), 23);
    }

    #[test]
    fn a_complete_head_is_noticed_in_any_split_and_each_byte_is_searched_once() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\nA: b\n\n",
        ] {
            for split in 1..raw.len() {
                let mut searched = 0;
                let first = may_be_complete(&raw[..split], &mut searched);
                assert!(!first, "{split}: no empty line yet");
                assert_eq!(searched, split);
                assert!(may_be_complete(raw, &mut searched), "{split}");
            }
        }
        // A line end that is not an empty line is not an end.
        let mut searched = 0;
        assert!(!may_be_complete(
            b"HTTP/1.1 200 OK\r\nA: b\r\n",
            &mut searched
        ));
    }

    #[test]
    fn garbage_and_too_many_fields_are_refused() {
        assert!(parse(&mut BytesMut::from(&b"HELLO WORLD\r\n\r\n"[..])).is_err());
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert!(parse(&mut BytesMut::from(many.as_bytes())).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = |extra: &str| format!("HTTP/1.1 200 OK\r\n{extra}\r\n");
        assert_eq!(
            frame(&ok("Content-Length: 5\r\n"), Method::GET).unwrap(),
            (Framing::Length(5), true)
        );
        assert_eq!(
            frame(&ok("Content-Length: 5\r\n"), Method::HEAD).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            frame("HTTP/1.1 204 No Content\r\n\r\n", Method::GET).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            frame(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET
            )
            .unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            frame(&ok("Transfer-Encoding: chunked\r\n"), Method::GET).unwrap(),
            (Framing::Chunked, true)
        );
        assert_eq!(
            frame(&ok("Transfer-Encoding: gzip, Chunked\r\n"), Method::GET).unwrap(),
            (Framing::Chunked, true)
        );
        assert_eq!(
            frame(&ok("Transfer-Encoding: gzip\r\n"), Method::GET).unwrap(),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            frame(&ok(""), Method::GET).unwrap(),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            frame(
                &ok("Content-Length: 5\r\nConnection: Close\r\n"),
                Method::GET
            )
            .unwrap(),
            (Framing::Length(5), false)
        );
        assert_eq!(
            frame("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", Method::GET).unwrap(),
            (Framing::Length(5), false)
        );
        // Repeated equal lengths are one length; different ones, signs, blanks are refused.
        assert_eq!(
            frame(
                &ok("Content-Length: 5, 5\r\nContent-Length: 5\r\n"),
                Method::GET
            )
            .unwrap(),
            (Framing::Length(5), true)
        );
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 5,\r\n",
            "Content-Length: 99999999999999999999\r\n",
        ] {
            assert!(frame(&ok(bad), Method::GET).is_err(), "{bad}");
        }
        // Both: the transfer coding wins, the length goes, the connection closes after.
        let mut h = head(&ok("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"));
        assert_eq!(
            framing(&mut h, &Method::GET).unwrap(),
            (Framing::Chunked, false)
        );
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn the_request_head_is_written_as_given() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("forge"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        write_request(&mut out, &Method::GET, "/api/v4/projects/1?a=b", &headers);
        assert_eq!(
            out,
            b"GET /api/v4/projects/1?a=b HTTP/1.1\r\nhost: forge\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }
}
