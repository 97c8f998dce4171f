//! A real SMTP server for tests: `mailin`'s SMTP state machine (the engine of
//! `mailin-embedded`) driven by a tokio TCP listener on port 0, recording every accepted
//! message and every AUTH attempt.
//!
//! Why not `mailin-embedded` itself: it offers AUTH only after STARTTLS (mailin's
//! `insecure_enable_plaintext_auth` is not exposed), so testing that the SMTP password is
//! used, and never leaks, would need certificates the client trusts; and its server cannot
//! be stopped, so "the mail server is down, then up again" could not be tested. This
//! listener can be stopped and started again on the same port.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder, response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One message accepted by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent (CRLF line ends, transfer-encoded).
    pub raw: String,
}

impl ReceivedMail {
    fn split(&self) -> (&str, &str) {
        self.raw.split_once("\r\n\r\n").unwrap_or((&self.raw, ""))
    }

    /// A header's value, unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.split();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    /// The body, with quoted-printable decoded and `\n` line ends.
    pub fn body(&self) -> String {
        let (_, body) = self.split();
        let qp = self
            .header("Content-Transfer-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("quoted-printable"));
        let text = if qp {
            decode_quoted_printable(body)
        } else {
            body.to_owned()
        };
        text.replace("\r\n", "\n")
    }
}

fn decode_quoted_printable(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Default)]
struct Shared {
    mails: Vec<ReceivedMail>,
    /// (user, password) of every AUTH attempt.
    auths: Vec<(String, String)>,
}

#[derive(Clone)]
struct Recorder {
    shared: Arc<Mutex<Shared>>,
    credentials: Option<(String, String)>,
    current: Option<ReceivedMail>,
}

impl Recorder {
    fn auth(&mut self, user: &str, password: &str) -> Response {
        self.shared
            .lock()
            .unwrap()
            .auths
            .push((user.to_owned(), password.to_owned()));
        match &self.credentials {
            Some((u, p)) if u == user && p == password => response::AUTH_OK,
            _ => response::INVALID_CREDENTIALS,
        }
    }
}

impl Handler for Recorder {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(ReceivedMail {
            from: from.to_owned(),
            to: to.to_vec(),
            raw: String::new(),
        });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(m) = &mut self.current {
            m.raw.push_str(&String::from_utf8_lossy(buf));
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(m) = self.current.take() {
            self.shared.lock().unwrap().mails.push(m);
        }
        response::OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.auth(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.auth(user, password)
    }
}

/// A running SMTP server.
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpServer {
    /// Starts on `127.0.0.1:0`. With `credentials`, AUTH PLAIN/LOGIN is offered (over
    /// plain TCP) and required.
    pub async fn start(credentials: Option<(&str, &str)>) -> SmtpServer {
        SmtpServer::start_on("127.0.0.1:0".parse().unwrap(), credentials).await
    }

    /// Starts on `addr` (e.g. the port of a server that was stopped).
    pub async fn start_on(addr: SocketAddr, credentials: Option<(&str, &str)>) -> SmtpServer {
        let listener = TcpListener::bind(addr).await.expect("bind the SMTP server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut builder = SessionBuilder::new("smtp.test");
        if credentials.is_some() {
            builder.enable_auth(AuthMechanism::Plain);
            builder.enable_auth(AuthMechanism::Login);
            builder.insecure_enable_plaintext_auth();
        }
        let recorder = Recorder {
            shared: shared.clone(),
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            current: None,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        accepted = listener.accept() => {
                            let Ok((stream, peer)) = accepted else { continue };
                            let session = builder.clone();
                            let recorder = recorder.clone();
                            let stop = stop.clone();
                            tokio::spawn(async move {
                                tokio::select! {
                                    () = stop.cancelled() => {}
                                    () = serve(stream, peer.ip(), session, recorder) => {}
                                }
                            });
                        }
                    }
                }
            }
        });
        SmtpServer {
            addr,
            shared,
            stop,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.shared.lock().unwrap().mails.clone()
    }

    pub fn auths(&self) -> Vec<(String, String)> {
        self.shared.lock().unwrap().auths.clone()
    }

    /// Stops listening and drops open connections.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn serve(stream: TcpStream, peer: IpAddr, builder: SessionBuilder, recorder: Recorder) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut session = builder.build(peer, recorder);
    if write
        .write_all(&session.greeting().buffer().unwrap())
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = session.process(&line);
        match response.action {
            Action::NoReply => {}
            Action::Reply | Action::UpgradeTls => {
                if write.write_all(&response.buffer().unwrap()).await.is_err() {
                    return;
                }
            }
            Action::Close => {
                let _ = write.write_all(&response.buffer().unwrap()).await;
                return;
            }
        }
    }
}
