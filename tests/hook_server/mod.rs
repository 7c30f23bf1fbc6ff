//! A real HTTP server standing in for a co-tenant's release hooks (ComfyUI's `/free`, vLLM's
//! `/sleep` and `/wake_up`): it records every request and answers each path as the test says,
//! 200, 500, or not at all (hangs).
#![allow(dead_code)]
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a path answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// HTTP 500 with a short body.
    Refuse,
    /// Reads the request, then never answers (the connection stays open for a minute).
    Hang,
}

/// One request as received: `POST /sleep?level=1` and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub line: String,
    pub body: String,
}

#[derive(Clone)]
pub struct HookServer {
    pub port: u16,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl HookServer {
    /// Listens on 127.0.0.1 (a free port); every path answers 200 until told otherwise.
    pub fn start() -> HookServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the hook server");
        let port = listener.local_addr().expect("local addr").port();
        let server = HookServer {
            port,
            answers: Arc::default(),
            requests: Arc::default(),
        };
        let s = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.serve(stream));
            }
        });
        server
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How requests to `path` (without the query) answer from now on.
    pub fn answer(&self, path: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), answer);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The request lines so far, e.g. `["POST /free", "POST /wake_up"]`.
    pub fn lines(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.line).collect()
    }

    /// Waits (up to `within`) until `line` was received.
    pub fn wait_for(&self, line: &str, within: Duration) -> bool {
        let since = Instant::now();
        while since.elapsed() < within {
            if self.lines().iter().any(|l| l == line) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        let mut first = String::new();
        if reader.read_line(&mut first).is_err() {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let path = target.split('?').next().unwrap_or_default().to_string();
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).push(Request {
            line: format!("{method} {target}"),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&path)
            .copied()
            .unwrap_or(Answer::Ok);
        let mut stream = stream;
        let reply = match answer {
            Answer::Ok => {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
            }
            Answer::Refuse => {
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 11\r\nconnection: close\r\n\r\nout of luck"
            }
            Answer::Hang => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
        };
        let _ = stream.write_all(reply.as_bytes());
        let _ = stream.flush();
    }
}
