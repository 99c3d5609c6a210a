//! A small SMTP server on 127.0.0.1 that keeps every message it is given: the real protocol
//! (greeting, EHLO, MAIL, RCPT, DATA, QUIT) over a real socket, enough for lettre.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    /// Headers and body as sent, dot-unstuffed.
    pub data: String,
}

impl Mail {
    pub fn subject(&self) -> &str {
        self.data.lines().find_map(|line| line.strip_prefix("Subject: ")).unwrap_or_default()
    }

    /// The body with quoted-printable soft breaks and escapes undone.
    pub fn body(&self) -> String {
        let body = self.data.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        if !self.data.contains("Content-Transfer-Encoding: quoted-printable") {
            return body.to_owned();
        }
        let joined = body.replace("=\r\n", "");
        let mut out = Vec::new();
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && i + 3 <= bytes.len()
                && let Ok(byte) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The first link in the body that contains `part`.
    pub fn link(&self, part: &str) -> String {
        let body = self.body();
        body.split_whitespace()
            .find(|word| word.starts_with("http") && word.contains(part))
            .unwrap_or_else(|| panic!("no link with {part} in:\n{body}"))
            .to_owned()
    }
}

#[derive(Clone, Default)]
pub struct Sink {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_on(0).await
    }

    /// A sink on a given port (0: any free one).
    pub async fn start_on(port: u16) -> Sink {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let sink = Sink { port: listener.local_addr().unwrap().port(), mails: Arc::default() };
        let mails = sink.mails.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                tokio::spawn(session(socket, mails.clone()));
            }
        });
        sink
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits for the `count`th mail to `to` and answers it.
    pub async fn wait_for(&self, to: &str, count: usize) -> Mail {
        for _ in 0..300 {
            let found: Vec<Mail> =
                self.mails().into_iter().filter(|mail| mail.to.iter().any(|rcpt| rcpt == to)).collect();
            if found.len() >= count {
                return found[count - 1].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no mail number {count} to {to} within 15 s; got {:?}", self.mails());
    }
}

async fn session(socket: tokio::net::TcpStream, mails: Arc<Mutex<Vec<Mail>>>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
    let mut to = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-sink\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM") {
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO") {
            to.push(line[8..].trim().trim_start_matches(':').trim().trim_matches(['<', '>']).to_owned());
            b"250 ok\r\n"
        } else if upper == "DATA" {
            let _ = write.write_all(b"354 go on\r\n").await;
            let mut data = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push_str("\r\n");
            }
            mails.lock().unwrap().push(Mail { to: to.clone(), data });
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}
