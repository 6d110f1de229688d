//! The clock at boot: one SNTP exchange (RFC 4330) per server until one answers, then the system
//! clock set from it. A PC with a dead CMOS battery boots in 2000 or so; leases and records need
//! the real time, and when no server answers the node takes the mesh's (`--clock-from-mesh`).
//!
//! SNTP by hand (a 48-byte UDP exchange) rather than a crate: it is this small, and the parse is
//! tested below on the bytes.

use std::net::{ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long one server may take to answer, in seconds.
pub const SNTP_TIMEOUT_S: u64 = 3;
/// The NTP port.
const NTP_PORT: u16 = 123;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;
/// One NTP packet without extensions, in bytes.
const PACKET_BYTES: usize = 48;
/// An offset below this is left alone rather than stepped, in ms: a small step gains nothing.
pub const STEP_MS_MIN: i64 = 500;

/// Why a server's answer was not used.
#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("{server}: {source}")]
    Io {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}: no address in time (is DNS reachable? an IP address in `ntp` needs none)")]
    NoAddress { server: String },
    #[error("the answer is {0} bytes, not at least 48")]
    Short(usize),
    #[error("the answer is not a server's (mode {0})")]
    NotServer(u8),
    #[error("the server is unsynchronized (stratum {stratum}, leap {leap}): it does not know the time")]
    Unsynchronized { stratum: u8, leap: u8 },
    #[error("the answer is not for this request (its origin timestamp differs)")]
    WrongOrigin,
}

/// What one exchange measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The server's clock minus ours, in ms.
    pub offset_ms: i64,
    /// The exchange's round trip less the server's processing time, in ms.
    pub delay_ms: i64,
}

/// A time as NTP writes it: seconds since 1900 in the high 32 bits, the fraction in the low.
fn ntp_from_unix_ms(ms: i64) -> u64 {
    let secs = ms.div_euclid(1000) + NTP_UNIX_OFFSET_S;
    // Rounded up, so that the floor in `unix_ms_from_ntp` gives the same ms back.
    let frac = ((ms.rem_euclid(1000) as u64) * (1u64 << 32)).div_ceil(1000);
    ((secs as u64 & 0xffff_ffff) << 32) | frac
}

/// Unix ms of an NTP timestamp. Its seconds wrap in 2036 (era 1): a value below 2^31 is read as
/// era 1, so this works from 1968 to 2104.
fn unix_ms_from_ntp(ts: u64) -> i64 {
    let secs = (ts >> 32) as i64;
    let secs = if secs < (1 << 31) { secs + (1 << 32) } else { secs };
    let frac_ms = (((ts & 0xffff_ffff) * 1000) >> 32) as i64;
    (secs - NTP_UNIX_OFFSET_S) * 1000 + frac_ms
}

/// A client request (version 4, mode 3) carrying `transmit` (our clock, as NTP) as its transmit
/// timestamp, which the server copies into its answer's origin field.
pub fn request(transmit: u64) -> [u8; PACKET_BYTES] {
    let mut p = [0u8; PACKET_BYTES];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&transmit.to_be_bytes());
    p
}

/// Reads a server's answer to the request sent at `sent` (as NTP), received at our
/// `received_ms` (Unix ms).
pub fn parse_answer(answer: &[u8], sent: u64, received_ms: i64) -> Result<Sample, SntpError> {
    if answer.len() < PACKET_BYTES {
        return Err(SntpError::Short(answer.len()));
    }
    let (leap, mode, stratum) = (answer[0] >> 6, answer[0] & 7, answer[1]);
    if mode != 4 {
        return Err(SntpError::NotServer(mode));
    }
    // Leap 3 is "clock not synchronized"; stratum 0 a kiss-o'-death, 16 and over unsynchronized.
    if leap == 3 || stratum == 0 || stratum >= 16 {
        return Err(SntpError::Unsynchronized { stratum, leap });
    }
    let ts = |at: usize| u64::from_be_bytes(answer[at..at + 8].try_into().expect("8 bytes"));
    if ts(24) != sent {
        return Err(SntpError::WrongOrigin);
    }
    let (t1, t2, t3, t4) = (unix_ms_from_ntp(sent), unix_ms_from_ntp(ts(32)), unix_ms_from_ntp(ts(40)), received_ms);
    Ok(Sample { offset_ms: ((t2 - t1) + (t3 - t4)) / 2, delay_ms: (t4 - t1) - (t3 - t2) })
}

fn now_unix_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// One SNTP exchange with `server` (`host` or `host:port`; port 123 when absent), waiting at most
/// `timeout` for the answer.
pub fn query(server: &str, timeout: Duration) -> Result<Sample, SntpError> {
    let io = |source| SntpError::Io { server: server.to_string(), source };
    let with_port = if server.contains(':') { server.to_string() } else { format!("{server}:{NTP_PORT}") };
    // The resolver has its own timeouts and retries (30 s and more with an unreachable DNS
    // server): it runs aside, and is waited for no longer than the exchange itself.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(with_port.to_socket_addrs().map(|mut a| a.next()));
    });
    let addr = match rx.recv_timeout(timeout) {
        Ok(Ok(Some(addr))) => addr,
        Ok(Err(e)) => return Err(io(e)),
        Ok(Ok(None)) | Err(_) => return Err(SntpError::NoAddress { server: server.to_string() }),
    };
    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).map_err(io)?;
    socket.connect(addr).map_err(io)?;
    socket.set_read_timeout(Some(timeout)).map_err(io)?;
    let sent = ntp_from_unix_ms(now_unix_ms());
    socket.send(&request(sent)).map_err(io)?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).map_err(io)?;
    parse_answer(&buf[..n], sent, now_unix_ms())
}

/// How the clock was set at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockState {
    /// A server answered; the clock was stepped by `offset_ms` (0: it was right already).
    Synced { server: String, offset_ms: i64 },
    /// No server answered: the node takes the mesh's time.
    NoServer,
}

/// Asks each server in turn (at most [`SNTP_TIMEOUT_S`] each) and, with `set`, steps the clock by
/// the first answer's offset (without it, only measures: `shoal live run --root` in a test must
/// not move the host's clock). Logs one line per server that failed.
pub fn sync(servers: &[String], set: bool) -> ClockState {
    for server in servers {
        match query(server, Duration::from_secs(SNTP_TIMEOUT_S)) {
            Ok(sample) => {
                let offset_ms = if sample.offset_ms.abs() < STEP_MS_MIN { 0 } else { sample.offset_ms };
                if set
                    && offset_ms != 0
                    && let Err(e) = step(offset_ms)
                {
                    tracing::warn!("clock: {server} says the clock is {offset_ms} ms off, but setting it failed: {e}");
                    continue;
                }
                tracing::info!("clock: set from {server} (it was {offset_ms} ms off, delay {} ms)", sample.delay_ms);
                return ClockState::Synced { server: server.clone(), offset_ms };
            }
            Err(e) => tracing::info!("clock: {e}"),
        }
    }
    ClockState::NoServer
}

/// Steps the system clock by `offset_ms`.
fn step(offset_ms: i64) -> nix::Result<()> {
    let ms = now_unix_ms() + offset_ms;
    let ts = nix::sys::time::TimeSpec::new(ms.div_euclid(1000), ms.rem_euclid(1000) * 1_000_000);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's answer to `req` with receive and transmit times `t2`, `t3` (Unix ms).
    fn answer(req: &[u8; 48], t2: i64, t3: i64, leap: u8, stratum: u8) -> [u8; 48] {
        let mut a = [0u8; 48];
        a[0] = (leap << 6) | (4 << 3) | 4;
        a[1] = stratum;
        a[24..32].copy_from_slice(&req[40..48]);
        a[32..40].copy_from_slice(&ntp_from_unix_ms(t2).to_be_bytes());
        a[40..48].copy_from_slice(&ntp_from_unix_ms(t3).to_be_bytes());
        a
    }

    #[test]
    fn ntp_timestamps_round_trip_across_the_2036_wrap() {
        for ms in [0, 1_765_000_000_123, 2_085_978_496_000 - 1, 2_085_978_496_000 + 5_000, 946_684_800_000] {
            assert_eq!(unix_ms_from_ntp(ntp_from_unix_ms(ms)), ms, "{ms}");
        }
    }

    #[test]
    fn the_offset_is_the_servers_clock_minus_ours() {
        // Our clock reads 2000-01-01 (a dead CMOS battery); the server's a year on.
        let t1 = 946_684_800_000;
        let year_ms = 365 * 86_400_000;
        let sent = ntp_from_unix_ms(t1);
        let req = request(sent);
        assert_eq!(req[0], 0x23);
        let a = answer(&req, t1 + year_ms + 10, t1 + year_ms + 11, 0, 2);
        let s = parse_answer(&a, sent, t1 + 21).unwrap();
        assert_eq!(s, Sample { offset_ms: year_ms, delay_ms: 20 });
    }

    #[test]
    fn answers_that_do_not_tell_the_time_are_refused() {
        let sent = ntp_from_unix_ms(1_000_000);
        let req = request(sent);
        let t = 1_000_000;
        assert!(matches!(parse_answer(&answer(&req, t, t, 3, 2), sent, t), Err(SntpError::Unsynchronized { .. })));
        assert!(matches!(parse_answer(&answer(&req, t, t, 0, 0), sent, t), Err(SntpError::Unsynchronized { .. })));
        assert!(matches!(parse_answer(&answer(&req, t, t, 0, 2)[..40], sent, t), Err(SntpError::Short(40))));
        assert!(matches!(parse_answer(&answer(&req, t, t, 0, 2), sent + 1, t), Err(SntpError::WrongOrigin)));
        let mut client = answer(&req, t, t, 0, 2);
        client[0] = 0x23;
        assert!(matches!(parse_answer(&client, sent, t), Err(SntpError::NotServer(3))));
    }

    #[test]
    fn query_reads_a_server_over_udp() {
        // A server on loopback whose clock is an hour ahead of ours.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 48];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            assert_eq!(n, 48);
            let now = now_unix_ms() + 3_600_000;
            server.send_to(&answer(&buf, now, now, 0, 1), from).unwrap();
        });
        let sample = query(&addr.to_string(), Duration::from_secs(5)).unwrap();
        thread.join().unwrap();
        assert!((sample.offset_ms - 3_600_000).abs() < 1000, "{sample:?}");
        // Nobody answers: a timeout, named with the server.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = query(&silent.local_addr().unwrap().to_string(), Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().starts_with(&format!("{}: ", silent.local_addr().unwrap())), "{e}");
    }
}
