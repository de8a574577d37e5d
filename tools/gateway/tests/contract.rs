//! The HTTP contract, held to by the real gateway binary on a real nats-server: its
//! `/openapi.json` validates as OpenAPI 3.1, and PyPI's `schemathesis` (pinned, installed by
//! `scripts/test` into `.tools/schemathesis`) generates requests from it, valid and invalid,
//! and checks every answer: no 5xx, every status and content type and body as described, and
//! every refusal a problem document. Then the events stream is read: exactly the events the
//! gateway answered `202` for are stored, and nothing of a refused request. The hooks in
//! `tests/fuzz/problem_hooks.py` add the problem+json check for every refusal and sign the
//! GitHub deliveries generated as valid, so the webhook is fuzzed past its signature check.
//!
//! Without schemathesis here the test says so and passes, unless `CI` or
//! `CHOREO_REQUIRE_DOCKER=1` is set: there `scripts/test` has installed it, so its absence is
//! a failure.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use choreo_testkit::{Bus, wait_until};
use serde_json::Value;

const TOKEN: &str = "fuzz-token-0123456789abcdef";
const SECRET: &str = "webhook-secret-for-fuzzing";
/// Test cases per operation and phase: enough to reach every refusal, few enough to finish in
/// seconds.
const EXAMPLES: &str = "40";

/// The workspace's root, where `.tools/` is.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The virtualenv's Python, with schemathesis and openapi-spec-validator; `None` (skip, said)
/// when it is not here, or a failure under CI.
fn fuzzer() -> Option<PathBuf> {
    let venv = std::env::var_os("CHOREO_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".tools/schemathesis"));
    let python = venv.join("bin/python");
    let here = std::process::Command::new(&python)
        .args(["-c", "import schemathesis, openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if here {
        return Some(python);
    }
    let required = std::env::var("CHOREO_REQUIRE_DOCKER").as_deref() == Ok("1")
        || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "the contract test needs schemathesis and openapi-spec-validator in {}: scripts/test \
         installs them (PyPI, pinned)",
        venv.display()
    );
    let _ = writeln!(
        std::io::stderr(),
        "tools/gateway/tests/contract.rs skipped: no schemathesis in {} (scripts/test installs \
         it; CI=1 makes this a failure)",
        venv.display()
    );
    None
}

/// The gateway binary, killed when dropped.
struct Gateway {
    url: String,
    _child: tokio::process::Child,
}

impl Gateway {
    async fn start(bus: &Bus) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_choreo-gateway"))
            .env("NATS_URL", bus.server.url())
            .env("CHOREO_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            // Any type and any source, so valid requests are stored and the stream has
            // something to compare; the limits are the fuzzer's to find, not the rate's.
            .env("CHOREO_GATEWAY_TOKENS", format!("fuzz={TOKEN}:*"))
            .env("CHOREO_GATEWAY_SOURCES", "fuzz=*")
            .env("CHOREO_GATEWAY_RATE", "100000/s")
            .env("CHOREO_GATEWAY_BURST", "100000")
            .env("CHOREO_GATEWAY_MAX_BODY", "65536")
            .env("CHOREO_GITHUB_WEBHOOK_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_until("the gateway is ready", || async {
            Ok(http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK))
        })
        .await
        .expect("ready");
        Gateway { url, _child: child }
    }
}

#[tokio::test]
async fn the_gateway_keeps_its_openapi_contract_under_schema_based_fuzzing() {
    let Some(python) = fuzzer() else { return };
    let bus = Bus::start().await.expect("bus");
    let gateway = Gateway::start(&bus).await;
    let work = tempfile::tempdir().expect("a temp dir");

    // The description validates as OpenAPI 3.1.
    let spec: Value = reqwest::get(format!("{}/openapi.json", gateway.url))
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let spec_path = work.path().join("openapi.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write");
    let validated = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate, OpenAPIV31SpecValidator\n\
             validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\n\
             print('valid OpenAPI 3.1')",
        ])
        .arg(&spec_path)
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        validated.status.success(),
        "/openapi.json is not valid OpenAPI 3.1: {}",
        String::from_utf8_lossy(&validated.stderr)
    );

    // The fuzzing.
    let har = work.path().join("requests.har");
    let st = python.with_file_name("st");
    let began = Instant::now();
    let run = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", gateway.url))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all"])
        // Not every valid-looking request can be accepted (a run over its budget is refused
        // 409, a CloudEvent's data may disagree with its datacontenttype): that the valid are
        // accepted is the other tests' to show.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", EXAMPLES, "--seed", "18", "--workers", "2"])
        .args(["--generation-database", "none"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .env("SCHEMATHESIS_HOOKS", "problem_hooks")
        .env("CHOREO_FUZZ_GITHUB_SECRET", SECRET)
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz"),
        )
        .env("NO_COLOR", "1")
        .current_dir(work.path())
        .output();
    let run = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes")
        .expect("schemathesis runs");
    let output = String::from_utf8_lossy(&run.stdout);
    println!("{output}");
    assert!(
        run.status.success(),
        "schemathesis found failures (exit {:?}):\n{output}\n{}",
        run.status.code(),
        String::from_utf8_lossy(&run.stderr)
    );
    let generated = generated(&output);
    println!(
        "schemathesis: {generated} generated test cases in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    assert!(
        generated >= 100,
        "too few test cases to mean much: {generated}"
    );

    // What was asked and answered, from the fuzzer's own record.
    let har: Value =
        serde_json::from_slice(&std::fs::read(&har).expect("the HAR report")).expect("HAR JSON");
    let entries = har["log"]["entries"].as_array().expect("entries");
    let mut accepted_ids = BTreeSet::new();
    let (mut accepted, mut refused) = (0, 0);
    for entry in entries {
        let status = entry["response"]["status"].as_u64().expect("status");
        let url = entry["request"]["url"].as_str().unwrap_or_default();
        let posted = entry["request"]["method"] == "POST";
        if status >= 400 {
            refused += 1;
            let content_type = entry["response"]["content"]["mimeType"]
                .as_str()
                .unwrap_or_default();
            assert!(
                content_type.starts_with("application/problem+json"),
                "a refusal that is not a problem document: {status} {content_type} for {url}"
            );
        }
        if posted && status == 202 {
            accepted += 1;
            let body: Value = serde_json::from_str(
                entry["response"]["content"]["text"]
                    .as_str()
                    .expect("a body"),
            )
            .expect("JSON");
            match body["events"].as_array() {
                Some(events) => accepted_ids.extend(events.iter().map(id_of)),
                None => {
                    accepted_ids.insert(id_of(&body));
                }
            }
        }
    }
    // Exactly what was accepted is stored: no refused request left anything behind.
    let stored: Vec<String> = bus
        .events("events.>")
        .await
        .expect("read the stream")
        .into_iter()
        .map(|event| event.id)
        .collect();
    let stored_ids: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), stored_ids.len(), "each id stored once");
    assert_eq!(
        stored_ids, accepted_ids,
        "the stream holds exactly the events answered 202"
    );
    println!(
        "{} requests recorded: {accepted} accepted (202), {refused} refused, {} events stored",
        entries.len(),
        stored.len()
    );
    assert!(accepted > 0, "the fuzzer never had a request accepted");
    assert!(refused > 0, "the fuzzer never had a request refused");
}

fn id_of(accepted: &Value) -> String {
    accepted["id"].as_str().expect("an id").to_string()
}

/// The number of test cases schemathesis says it generated: the number before `generated`
/// in its summary (`Test cases:` then `445 generated, 445 passed`).
fn generated(output: &str) -> u64 {
    let summary = output
        .split_once("Test cases:")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no 'Test cases:' summary in:\n{output}"));
    let words: Vec<&str> = summary.split_whitespace().collect();
    words
        .windows(2)
        .find(|pair| pair[1].trim_end_matches(',') == "generated")
        .and_then(|pair| pair[0].parse().ok())
        .unwrap_or_else(|| panic!("no 'N generated' in the summary:\n{output}"))
}
