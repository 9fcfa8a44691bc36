//! HTTP through the tunnel as a socket Pingora can pool. Pingora 0.9 hands a pooled upstream
//! connection back only when `HttpPeer::matches_fd` finds the connection's file descriptor
//! connected to the peer's address; a virtual stream has no descriptor, so its connections
//! were never reused (one `CONNECT` stream per request). Here each tunnel stream is given to
//! Pingora as the connecting end of a Unix socket whose listener is this proxy's own (the
//! peer's address is that socket's path): Pingora reuses, tests and times out the connection
//! as any other, and a task copies its bytes to and from the stream.
//!
//! The socket lives in a directory only this proxy's user may enter (0700, under the
//! temporary directory, named after the process), and a connection is paired with its tunnel
//! stream by a random 128-bit token it writes first: a connection without a pending token gets
//! nothing. The directory is removed when the runtime serving it stops (shutdown, or the old
//! process of an upgrade exiting); those a killed process left behind are removed at start.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::TunnelStream;

/// Time for an accepted connection to state its token.
const TOKEN_WAIT: Duration = Duration::from_secs(2);
/// Prefix of the directories under the temporary directory.
const DIR_PREFIX: &str = "maille-proxy-";
/// Longest path a Unix socket address holds (`sun_path`), less its terminating zero.
const MAX_SOCKET_PATH: usize = 107;

type Token = u128;

/// The listening socket of this proxy's tunnelled HTTP connections, and the streams waiting
/// for their connection.
pub struct Listening {
    dir: PathBuf,
    path: PathBuf,
    /// `path` as Pingora's peer address.
    addr: pingora_core::protocols::l4::socket::SocketAddr,
    pending: parking_lot::Mutex<HashMap<Token, oneshot::Sender<std::os::unix::net::UnixStream>>>,
    alive: AtomicBool,
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("path", &self.path)
            .field("pending", &self.pending.lock().len())
            .finish_non_exhaustive()
    }
}

impl Listening {
    /// Binds a new socket in a new private directory and accepts on it from a task of the
    /// current runtime; the directory goes when that task does.
    pub(crate) fn start() -> io::Result<Arc<Listening>> {
        let base = std::env::temp_dir();
        sweep_stale(&base);
        let dir = base.join(format!(
            "{DIR_PREFIX}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        }
        let path = dir.join("tunnel-http.sock");
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            let _ = std::fs::remove_dir(&dir);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes: set TMPDIR to a shorter directory",
                    path.display()
                ),
            ));
        }
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let addr = std::os::unix::net::SocketAddr::from_pathname(&path)
            .map(pingora_core::protocols::l4::socket::SocketAddr::Unix)?;
        let l = Arc::new(Listening {
            dir,
            path,
            addr,
            pending: parking_lot::Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
        });
        debug!(path = %l.path.display(), "Tunnel HTTP socket listening");
        // The guard is made here: a task never polled drops it too.
        tokio::spawn(accept(Cleanup(l.clone()), listener));
        Ok(l)
    }

    /// The socket's path: the address of every tunnelled HTTP peer.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket's path as the address of a Pingora peer.
    pub fn peer_addr(&self) -> &pingora_core::protocols::l4::socket::SocketAddr {
        &self.addr
    }

    /// Whether its accepting task still runs.
    pub(crate) fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// A connection of this socket carrying `tunnel`'s bytes: the end to give Pingora.
    pub(crate) async fn connect(
        &self,
        tunnel: TunnelStream,
        idle: Option<Duration>,
    ) -> io::Result<UnixStream> {
        let token: Token = rand::random();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(token, tx);
        // Removes the token whatever happens below (this future may be dropped at any await).
        let _pending = Pending(self, token);
        let mut client = UnixStream::connect(&self.path).await?;
        client.write_all(&token.to_le_bytes()).await?;
        let accepted = tokio::time::timeout(TOKEN_WAIT, rx)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tunnel socket: no pairing"))?
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel socket closed"))?;
        // Registered with this runtime, where Pingora will use the other end.
        let accepted = UnixStream::from_std(accepted)?;
        tokio::spawn(carry(tunnel, accepted, idle));
        Ok(client)
    }
}

struct Pending<'a>(&'a Listening, Token);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().remove(&self.1);
    }
}

/// Removes the socket's directory and marks it dead when the accepting task ends (its runtime
/// shut down).
struct Cleanup(Arc<Listening>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        let _ = std::fs::remove_dir_all(&self.0.dir);
    }
}

async fn accept(cleanup: Cleanup, listener: tokio::net::UnixListener) {
    let l = &cleanup.0;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(pair(l.clone(), s));
            }
            Err(e) => {
                // Out of descriptors, most likely: the connecting side times out meanwhile.
                warn!(error = %e, "Tunnel HTTP socket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Hands an accepted connection to the stream its token names; one that names none is closed.
async fn pair(l: Arc<Listening>, mut s: UnixStream) {
    let mut token = [0u8; 16];
    match tokio::time::timeout(TOKEN_WAIT, s.read_exact(&mut token)).await {
        Ok(Ok(_)) => {}
        _ => {
            debug!("Tunnel HTTP socket: connection without a token, closed");
            return;
        }
    }
    let Some(tx) = l.pending.lock().remove(&Token::from_le_bytes(token)) else {
        debug!("Tunnel HTTP socket: unknown token, closed");
        return;
    };
    if let Ok(s) = s.into_std() {
        let _ = tx.send(s);
    }
}

/// Copies between Pingora's connection and the tunnel stream until both ends finished, either
/// failed, or nothing moved for `idle`. Closing either drops the stream (a reset for the
/// destination, which then closes its connection to the pod).
async fn carry(tunnel: TunnelStream, socket: UnixStream, idle: Option<Duration>) {
    let end = crate::tcp::relay::relay(socket, tunnel, idle, uncounted(), uncounted()).await;
    debug!(end = ?end, "Tunnelled HTTP connection ended");
}

/// The bytes are counted by the tunnel stream (`maille_proxy_tunnel_bytes_total`).
fn uncounted() -> &'static prometheus::IntCounter {
    static C: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
        prometheus::IntCounter::new("uncounted", "not registered").expect("counter")
    });
    &C
}

/// Removes the socket directories of processes that no longer run (killed before their
/// runtime could remove them). Linux only: elsewhere nothing tells a live process from a dead.
fn sweep_stale(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            // Only this user's own directories can be removed; others fail quietly.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_without_a_pending_token_gets_nothing_and_the_directory_is_private() {
        let l = Listening::start().unwrap();
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&l.dir).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o700, "only this proxy's user enters the directory");
        let mut s = UnixStream::connect(l.path()).await.unwrap();
        s.write_all(&[7u8; 16]).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a byte");
        assert!(l.pending.lock().is_empty());
    }

    #[test]
    fn the_directory_goes_with_the_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let l = rt.block_on(async { Listening::start().unwrap() });
        assert!(l.path().exists());
        assert!(l.alive());
        drop(rt);
        assert!(!l.alive());
        assert!(!l.dir.exists(), "{} removed", l.dir.display());
    }
}
