//! A misbehaving webhook receiver on a real local socket: raw TCP, so it can do what a
//! well-behaved HTTP server never does (hang, trickle, reset mid-response, stream 50 MB, answer
//! before reading the request body). Every connection is recorded: how much of the request it
//! read, how much it wrote, and whether the sender hung up before the receiver was done.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the receiver does with every connection.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Reads the whole request, then writes these bytes and closes.
    Respond(Vec<u8>),
    /// Reads the whole request and never answers (until the sender hangs up).
    Hang,
    /// Writes `head` one byte every `every`: the status line never completes in time.
    TrickleHead { head: Vec<u8>, every: Duration },
    /// Writes a 200 head promising `chunks` bytes of body, then one byte every `every`.
    TrickleBody { chunks: usize, every: Duration },
    /// Writes these bytes, then resets the connection (RST, no orderly close).
    ResetAfter(Vec<u8>),
    /// Answers 200 with a body of `len` bytes, streamed as fast as the sender reads it.
    Huge { len: usize },
    /// Answers as soon as the request head arrived, before reading any of its body; then
    /// reads (and counts) the body, as a lingering close does.
    AnswerBeforeBody(Vec<u8>),
}

/// One response as raw bytes: a status line, `headers`, a `content-length` and `body`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Fault\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// What happened on one connection.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// The request line (`POST /path HTTP/1.1`).
    pub request_line: String,
    /// Request body bytes read before the receiver started answering.
    pub body_read_before_answer: usize,
    /// Request body bytes read in all.
    pub body_read: usize,
    /// The request's `content-length`.
    pub content_length: usize,
    /// Response bytes the receiver managed to write.
    pub written: usize,
    /// Whether the sender closed the connection before the receiver had finished.
    pub sender_hung_up: bool,
    /// How long the connection lasted, from accept to close.
    pub lasted: Duration,
    pub done: bool,
}

#[derive(Clone)]
pub struct FaultReceiver {
    pub addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    changed: Arc<Notify>,
}

impl FaultReceiver {
    pub async fn start(fault: Fault) -> FaultReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = FaultReceiver {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            changed: Arc::new(Notify::new()),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let me = me.clone();
                let fault = fault.clone();
                tokio::spawn(async move { me.serve(socket, fault).await });
            }
        });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections that have ended.
    pub fn finished(&self) -> Vec<Conn> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.done)
            .cloned()
            .collect()
    }

    /// Waits (at most `limit`) until `n` connections have ended.
    pub async fn wait_finished(&self, n: usize, limit: Duration) -> Vec<Conn> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            let done = self.finished();
            if done.len() >= n {
                return done;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "{} of {n} connections to {} ended within {limit:?}",
                    done.len(),
                    self.addr
                );
            }
        }
    }

    async fn serve(&self, mut socket: TcpStream, fault: Fault) {
        let started = Instant::now();
        let index = {
            let mut conns = self.conns.lock().unwrap();
            conns.push(Conn::default());
            conns.len() - 1
        };
        let mut conn = Conn::default();
        if read_head(&mut socket, &mut conn).await {
            if !matches!(fault, Fault::AnswerBeforeBody(_)) {
                read_body(&mut socket, &mut conn).await;
            }
            conn.body_read_before_answer = conn.body_read;
            act(&mut socket, &mut conn, fault).await;
        }
        conn.lasted = started.elapsed();
        conn.done = true;
        self.conns.lock().unwrap()[index] = conn;
        self.changed.notify_waiters();
    }
}

/// Reads the request head, byte by byte so that no body byte is taken with it; `false` if the
/// sender closed first.
async fn read_head(socket: &mut TcpStream, conn: &mut Conn) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if !matches!(socket.read(&mut byte).await, Ok(1)) {
            return false;
        }
        buf.push(byte[0]);
        if let Some(end) = buf.ends_with(b"\r\n\r\n").then(|| buf.len() - 4) {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            conn.request_line = head.lines().next().unwrap_or_default().to_owned();
            conn.content_length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            return true;
        }
    }
}

async fn read_body(socket: &mut TcpStream, conn: &mut Conn) {
    let mut chunk = [0u8; 4096];
    while conn.body_read < conn.content_length {
        match socket.read(&mut chunk).await {
            Ok(n) if n > 0 => conn.body_read += n,
            _ => return,
        }
    }
}

/// Writes `bytes`, counting them; `false` once the sender has hung up.
async fn write(socket: &mut TcpStream, conn: &mut Conn, bytes: &[u8]) -> bool {
    match socket.write_all(bytes).await {
        Ok(()) => {
            conn.written += bytes.len();
            true
        }
        Err(_) => {
            conn.sender_hung_up = true;
            false
        }
    }
}

/// Waits until the sender closes the connection (reading whatever it still sends).
async fn until_hung_up(socket: &mut TcpStream, conn: &mut Conn) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = socket.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        conn.body_read += n;
    }
    conn.sender_hung_up = true;
}

async fn act(socket: &mut TcpStream, conn: &mut Conn, fault: Fault) {
    match fault {
        Fault::Respond(bytes) => {
            write(socket, conn, &bytes).await;
        }
        Fault::Hang => until_hung_up(socket, conn).await,
        Fault::TrickleHead { head, every } => {
            for byte in head {
                if !write(socket, conn, &[byte]).await {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        }
        Fault::TrickleBody { chunks, every } => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {chunks}\r\n\r\n");
            if !write(socket, conn, head.as_bytes()).await {
                return;
            }
            for _ in 0..chunks {
                tokio::time::sleep(every).await;
                if !write(socket, conn, b"x").await {
                    return;
                }
            }
        }
        Fault::ResetAfter(bytes) => {
            write(socket, conn, &bytes).await;
            socket.set_zero_linger().unwrap();
        }
        Fault::Huge { len } => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            if !write(socket, conn, head.as_bytes()).await {
                return;
            }
            let block = vec![b'y'; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(block.len());
                if !write(socket, conn, &block[..n]).await {
                    return;
                }
                left -= n;
            }
        }
        Fault::AnswerBeforeBody(bytes) => {
            if write(socket, conn, &bytes).await {
                // A lingering close: read what the sender still sends, then close.
                read_body(socket, conn).await;
            }
        }
    }
}
