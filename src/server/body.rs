//! Reading a request body into one buffer without holding on to hyper's read buffers.
//!
//! Each data frame hyper hands out is a slice of its connection read buffer and keeps that
//! whole buffer (8–16 KiB) alive for as long as the frame lives. Collecting the frames and
//! joining them at the end (what `axum::body::to_bytes` does) therefore pins one read buffer
//! per *read*: a client that trickles its body in tiny packets made each connection hold
//! about 8 KiB per packet, far beyond `max_body_bytes`. [`collect_limited`] copies each
//! frame into one growing buffer and drops it at once, so a connection holds at most its
//! body (bounded by the limit) plus one read buffer.

use axum::body::Body;
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
///
/// `expected` is the announced length (`Content-Length`), if any: the buffer is allocated
/// once at that size (at most `limit`), so a body of the announced size costs one
/// allocation and no copy when it grows, and it becomes the stored raw body as it is
/// (issue 13). A client that announces more than it sends makes the daemon hold no more
/// than `limit` for it, as before.
pub(super) async fn collect_limited(
    mut body: Body,
    limit: usize,
    expected: Option<u64>,
) -> Result<Vec<u8>, BodyError> {
    let capacity = expected.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut out: Vec<u8> = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - out.len() {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
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
    async fn trickle(frames: usize, limit: usize) -> (Result<Vec<u8>, BodyError>, usize) {
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
        let result = collect_limited(body, limit, None).await;
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
    async fn a_body_of_the_announced_length_is_read_into_one_buffer_of_that_size() {
        // Two frames, as a body split across reads arrives: the buffer is sized once from
        // the announced length and becomes the stored raw body without a copy (issue 13).
        let frames = data_frames(&[&[b'a'; 3000], &[b'b'; 1082]]);
        let body = collect_limited(frames, 65_536, Some(4082))
            .await
            .expect("read");
        assert_eq!(body.len(), 4082);
        assert_eq!(body.capacity(), 4082);
        assert!(body[..3000].iter().all(|b| *b == b'a') && body[3000..].iter().all(|b| *b == b'b'));
    }

    #[tokio::test]
    async fn an_announced_length_beyond_the_limit_reserves_only_the_limit() {
        let out = collect_limited(Body::empty(), 1_000, Some(u64::MAX))
            .await
            .expect("read");
        assert!(out.is_empty());
        assert!(out.capacity() <= 1_000, "reserved {}", out.capacity());
    }

    /// Data frames handed out one by one.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
        }
    }

    /// A body made of the given data frames, in order.
    fn data_frames(frames: &[&[u8]]) -> Body {
        Body::new(Frames(
            frames.iter().map(|f| Bytes::copy_from_slice(f)).collect(),
        ))
    }

    #[tokio::test]
    async fn more_than_the_limit_is_too_large_and_the_limit_itself_is_fine() {
        assert_eq!(trickle(11, 10).await.0, Err(BodyError::TooLarge));
        assert_eq!(trickle(10, 10).await.0.map(|b| b.len()), Ok(10));
    }
}
