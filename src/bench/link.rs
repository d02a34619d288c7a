//! A throttling TCP proxy on 127.0.0.1: the network between the benchmark's client and its
//! blob server. Every byte crossing it is delayed by half the round-trip time and paced to the
//! link's bandwidth, which all connections share (one link, as a node's uplink is), in each
//! direction separately.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A link to emulate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    /// Bits per second.
    pub bits_per_sec: u64,
    pub rtt: Duration,
}

impl LinkSpec {
    /// `100mbit:20ms`, `1gbit:2ms`, `500kbit:80ms`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("network `{s}`: expected RATE:RTT such as 100mbit:20ms");
        let (rate, rtt) = s.split_once(':').ok_or_else(bad)?;
        let rate = rate.to_ascii_lowercase();
        let (num, unit) = rate.split_at(
            rate.find(|c: char| c.is_ascii_alphabetic())
                .ok_or_else(bad)?,
        );
        let mult: u64 = match unit {
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            _ => return Err(bad()),
        };
        let num: f64 = num.parse().map_err(|_| bad())?;
        let ms: u64 = rtt
            .strip_suffix("ms")
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        if num <= 0.0 {
            return Err(bad());
        }
        Ok(LinkSpec {
            bits_per_sec: (num * mult as f64) as u64,
            rtt: Duration::from_millis(ms),
        })
    }

    fn bytes_per_sec(&self) -> f64 {
        self.bits_per_sec as f64 / 8.0
    }
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.bits_per_sec;
        let rate = if b.is_multiple_of(1_000_000_000) {
            format!("{}gbit", b / 1_000_000_000)
        } else if b.is_multiple_of(1_000_000) {
            format!("{}mbit", b / 1_000_000)
        } else {
            format!("{}kbit", b / 1_000)
        };
        write!(f, "{rate}:{}ms", self.rtt.as_millis())
    }
}

/// One direction of the link: when it is next free to put a byte on the wire.
struct Wire {
    next_free: Mutex<Instant>,
    bytes_per_sec: f64,
    bytes: AtomicU64,
}

impl Wire {
    /// Wait until `n` bytes have been serialised onto the wire (after everyone queued before).
    fn transmit(&self, n: usize) {
        let done = {
            let mut next = self
                .next_free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *next
        };
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(wait) = done.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// When requests set off towards the server.
type Starts = Arc<Mutex<Vec<Instant>>>;

/// A running proxy; stops when dropped.
pub struct Link {
    port: u16,
    down: Arc<Wire>,
    starts: Starts,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    /// Forward 127.0.0.1:(a free port) to 127.0.0.1:`upstream` over a link like `spec`.
    pub fn start(upstream: u16, spec: LinkSpec) -> io::Result<Link> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let wire = || {
            Arc::new(Wire {
                next_free: Mutex::new(Instant::now()),
                bytes_per_sec: spec.bytes_per_sec(),
                bytes: AtomicU64::new(0),
            })
        };
        let (down, up) = (wire(), wire());
        let stop = Arc::new(AtomicBool::new(false));
        let starts = Starts::default();
        let (d, u, s) = (Arc::clone(&down), Arc::clone(&up), Arc::clone(&stop));
        let st = Arc::clone(&starts);
        let one_way = spec.rtt / 2;
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                            (Ok(c), Ok(s)) => (c, s),
                            _ => continue,
                        };
                        pipe(
                            client,
                            server,
                            Arc::clone(&u),
                            one_way,
                            Some(Arc::clone(&st)),
                        );
                        pipe(s2, c2, Arc::clone(&d), one_way, None);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Link {
            port,
            down,
            starts,
            stop,
            thread: Some(thread),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes carried from the server to the client so far.
    pub fn down_bytes(&self) -> u64 {
        self.down.bytes.load(Ordering::Relaxed)
    }

    /// When each request so far entered the link: the first bytes a client sent on a
    /// connection, or sent after a pause of a millisecond or more (HTTP/1.1 clients wait for
    /// a response before the next request on a connection).
    pub fn request_starts(&self) -> Vec<Instant> {
        self.starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Carry bytes from `from` to `to` over `wire`, each delayed by `one_way`: a reader thread
/// timestamps what arrives (noting request starts in `starts`), a writer thread sends it when
/// its time has come.
fn pipe(
    mut from: TcpStream,
    to: TcpStream,
    wire: Arc<Wire>,
    one_way: Duration,
    starts: Option<Starts>,
) {
    let (tx, rx) = channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut last: Option<Instant> = None;
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = Instant::now();
                    if let Some(s) = &starts {
                        if last.is_none_or(|l| now.duration_since(l) >= Duration::from_millis(1)) {
                            s.lock().unwrap_or_else(PoisonError::into_inner).push(now);
                        }
                    }
                    last = Some(now);
                    if tx.send((now, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once it has sent everything.
    });
    std::thread::spawn(move || deliver(&rx, to, &wire, one_way));
}

fn deliver(rx: &Receiver<(Instant, Vec<u8>)>, mut to: TcpStream, wire: &Wire, one_way: Duration) {
    while let Ok((at, data)) = rx.recv() {
        if let Some(wait) = (at + one_way).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Serialise in pieces so that concurrent connections interleave on the wire.
        for piece in data.chunks(16 << 10) {
            wire.transmit(piece.len());
            if to.write_all(piece).is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let s = LinkSpec::parse("100mbit:20ms").unwrap();
        assert_eq!(s.bits_per_sec, 100_000_000);
        assert_eq!(s.rtt, Duration::from_millis(20));
        assert_eq!(s.to_string(), "100mbit:20ms");
        assert_eq!(
            LinkSpec::parse("1gbit:2ms").unwrap().to_string(),
            "1gbit:2ms"
        );
        for bad in [
            "100mbit",
            "fast:20ms",
            "100mbit:20",
            "0mbit:1ms",
            "100xbit:2ms",
        ] {
            assert!(LinkSpec::parse(bad).is_err(), "{bad}");
        }
    }

    /// An echo server behind the link: a round trip costs the RTT, and a large transfer its
    /// size over the bandwidth (lower bounds only: a loaded machine may be slower).
    #[test]
    fn delays_and_paces() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in echo.incoming() {
                let mut conn = conn.unwrap();
                std::thread::spawn(move || {
                    let mut c2 = conn.try_clone().unwrap();
                    let _ = io::copy(&mut conn, &mut c2);
                });
            }
        });
        let spec = LinkSpec::parse("80mbit:40ms").unwrap();
        let link = Link::start(port, spec).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", link.port())).unwrap();
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );
        // 1 MB each way at 10 MB/s: at least 100 ms.
        let t = Instant::now();
        let data = vec![7u8; 1_000_000];
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
        let mut got = vec![0u8; 1_000_000];
        c.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got.iter().all(|&x| x == 7));
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(link.down_bytes(), 1_000_004);
        // The ping, then the transfer (a busy machine may split it with a pause): two or more.
        assert!(
            link.request_starts().len() >= 2,
            "{:?}",
            link.request_starts()
        );
    }
}
