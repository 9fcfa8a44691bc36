//! The framework's floor: a Pingora HTTP proxy that forwards every request to one upstream and
//! does nothing else. What `maille-proxy` costs above this is Maille's own per-request work.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

/// Forwards to one upstream over HTTP/1.1, with Pingora's default keep-alive pool.
#[derive(Debug, Clone, Copy)]
pub struct Forward {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// A Pingora server with `threads` worker threads proxying `listen` to `upstream`. Run it with
/// `run_forever()` (SIGINT stops it at once) or `run(RunArgs)`.
pub fn server(listen: SocketAddr, upstream: SocketAddr, threads: usize) -> Server {
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Forward { upstream });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    use super::*;
    use crate::backend::{body, serve_http};

    struct Stop(Arc<Notify>);

    #[async_trait]
    impl ShutdownSignalWatch for Stop {
        async fn recv(&self) -> ShutdownSignal {
            self.0.notified().await;
            ShutdownSignal::FastShutdown
        }
    }

    /// Stops the server and waits for its thread when dropped, also when an assert fails.
    struct Running(Arc<Notify>, Option<std::thread::JoinHandle<()>>);

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.notify_one();
            if let Some(t) = self.1.take() {
                let _ = t.join();
            }
        }
    }

    fn free_port() -> SocketAddr {
        let port = crate::fleet::real::free_port().unwrap();
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_keep_alive_requests_to_the_backend() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = l.local_addr().unwrap();
        tokio::spawn(serve_http(l));

        let listen = free_port();
        let stop = Arc::new(Notify::new());
        let srv = server(listen, upstream, 1);
        let watch = Stop(stop.clone());
        let thread = std::thread::spawn(move || {
            srv.run(RunArgs {
                shutdown_signal: Box::new(watch),
            })
        });
        let _running = Running(stop, Some(thread));

        let mut s = None;
        for _ in 0..100 {
            if let Ok(c) = TcpStream::connect(listen).await {
                s = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut s = s.expect("the floor proxy never started listening");
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: anything\r\n\r\n")
                .await
                .unwrap();
            // Read one response: head, then exactly the body.
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).await.unwrap();
                got.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("content-length: 100"), "{head}");
            let mut b = vec![0u8; 100];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b, body());
        }
    }
}
