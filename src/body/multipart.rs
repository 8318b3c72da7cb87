//! Multipart bodies: the parts Rack would name as credential parameters, read whole
//! ([`multipart_fields`]) or one chunk at a time while the body streams ([`Stepper`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;

use super::{BodyError, Fields};
use crate::credentials;

/// (name, value) of every multipart part whose name is a credential parameter.
pub(crate) async fn multipart_fields(bytes: Bytes, boundary: String) -> Result<Fields, BodyError> {
    // Rack: an empty multipart body has no parameters (and is no error).
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let found = Arc::new(Mutex::new(Vec::new()));
    walk_multipart(Once(Some(bytes)), boundary, usize::MAX, found.clone()).await?;
    let fields = std::mem::take(&mut *locked(&found));
    Ok(fields)
}

const BAD_MULTIPART: BodyError = BodyError::Malformed("invalid multipart body");

/// Parse a multipart body from `stream`, pushing each credential part to `found` as soon as
/// the part is complete. Other parts are drained, never held.
async fn walk_multipart<S>(
    stream: S,
    boundary: String,
    value_cap: usize,
    found: Arc<Mutex<Fields>>,
) -> Result<(), BodyError>
where
    S: futures_core::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut parts = multer::Multipart::new(stream, boundary);
    while let Some(mut part) = parts.next_field().await.map_err(|_| BAD_MULTIPART)? {
        let mut names: Vec<Vec<u8>> = part_names(part.headers())
            .into_iter()
            .filter(|n| credentials::is_credential_param(n))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            while part.chunk().await.map_err(|_| BAD_MULTIPART)?.is_some() {}
            continue;
        }
        let mut value = Vec::new();
        while let Some(chunk) = part.chunk().await.map_err(|_| BAD_MULTIPART)? {
            if value.len() + chunk.len() > value_cap {
                return Err(BodyError::Malformed("a credential part is too large"));
            }
            value.extend_from_slice(&chunk);
        }
        let mut found = locked(&found);
        for name in names {
            found.push((name, value.clone()));
        }
    }
    Ok(())
}

/// A poisoned lock only means another holder panicked; the data is still a plain Vec.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The buffered body as the one-item stream multer reads.
struct Once(Option<Bytes>);

impl futures_core::Stream for Once {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.take().map(Ok))
    }
}

/// Every name Rack could give a part, read generously. Rack matches its regexes against the
/// whole head of the part, unanchored (`/Content-Disposition:[^:]*;\s*name=(…)/ni`, then
/// `/Content-ID:\s*([^\r\n]*)/ni`, then the filename, then `"<Content-Type>[]"`), so a
/// `Content-Disposition: …; name="job_token"` inside another header's value names the part
/// too. Each header line is therefore searched whole: every `name=` (also `filename=`,
/// `name*=`) however quoted, and whatever follows `Content-ID:` or `Content-Type:`.
fn part_names(headers: &HeaderMap) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    for (name, value) in headers {
        let mut line = name.as_str().as_bytes().to_vec();
        line.extend_from_slice(b": ");
        line.extend_from_slice(value.as_bytes());
        disposition_names(&line, &mut names);
        let lower = line.to_ascii_lowercase();
        for marker in [&b"content-id:"[..], b"content-type:"] {
            let mut from = 0;
            while let Some(at) = find(&lower[from..], marker).map(|i| i + from) {
                from = at + marker.len();
                names.push(line[from..].trim_ascii().to_vec());
            }
        }
    }
    names
}

fn disposition_names(value: &[u8], out: &mut Vec<Vec<u8>>) {
    let lower = value.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = find(&lower[from..], b"name").map(|i| i + from) {
        from = at + 4;
        let mut i = from;
        let extended = value.get(i) == Some(&b'*');
        if extended {
            i += 1;
        }
        while value.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if value.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while value.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        let rest = &value[i..];
        // Rack's `name="?([^\";]*)"?`: up to a quote or semicolon, spaces included.
        let unquoted = rest.strip_prefix(b"\"").unwrap_or(rest);
        let end = unquoted
            .iter()
            .position(|&b| b == b'"' || b == b';')
            .unwrap_or(unquoted.len());
        out.push(unquoted[..end].trim_ascii().to_vec());
        // A quoted string with `\` escapes, dequoted.
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let mut name = Vec::new();
            let mut bytes = quoted.iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'\\' => name.extend(bytes.next()),
                    b'"' => break,
                    _ => name.push(b),
                }
            }
            out.push(name);
        }
        // RFC 5987 `name*=utf-8''job%5Ftoken`.
        if extended {
            let raw = &unquoted[..end];
            let encoded = match find(raw, b"''") {
                Some(p) => &raw[p + 2..],
                None => raw,
            };
            out.push(percent_encoding::percent_decode(encoded.trim_ascii()).collect());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The stream multer reads in the pump: one chunk at a time, handed over by [`Stepper`].
#[derive(Default)]
struct SlotState {
    chunk: Option<Bytes>,
    eof: bool,
}

struct Slot(Arc<Mutex<SlotState>>);

impl futures_core::Stream for Slot {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = locked(&self.0);
        match state.chunk.take() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None if state.eof => Poll::Ready(None),
            // The stepper polls again after handing over the next chunk: no waker needed.
            None => Poll::Pending,
        }
    }
}

/// Drives the multipart parser by hand, one chunk per step: after a step returns, the parser
/// has consumed that chunk as far as it can, and every credential part completed in it has
/// been reported. (multer drains its stream before parsing, and the only thing it ever waits
/// for is the next chunk.)
type Parse = Pin<Box<dyn Future<Output = Result<(), BodyError>> + Send>>;

pub(crate) struct Stepper {
    slot: Arc<Mutex<SlotState>>,
    found: Arc<Mutex<Fields>>,
    parse: Option<Parse>,
}

impl Stepper {
    pub(crate) fn new(boundary: String, value_cap: usize) -> Self {
        let slot = Arc::new(Mutex::new(SlotState::default()));
        let found = Arc::new(Mutex::new(Vec::new()));
        let parse = Box::pin(walk_multipart(
            Slot(slot.clone()),
            boundary,
            value_cap,
            found.clone(),
        ));
        Stepper {
            slot,
            found,
            parse: Some(parse),
        }
    }

    /// Feed one chunk (None: the body ended) and return the credential parts completed by it.
    pub(crate) fn step(&mut self, chunk: Option<Bytes>) -> Result<Fields, BodyError> {
        let eof = chunk.is_none();
        {
            let mut state = locked(&self.slot);
            match chunk {
                Some(chunk) => state.chunk = Some(chunk),
                None => state.eof = true,
            }
        }
        if let Some(parse) = self.parse.as_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            match parse.as_mut().poll(&mut cx) {
                Poll::Ready(result) => {
                    // Done at the closing delimiter; an epilogue after it is ignored, as
                    // Rack ignores it.
                    self.parse = None;
                    result?;
                }
                Poll::Pending if eof => return Err(BAD_MULTIPART),
                Poll::Pending => {}
            }
        }
        let fields = std::mem::take(&mut *locked(&self.found));
        Ok(fields)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use super::super::field_names as names;

    fn multipart(parts: &[(&str, &str)], boundary: &str) -> Bytes {
        let mut out = String::new();
        for (headers, value) in parts {
            out.push_str(&format!("--{boundary}\r\n{headers}\r\n\r\n{value}\r\n"));
        }
        out.push_str(&format!("--{boundary}--\r\n"));
        Bytes::from(out)
    }

    async fn parts(parts: &[(&str, &str)]) -> Result<Vec<(String, String)>, BodyError> {
        let body = multipart(parts, "XyZ");
        multipart_fields(body, "XyZ".into())
            .await
            .map(|f| names(&f))
    }

    #[tokio::test]
    async fn multipart_parts_by_name() {
        let f = parts(&[
            ("Content-Disposition: form-data; name=\"ref\"", "main"),
            ("Content-Disposition: form-data; name=\"token\"", "glcbt-t"),
        ])
        .await
        .unwrap();
        assert_eq!(f, vec![("token".into(), "glcbt-t".into())]);
        // Unquoted, other case, brackets, RFC 5987, file parts, Content-ID, Content-Type, and
        // Rack's unanchored regexes matching inside another header.
        for headers in [
            "X-Note: Content-Disposition: form-data; name=\"job_token\"",
            "Content-Disposition: form-data; name=\"a\"\r\nX-Note: x; name=job_token",
            "X-Note: see Content-ID: job_token",
            "content-disposition: form-data; NAME=job_token",
            "Content-Disposition: form-data; name=\"job_token[]\"",
            "Content-Disposition: form-data; name*=utf-8''job%5Ftoken",
            "Content-Disposition: form-data; name=\"f\"; filename=\"job_token\"",
            "Content-Disposition: form-data; name=\"jo\\b_token\"",
            "Content-ID: job_token",
            "Content-Type: job_token",
        ] {
            let f = parts(&[(headers, "glcbt-v")]).await.unwrap();
            assert!(f.iter().any(|(_, v)| v == "glcbt-v"), "{headers}: {f:?}");
        }
        // A large non-credential part is not kept.
        let big = "x".repeat(100_000);
        let f = parts(&[("Content-Disposition: form-data; name=\"content\"", &big)])
            .await
            .unwrap();
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn malformed_multipart_is_refused() {
        let good = multipart(&[("Content-Disposition: form-data; name=\"a\"", "1")], "B");
        // Missing closing boundary.
        let cut = good.slice(..good.len() - 6);
        assert!(multipart_fields(cut, "B".into()).await.is_err());
        // No boundary at all.
        assert!(multipart_fields(Bytes::from_static(b"hello"), "B".into())
            .await
            .is_err());
        // A different boundary.
        assert!(multipart_fields(good, "C".into()).await.is_err());
    }

    /// Steps a multipart body through the pump's parser in pieces.
    fn step_in_pieces(body: &[u8], boundary: &str, cuts: &[usize]) -> Result<Fields, BodyError> {
        let mut stepper = Stepper::new(boundary.into(), 1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([body.len()]) {
            out.extend(stepper.step(Some(Bytes::copy_from_slice(&body[at..cut])))?);
            at = cut;
        }
        out.extend(stepper.step(None)?);
        Ok(out)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        #[test]
        fn stepper_matches_the_buffered_multipart_parser(
            fields in proptest::collection::vec(("(token|job_token|content|ref)", "[ -~]{0,40}"), 0..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            truncate in proptest::option::of(any::<usize>()),
        ) {
            let parts: Vec<(String, String)> = fields
                .iter()
                .map(|(n, v)| (format!("Content-Disposition: form-data; name=\"{n}\""), v.clone()))
                .collect();
            let refs: Vec<(&str, &str)> = parts.iter().map(|(h, v)| (h.as_str(), v.as_str())).collect();
            let mut body = multipart(&refs, "b0und").to_vec();
            if let Some(t) = truncate {
                body.truncate(t % (body.len() + 1));
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let whole = rt.block_on(multipart_fields(Bytes::from(body.clone()), "b0und".into()));
            let pieces = step_in_pieces(&body, "b0und", &cuts);
            match (&whole, &pieces) {
                (Ok(w), Ok(p)) => prop_assert_eq!(names(w), names(p)),
                (Err(_), Err(_)) => {}
                // An empty body is no multipart error when buffered.
                (Ok(w), Err(_)) if body.is_empty() => prop_assert!(w.is_empty()),
                _ => prop_assert!(false, "{whole:?} vs {pieces:?}"),
            }
        }
    }
}
