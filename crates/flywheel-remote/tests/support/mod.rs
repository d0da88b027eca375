//! A fake OpenAI-compatible server and a proxy that breaks some of its responses, on loopback,
//! each on a tokio runtime of its own thread (the generator under test runs its own).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 message: head lines and body.
pub struct HttpMessage {
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpMessage {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone().into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Reads one message (head, then `Content-Length` bytes of body); `None` at end of stream.
pub async fn read_message(stream: &mut TcpStream) -> Option<HttpMessage> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf[end + 4..].to_vec();
    let message = HttpMessage { head, body: Vec::new() };
    let length: usize = message.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(HttpMessage { body, ..message })
}

fn response(status: &str, body: &Value, extra: &str) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes the `i`-th sample of a prompt, in place of the default `PROMPT|seed=S|i`.
pub type Solver = Arc<dyn Fn(&str, usize) -> String + Send + Sync>;

/// How the fake server behaves.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Writes the samples.
    pub solver: Option<Solver>,
    /// Most choices per response (0: as many as asked).
    pub max_choices: usize,
    /// The bearer key it wants; a wrong one gets 401 with the key echoed in the message.
    pub key: Option<String>,
    /// Answer the first this many requests with 429 (`Retry-After: 0`).
    pub rate_limited: usize,
}

/// A running fake server.
pub struct FakeServer {
    pub addr: SocketAddr,
    /// Requests received (whatever came of them).
    pub calls: Arc<AtomicUsize>,
    /// Every request body received.
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

impl FakeServer {
    /// Its base URL, `/v1` included.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

/// Starts a fake server. Each sample's text names the request's last message (or prompt), the
/// request's seed and the choice's index: `PROMPT|seed=S|i`.
pub fn fake_server(options: ServerOptions) -> FakeServer {
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (c, b) = (calls.clone(), bodies.clone());
    let addr = spawn_listener(move |mut stream| {
        let (calls, bodies, options) = (c.clone(), b.clone(), options.clone());
        async move {
            let Some(request) = read_message(&mut stream).await else { return };
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            bodies.lock().unwrap().push(body.clone());
            let reply = answer(&request, &body, call, &options);
            let _ = stream.write_all(&reply).await;
            let _ = stream.shutdown().await;
        }
    });
    FakeServer { addr, calls, bodies }
}

fn answer(request: &HttpMessage, body: &Value, call: usize, options: &ServerOptions) -> Vec<u8> {
    if let Some(key) = &options.key {
        let sent = request.header("authorization").unwrap_or("");
        if sent != format!("Bearer {key}") {
            let shown = sent.strip_prefix("Bearer ").unwrap_or(sent);
            let message = format!("Incorrect API key provided: {shown}");
            return response("401 Unauthorized", &json!({"error": {"message": message}}), "");
        }
    }
    if call < options.rate_limited {
        return response("429 Too Many Requests", &json!({"error": {"message": "slow down"}}), "retry-after: 0\r\n");
    }
    let chat = request.head.starts_with("POST /v1/chat/completions");
    let prompt = match chat {
        true => body["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"].clone()),
        false => Some(body["prompt"].clone()),
    };
    let Some(Value::String(prompt)) = prompt else {
        return response("400 Bad Request", &json!({"error": {"message": "no prompt"}}), "");
    };
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let n = if options.max_choices > 0 { n.min(options.max_choices) } else { n };
    let seed = body["seed"].as_u64().unwrap_or(0);
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let text = match &options.solver {
                Some(solve) => solve(&prompt, i),
                None => format!("{prompt}|seed={seed}|{i}"),
            };
            match chat {
                true => json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}),
                false => json!({"index": i, "text": text, "finish_reason": "length"}),
            }
        })
        .collect();
    response("200 OK", &json!({"choices": choices, "usage": {"completion_tokens": 5 * n}}), "")
}

/// Faults the proxy injected, by kind.
#[derive(Debug, Default)]
pub struct Faults {
    pub dropped: AtomicUsize,
    pub delayed: AtomicUsize,
    pub reset: AtomicUsize,
    pub truncated: AtomicUsize,
    pub garbled: AtomicUsize,
    pub passed: AtomicUsize,
}

impl Faults {
    /// Every fault injected.
    pub fn total(&self) -> usize {
        [&self.dropped, &self.delayed, &self.reset, &self.truncated, &self.garbled]
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }
}

/// Starts a proxy to `upstream` that breaks `percent`% of responses, chosen by a seeded hash of
/// the connection's number: it drops the connection without an answer, delays the answer by
/// `delay` (longer than the client waits), resets the connection, cuts the body short, or garbles
/// its first bytes. Returns its address and the fault counts.
pub fn faulty_proxy(upstream: SocketAddr, percent: u64, delay: Duration) -> (SocketAddr, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let counter = Arc::new(AtomicUsize::new(0));
    let f = faults.clone();
    let addr = spawn_listener(move |mut client| {
        let (faults, counter) = (f.clone(), counter.clone());
        async move {
            let Some(request) = read_message(&mut client).await else { return };
            let Ok(mut server) = TcpStream::connect(upstream).await else { return };
            if server.write_all(&request.to_bytes()).await.is_err() {
                return;
            }
            let Some(mut reply) = read_message(&mut server).await else { return };
            let h = hash(counter.fetch_add(1, Ordering::SeqCst) as u64);
            if h % 100 >= percent {
                faults.passed.fetch_add(1, Ordering::SeqCst);
                let _ = client.write_all(&reply.to_bytes()).await;
                let _ = client.shutdown().await;
                return;
            }
            match (h >> 8) % 5 {
                0 => {
                    faults.dropped.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown().await;
                }
                1 => {
                    faults.delayed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let _ = client.write_all(&reply.to_bytes()).await;
                }
                2 => {
                    faults.reset.fetch_add(1, Ordering::SeqCst);
                    let _ = client.set_zero_linger();
                    drop(client);
                }
                3 => {
                    faults.truncated.fetch_add(1, Ordering::SeqCst);
                    let bytes = reply.to_bytes();
                    let _ = client.write_all(&bytes[..bytes.len() - reply.body.len() / 2]).await;
                    let _ = client.shutdown().await;
                }
                _ => {
                    faults.garbled.fetch_add(1, Ordering::SeqCst);
                    for b in reply.body.iter_mut().take(12) {
                        *b = b'#';
                    }
                    let _ = client.write_all(&reply.to_bytes()).await;
                    let _ = client.shutdown().await;
                }
            }
        }
    });
    (addr, faults)
}

/// An address nothing listens on.
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn hash(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Serves each connection to a fresh loopback port with `handle`, on a runtime of its own
/// thread, for the rest of the test process.
fn spawn_listener<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(handle(stream));
            }
        });
    });
    addr
}
