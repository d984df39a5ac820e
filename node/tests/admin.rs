//! The Admin service: token-guarded fault injection and status, over gRPC, and
//! faults acting on a real single-node federation.

mod support;

use polity_proto::admin_client::AdminClient;
use polity_proto::{Faults, GetStatusRequest, SubmitTaskRequest, TaskState};
use support::TestNode;
use tonic::Code;

const TOKEN: &str = "admin-token";

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

fn sha256_task(payload: &str) -> SubmitTaskRequest {
    SubmitTaskRequest {
        capability: "sha256".into(),
        payload: payload.as_bytes().to_vec(),
        wait: true,
        ..SubmitTaskRequest::default()
    }
}

fn sha256_hex(payload: &str) -> Vec<u8> {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(payload.as_bytes())).into_bytes()
}

#[tokio::test]
async fn admin_needs_a_configured_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), &[]);
    let mut admin = AdminClient::new(node.channel().await);
    let status = admin
        .set_faults(Faults {
            error_rate: 1.0,
            ..Faults::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = admin.get_status(GetStatusRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // And the refused call changed nothing: the node still answers right.
    let record = node
        .client()
        .await
        .submit_task(sha256_task("still honest"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.value, sha256_hex("still honest"));
}

#[tokio::test]
async fn faults_are_validated_set_and_act_through_the_real_path() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    let mut admin = AdminClient::new(node.channel().await);
    let mut client = node.client().await;

    // A wrong token is refused before the service.
    let mut request = tonic::Request::new(GetStatusRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    let status = admin.get_status(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Invalid plans: INVALID_ARGUMENT with the field named, nothing changed.
    for (plan, field) in [
        (
            Faults {
                error_rate: 1.5,
                ..Faults::default()
            },
            "error_rate",
        ),
        (
            Faults {
                message_drop_rate: -0.1,
                ..Faults::default()
            },
            "message_drop_rate",
        ),
        (
            Faults {
                blocked_peers: vec![vec![0; 5]],
                ..Faults::default()
            },
            "blocked_peers",
        ),
    ] {
        let status = admin.set_faults(with_token(plan)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{}", status.message());
    }
    let status = admin
        .get_status(with_token(GetStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.faults, Some(Faults::default()));
    assert!(status.worker_slots >= 1);

    // ε = 1: this node's only member answers wrong, and the certificate says so —
    // the federation of one cannot know better (the harness judges against truth).
    let plan = Faults {
        error_rate: 1.0,
        seed: 7,
        ..Faults::default()
    };
    let now = admin
        .set_faults(with_token(plan.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, plan);
    let record = client
        .submit_task(with_token(sha256_task("faulty")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.state, TaskState::Decided as i32);
    assert_ne!(record.value, sha256_hex("faulty"));
    assert!(record.value.starts_with(b"wrong:"), "{:?}", record.value);

    // Healthy again: the zero plan.
    admin
        .set_faults(with_token(Faults::default()))
        .await
        .unwrap();
    let record = client
        .submit_task(with_token(sha256_task("healthy")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.value, sha256_hex("healthy"));

    // Timeouts: the execution hangs until the executor timeout and the task is not
    // decided.
    admin
        .set_faults(with_token(Faults {
            timeout_rate: 1.0,
            ..Faults::default()
        }))
        .await
        .unwrap();
    let mut task = sha256_task("hangs");
    task.deadline_ms = 1_500;
    let record = client
        .submit_task(with_token(task))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(record.state, TaskState::Decided as i32, "{record:?}");

    // The injected faults are counted in the metrics.
    let metrics = reqwest::get(format!("{}/metrics", node.endpoints.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("polity_faults_injected_total{kind=\"wrong_answer\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("polity_worker_slots"), "{metrics}");
}
