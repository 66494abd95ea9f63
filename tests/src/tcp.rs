//! Raw TCP servers: an echo server, and a server that speaks first (like SMTP or MySQL).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

/// What a server speaking first sends as soon as it accepts a connection.
pub const BANNER: &[u8] = b"220 test.local ESMTP ready\r\n";

/// A running TCP server; stops accepting when dropped.
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpServer {
    /// Echoes every byte back; when the client half-closes, finishes echoing and closes.
    pub async fn echo() -> Self {
        Self::start(None).await
    }

    /// Sends [`BANNER`] at once on every connection, then echoes like [`TcpServer::echo`].
    pub async fn banner() -> Self {
        Self::start(Some(BANNER)).await
    }

    async fn start(banner: Option<&'static [u8]>) -> Self {
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let (addr, task) = crate::accept_each("TCP test server", move |stream| {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, banner));
        })
        .await;
        Self {
            addr,
            connections,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, banner: Option<&'static [u8]>) {
    if let Some(b) = banner
        && stream.write_all(b).await.is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}
