//! A hand-written HTTP/1.1 test server on 127.0.0.1 with keep-alive and per-request faults,
//! shared by the fetcher's unit tests (lazypull-fuse) and the FUSE reliability tests (the root
//! package's integration tests).
//!
//! [`Server::start`] serves one blob under fixed paths: `/blob` (any query) with Range support;
//! `/redirect` answers 302 to `/target?sig=N` (a fresh "presigned" URL each time); `/target`
//! serves the blob, or 403 once when told to (an expired URL); `/nohead` refuses HEAD with 405;
//! `/ignore` ignores Range and always sends the whole blob. [`Server::serve_dir`] serves every
//! file of a directory by its relative path (an OCI image layout, for `lazypull mount
//! oci:http://…`).
//!
//! Faults apply to the GETs of blob-serving paths: queued ones first ([`Server::push`]), else a
//! standing one ([`Server::always`]), else one drawn at random ([`Server::random`]).
//! Everything stops by itself: the accept loop when the server is dropped, connections after two
//! idle seconds.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What to do to one request instead of serving it properly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, close the connection without answering.
    Drop,
    /// Answer with this status.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    /// 200 with the whole blob, as if Range were not understood.
    FullBody,
    /// 206 declaring and sending half the bytes asked.
    ShortBody,
    /// 206 declaring all the bytes asked, sending half, then closing.
    Truncated,
    /// 206 (or 200) with the right length and one byte in the middle flipped: only
    /// verification can tell.
    WrongBytes,
    /// Wait this long, then close without answering.
    Stall(Duration),
}

impl Fault {
    /// One of each kind, with small parameters (a 1 s Retry-After, a 3 s stall).
    pub const ALL: [Fault; 9] = [
        Fault::Drop,
        Fault::Status(500),
        Fault::Status(503),
        Fault::TooMany(1),
        Fault::FullBody,
        Fault::ShortBody,
        Fault::Truncated,
        Fault::WrongBytes,
        Fault::Stall(Duration::from_secs(3)),
    ];
}

/// Faults drawn at random: each GET gets one of `kinds` with probability `rate`.
#[derive(Debug, Clone)]
pub struct FaultMix {
    pub rate: f64,
    pub kinds: Vec<Fault>,
    /// Seed of the draw, so that a failing run can be repeated.
    pub seed: u64,
}

/// SplitMix64: a seeded sequence good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What is served: one blob under the fixed test paths, or files by path.
enum Content {
    Blob(Arc<[u8]>),
    Files(HashMap<String, Arc<[u8]>>),
}

struct State {
    content: Content,
    faults: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
    random: Mutex<Option<(FaultMix, Rng)>>,
    forbid_target_once: AtomicBool,
    connections: AtomicU64,
    redirects_issued: AtomicU64,
    injected: AtomicU64,
    gets: AtomicU64,
    hits: Mutex<HashMap<String, u64>>,
    ranges: Mutex<Vec<String>>,
}

/// A test's lock is never held across a panic that matters: recover the data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// `blob` under `/blob`, `/redirect`, `/target`, `/nohead` and `/ignore`.
    pub fn start(blob: Vec<u8>) -> Server {
        Server::with_content(Content::Blob(blob.into()))
    }

    /// Every regular file under `dir`, at `/RELATIVE/PATH`, read into memory now.
    pub fn serve_dir(dir: &Path) -> std::io::Result<Server> {
        fn walk(
            root: &Path,
            dir: &Path,
            out: &mut HashMap<String, Arc<[u8]>>,
        ) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    walk(root, &path, out)?;
                } else if path.is_file() {
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    let key = format!("/{}", rel.to_string_lossy());
                    out.insert(key, std::fs::read(&path)?.into());
                }
            }
            Ok(())
        }
        let mut files = HashMap::new();
        walk(dir, dir, &mut files)?;
        Ok(Server::with_content(Content::Files(files)))
    }

    fn with_content(content: Content) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the listener's address");
        let state = Arc::new(State {
            content,
            faults: Mutex::default(),
            always: Mutex::default(),
            random: Mutex::default(),
            forbid_target_once: AtomicBool::default(),
            connections: AtomicU64::default(),
            redirects_issued: AtomicU64::default(),
            injected: AtomicU64::default(),
            gets: AtomicU64::default(),
            hits: Mutex::default(),
            ranges: Mutex::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            state.connections.fetch_add(1, Ordering::Relaxed);
                            let state = state.clone();
                            thread::spawn(move || serve(stream, &state));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Server {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Faults for the next requests, in order.
    pub fn push(&self, faults: &[Fault]) {
        lock(&self.state.faults).extend(faults);
    }

    /// A fault for every request from now on.
    pub fn always(&self, fault: Option<Fault>) {
        *lock(&self.state.always) = fault;
    }

    /// Faults drawn at random from now on (`None`: no more).
    pub fn random(&self, mix: Option<FaultMix>) {
        *lock(&self.state.random) = mix.map(|m| {
            let rng = Rng(m.seed);
            (m, rng)
        });
    }

    /// No more faults of any source: queued, standing or random.
    pub fn heal(&self) {
        lock(&self.state.faults).clear();
        self.always(None);
        self.random(None);
    }

    pub fn forbid_target_once(&self) {
        self.state.forbid_target_once.store(true, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    pub fn redirects_issued(&self) -> u64 {
        self.state.redirects_issued.load(Ordering::Relaxed)
    }

    /// GETs answered with a fault.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }

    /// GETs of served paths, faulty or not.
    pub fn gets(&self) -> u64 {
        self.state.gets.load(Ordering::Relaxed)
    }

    /// Requests seen for `path` (any method, query ignored).
    pub fn hits(&self, path: &str) -> u64 {
        *lock(&self.state.hits).get(path).unwrap_or(&0)
    }

    /// The Range headers received, in order.
    pub fn ranges(&self) -> Vec<String> {
        lock(&self.state.ranges).clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Serves requests on one connection until the client closes, idles for 2 s, or a fault closes it.
fn serve(stream: TcpStream, state: &State) {
    let setup = stream
        .set_nodelay(true)
        .and_then(|_| stream.set_read_timeout(Some(Duration::from_secs(2))))
        .and_then(|_| stream.try_clone());
    let Ok(read_half) = setup else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    for _ in 0..10_000 {
        let Some((method, target, range)) = read_head(&mut reader) else {
            return;
        };
        let path = target.split('?').next().unwrap_or("").to_string();
        *lock(&state.hits).entry(path.clone()).or_default() += 1;
        if !answer(&mut out, state, &method, &path, range) {
            return;
        }
    }
}

/// Method, target and Range header of the next request; `None` at EOF or idle timeout.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<(String, String, Option<String>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            return Some((method, target, range));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
}

/// The fault for this GET, if any: queued, else standing, else drawn.
fn next_fault(state: &State) -> Option<Fault> {
    let fault = lock(&state.faults)
        .pop_front()
        .or(*lock(&state.always))
        .or_else(|| {
            let mut random = lock(&state.random);
            let (mix, rng) = random.as_mut()?;
            if mix.kinds.is_empty() || rng.unit() >= mix.rate {
                return None;
            }
            let i = (rng.next_u64() % mix.kinds.len() as u64) as usize;
            Some(mix.kinds[i])
        });
    if fault.is_some() {
        state.injected.fetch_add(1, Ordering::Relaxed);
    }
    fault
}

/// Writes the answer; false when the connection must close.
fn answer(
    out: &mut TcpStream,
    state: &State,
    method: &str,
    path: &str,
    range: Option<String>,
) -> bool {
    let head = method == "HEAD";
    let blob: Arc<[u8]> = match &state.content {
        Content::Blob(blob) => {
            match path {
                "/redirect" => {
                    let n = state.redirects_issued.fetch_add(1, Ordering::Relaxed);
                    let location = format!("/target?sig=secret{n}");
                    return respond(out, 302, &[("Location", location)], b"", head);
                }
                "/target" if state.forbid_target_once.swap(false, Ordering::Relaxed) => {
                    return respond(out, 403, &[], b"expired", head);
                }
                "/nohead" if head => return respond(out, 405, &[], b"", true),
                "/blob" | "/target" | "/nohead" | "/ignore" => {}
                _ => return respond(out, 404, &[], b"not found", head),
            }
            blob.clone()
        }
        Content::Files(files) => match files.get(path) {
            Some(file) => file.clone(),
            None => return respond(out, 404, &[], b"not found", head),
        },
    };
    if head {
        let length = [("Content-Length", blob.len().to_string())];
        return respond(out, 200, &length, b"", true);
    }
    state.gets.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = &range {
        lock(&state.ranges).push(r.clone());
    }
    let fault = next_fault(state);
    let range = range.filter(|_| path != "/ignore").map(|r| parse_range(&r));
    let len = blob.len() as u64;
    let (first, last) = match (range, fault) {
        (_, Some(Fault::Drop)) => return false,
        (_, Some(Fault::Stall(d))) => {
            thread::sleep(d);
            return false;
        }
        (_, Some(Fault::Status(code))) => return respond(out, code, &[], b"oops", false),
        (_, Some(Fault::TooMany(secs))) => {
            let retry_after = [("Retry-After", secs.to_string())];
            return respond(out, 429, &retry_after, b"slow down", false);
        }
        (None, Some(Fault::WrongBytes)) => return respond(out, 200, &[], &flipped(&blob), false),
        (None, _) | (_, Some(Fault::FullBody)) => return respond(out, 200, &[], &blob, false),
        (Some((first, _)), _) if first >= len => {
            // Like distribution: 416 whose Content-Length promises more than is sent.
            let headers = [
                ("Content-Range", format!("bytes */{len}")),
                ("Content-Length", "100".into()),
            ];
            write_all(out, 416, &headers, b"short");
            return false;
        }
        (Some((first, last)), _) => (first, last.min(len - 1)),
    };
    let body = &blob[first as usize..=last as usize];
    let content_range = ("Content-Range", format!("bytes {first}-{last}/{len}"));
    match fault {
        Some(Fault::ShortBody) => {
            respond(out, 206, &[content_range], &body[..body.len() / 2], false)
        }
        Some(Fault::Truncated) => {
            let headers = [content_range, ("Content-Length", body.len().to_string())];
            write_all(out, 206, &headers, &body[..body.len() / 2]);
            false
        }
        Some(Fault::WrongBytes) => respond(out, 206, &[content_range], &flipped(body), false),
        _ => respond(out, 206, &[content_range], body, false),
    }
}

/// `body` with its middle byte inverted.
fn flipped(body: &[u8]) -> Vec<u8> {
    let mut wrong = body.to_vec();
    if let Some(b) = wrong.get_mut(body.len() / 2) {
        *b = !*b;
    }
    wrong
}

/// `bytes=first-last` (last optional); anything else is served as the whole blob.
fn parse_range(value: &str) -> (u64, u64) {
    let spec = value.strip_prefix("bytes=").unwrap_or("0-");
    let (first, last) = spec.split_once('-').unwrap_or(("0", ""));
    (first.parse().unwrap_or(0), last.parse().unwrap_or(u64::MAX))
}

/// The status line and headers, followed by `body`, in one write: separate small writes would
/// meet Nagle's algorithm and the client's delayed ACK (40 ms per response).
fn write_all(out: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) -> bool {
    let mut message = format!("HTTP/1.1 {status} X\r\n");
    for (name, value) in headers {
        message.push_str(&format!("{name}: {value}\r\n"));
    }
    message.push_str("\r\n");
    let mut message = message.into_bytes();
    message.extend_from_slice(body);
    out.write_all(&message).is_ok() && out.flush().is_ok()
}

/// A complete response with a correct Content-Length (bodiless for HEAD).
fn respond(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> bool {
    let mut all = headers.to_vec();
    if !all.iter().any(|(n, _)| *n == "Content-Length") {
        all.push(("Content-Length", body.len().to_string()));
    }
    write_all(out, status, &all, if head { b"" } else { body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_faults_follow_the_rate_and_the_seed() {
        let draw = |seed| {
            let server = Server::start(vec![1; 10]);
            server.random(Some(FaultMix {
                rate: 0.25,
                kinds: vec![Fault::Status(503), Fault::Drop],
                seed,
            }));
            (0..4000)
                .map(|_| next_fault(&server.state))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        let faults = a.iter().filter(|f| f.is_some()).count();
        assert!((800..1200).contains(&faults), "{faults} faults of 4000");
        assert!(a.contains(&Some(Fault::Drop)) && a.contains(&Some(Fault::Status(503))));
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
    }

    #[test]
    fn wrong_bytes_keep_the_length() {
        let body = [1u8, 2, 3, 4, 5];
        let wrong = flipped(&body);
        assert_eq!(wrong.len(), body.len());
        assert_eq!(wrong.iter().zip(&body).filter(|(a, b)| a != b).count(), 1);
        assert!(flipped(&[]).is_empty());
    }
}
