//! A small HTTP/1.1 server on 127.0.0.1 that serves blobs with Range support, optionally
//! throttled (bandwidth, round-trip latency), and counts what it sends: the remote end of lazy
//! mounts in `lazypull demo` and in the tests. It stops when dropped. Not a production server:
//! no TLS, no auth, loopback only.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server has sent.
#[derive(Default)]
pub struct Counters {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Body bytes sent.
    pub body_bytes: AtomicU64,
    /// When each request arrived, in order.
    pub arrivals: std::sync::Mutex<Vec<std::time::Instant>>,
}

/// A link to simulate: responses are delayed by `latency` and paced to `bandwidth`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throttle {
    /// Bytes per second; 0 for no limit.
    pub bandwidth: u64,
    /// Added before every response (one round trip).
    pub latency: Duration,
}

/// What a server serves: named files held in memory, or a directory tree read on demand.
enum Files {
    Memory(HashMap<String, Arc<Vec<u8>>>),
    Dir(PathBuf),
}

impl Files {
    /// The size of the file at URL path `path` (without the leading `/`), if there is one.
    fn size(&self, path: &str) -> Option<u64> {
        match self {
            Files::Memory(m) => m.get(path).map(|d| d.len() as u64),
            Files::Dir(root) => {
                let meta = std::fs::metadata(dir_path(root, path)?).ok()?;
                meta.is_file().then_some(meta.len())
            }
        }
    }

    /// Bytes `[start, end)` of the file at `path`.
    fn read(&self, path: &str, start: u64, end: u64) -> io::Result<Vec<u8>> {
        let missing = || io::Error::from(io::ErrorKind::NotFound);
        match self {
            Files::Memory(m) => {
                let d = m.get(path).ok_or_else(missing)?;
                Ok(d[start as usize..end as usize].to_vec())
            }
            Files::Dir(root) => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(dir_path(root, path).ok_or_else(missing)?)?;
                let mut buf = vec![0; (end - start) as usize];
                f.read_exact_at(&mut buf, start)?;
                Ok(buf)
            }
        }
    }
}

/// `path` under `root`, refusing anything that could leave it.
fn dir_path(root: &std::path::Path, path: &str) -> Option<PathBuf> {
    let ok = path
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'));
    ok.then(|| root.join(path))
}

/// A running server: `url(name)` of each file it serves.
pub struct RangeServer {
    port: u16,
    pub counters: Arc<Counters>,
    /// Milliseconds added before every response from now on (a server turning slow).
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RangeServer {
    /// Serve `files` (URL path name → file, read once into memory) on a free loopback port.
    pub fn start(files: HashMap<String, PathBuf>) -> io::Result<RangeServer> {
        RangeServer::start_on(0, files, Throttle::default())
    }

    /// The same on `port` (0: any free one), e.g. to bring a stopped server back, over a link
    /// shaped by `throttle`.
    pub fn start_on(
        port: u16,
        files: HashMap<String, PathBuf>,
        throttle: Throttle,
    ) -> io::Result<RangeServer> {
        let files = files
            .into_iter()
            .map(|(k, p)| Ok((k, Arc::new(std::fs::read(p)?))))
            .collect::<io::Result<HashMap<String, Arc<Vec<u8>>>>>()?;
        RangeServer::start_files(port, Files::Memory(files), throttle)
    }

    /// Serve every file under directory `root` by its relative path (an OCI image layout,
    /// say), read from disk on each request.
    pub fn start_dir(root: PathBuf, throttle: Throttle) -> io::Result<RangeServer> {
        RangeServer::start_files(0, Files::Dir(root), throttle)
    }

    fn start_files(port: u16, files: Files, throttle: Throttle) -> io::Result<RangeServer> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (c, s, d) = (
            Arc::clone(&counters),
            Arc::clone(&stop),
            Arc::clone(&delay_ms),
        );
        let files = Arc::new(files);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (c, f, s) = (Arc::clone(&c), Arc::clone(&files), Arc::clone(&s));
                        let d = Arc::clone(&d);
                        std::thread::spawn(move || serve(conn, &f, &c, &s, &d, throttle));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(RangeServer {
            port,
            counters,
            delay_ms,
            stop,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the file served as `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Body bytes sent so far.
    pub fn body_bytes(&self) -> u64 {
        self.counters.body_bytes.load(Ordering::Relaxed)
    }

    /// Delay every response from now on by `delay` more (on top of the throttle's latency).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// When each request so far arrived.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.counters
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    files: &Files,
    c: &Counters,
    stop: &AtomicBool,
    delay_ms: &AtomicU64,
    throttle: Throttle,
) {
    if conn
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return;
    }
    let _ = conn.set_nodelay(true);
    let Ok(clone) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut out = conn;
    // Keep-alive: one request after another until the client closes or the server stops.
    while !stop.load(Ordering::Relaxed) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        // A stopped server answers nothing more, even on connections it kept alive.
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range: bytes=") {
                let v = v.trim();
                if let Some((a, b)) = v.split_once('-') {
                    range = Some((a.parse::<u64>().ok(), b.parse::<u64>().ok()));
                }
            }
        }
        c.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut a) = c.arrivals.lock() {
            a.push(std::time::Instant::now());
        }
        let path = path.trim_start_matches('/');
        let Some(size) = files.size(path) else {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let (status, start, end) = match range {
            Some((Some(a), b)) if a < size => {
                let e = b.map_or(size - 1, |b| b.min(size - 1));
                ("206 Partial Content", a, e + 1)
            }
            Some((None, Some(n))) => ("206 Partial Content", size.saturating_sub(n), size),
            Some(_) => {
                let _ = out.write_all(
                    format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
                continue;
            }
            None => ("200 OK", 0, size),
        };
        let mut resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n",
            end - start
        );
        if status.starts_with("206") {
            resp.push_str(&format!(
                "Content-Range: bytes {start}-{}/{size}\r\n",
                end - 1
            ));
        }
        resp.push_str("\r\n");
        let mut bytes = resp.into_bytes();
        if method != "HEAD" {
            match files.read(path, start, end) {
                Ok(body) => bytes.extend_from_slice(&body),
                Err(_) => return,
            }
            c.body_bytes.fetch_add(end - start, Ordering::Relaxed);
        }
        std::thread::sleep(throttle.latency);
        std::thread::sleep(Duration::from_millis(delay_ms.load(Ordering::Relaxed)));
        if throttle.bandwidth > 0 {
            std::thread::sleep(Duration::from_secs_f64(
                bytes.len() as f64 / throttle.bandwidth as f64,
            ));
        }
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}
