//! `maille-demo-backend`: serves HTTP, TCP echo and UDP echo on the given addresses, each
//! answer carrying the backend's name, so that a demo or a test sees which backend answered.

use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "maille-demo-backend", about)]
struct Args {
    /// Name put in every answer.
    #[arg(long, env = "MAILLE_DEMO_NAME")]
    name: String,
    /// Serve HTTP/1.1 here: every request gets `<name>\n` (and `x-backend: <name>`).
    #[arg(long)]
    http: Vec<SocketAddr>,
    /// Serve TCP echo here: every chunk read is sent back prefixed with `<name>: `.
    #[arg(long)]
    tcp: Vec<SocketAddr>,
    /// Serve UDP echo here: every datagram is sent back prefixed with `<name>: `.
    #[arg(long)]
    udp: Vec<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.http.is_empty() && args.tcp.is_empty() && args.udp.is_empty() {
        anyhow::bail!("give at least one of --http, --tcp, --udp");
    }
    let name: &'static str = Box::leak(args.name.into_boxed_str());
    for addr in args.http {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--http {addr}: {e}"))?;
        tokio::spawn(serve_http(l, name));
    }
    for addr in args.tcp {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--tcp {addr}: {e}"))?;
        tokio::spawn(serve_tcp(l, name));
    }
    for addr in args.udp {
        let s = UdpSocket::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--udp {addr}: {e}"))?;
        tokio::spawn(serve_udp(s, name));
    }
    eprintln!("{name}: serving");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn serve_http(l: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = format!("{name}\nhost: {host}\npath: {}\n", req.uri().path());
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header("x-backend", name)
                        .header("content-type", "text/plain")
                        .body(Full::new(Bytes::from(body)))
                        .expect("static response"),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn serve_tcp(l: TcpListener, name: &'static str) {
    loop {
        let Ok((mut stream, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = format!("{name}: ").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn serve_udp(s: UdpSocket, name: &'static str) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = s.recv_from(&mut buf).await else {
            continue;
        };
        let mut out = format!("{name}: ").into_bytes();
        out.extend_from_slice(&buf[..n]);
        let _ = s.send_to(&out, peer).await;
    }
}
