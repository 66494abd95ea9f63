//! What the fake control-plane services share: values kept per key in `watch` channels,
//! and a `watch` served as a gRPC response stream.

use std::{
    collections::HashMap,
    hash::Hash,
    pin::Pin,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;
use tonic::{
    Status,
    codegen::tokio_stream::{Stream, wrappers::ReceiverStream},
};

/// A server-streaming gRPC response body.
pub type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Values by key, each watched by the streams that serve it.
pub type Watched<K, V> = Arc<Mutex<HashMap<K, watch::Sender<V>>>>;

/// Sets `key`'s value, streaming it to every watcher; creates the key if needed.
pub fn publish<K: Eq + Hash, V>(map: &Watched<K, V>, key: K, value: V) {
    let mut map = map.lock().expect("watched values lock");
    match map.get(&key) {
        Some(tx) => {
            tx.send_replace(value);
        }
        None => {
            map.insert(key, watch::Sender::new(value));
        }
    }
}

/// Serves `rx` as a stream: its current value, then every change, until the client goes.
pub fn stream<T: Clone + Send + Sync + 'static>(mut rx: watch::Receiver<T>) -> Streamed<T> {
    let (tx, out) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let first = rx.borrow_and_update().clone();
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while rx.changed().await.is_ok() {
            let next = rx.borrow_and_update().clone();
            if tx.send(Ok(next)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}
