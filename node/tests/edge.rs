//! The node's edge: bearer token, rate limit, TLS and mutual TLS, reflection,
//! health, readiness and metrics.

mod support;

use std::path::Path;

use polity_proto::federation_client::FederationClient;
use polity_proto::{GetNodeInfoRequest, SubmitTaskRequest};
use support::TestNode;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn echo(payload: &str) -> SubmitTaskRequest {
    SubmitTaskRequest {
        capability: "echo".into(),
        payload: payload.as_bytes().to_vec(),
        wait: true,
        ..SubmitTaskRequest::default()
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn a_configured_token_is_required_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    let mut client = node.client().await;

    let status = client.submit_task(echo("no token")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client
        .submit_task(with_token(echo("bad"), "wrong"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let stored = client
        .get_node_info(with_token(GetNodeInfoRequest {}, "s3cret-token"))
        .await
        .unwrap()
        .into_inner()
        .tasks_stored;
    assert_eq!(stored, 0, "refused requests store nothing");
    let record = client
        .submit_task(with_token(echo("ok"), "s3cret-token"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.value, b"ok");

    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "polity.v1.Federation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The CLI sends the token from --token-file.
    let output = support::polity(&[
        "info",
        "--addr",
        &node.endpoints.grpc,
        "--token-file",
        token_file.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = support::polity(&["info", "--addr", &node.endpoints.grpc]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Unauthenticated"));
    node.stop();
}

#[tokio::test]
async fn clients_over_their_rate_get_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[api]\nrate_limit_per_second = 1\nrate_limit_burst = 1\n",
    )
    .unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        &["--config", config.to_str().unwrap()],
    );
    let mut client = node.client().await;
    // A burst of one at one per second: ten back-to-back requests cannot all pass.
    let mut exhausted = 0;
    for _ in 0..10 {
        match client.get_node_info(GetNodeInfoRequest {}).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("rate limit"));
                exhausted += 1;
            }
        }
    }
    assert!(exhausted >= 1, "no request was rate limited");
    let (_, metrics) = node.http_get("/metrics");
    assert!(
        metrics.contains("polity_grpc_requests_rejected_total{reason=\"rate_limited\"}"),
        "{metrics}"
    );
    node.stop();
}

#[tokio::test]
async fn reflection_lists_the_federation_and_health_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let mut reflection = ServerReflectionClient::new(node.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"polity.v1.Federation".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    node.stop();
}

/// Clients that speak only the older protocol (Python's grpcio-reflection, older
/// grpcurl) get the same list.
#[tokio::test]
async fn reflection_v1alpha_lists_them_too() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let mut reflection = ServerReflectionClient::new(node.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for service in [
        "polity.v1.Federation",
        "polity.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&service.to_string()), "{names:?}");
    }
    node.stop();
}

#[tokio::test]
async fn health_ready_and_metrics_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let mut client = node.client().await;
    client.submit_task(echo("count me")).await.unwrap();

    assert_eq!(node.http_get("/health"), (200, "ok\n".to_string()));
    assert_eq!(node.http_get("/ready"), (200, "ready\n".to_string()));
    let (status, metrics) = node.http_get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "federation_agents 1",
        "federation_tasks_total{outcome=\"decided\",path=\"stake\"} 1",
        "federation_byzantine_attacks_detected_total 0",
        "federation_cascade_prevented_total 0",
        "federation_decision_latency_seconds_bucket",
    ] {
        assert!(
            metrics.contains(name),
            "/metrics lacks {name:?}:\n{metrics}"
        );
    }
    check_with_promtool(&metrics);
    assert_eq!(node.http_get("/nope").0, 404);
    node.stop();
}

/// Runs `promtool check metrics` on the exposition. promtool ships in Debian's
/// `prometheus` package, which `.ci/run` installs; set POLITY_REQUIRE_PROMTOOL=1 to
/// make its absence a failure rather than a skip.
fn check_with_promtool(metrics: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(_) if std::env::var("POLITY_REQUIRE_PROMTOOL").is_err() => {
            eprintln!(
                "SKIPPED promtool check: promtool not installed (apt-get install prometheus)"
            );
            return;
        }
        Err(error) => panic!("promtool is required but could not run: {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate for "localhost" and a client certificate, as PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn tls_client(
    endpoint: &str,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<FederationClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(FederationClient::new(channel))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    polity_node::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "server.pem", &pki.server_cert);
    let key = write(dir.path(), "server.key", &pki.server_key);
    let ca = write(dir.path(), "ca.pem", &pki.ca);

    // TLS: clients that trust the CA get through; plaintext clients do not.
    let node = TestNode::start(
        &dir.path().join("tls"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    assert!(
        node.endpoints.grpc.starts_with("https://"),
        "{}",
        node.endpoints.grpc
    );
    let mut client = tls_client(&node.endpoints.grpc, &pki.ca, None)
        .await
        .unwrap();
    let record = client
        .submit_task(echo("over tls"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.value, b"over tls");
    let plaintext = node.endpoints.grpc.replace("https://", "http://");
    let refused = match FederationClient::connect(plaintext).await {
        Ok(mut client) => client.get_node_info(GetNodeInfoRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a plaintext client must not be served by a TLS node"
    );
    let output = support::polity(&[
        "info",
        "--addr",
        &node.endpoints.grpc,
        "--tls-ca",
        &ca,
        "--tls-domain",
        "localhost",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    node.stop();

    // Mutual TLS: a client certificate signed by the CA is required.
    let node = TestNode::start(
        &dir.path().join("mtls"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    );
    let without = match tls_client(&node.endpoints.grpc, &pki.ca, None).await {
        Ok(mut client) => client.get_node_info(GetNodeInfoRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(
        without,
        "mutual TLS must refuse a client without a certificate"
    );
    let mut client = tls_client(
        &node.endpoints.grpc,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await
    .unwrap();
    client.get_node_info(GetNodeInfoRequest {}).await.unwrap();
    node.stop();
}

/// Past `http_connections_max` open connections, a new one is closed at once (and
/// counted); when one of the held connections closes, the next is served again.
#[tokio::test]
async fn connections_past_the_cap_are_closed_and_counted() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[api]\nhttp_connections_max = 2\n").unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        &["--config", config.to_str().unwrap()],
    );
    let host = node
        .endpoints
        .http
        .trim_start_matches("http://")
        .to_string();
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&host).unwrap())
        .collect();
    // Give the server time to accept both before the third arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut third = std::net::TcpStream::connect(&host).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = write!(
        third,
        "GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut answer = Vec::new();
    let read = third.read_to_end(&mut answer);
    assert!(
        read.is_err() || answer.is_empty(),
        "a connection past the cap was served: {}",
        String::from_utf8_lossy(&answer)
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let (status, metrics) = node.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("reason=\"connection_cap\"}"),
        "the refusal is counted:\n{metrics}"
    );
    node.stop();
}
