//! The remote generator against a fake OpenAI-compatible server on loopback: every sample arrives
//! exactly once through a proxy that breaks 30% of responses, load spreads over servers and skips
//! a dead one, refusals fail at once, and the API key never shows.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flywheel_core::{GenerationRequest, Message, NullReporter, Role, SamplingParams};
use flywheel_remote::{Api, ApiKey, RemoteConfig, RemoteError, RemoteGenerator};
use support::{dead_address, fake_server, faulty_proxy, ServerOptions};

fn config(bases: Vec<String>) -> RemoteConfig {
    RemoteConfig {
        base_urls: bases,
        max_concurrency: 8,
        max_n: 4,
        timeout: Duration::from_millis(800),
        max_retries: 30,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        cooldown: Duration::from_millis(30),
        ..RemoteConfig::new("http://unused/v1", "fake-model")
    }
}

fn params() -> SamplingParams {
    SamplingParams { temperature: 0.8, top_p: 0.95, max_new_tokens: 32, seed: 11, ..SamplingParams::default() }
}

fn requests(count: usize, n: usize) -> Vec<GenerationRequest> {
    (0..count).map(|i| GenerationRequest::new(format!("problem {i}"), n)).collect()
}

/// Each request got exactly its `n` samples, all of its own prompt and all different.
fn assert_each_sample_once(requests: &[GenerationRequest], out: &[Vec<flywheel_core::Completion>]) {
    assert_eq!(out.len(), requests.len());
    for (r, samples) in requests.iter().zip(out) {
        assert_eq!(samples.len(), r.n, "{}", r.prompt);
        let distinct: HashSet<&str> = samples.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(distinct.len(), r.n, "a sample of {} is duplicated: {samples:?}", r.prompt);
        assert!(samples.iter().all(|c| c.text.starts_with(&format!("{}|seed=", r.prompt))), "{samples:?}");
    }
}

#[test]
fn every_sample_arrives_once_through_a_proxy_that_breaks_30_percent_of_responses() {
    // The server also returns at most 3 choices per response, so most requests are topped up.
    let server = fake_server(ServerOptions { max_choices: 3, ..ServerOptions::default() });
    let (proxy, faults) = faulty_proxy(server.addr, 30, Duration::from_millis(1500));
    let generator = RemoteGenerator::new(config(vec![format!("http://{proxy}/v1")])).unwrap();
    let requests = requests(40, 6);
    let out = generator.sample(&requests, &params(), &NullReporter).expect("the phase completes");
    assert_each_sample_once(&requests, &out);
    // Faults of every kind were met and survived.
    for (kind, count) in [
        ("dropped", &faults.dropped),
        ("delayed", &faults.delayed),
        ("reset", &faults.reset),
        ("truncated", &faults.truncated),
        ("garbled", &faults.garbled),
    ] {
        assert!(count.load(Ordering::SeqCst) > 0, "no {kind} response in the run");
    }
    let (faulted, passed) = (faults.total(), faults.passed.load(Ordering::SeqCst));
    let share = faulted as f64 / (faulted + passed) as f64;
    assert!((0.2..0.4).contains(&share), "{faulted} of {} responses broken", faulted + passed);

    // The same phase again gives the same samples: retried slots ask the same seeds.
    let again = generator.sample(&requests, &params(), &NullReporter).unwrap();
    assert_eq!(again, out);
}

#[test]
fn requests_spread_over_servers_and_a_dead_one_is_skipped() {
    let (a, b) = (fake_server(ServerOptions::default()), fake_server(ServerOptions::default()));
    let dead = format!("http://{}/v1", dead_address());
    let generator = RemoteGenerator::new(config(vec![dead, a.base(), b.base()])).unwrap();
    let requests = requests(30, 2);
    let out = generator.sample(&requests, &params(), &NullReporter).unwrap();
    assert_each_sample_once(&requests, &out);
    let (ca, cb) = (a.calls.load(Ordering::SeqCst), b.calls.load(Ordering::SeqCst));
    assert_eq!(ca + cb, 30, "one request each: none lost to the dead server, none sent twice");
    assert!(ca >= 10 && cb >= 10, "spread: {ca} and {cb}");
}

#[test]
fn the_request_carries_the_sampling_settings_and_the_conversation() {
    let server = fake_server(ServerOptions::default());
    let generator = RemoteGenerator::new(config(vec![server.base()])).unwrap();
    let context = vec![
        Message { role: Role::User, content: "1+1?".into() },
        Message { role: Role::Assistant, content: "2".into() },
    ];
    let request = GenerationRequest::new("2+2?", 3).with_context(context);
    let params = SamplingParams { top_k: 20, stop: vec!["\n\n".into()], ..params() };
    let out = generator.sample(&[request], &params, &NullReporter).unwrap();
    assert_eq!(out[0].len(), 3);
    let body = server.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["n"], 3);
    assert_eq!(body["max_tokens"], 32);
    assert_eq!(body["top_k"], 20);
    assert_eq!(body["stop"], serde_json::json!(["\n\n"]));
    assert!((body["temperature"].as_f64().unwrap() - 0.8).abs() < 1e-6);
    let roles: Vec<&str> = body["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(out[0][0].tokens, 5, "15 completion tokens over three samples of equal length");

    // The completions API sends the text as it is.
    let generator =
        RemoteGenerator::new(RemoteConfig { api: Api::Completions, ..config(vec![server.base()]) }).unwrap();
    let out = generator.sample(&[GenerationRequest::new("12+34=", 1)], &params, &NullReporter).unwrap();
    assert!(out[0][0].text.starts_with("12+34=|seed="));
    assert_eq!(out[0][0].finish, flywheel_core::FinishReason::Length);
    let body = server.bodies.lock().unwrap()[1].clone();
    assert_eq!(body["prompt"], "12+34=");
    assert!(body.get("messages").is_none());
}

#[test]
fn a_refusal_fails_at_once_with_the_servers_message_and_never_the_key() {
    let server = fake_server(ServerOptions { key: Some("sk-right".into()), ..ServerOptions::default() });
    let wrong = RemoteConfig { api_key: Some(ApiKey::new("sk-wrong-4242")), ..config(vec![server.base()]) };
    let err = RemoteGenerator::new(wrong).unwrap().sample(&requests(1, 1), &params(), &NullReporter).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RemoteError::Rejected { status: 401, .. }), "{text}");
    assert!(text.contains("Incorrect API key provided: ***"), "{text}");
    assert!(!text.contains("sk-wrong-4242"), "{text}");
    assert_eq!(server.calls.load(Ordering::SeqCst), 1, "a 401 is not retried");

    let right = RemoteConfig { api_key: Some(ApiKey::new("sk-right")), ..config(vec![server.base()]) };
    let out = RemoteGenerator::new(right).unwrap().sample(&requests(2, 2), &params(), &NullReporter).unwrap();
    assert_each_sample_once(&requests(2, 2), &out);
}

#[test]
fn rate_limits_are_waited_out_and_a_server_that_never_answers_ends_the_phase() {
    let server = fake_server(ServerOptions { rate_limited: 5, ..ServerOptions::default() });
    let generator = RemoteGenerator::new(config(vec![server.base()])).unwrap();
    let out = generator.sample(&requests(3, 1), &params(), &NullReporter).unwrap();
    assert_each_sample_once(&requests(3, 1), &out);
    assert_eq!(server.calls.load(Ordering::SeqCst), 8, "5 refused, 3 answered");

    let dead = RemoteConfig { max_retries: 2, ..config(vec![format!("http://{}/v1", dead_address())]) };
    let err = RemoteGenerator::new(dead).unwrap().sample(&requests(1, 1), &params(), &NullReporter).unwrap_err();
    assert!(matches!(err, RemoteError::GaveUp { attempts: 3, .. }), "{err}");
    assert!(err.to_string().contains("could not connect"), "{err}");
}

#[test]
fn bad_settings_are_named() {
    for (config, message) in [
        (RemoteConfig { base_urls: vec![], ..config(vec![]) }, "no base URL"),
        (config(vec!["localhost:8000/v1".into()]), "is not http:// or https://"),
        (RemoteConfig { max_n: 0, ..config(vec!["http://a/v1".into()]) }, "at least 1"),
    ] {
        let err = RemoteGenerator::new(config).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
}

#[test]
fn a_generator_opened_again_on_its_journal_asks_nothing_it_already_has() {
    let server = fake_server(ServerOptions { max_choices: 2, ..ServerOptions::default() });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.jsonl");
    let requests = requests(10, 3);
    let first = RemoteGenerator::new(config(vec![server.base()])).unwrap().with_journal(&path).unwrap();
    let out = first.sample(&requests[..6], &params(), &NullReporter).unwrap();
    let calls = server.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 12, "each request of 3 samples took two responses of at most 2");
    // A run stopped here, its last line half written, and resumed with the whole phase.
    let mut text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 6);
    text.push_str("{\"key\":\"cut sh");
    std::fs::write(&path, text).unwrap();
    let resumed = RemoteGenerator::new(config(vec![server.base()])).unwrap().with_journal(&path).unwrap();
    let all = resumed.sample(&requests, &params(), &NullReporter).unwrap();
    assert_eq!(&all[..6], &out[..], "the journal's samples, as they were");
    assert_each_sample_once(&requests, &all);
    assert_eq!(server.calls.load(Ordering::SeqCst), calls + 8, "only the four new requests were sent");
    // Other sampling settings are other requests.
    let hotter = SamplingParams { temperature: 1.0, ..params() };
    resumed.sample(&requests[..1], &hotter, &NullReporter).unwrap();
    assert_eq!(server.calls.load(Ordering::SeqCst), calls + 10);
}
