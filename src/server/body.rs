//! Reading a request body into one buffer without holding on to hyper's read buffers.
//!
//! Each data frame hyper hands out is a slice of its connection read buffer and keeps that
//! whole buffer (8–16 KiB) alive for as long as the frame lives. Collecting the frames and
//! joining them at the end (what `axum::body::to_bytes` does) therefore pins one read buffer
//! per *read*: a client that trickles its body in tiny packets made each connection hold
//! about 8 KiB per packet, far beyond `max_body_bytes`. [`collect_limited`] copies each
//! frame into one growing buffer and drops it at once, so a connection holds at most its
//! body (bounded by the limit) plus one read buffer.

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyError {
    /// More than the limit arrived.
    TooLarge,
    /// The client broke off or sent a malformed body.
    Unreadable,
}

/// The body's data, at most `limit` bytes, copied frame by frame (see the module docs).
pub(super) async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut out: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - out.len() {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use hyper::body::Frame;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    /// A frame's backing memory that counts when it is freed.
    struct Tracked {
        data: Vec<u8>,
        freed: Arc<AtomicUsize>,
    }

    impl AsRef<[u8]> for Tracked {
        fn as_ref(&self) -> &[u8] {
            &self.data
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.freed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A body of `frames` one-byte frames, each backed by its own 8 KiB buffer (as a
    /// trickled body comes out of hyper), recording how many were alive at once.
    struct Trickle {
        frames: usize,
        sent: usize,
        freed: Arc<AtomicUsize>,
        most_alive: usize,
    }

    impl hyper::body::Body for Trickle {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let alive = self.sent - self.freed.load(Ordering::SeqCst);
            self.most_alive = self.most_alive.max(alive);
            if self.sent == self.frames {
                return Poll::Ready(None);
            }
            self.sent += 1;
            let mut data = vec![0u8; 8192];
            data[0] = b'a';
            let frame = Bytes::from_owner(Tracked {
                data,
                freed: self.freed.clone(),
            })
            .slice(0..1);
            Poll::Ready(Some(Ok(Frame::data(frame))))
        }
    }

    /// Reads a [`Trickle`] through [`collect_limited`]; returns the result and the most
    /// frames alive at once.
    async fn trickle(frames: usize, limit: usize) -> (Result<Bytes, BodyError>, usize) {
        let freed = Arc::new(AtomicUsize::new(0));
        let most_alive = Arc::new(AtomicUsize::new(0));
        struct Report(Trickle, Arc<AtomicUsize>);
        impl Drop for Report {
            fn drop(&mut self) {
                self.1.store(self.0.most_alive, Ordering::SeqCst);
            }
        }
        impl hyper::body::Body for Report {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Pin::new(&mut self.0).poll_frame(cx)
            }
        }
        let body = Body::new(Report(
            Trickle {
                frames,
                sent: 0,
                freed: freed.clone(),
                most_alive: 0,
            },
            most_alive.clone(),
        ));
        let result = collect_limited(body, limit).await;
        (result, most_alive.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_trickled_body_does_not_pin_a_read_buffer_per_piece() {
        let (body, most_alive) = trickle(4096, 65_536).await;
        let body = body.expect("read");
        assert_eq!(body.len(), 4096);
        assert!(body.iter().all(|b| *b == b'a'));
        // Only the frame in hand is alive while the next one is read.
        assert!(
            most_alive <= 1,
            "{most_alive} frames (8 KiB each) alive at once"
        );
    }

    #[tokio::test]
    async fn more_than_the_limit_is_too_large_and_the_limit_itself_is_fine() {
        assert_eq!(trickle(11, 10).await.0, Err(BodyError::TooLarge));
        assert_eq!(trickle(10, 10).await.0.map(|b| b.len()), Ok(10));
    }
}
