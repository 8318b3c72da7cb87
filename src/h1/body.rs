//! The body of a response read by the direct client: read from the upstream connection by
//! the task that writes it to the client (no task or channel in between), handed on as slices
//! of the read buffer, and the connection returned to the pool the moment its end is read.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{Chunked, ChunkedError, Step};
use super::head::Framing;
use super::{Connection, Idle};

/// Bytes asked of the socket per read while a body streams: from 16 KiB, doubled each time a
/// read fills what was asked (a large body arriving fast), up to 512 KiB; hyper's adaptive
/// reads do the same up to ~400 KiB. Fewer, larger reads and writes per streamed MiB.
const FIRST_READ: usize = 16 * 1024;
const MAX_READ: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the upstream closed the connection before the end of the response body")]
    Incomplete,
    #[error("reading the response body: {0}")]
    Read(#[from] std::io::Error),
    #[error("response body: {0}")]
    Chunked(#[from] ChunkedError),
}

enum State {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

pub struct DirectBody {
    /// `None` once the body ended (the connection went back to the pool or was closed).
    conn: Option<Box<Connection>>,
    state: State,
    /// The connection may carry another request once this body is read to its end.
    keep_alive: bool,
    idle: Arc<Idle>,
    /// What the next read asks for.
    read_size: usize,
}

impl DirectBody {
    pub(super) fn new(
        conn: Box<Connection>,
        framing: Framing,
        keep_alive: bool,
        idle: Arc<Idle>,
    ) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = DirectBody {
            conn: Some(conn),
            state,
            keep_alive,
            idle,
            read_size: FIRST_READ,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The end was read: the connection goes back to the pool when it can carry another
    /// request and holds nothing more (bytes past the response mean the upstream and the
    /// gateway disagree on where it ended: that connection is closed, never reused).
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                self.idle.checkin(conn);
            }
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) if !buf.is_empty() => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(chunked) if !buf.is_empty() => match chunked.step(buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => return this.fail(e.into()),
                },
                State::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(_) | State::Chunked(_) | State::UntilClose => {}
            }
            let want = match this.state {
                State::Length(left) => usize::try_from(left)
                    .map_or(this.read_size, |left| left.clamp(1, this.read_size)),
                _ => this.read_size,
            };
            if buf.capacity() - buf.len() < want {
                buf.reserve(want);
            }
            let asked = buf.capacity() - buf.len();
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                buf
            )) {
                Ok(n) if n == asked && n >= this.read_size => {
                    this.read_size = (this.read_size * 2).min(MAX_READ);
                }
                Ok(0) => {
                    if matches!(this.state, State::UntilClose) {
                        // The close is the end; the connection is spent.
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(BodyError::Incomplete);
                }
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }
}
