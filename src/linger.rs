//! Lingering close of client connections.
//!
//! When the gateway answers before it read the whole request (an upload refused with 403 or
//! 413 before its body moved) and then closes, the client is often still sending. Closing a
//! socket with unread data makes the kernel answer with a reset, and a reset can discard the
//! response before the client read it: the client sees "broken pipe" or "connection reset"
//! instead of the refusal. Like nginx's `lingering_close` and HAProxy, the gateway first
//! half-closes (its FIN follows the response), then reads and drops what the client still sends
//! until the client closes too, for at most [`LINGER`].
//!
//! [`Lingering`] wraps the accepted TCP stream (under TLS, if any). When hyper shuts the write
//! side down, the stream is handed back through a [`Linger`] slot as the connection ends, and
//! the connection's task drains it ([`Linger::drain`]) before dropping it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Longest a closed connection keeps reading what its client still sends.
pub const LINGER: Duration = Duration::from_secs(5);

/// Read buffer while lingering; what is read is dropped.
const DRAIN_CHUNK: usize = 16 * 1024;

type Slot = Arc<Mutex<Option<TcpStream>>>;

/// An accepted client stream that, once its write side was shut down, is handed back to its
/// [`Linger`] when dropped instead of being closed.
pub struct Lingering {
    stream: Option<TcpStream>,
    shut_down: bool,
    slot: Slot,
}

/// Where a connection's stream comes back after the connection ends, to be drained.
pub struct Linger {
    slot: Slot,
}

/// Wrap an accepted stream.
pub fn wrap(stream: TcpStream) -> (Lingering, Linger) {
    let slot: Slot = Arc::default();
    (
        Lingering {
            stream: Some(stream),
            shut_down: false,
            slot: Arc::clone(&slot),
        },
        Linger { slot },
    )
}

impl Linger {
    /// Read and drop what the client still sends, until it closes, errs, or [`LINGER`] passes.
    /// Nothing to do when the connection ended without shutting its write side (the stream
    /// was closed as it was dropped).
    pub async fn drain(self) {
        let stream = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut stream) = stream else { return };
        let mut buf = vec![0u8; DRAIN_CHUNK];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

fn not_connected() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(not_connected())),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(not_connected())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(not_connected())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Err(not_connected())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => return Poll::Ready(Err(not_connected())),
        };
        if let Poll::Ready(Ok(())) = polled {
            self.shut_down = true;
        }
        polled
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if self.shut_down {
            if let Some(stream) = self.stream.take() {
                *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = TcpStream::connect(addr);
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let (server, _) = accepted.unwrap_or_else(|e| panic!("{e}"));
        (server, client.unwrap_or_else(|e| panic!("{e}")))
    }

    /// The server answers and closes while the client is still sending a large body: the
    /// client must be able to send all of it and read the answer.
    async fn answer_while_client_sends() -> Result<Vec<u8>, io::Error> {
        let (server, mut client) = pair().await;
        let answer = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        let server_task = tokio::spawn(async move {
            let (mut io, after) = wrap(server);
            let mut head = [0u8; 64];
            let _ = io.read(&mut head).await;
            let _ = io.write_all(answer).await;
            let _ = io.shutdown().await;
            drop(io);
            after.drain().await;
        });
        let body = vec![b'x'; 8 << 20];
        // Send the body concurrently with reading, like a client uploading.
        let (mut rd, mut wr) = client.split();
        let send = async {
            wr.write_all(&body).await?;
            wr.shutdown().await
        };
        let read = async {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.map(|_| got)
        };
        let (sent, got) = tokio::join!(send, read);
        let _ = server_task.await;
        // A client that fails on writing its body (hyper's client does) never gets to the
        // answer: the whole body must go out too.
        sent?;
        got
    }

    #[tokio::test]
    async fn a_lingering_close_lets_the_client_read_the_answer() {
        for _ in 0..5 {
            let got = answer_while_client_sends().await;
            let got = got.unwrap_or_else(|e| panic!("the client lost its body or the answer: {e}"));
            assert!(
                got.starts_with(b"HTTP/1.1 403"),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }

    #[tokio::test]
    async fn without_a_shutdown_nothing_lingers() {
        let (server, _client) = pair().await;
        let (io, after) = wrap(server);
        drop(io);
        // Returns at once: the stream was closed, not handed back.
        tokio::time::timeout(Duration::from_secs(1), after.drain())
            .await
            .unwrap_or_else(|_| panic!("drained a stream that was not shut down"));
    }
}
