//! The configuration of a cloud worker: cloud-init's user data, from a NoCloud seed (a volume
//! labelled `cidata`, its file `user-data`) or EC2-style instance metadata. The user data *is*
//! `shoal.toml`, optionally after a `#shoal` first line; `#cloud-config` YAML is refused with
//! that said (no YAML parser is carried for one nested key).

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The instance metadata service of EC2 and the clouds that copy it.
pub const METADATA_URL: &str = "http://169.254.169.254";
/// How long one metadata request may take, in ms: the service answers in milliseconds where it
/// exists, and where it does not (a PC on a LAN) the boot should not wait.
pub const METADATA_TIMEOUT_MS: u64 = 2000;
/// How long an IMDSv2 session token lives, in seconds (one boot's two requests).
const METADATA_TOKEN_TTL_S: u32 = 60;
/// Largest user data read, in bytes (EC2 allows 16 KiB).
pub const USER_DATA_BYTES_MAX: u64 = 64 << 10;

/// The `shoal.toml` text in user data.
pub fn shoal_toml_of_user_data(text: &str) -> Result<&str, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().next().unwrap_or("").trim();
    if first == "#shoal" {
        return Ok(text.split_once('\n').map_or("", |(_, rest)| rest));
    }
    if first.starts_with("#cloud-config") {
        return Err("user-data is #cloud-config YAML; shoal reads user-data that is shoal.toml itself \
                    (optionally starting with a `#shoal` line): put the file's text there"
            .into());
    }
    if first.starts_with("#!") || first.starts_with("Content-Type:") {
        return Err("user-data is a script or a MIME multipart; it must be shoal.toml (optionally starting \
                    with a `#shoal` line)"
            .into());
    }
    Ok(text)
}

/// The user data from EC2-style metadata at `base` (IMDSv2: a session token first, then IMDSv1 if
/// the token is refused); None when the service answers that there is none, or does not answer.
pub fn fetch_metadata_user_data(base: &str) -> Result<Option<String>> {
    let timeout = Some(Duration::from_millis(METADATA_TIMEOUT_MS));
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout)
        // The service is link-local; a proxy in the environment would never reach it.
        .proxy(None)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let token = match agent
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", METADATA_TOKEN_TTL_S.to_string())
        .send_empty()
    {
        Ok(mut r) if r.status() == 200 => Some(r.body_mut().with_config().limit(4096).read_to_string()?),
        Ok(_) => None,
        // Nothing listens: this is no cloud with a metadata service.
        Err(_) => return Ok(None),
    };
    let mut req = agent.get(format!("{base}/latest/user-data"));
    if let Some(t) = &token {
        req = req.header("X-aws-ec2-metadata-token", t.trim());
    }
    let mut resp = req.call().context("asking the metadata service for user-data")?;
    match resp.status().as_u16() {
        200 => Ok(Some(
            resp.body_mut()
                .with_config()
                .limit(USER_DATA_BYTES_MAX)
                .read_to_string()
                .context("reading user-data from the metadata service")?,
        )),
        404 => Ok(None),
        s => bail!("the metadata service answered HTTP {s} for user-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn user_data_is_shoal_toml() {
        assert_eq!(shoal_toml_of_user_data("#shoal\njoin = []\n"), Ok("join = []\n"));
        assert_eq!(shoal_toml_of_user_data("\u{feff}#shoal\r\njoin = []\r\n"), Ok("join = []\r\n"));
        assert_eq!(shoal_toml_of_user_data("join = []\n"), Ok("join = []\n"));
        assert!(shoal_toml_of_user_data("#cloud-config\nwrite_files: []\n").unwrap_err().contains("#cloud-config"));
        assert!(shoal_toml_of_user_data("#!/bin/sh\necho hi\n").unwrap_err().contains("script"));
    }

    /// A metadata service on loopback: answers each request in `answers` order, recording what it
    /// was asked.
    fn service(answers: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            let mut asked = Vec::new();
            for answer in answers {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push_str(&line);
                }
                asked.push(head.to_lowercase());
                let mut stream = stream;
                stream.write_all(answer.as_bytes()).unwrap();
            }
            asked
        });
        (base, thread)
    }

    #[test]
    fn metadata_user_data_with_an_imdsv2_token() {
        let (base, thread) = service(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nTOKEN",
            "HTTP/1.1 200 OK\r\ncontent-length: 17\r\nconnection: close\r\n\r\n#shoal\njoin = []\n",
        ]);
        let data = fetch_metadata_user_data(&base).unwrap();
        assert_eq!(data.as_deref(), Some("#shoal\njoin = []\n"));
        let asked = thread.join().unwrap();
        assert!(
            asked[0].starts_with("put /latest/api/token")
                && asked[0].contains("x-aws-ec2-metadata-token-ttl-seconds: 60")
        );
        assert!(asked[1].starts_with("get /latest/user-data") && asked[1].contains("x-aws-ec2-metadata-token: token"));
    }

    #[test]
    fn no_user_data_and_no_service_are_none() {
        let (base, thread) = service(vec![
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ]);
        assert_eq!(fetch_metadata_user_data(&base).unwrap(), None);
        thread.join().unwrap();
        // A port nobody listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(fetch_metadata_user_data(&format!("http://{free}")).unwrap(), None);
    }
}
