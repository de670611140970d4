//! A TCP proxy that can lose the broker's replies.

use std::sync::{Arc, Mutex};

/// Sits between the gate and the broker. `blackhole_replies` makes it read and drop everything
/// the broker sends (PUBACKs included) while still forwarding what the gate sends; `cut`
/// closes every connection through it, as a dead link would.
pub struct Proxy {
    pub port: u16,
    blackhole: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(broker_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let blackhole = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (b, c) = (blackhole.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let b = b.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = sr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            if !b.load(std::sync::atomic::Ordering::SeqCst)
                                && cw.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
                c.lock().expect("lock").push(task);
            }
        });
        Proxy {
            port,
            blackhole,
            conns,
            accept,
        }
    }

    pub fn blackhole_replies(&self, on: bool) {
        self.blackhole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection through the proxy; new ones are accepted as before.
    pub fn cut(&self) {
        for t in self.conns.lock().expect("lock").drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
