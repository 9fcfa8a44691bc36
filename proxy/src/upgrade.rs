//! Graceful upgrade, done by Maille rather than Pingora: Pingora 0.9 hands the listening
//! sockets over in one message of at most 32 descriptors, and the defaults open 36. Here the
//! listening services get a descriptor table Maille owns ([`WithFds`]); on `SIGQUIT` the old
//! process sends it in batches, with its last good routing table, over a `SOCK_SEQPACKET` Unix
//! socket to the new process (started with `--upgrade`), and lets go of the listeners only once
//! the new process has received every one of them, the table, and started its services.
//!
//! Messages (old → new), one per packet: `L` + addresses (one per line) with as many
//! descriptors attached (`SCM_RIGHTS`, at most [`BATCH`]); `T` + a piece of the table JSON;
//! `E` + `listeners=N table=M` (what was sent, so the receiver can check it got all of it).
//! Then new → old: `K` once its services run, or `X` + the reason it refuses.

use std::collections::HashSet;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use pingora_core::server::ShutdownWatch;
use pingora_core::server::{Fds, ListenFds, RuntimeOpts, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::BackgroundService;
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::store::TableStore;

/// Descriptors per message. Linux accepts up to 253 per `SCM_RIGHTS`; the receiver's buffer is
/// sized for this many.
pub const BATCH: usize = 16;
/// Payload bytes per message (table pieces are this size at most).
const PACKET: usize = 60 << 10;
/// How long the new process waits for the old one to connect (after `SIGQUIT`).
pub const WAIT_FOR_OLD: Duration = Duration::from_secs(60);
/// How long the old process tries to reach the new one's socket.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to confirm (it confirms once its services
/// run); until then it keeps serving, and without a confirmation it keeps serving for good.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for one message once connected.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation on the upgrade socket failed.
    #[error("upgrade socket {path}: {op}: {reason}")]
    Socket {
        /// `--upgrade-sock`.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        reason: String,
    },
    /// The peer sent something that does not follow the protocol.
    #[error("upgrade socket {path}: {reason}")]
    Protocol {
        /// `--upgrade-sock`.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The new process refused the hand-over.
    #[error("upgrade socket {path}: the new process refused the hand-over: {reason}")]
    Refused {
        /// `--upgrade-sock`.
        path: PathBuf,
        /// Its reason.
        reason: String,
    },
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A descriptor table that Maille owns, given to every listening service in place of
/// Pingora's own: services take their sockets from it (after an upgrade) or put the ones they
/// bind into it, and the old process sends it on `SIGQUIT`.
pub fn new_fds() -> ListenFds {
    Arc::new(parking_lot::Mutex::new(Fds::new()))
}

/// A listening service that takes its sockets from Maille's table ([`new_fds`]).
pub struct WithFds<S> {
    inner: S,
    fds: ListenFds,
}

impl<S> WithFds<S> {
    /// `inner`, listening on the sockets of `fds`.
    pub fn new(inner: S, fds: ListenFds) -> Self {
        WithFds { inner, fds }
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for WithFds<S> {
    async fn start_service(
        &mut self,
        _pingora_fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let fds = self.fds.clone();
        self.inner
            .start_service(Some(fds), shutdown, listeners_per_fd, ready_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// Descriptors received and not (yet) given to a listener: closed when dropped.
#[derive(Default)]
struct Received(Vec<(String, RawFd)>);

impl Drop for Received {
    fn drop(&mut self) {
        for (_, fd) in self.0.drain(..) {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// What the new process got from the old one.
pub struct Handover {
    /// The old process's last good table (JSON), if it had one.
    pub table: Option<Vec<u8>>,
    /// How many listening sockets were handed over.
    pub listeners: usize,
    /// Addresses this process listens on that the old one did not hand over (bound afresh).
    pub not_handed_over: Vec<String>,
    conn: Socket,
}

impl Handover {
    /// Tells the old process that this one serves: it stops accepting and drains.
    pub fn confirm(self) -> std::io::Result<()> {
        send_packet(&self.conn, b"K", &[])
            .map(drop)
            .map_err(std::io::Error::from)
    }
}

fn socket_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::Socket {
        path: path.to_path_buf(),
        op,
        reason: e.to_string(),
    }
}

fn protocol(path: &Path, reason: impl Into<String>) -> Error {
    Error::Protocol {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// New process: waits (up to `wait`) for the old process on `path`, takes its listening
/// sockets into `fds` (those this process listens on, `expected`; others are closed) and its
/// table (at most `max_table_bytes`). Refuses, telling the old process why, when not every
/// announced socket or table byte arrived; the old process then keeps serving.
pub fn receive(
    path: &Path,
    expected: &HashSet<String>,
    fds: &ListenFds,
    max_table_bytes: u64,
    wait: Duration,
) -> Result<Handover> {
    let _ = std::fs::remove_file(path);
    let listener = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
        .map_err(socket_err(path, "socket"))?;
    let addr = SockAddr::unix(path).map_err(socket_err(path, "address"))?;
    listener.bind(&addr).map_err(socket_err(path, "bind"))?;
    listener.listen(1).map_err(socket_err(path, "listen"))?;
    // accept() honours the receive timeout on Linux.
    listener
        .set_read_timeout(Some(wait))
        .map_err(socket_err(path, "set timeout"))?;
    tracing::info!(path = %path.display(), ?wait, "Waiting for the running proxy's listeners (send it SIGQUIT)");
    let accepted = listener.accept();
    let _ = std::fs::remove_file(path);
    let (conn, _) = accepted.map_err(socket_err(path, "accept"))?;
    conn.set_read_timeout(Some(MESSAGE_WAIT))
        .map_err(socket_err(path, "set timeout"))?;
    match read_handover(path, &conn, max_table_bytes) {
        Ok((received, table)) => {
            let listeners = received.0.len();
            let mut received = received;
            let mut table_fds = fds.lock();
            let mut unclaimed = Vec::new();
            for (addr, fd) in std::mem::take(&mut received.0) {
                if expected.contains(&addr) {
                    table_fds.add(addr, fd);
                } else {
                    unclaimed.push(addr);
                    let _ = nix::unistd::close(fd);
                }
            }
            if !unclaimed.is_empty() {
                tracing::warn!(
                    ?unclaimed,
                    "Handed-over listeners this configuration does not use were closed"
                );
            }
            let not_handed_over: Vec<String> = expected
                .iter()
                .filter(|a| table_fds.get(a).is_none())
                .cloned()
                .collect();
            Ok(Handover {
                table,
                listeners,
                not_handed_over,
                conn,
            })
        }
        Err(e) => {
            let mut reason = b"X".to_vec();
            reason.extend_from_slice(e.to_string().as_bytes());
            reason.truncate(PACKET);
            let _ = send_packet(&conn, &reason, &[]);
            discard_rest(&conn);
            Err(e)
        }
    }
}

/// After a refusal: reads (and closes the descriptors of) what the old process still sends,
/// up to its end marker or for 2 s at most. Closing a Unix socket with unread packets resets
/// the connection, and the old process would read the reset instead of the reason.
fn discard_rest(conn: &Socket) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = vec![0u8; PACKET + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; BATCH]);
    for _ in 0..100_000 {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) else {
            return;
        };
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(v) = c {
                    for fd in v {
                        let _ = nix::unistd::close(fd);
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 || buf[0] == b'E' {
            return;
        }
    }
}

/// Reads the packets of one hand-over, up to `E`, and checks it got all that was announced.
fn read_handover(
    path: &Path,
    conn: &Socket,
    max_table_bytes: u64,
) -> Result<(Received, Option<Vec<u8>>)> {
    let mut received = Received::default();
    let mut table: Vec<u8> = Vec::new();
    let mut any_table = false;
    let mut buf = vec![0u8; PACKET + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; BATCH]);
    loop {
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| socket_err(path, "receive")(e.into()))?;
            let mut fds = Vec::new();
            for c in msg
                .cmsgs()
                .map_err(|e| socket_err(path, "receive")(e.into()))?
            {
                if let ControlMessageOwned::ScmRights(mut v) = c {
                    fds.append(&mut v);
                }
            }
            if msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
            {
                for fd in fds {
                    let _ = nix::unistd::close(fd);
                }
                return Err(protocol(
                    path,
                    "a message was longer than the protocol allows",
                ));
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
            return Err(protocol(path, "the old process hung up before the end"));
        }
        let body = &buf[1..n];
        match buf[0] {
            b'L' => {
                let text = std::str::from_utf8(body)
                    .map_err(|_| protocol(path, "listener addresses are not UTF-8"))?;
                let addrs: Vec<&str> = text.lines().collect();
                if addrs.len() != fds.len() {
                    let reason = format!(
                        "{} addresses came with {} descriptors",
                        addrs.len(),
                        fds.len()
                    );
                    for fd in fds {
                        let _ = nix::unistd::close(fd);
                    }
                    return Err(protocol(path, reason));
                }
                for (a, fd) in addrs.into_iter().zip(fds) {
                    received.0.push((a.to_string(), fd));
                }
            }
            b'T' => {
                any_table = true;
                if (table.len() + body.len()) as u64 > max_table_bytes {
                    return Err(protocol(
                        path,
                        format!("the table is larger than {max_table_bytes} bytes (--controller-max-table-bytes)"),
                    ));
                }
                table.extend_from_slice(body);
            }
            b'E' => {
                let text = String::from_utf8_lossy(body);
                let want = format!("listeners={} table={}", received.0.len(), table.len());
                if text != want {
                    return Err(protocol(
                        path,
                        format!("the old process announced {text:?} but {want:?} arrived"),
                    ));
                }
                return Ok((received, any_table.then_some(table)));
            }
            other => {
                for fd in fds {
                    let _ = nix::unistd::close(fd);
                }
                return Err(protocol(path, format!("unknown message kind {other:#04x}")));
            }
        }
    }
}

fn send_packet(conn: &Socket, payload: &[u8], fds: &[RawFd]) -> nix::Result<usize> {
    let iov = [IoSlice::new(payload)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<UnixAddr>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
}

/// Old process: connects to the new one on `path` (retrying up to [`CONNECT_WAIT`] while it
/// is not listening yet), sends every socket of `fds` in batches and `table`, then waits up to
/// `confirm_wait` for the new process to confirm. Only `Ok` means the old process may let go.
pub fn send(
    path: &Path,
    fds: &ListenFds,
    table: Option<&[u8]>,
    confirm_wait: Duration,
) -> Result<usize> {
    let conn = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
        .map_err(socket_err(path, "socket"))?;
    let addr = SockAddr::unix(path).map_err(socket_err(path, "address"))?;
    let start = Instant::now();
    loop {
        match conn.connect(&addr) {
            Ok(()) => break,
            Err(e) if start.elapsed() < CONNECT_WAIT => {
                tracing::debug!(error = %e, "New process not listening yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(socket_err(
                    path,
                    "connect (is a new process started with --upgrade waiting?)",
                )(e))
            }
        }
    }
    let (addrs, raw) = fds.lock().serialize();
    // A receiver that refuses hangs up early: its reason is then waiting to be read.
    let send_err = |e: nix::Error| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        match read_reply(&conn, path) {
            Err(refused @ Error::Refused { .. }) => refused,
            _ => socket_err(path, "send")(e.into()),
        }
    };
    for (a, f) in addrs.chunks(BATCH).zip(raw.chunks(BATCH)) {
        let mut payload = b"L".to_vec();
        payload.extend_from_slice(a.join("\n").as_bytes());
        send_packet(&conn, &payload, f).map_err(send_err)?;
    }
    let table_len = table.map_or(0, <[u8]>::len);
    if let Some(t) = table {
        // An empty table still says "there is one".
        let mut pieces: Vec<&[u8]> = t.chunks(PACKET - 1).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        for piece in pieces {
            let mut payload = Vec::with_capacity(piece.len() + 1);
            payload.push(b'T');
            payload.extend_from_slice(piece);
            send_packet(&conn, &payload, &[]).map_err(send_err)?;
        }
    }
    let end = format!("Elisteners={} table={table_len}", addrs.len());
    send_packet(&conn, end.as_bytes(), &[]).map_err(send_err)?;
    conn.set_read_timeout(Some(confirm_wait))
        .map_err(socket_err(path, "set timeout"))?;
    read_reply(&conn, path).map(|()| addrs.len())
}

/// The new process's answer: `Ok` on `K`, its reason on `X`.
fn read_reply(conn: &Socket, path: &Path) -> Result<()> {
    let mut reply = vec![0u8; PACKET];
    let n = std::io::Read::read(&mut &*conn, &mut reply)
        .map_err(socket_err(path, "wait for the new process to confirm"))?;
    match reply.get(..n) {
        Some([b'K', ..]) => Ok(()),
        Some([b'X', reason @ ..]) => Err(Error::Refused {
            path: path.to_path_buf(),
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
        _ => Err(protocol(
            path,
            "the new process hung up without confirming (did it fail to start?)",
        )),
    }
}

/// The confirmation, sent from a background service once the new process's services run.
pub struct Confirm(Mutex<Option<Handover>>);

impl Confirm {
    /// Confirms `handover` when started.
    pub fn new(handover: Handover) -> Self {
        Confirm(Mutex::new(Some(handover)))
    }
}

#[async_trait]
impl BackgroundService for Confirm {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let handover = self.0.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handover {
            match h.confirm() {
                Ok(()) => tracing::info!("Serving; told the old process to drain"),
                Err(e) => {
                    tracing::error!(error = %e, "Could not confirm the hand-over to the old process")
                }
            }
        }
    }
}

/// The signals of a proxy that hands over by [`send`]: `SIGTERM` drains, `SIGINT` stops at
/// once, `SIGQUIT` hands the listeners and table to a new process and drains once it confirms;
/// if it does not, the proxy logs why and goes on serving.
pub struct Signals {
    path: PathBuf,
    fds: ListenFds,
    store: Arc<TableStore>,
}

impl Signals {
    /// Signals of a proxy whose listeners are in `fds` and table in `store`.
    pub fn new(path: PathBuf, fds: ListenFds, store: Arc<TableStore>) -> Self {
        Signals { path, fds, store }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("Cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = quit.recv() => {
                    let (path, fds, store) = (self.path.clone(), self.fds.clone(), self.store.clone());
                    // A thread of its own rather than the runtime's blocking pool: a runtime
                    // waits for its blocking tasks when dropped, and a hand-over that waits
                    // for the new process must not hold up the exit after SIGTERM.
                    let (tx, handing_over) = tokio::sync::oneshot::channel();
                    let spawned = std::thread::Builder::new()
                        .name("maille-upgrade".into())
                        .spawn(move || {
                            // The current table's JSON: the kept deltas folded into the kept
                            // whole table, off the runtime's threads.
                            let table = store.json();
                            let _ = tx.send(send(&path, &fds, table.as_deref(), CONFIRM_WAIT));
                        });
                    if let Err(e) = spawned {
                        tracing::error!(error = %e, "SIGQUIT: cannot start the hand-over; still serving");
                        continue;
                    }
                    // A hand-over may wait a while for the new process: SIGTERM and SIGINT
                    // still work meanwhile.
                    let sent = tokio::select! {
                        r = handing_over => r,
                        _ = term.recv() => {
                            tracing::info!("SIGTERM during a hand-over: draining");
                            return ShutdownSignal::GracefulTerminate;
                        }
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    };
                    match sent {
                        Ok(Ok(n)) => {
                            tracing::info!(listeners = n, "SIGQUIT: the new process holds every listener; draining");
                            return ShutdownSignal::GracefulTerminate;
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "SIGQUIT: hand-over failed; still serving"),
                        Err(e) => tracing::error!(error = %e, "SIGQUIT: hand-over task failed; still serving"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};

    use nix::sys::socket::{getsockname, SockaddrIn};

    use super::*;

    #[test]
    fn a_hundred_sockets_and_a_large_table_cross_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let listeners: Vec<TcpListener> = (0..100)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let old = new_fds();
        let mut expected = HashSet::new();
        for l in &listeners {
            let addr = l.local_addr().unwrap().to_string();
            old.lock().add(addr.clone(), l.as_raw_fd());
            expected.insert(addr);
        }
        // A table of several packets.
        let table: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let receiver = {
            let (path, expected) = (path.clone(), expected.clone());
            std::thread::spawn(move || {
                let fds = new_fds();
                let h = receive(&path, &expected, &fds, 1 << 20, Duration::from_secs(10)).unwrap();
                let got: Vec<(String, SocketAddr)> = expected
                    .iter()
                    .map(|a| {
                        let fd = *fds.lock().get(a).expect("handed over");
                        let local: SockaddrIn = getsockname(fd).unwrap();
                        (
                            a.clone(),
                            SocketAddr::from(std::net::SocketAddrV4::from(local)),
                        )
                    })
                    .collect();
                let table = h.table.clone();
                h.confirm().unwrap();
                (got, table)
            })
        };
        let n = send(&path, &old, Some(&table), Duration::from_secs(10)).unwrap();
        assert_eq!(n, 100);
        let (got, received_table) = receiver.join().unwrap();
        assert_eq!(got.len(), 100);
        for (key, local) in got {
            assert_eq!(
                key,
                local.to_string(),
                "the descriptor is the socket of its address"
            );
        }
        assert_eq!(received_table.as_deref(), Some(table.as_slice()));
    }

    #[test]
    fn a_table_over_the_bound_is_refused_and_the_sender_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let old = new_fds();
        let addr = l.local_addr().unwrap().to_string();
        old.lock().add(addr.clone(), l.as_raw_fd());
        let receiver = {
            let path = path.clone();
            std::thread::spawn(move || {
                let expected = [addr].into();
                receive(&path, &expected, &new_fds(), 1000, Duration::from_secs(10))
                    .err()
                    .unwrap()
                    .to_string()
            })
        };
        let e = send(&path, &old, Some(&[b'x'; 5000]), Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused") && e.contains("larger than 1000 bytes"),
            "{e}"
        );
        assert!(receiver.join().unwrap().contains("larger than 1000"));
    }
}
