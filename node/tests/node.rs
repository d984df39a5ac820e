//! The `polity` binary through its real interfaces: gRPC, HTTP, CLI and the data dir.

mod support;

use polity_proto::{
    ConsensusPath, GetNodeInfoRequest, GetTaskRequest, Level, RiskPolicy, Scope, SubmitTaskRequest,
    TaskEventKind, TaskRecord, TaskState, VerifyCertificateRequest, WatchTaskRequest,
    verify_certificate_request::Source,
};
use prost::Message;
use support::{TestNode, polity};
use tonic::Code;

fn sha256_hex(payload: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(payload))
}

fn submit(capability: &str, payload: &[u8]) -> SubmitTaskRequest {
    SubmitTaskRequest {
        capability: capability.to_string(),
        payload: payload.to_vec(),
        wait: true,
        ..SubmitTaskRequest::default()
    }
}

fn state(record: &TaskRecord) -> TaskState {
    TaskState::try_from(record.state).unwrap()
}

#[tokio::test]
async fn submit_get_verify_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let node = TestNode::start(&data_dir, &[]);
    let mut client = node.client().await;
    let peer_id = node.endpoints.peer_id.clone();

    let record = client
        .submit_task(submit("sha256", b"hello"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&record), TaskState::Decided, "{record:?}");
    assert_eq!(record.value, sha256_hex(b"hello").into_bytes());
    let certificate = record
        .certificate
        .clone()
        .expect("a decided task has a certificate");
    assert_eq!(
        polity_consensus::task_id(&certificate.task).as_bytes(),
        record.task_id.as_slice()
    );
    assert_eq!(record.groups.len(), 1);
    assert_eq!(
        record.groups[0].agreed,
        vec![node.endpoints.public_key.clone()]
    );

    let fetched = client
        .get_task(GetTaskRequest {
            task_id: record.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, record);
    let verified = client
        .verify_certificate(VerifyCertificateRequest {
            source: Some(Source::TaskId(record.task_id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid, "{verified:?}");
    assert_eq!(verified.value, record.value);
    assert!(verified.signatures >= 1);

    // Resubmitting the same task returns the stored record instead of running it again.
    let again = client
        .submit_task(submit("sha256", b"hello"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, record);

    node.stop();
    let node = TestNode::start(&data_dir, &[]);
    assert_eq!(
        node.endpoints.peer_id, peer_id,
        "the identity survives a restart"
    );
    let mut client = node.client().await;
    let after = client
        .get_task(GetTaskRequest {
            task_id: record.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, record, "the certified record survives a restart");
    let verified = client
        .verify_certificate(VerifyCertificateRequest {
            source: Some(Source::TaskId(record.task_id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid, "{verified:?}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &["--payload-bytes-max", "1024"]);
    let mut client = node.client().await;
    client.submit_task(submit("echo", b"kept")).await.unwrap();
    let stored_before = client
        .get_node_info(GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .tasks_stored;
    assert_eq!(stored_before, 1);

    let cases: Vec<(SubmitTaskRequest, Code, &str)> = vec![
        (
            submit("", b"x"),
            Code::InvalidArgument,
            "capability is required",
        ),
        (
            submit("teleport", b"x"),
            Code::InvalidArgument,
            "unknown capability",
        ),
        (
            submit("Bad Name", b"x"),
            Code::InvalidArgument,
            "not allowed",
        ),
        (
            submit("echo", &[0u8; 2048]),
            Code::InvalidArgument,
            "limit is 1024",
        ),
        (
            SubmitTaskRequest {
                replication: 3,
                ..submit("echo", b"x")
            },
            Code::FailedPrecondition,
            "replication 3",
        ),
        (
            SubmitTaskRequest {
                replication: 1000,
                ..submit("echo", b"x")
            },
            Code::InvalidArgument,
            "above the limit",
        ),
        (
            SubmitTaskRequest {
                scope: Some(Scope {
                    level: Level::Region as i32,
                    name: "mars".into(),
                }),
                ..submit("echo", b"x")
            },
            Code::FailedPrecondition,
            "no trusted registry member in region \"mars\"",
        ),
        (
            SubmitTaskRequest {
                scope: Some(Scope {
                    level: 9,
                    name: String::new(),
                }),
                ..submit("echo", b"x")
            },
            Code::InvalidArgument,
            "scope level",
        ),
        (
            SubmitTaskRequest {
                policy: Some(RiskPolicy {
                    adversarial_risk: 1.5,
                    ..RiskPolicy::default()
                }),
                ..submit("echo", b"x")
            },
            Code::InvalidArgument,
            "adversarial_risk",
        ),
        (
            SubmitTaskRequest {
                aggregation: 42,
                ..submit("echo", b"x")
            },
            Code::InvalidArgument,
            "unknown aggregation",
        ),
    ];
    for (request, code, reason) in cases {
        let status = client.submit_task(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(
            status.message().contains(reason),
            "{:?} does not say {reason:?}",
            status.message()
        );
    }

    let status = client
        .verify_certificate(VerifyCertificateRequest {
            source: Some(Source::Certificate(vec![0xff, 0x01, 0x02])),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .get_task(GetTaskRequest {
            task_id: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .get_task(GetTaskRequest {
            task_id: vec![7; 32],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = client
        .verify_certificate(VerifyCertificateRequest { source: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A well-formed certificate with one flipped signature byte verifies as invalid.
    let record = client
        .submit_task(submit("echo", b"flip"))
        .await
        .unwrap()
        .into_inner();
    let mut certificate = record.certificate.unwrap();
    let report = certificate.report.as_mut().unwrap();
    report.signature[0] ^= 1;
    let verdict = client
        .verify_certificate(VerifyCertificateRequest {
            source: Some(Source::Certificate(certificate.encode_to_vec())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!verdict.valid);
    assert!(!verdict.error.is_empty());

    let stored_after = client
        .get_node_info(GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .tasks_stored;
    assert_eq!(
        stored_after,
        stored_before + 1,
        "only the one valid task was stored"
    );
    node.stop();
}

#[tokio::test]
async fn a_timed_out_executor_fails_the_task_and_the_node_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        &[
            "--capability",
            "slow=exec:sleep 20",
            "--capability",
            "shout=exec:tr a-z A-Z",
            "--executor-timeout-ms",
            "300",
        ],
    );
    let mut client = node.client().await;
    let record = client
        .submit_task(submit("slow", b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&record), TaskState::Failed, "{record:?}");
    assert!(
        record.error.contains("timed out after 300 ms"),
        "{}",
        record.error
    );
    assert!(record.certificate.is_none());

    let record = client
        .submit_task(submit("shout", b"quiet"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&record), TaskState::Decided, "{record:?}");
    assert_eq!(record.value, b"QUIET");
    node.stop();
}

#[tokio::test]
async fn watch_streams_progress_to_a_final_event() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        &["--capability", "lazy=exec:sleep 0.3; cat"],
    );
    let mut client = node.client().await;
    let started = client
        .submit_task(SubmitTaskRequest {
            wait: false,
            ..submit("lazy", b"zzz")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&started), TaskState::Running);
    let mut stream = client
        .watch_task(WatchTaskRequest {
            task_id: started.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    let mut last = None;
    while let Some(event) = stream.message().await.unwrap() {
        kinds.push(TaskEventKind::try_from(event.kind).unwrap());
        last = event.record;
    }
    assert_eq!(kinds.last(), Some(&TaskEventKind::Final), "{kinds:?}");
    assert!(kinds.contains(&TaskEventKind::GroupDecided), "{kinds:?}");
    let last = last.expect("FINAL carries the record");
    assert_eq!(last.value, b"zzz");

    // Watching a finished task yields its FINAL event at once.
    let mut stream = client
        .watch_task(WatchTaskRequest {
            task_id: started.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let event = stream.message().await.unwrap().unwrap();
    assert_eq!(event.kind, TaskEventKind::Final as i32);
    assert!(stream.message().await.unwrap().is_none());
    node.stop();
}

#[tokio::test]
async fn continent_and_global_scopes_build_a_verified_chain() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        &["--region", "eu-west", "--continent", "europe"],
    );
    let mut client = node.client().await;
    for (level, expected_certificates) in [(Level::Continent, 2), (Level::Global, 3)] {
        let request = SubmitTaskRequest {
            scope: Some(Scope {
                level: level as i32,
                name: String::new(),
            }),
            policy: Some(RiskPolicy {
                path_override: ConsensusPath::Bft as i32,
                ..RiskPolicy::default()
            }),
            ..submit("wordcount", b"one two three")
        };
        let record = client.submit_task(request).await.unwrap().into_inner();
        assert_eq!(state(&record), TaskState::Decided, "{record:?}");
        assert_eq!(record.value, b"3");
        assert_eq!(record.groups.len(), expected_certificates as usize);
        let verified = client
            .verify_certificate(VerifyCertificateRequest {
                source: Some(Source::TaskId(record.task_id.clone())),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(verified.valid, "{verified:?}");
        assert_eq!(verified.certificates, expected_certificates);
        let certificate = record.certificate.unwrap();
        assert_eq!(certificate.slot.unwrap().level, level as i32);
        assert_eq!(certificate.path, ConsensusPath::Bft as i32);
    }
    node.stop();
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let node = TestNode::start(&data_dir, &[]);
    let output = polity(&[
        "node",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another polity process"),
        "{stderr}"
    );
    assert!(stderr.contains(data_dir.to_str().unwrap()), "{stderr}");
    node.stop();
}

#[tokio::test]
async fn the_cli_submits_gets_and_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let addr = node.endpoints.grpc.clone();
    let certificate_file = dir.path().join("certificate.pb");
    let output = polity(&[
        "submit",
        "--addr",
        &addr,
        "--capability",
        "sha256",
        "--payload",
        "hello",
        "--json",
        "--certificate-out",
        certificate_file.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(record["state"], "DECIDED");
    assert_eq!(record["value"], sha256_hex(b"hello"));
    let id = record["task_id"].as_str().unwrap().to_string();

    let output = polity(&["get", "--addr", &addr, &id]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&id) && text.contains("DECIDED") && text.contains("verifies"),
        "{text}"
    );

    node.stop();
    // Offline: the node is gone; the file verifies against the federation the node
    // followed (its dev federation, kept in its data dir) ...
    let federation = dir.path().join("node").join("federation.pb");
    let output = polity(&[
        "verify",
        certificate_file.to_str().unwrap(),
        "--federation",
        federation.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("registry epoch 0") && text.contains("\nvalid"),
        "{text}"
    );
    // ... and without a trust anchor it says so, with its own exit code.
    let output = polity(&["verify", certificate_file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stdout).contains("membership NOT checked"));

    // A tampered file does not.
    let mut bytes = std::fs::read(&certificate_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&certificate_file, &bytes).unwrap();
    let output = polity(&["verify", certificate_file.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let output = polity(&["verify", dir.path().join("missing.pb").to_str().unwrap()]);
    assert!(!output.status.success());
}

#[tokio::test]
async fn the_id_command_prints_the_peer_id_the_node_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let output = polity(&["id", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let node = TestNode::start(&data_dir, &[]);
    assert_eq!(printed, node.endpoints.peer_id);
    node.stop();
}

/// The JSON export checked by an independent ed25519 implementation: Node.js's
/// `crypto.verify` (OpenSSL underneath), which knows nothing of ed25519-dalek or
/// protobuf. Every statement in the chain must verify over its `signed_message`, the
/// signed message must start with its domain tag, and a flipped byte must fail.
#[tokio::test]
async fn exported_certificates_verify_with_an_independent_ed25519() {
    let Ok(node_version) = std::process::Command::new("node").arg("--version").output() else {
        assert!(
            std::env::var("POLITY_REQUIRE_NODE").is_err(),
            "POLITY_REQUIRE_NODE is set but node is missing"
        );
        eprintln!(
            "SKIPPED exported_certificates_verify_with_an_independent_ed25519: no `node` on PATH"
        );
        return;
    };
    assert!(node_version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let json_file = dir.path().join("chain.json");
    let output = polity(&[
        "submit",
        "--addr",
        &node.endpoints.grpc,
        "--capability",
        "wordcount",
        "--payload",
        "a b c d",
        "--scope",
        "global",
        "--certificate-json-out",
        json_file.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    node.stop();

    let script = r#"
const crypto = require('crypto');
const chain = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8'));
const spki = Buffer.from('302a300506032b6570032100', 'hex');
let checked = 0, certificates = 0;
function verify(statement, flip) {
  const key = crypto.createPublicKey({ key: Buffer.concat([spki, Buffer.from(statement.signer, 'hex')]), format: 'der', type: 'spki' });
  const message = Buffer.from(statement.signed_message, 'hex');
  if (!message.subarray(0, statement.domain_tag.length / 2).equals(Buffer.from(statement.domain_tag, 'hex'))) throw new Error('no domain tag');
  if (!message.subarray(statement.domain_tag.length / 2).equals(Buffer.from(statement.body, 'hex'))) throw new Error('body mismatch');
  if (flip) message[message.length - 1] ^= 1;
  return crypto.verify(null, message, key, Buffer.from(statement.signature, 'hex'));
}
function walk(cert) {
  certificates++;
  const statements = [cert.report, ...cert.observations, ...cert.attestations].filter(Boolean);
  for (const s of statements) {
    if (!verify(s, false)) throw new Error('signature does not verify: ' + s.kind);
    if (verify(s, true)) throw new Error('a flipped byte still verifies: ' + s.kind);
    checked++;
  }
  cert.children.forEach(walk);
}
walk(chain);
console.log(JSON.stringify({ certificates, checked, value: chain.value.utf8 }));
"#;
    let output = std::process::Command::new("node")
        .args(["-e", script])
        .arg(&json_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["certificates"], 3, "{summary}");
    assert!(summary["checked"].as_u64().unwrap() >= 6, "{summary}");
    assert_eq!(summary["value"], "4");
}

#[test]
fn reliability_prints_the_binomial_figures() {
    let output = polity(&[
        "reliability",
        "--epsilon",
        "0.15",
        "--replicas",
        "3",
        "--aggregation",
        "majority",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = table["rows"].as_array().unwrap();
    let majority = rows
        .iter()
        .find(|row| row["aggregation"] == "majority")
        .unwrap();
    assert!(
        (majority["correct"].as_f64().unwrap() - 0.93925).abs() < 1e-9,
        "{majority}"
    );
    let seed = rows
        .iter()
        .find(|row| row["aggregation"] == "seed")
        .unwrap();
    assert!((seed["correct"].as_f64().unwrap() - (1.0 - 0.15f64.powi(3))).abs() < 1e-9);
    assert!(rows.iter().all(|row| row["aggregation"] != "first-valid"));

    let output = polity(&[
        "reliability",
        "--epsilon",
        "0.15",
        "--replicas",
        "3",
        "--levels",
        "2",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("3x3") && text.contains("first-valid"),
        "{text}"
    );

    let output = polity(&["reliability", "--epsilon", "1.5"]);
    assert!(!output.status.success());
}

/// SIGTERM while tasks run: the node refuses nothing already accepted silently. Tasks
/// that finish within the drain grace are stored DECIDED; one that cannot is
/// recorded as interrupted by the shutdown (not left RUNNING for the next start).
#[tokio::test]
async fn sigterm_drains_tasks_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    // Budgets long enough that the stuck task is still running when the drain's
    // grace (5 s) ends.
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[tasks]\nregion_timeout_ms = 30000\n[executor]\ntimeout_ms = 30000\n",
    )
    .unwrap();
    let capabilities = [
        "--config",
        config.to_str().unwrap(),
        "--capability",
        "quick=exec:sleep 1; cat",
        "--capability",
        "stuck=exec:sleep 30; cat",
    ];
    let node = TestNode::start(&data_dir, &capabilities);
    let mut client = node.client().await;
    let mut ids = Vec::new();
    for (capability, nonce) in [("quick", 1), ("quick", 2), ("stuck", 3)] {
        let record = client
            .submit_task(SubmitTaskRequest {
                capability: capability.into(),
                payload: b"x".to_vec(),
                nonce,
                deadline_ms: 60_000,
                wait: false,
                ..SubmitTaskRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state(&record), TaskState::Running);
        ids.push((capability, record.task_id));
    }
    drop(client);
    node.stop();

    let node = TestNode::start(&data_dir, &capabilities);
    let mut client = node.client().await;
    for (capability, id) in ids {
        let record = client
            .get_task(GetTaskRequest { task_id: id })
            .await
            .unwrap()
            .into_inner();
        match capability {
            "quick" => {
                assert_eq!(state(&record), TaskState::Decided, "{record:?}");
                assert_eq!(record.value, b"x");
            }
            _ => {
                assert_eq!(state(&record), TaskState::Failed, "{record:?}");
                assert!(record.error.contains("shut down"), "{}", record.error);
            }
        }
    }
    node.stop();
}
