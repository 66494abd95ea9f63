//! What the HTTP client tests share.

use bytes::Bytes;
use http_body::{Body, Frame};
use std::{
    pin::Pin,
    task::{Context, Poll},
};
use tokio::sync::mpsc;

/// A request body the test feeds frame by frame (data or trailers), of unknown length; it
/// ends when the sender is dropped.
#[derive(Debug)]
pub(super) struct Feed(mpsc::UnboundedReceiver<Frame<Bytes>>);

impl Body for Feed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

pub(super) fn feed() -> (mpsc::UnboundedSender<Frame<Bytes>>, Feed) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Feed(rx))
}

/// A data frame.
pub(super) fn data(b: &'static [u8]) -> Frame<Bytes> {
    Frame::data(Bytes::from_static(b))
}
