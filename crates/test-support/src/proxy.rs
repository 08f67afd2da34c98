//! A TCP proxy that can be frozen: connections stay open but no byte
//! passes either way until it thaws. Stands for a store that stops
//! answering (a hung server, a network partition) without refusing
//! connections, which a stopped server would do at once. Or cut: its
//! connections close and new ones are closed at once (a stopped server)
//! until it is restored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FreezableProxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let target = target.to_owned();
        let flags = (frozen.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if flags.1.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, flags.clone()));
                tokio::spawn(pump(server_read, client_write, flags.clone()));
            }
        });
        FreezableProxy {
            port,
            frozen,
            cut,
            task,
        }
    }

    /// PostgreSQL (on 127.0.0.1:5432) behind a new proxy: the proxy and
    /// `database_url` rewritten to go through it.
    pub async fn postgres(database_url: &str) -> (Self, String) {
        let proxy = Self::start("127.0.0.1:5432").await;
        let url = database_url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
        (proxy, url)
    }

    /// Closes every connection and each new one at once, until restored.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is frozen;
/// returns (closing its half) once the proxy is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    (frozen, cut): (Arc<AtomicBool>, Arc<AtomicBool>),
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let read = tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await;
        if cut.load(Ordering::SeqCst) {
            return;
        }
        let n = match read {
            Err(_elapsed) => continue,
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
