//! `flywheel serve` through its HTTP API: a tiny model served on a free loopback port, asked
//! through flywheel's own remote generator (chat and completions, `n`, seeds, concurrent requests)
//! and by hand (models list, streaming, errors).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flywheel_core::{GenerationRequest, NullReporter, SamplingParams};
use flywheel_engine::{Engine, ModelConfig};
use flywheel_remote::{Api, RemoteConfig, RemoteGenerator};

/// A served model and its address; the server stops when this is dropped.
struct Served {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let small = |vocab| ModelConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        ..ModelConfig::tiny(vocab)
    };
    Engine::new_char_level("abcde|0123456789+=", small, 1).unwrap().save(&model).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["serve", model.to_str().unwrap(), "--port", "0", "--threads", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(rest) = line.split("at http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    // Keep draining the log so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Served { child, address, _dir: dir }
}

/// One HTTP exchange by hand: status line and body.
fn http(address: &str, method: &str, path: &str, body: &str) -> (String, String) {
    http_with(address, method, path, body, "application/json")
}

/// [`http`] with another content type.
fn http_with(address: &str, method: &str, path: &str, body: &str, content_type: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn client(served: &Served, api: Api) -> RemoteGenerator {
    let config =
        RemoteConfig { api, max_retries: 0, ..RemoteConfig::new(format!("http://{}/v1", served.address), "tiny") };
    RemoteGenerator::new(config).unwrap()
}

#[test]
fn the_api_answers_chat_completions_n_seeds_and_concurrent_requests() {
    let served = serve();
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 8, seed: 3, ..SamplingParams::default() };
    let requests: Vec<GenerationRequest> = (0..12).map(|i| GenerationRequest::new(format!("{i}+1="), 3)).collect();
    let chat = client(&served, Api::Chat);
    let out = chat.sample(&requests, &params, &NullReporter).expect("chat answers");
    assert!(out.iter().all(|c| c.len() == 3));
    assert!(out.iter().flatten().all(|c| c.text.chars().count() <= 8), "max_tokens holds: {out:?}");
    // Seeded requests get the same samples again, however the concurrent requests were batched.
    let again = chat.sample(&requests, &params, &NullReporter).unwrap();
    assert_eq!(again, out);
    let other = chat.sample(&requests, &SamplingParams { seed: 4, ..params.clone() }, &NullReporter).unwrap();
    assert_ne!(other, out, "another seed, other samples");
    let text = client(&served, Api::Completions).sample(&requests[..2], &params, &NullReporter).unwrap();
    assert!(text.iter().all(|c| c.len() == 3));

    // A body sent without a JSON content type (as `curl -d` sends it) is read as JSON all the same.
    let body = r#"{"prompt":"1+1=","max_tokens":3}"#;
    let (status, text) =
        http_with(&served.address, "POST", "/v1/completions", body, "application/x-www-form-urlencoded");
    assert!(status.contains("200"), "{status} {text}");
    assert!(text.contains("text_completion"), "{text}");

    let (status, body) = http(&served.address, "GET", "/v1/models", "");
    assert!(status.contains("200"), "{status}");
    let models: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
}

/// Streaming sends each choice's text in pieces as it is decoded, then its finish reason, then
/// `[DONE]`; the pieces joined are what the same seeded request answers without streaming.
#[test]
fn streaming_sends_text_as_it_is_decoded_and_bad_requests_are_named() {
    let served = serve();
    let request = |stream: bool| {
        format!(
            r#"{{"model":"tiny","messages":[{{"role":"user","content":"1+2="}}],"n":2,"max_tokens":12,"temperature":1.0,"stream":{stream},"seed":1}}"#
        )
    };
    let (status, stream) = http(&served.address, "POST", "/v1/chat/completions", &request(true));
    assert!(status.contains("200"), "{status}");
    let events: Vec<&str> = stream.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{stream}");
    let chunks: Vec<serde_json::Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let (_, whole) = http(&served.address, "POST", "/v1/chat/completions", &request(false));
    let whole: serde_json::Value = serde_json::from_str(&whole).unwrap();
    for index in 0..2 {
        let mine: Vec<&serde_json::Value> =
            chunks.iter().map(|c| &c["choices"][0]).filter(|c| c["index"] == index).collect();
        let text: String = mine.iter().filter_map(|c| c["delta"]["content"].as_str()).collect();
        assert_eq!(text, whole["choices"][index]["message"]["content"].as_str().unwrap(), "choice {index}: {stream}");
        assert_eq!(mine[0]["delta"]["role"], "assistant", "the first chunk names the role");
        let finishes: Vec<&serde_json::Value> =
            mine.iter().map(|c| &c["finish_reason"]).filter(|f| !f.is_null()).collect();
        assert_eq!(finishes, [&whole["choices"][index]["finish_reason"]], "one finish, the last chunk");
        assert!(mine.last().unwrap()["finish_reason"].is_string());
        let pieces = mine.iter().filter(|c| c["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())).count();
        assert!(pieces > 1 || text.chars().count() <= 1, "choice {index}: text in pieces, got {pieces}: {stream}");
    }

    for (path, body, status, message) in [
        (
            "/v1/chat/completions",
            r#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#,
            "404",
            "serves `tiny`",
        ),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#, "400", "n must be"),
        ("/v1/chat/completions", r#"{"messages":[{"role":"robot","content":"x"}]}"#, "400", "messages[0].role"),
        ("/v1/completions", r#"{"prompt":"1+1=","temperature":5}"#, "400", "temperature"),
        ("/v1/completions", r#"{"prompt":"#, "400", "line 1 column"),
    ] {
        let (got, text) = http(&served.address, "POST", path, body);
        assert!(got.contains(status), "{body}: {got} {text}");
        assert!(text.contains(message) && text.contains("\"error\""), "{body}: {text}");
    }
}
