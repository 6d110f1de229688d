//! An OCI registry on 127.0.0.1 that answers a pull with the fuzz input: the input is a list of
//! answers, one per request in the order the pull makes them (manifest, token, index, config,
//! layers...). Each answer's first byte picks its status (`A`: 401 with a Bearer challenge whose
//! realm is this registry, `N`: 404, `E`: 500, anything else: 200); the rest is its body. The
//! realm is always this registry and no answer redirects, so a pull never leaves 127.0.0.1.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What separates two answers in the input.
pub const SEPARATOR: &[u8] = b"\n--next--\n";
/// Longest request head read, in bytes (ureq's are a few hundred).
const HEAD_BYTES_MAX: usize = 16 << 10;

struct Registry {
    port: u16,
    answers: Mutex<VecDeque<Vec<u8>>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<&'static Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("a local address").port();
        let r: &'static Registry = Box::leak(Box::new(Registry { port, answers: Mutex::new(VecDeque::new()) }));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(r, conn);
            }
        });
        r
    })
}

fn answer(r: &Registry, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < HEAD_BYTES_MAX {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let next = r.answers.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
    let (status, extra, body) = match next.as_deref().and_then(|a| a.split_first()) {
        None => (404, String::new(), &[][..]),
        Some((b'A', rest)) => {
            // The challenge's own parameters are the body's first line, after a realm that
            // keeps the token request here.
            let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
            let params: String =
                line.iter().map(|&b| b as char).filter(|c| c.is_ascii_graphic() || *c == ' ').collect();
            let realm = format!("http://127.0.0.1:{}/token", r.port);
            (401, format!("WWW-Authenticate: Bearer realm=\"{realm}\",{params}\r\n"), rest)
        }
        Some((b'N', rest)) => (404, String::new(), rest),
        Some((b'E', rest)) => (500, String::new(), rest),
        Some((_, rest)) => (200, String::new(), rest),
    };
    write!(conn, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n", body.len())?;
    conn.write_all(body)?;
    conn.flush()
}

/// Loads the answers in `data`; returns the reference to pull from this registry.
pub fn serve(data: &[u8]) -> String {
    let r = registry();
    let mut answers = VecDeque::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        answers.push_back(rest[..i].to_vec());
        rest = &rest[i + SEPARATOR.len()..];
    }
    answers.push_back(rest.to_vec());
    *r.answers.lock().unwrap_or_else(|e| e.into_inner()) = answers;
    format!("127.0.0.1:{}/fuzz/image:latest", r.port)
}
