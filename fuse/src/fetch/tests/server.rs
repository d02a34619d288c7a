//! A hand-written HTTP/1.1 test server on 127.0.0.1 with keep-alive and per-request faults.
//!
//! Paths: `/blob` (any query) serves the blob with Range support; `/redirect` answers 302 to
//! `/target?sig=N` (a fresh "presigned" URL each time); `/target` serves the blob, or 403 once
//! when told to (an expired URL); `/nohead` refuses HEAD with 405; `/ignore` ignores Range and
//! always sends the whole blob. Faults apply to the GETs of blob-serving paths, one per request.
//! Everything stops by itself: the accept loop when the server is dropped, connections after two
//! idle seconds.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What to do to one request instead of serving it properly.
#[derive(Debug, Clone, Copy)]
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
    /// Wait this long, then close without answering.
    Stall(Duration),
}

#[derive(Default)]
struct State {
    blob: Vec<u8>,
    faults: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
    forbid_target_once: AtomicBool,
    connections: AtomicU64,
    redirects_issued: AtomicU64,
    hits: Mutex<HashMap<String, u64>>,
    ranges: Mutex<Vec<String>>,
}

pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(blob: Vec<u8>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            blob,
            ..State::default()
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
        self.state.faults.lock().unwrap().extend(faults);
    }

    /// A fault for every request from now on.
    pub fn always(&self, fault: Option<Fault>) {
        *self.state.always.lock().unwrap() = fault;
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

    /// Requests seen for `path` (any method, query ignored).
    pub fn hits(&self, path: &str) -> u64 {
        *self.state.hits.lock().unwrap().get(path).unwrap_or(&0)
    }

    /// The Range headers received, in order.
    pub fn ranges(&self) -> Vec<String> {
        self.state.ranges.lock().unwrap().clone()
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
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    for _ in 0..10_000 {
        let Some((method, target, range)) = read_head(&mut reader) else {
            return;
        };
        let path = target.split('?').next().unwrap_or("").to_string();
        *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
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

/// Writes the answer; false when the connection must close.
fn answer(
    out: &mut TcpStream,
    state: &State,
    method: &str,
    path: &str,
    range: Option<String>,
) -> bool {
    let blob = &state.blob;
    match path {
        "/redirect" => {
            let n = state.redirects_issued.fetch_add(1, Ordering::Relaxed);
            let location = format!("/target?sig=secret{n}");
            return respond(out, 302, &[("Location", location)], b"", method == "HEAD");
        }
        "/target" if state.forbid_target_once.swap(false, Ordering::Relaxed) => {
            return respond(out, 403, &[], b"expired", method == "HEAD");
        }
        "/nohead" if method == "HEAD" => return respond(out, 405, &[], b"", true),
        "/blob" | "/target" | "/nohead" | "/ignore" => {}
        _ => return respond(out, 404, &[], b"not found", method == "HEAD"),
    }
    if method == "HEAD" {
        return respond(
            out,
            200,
            &[("Content-Length", blob.len().to_string())],
            b"",
            true,
        );
    }
    if let Some(r) = &range {
        state.ranges.lock().unwrap().push(r.clone());
    }
    let fault = state
        .faults
        .lock()
        .unwrap()
        .pop_front()
        .or(*state.always.lock().unwrap());
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
            return respond(
                out,
                429,
                &[("Retry-After", secs.to_string())],
                b"slow down",
                false,
            )
        }
        (None, _) | (_, Some(Fault::FullBody)) => return respond(out, 200, &[], blob, false),
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
        _ => respond(out, 206, &[content_range], body, false),
    }
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
