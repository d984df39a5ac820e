//! The gRPC calls the testnet makes to its nodes, in one place: connecting (with or
//! without the API token), submitting a task, reading a task back, the Admin calls.
//!
//! The token travels the way the `polity` CLI sends it ([`polity_node::client::bearer`]).
//! Every connection gives up after [`CONNECT_TIMEOUT`], and the calls made here
//! (submit, read back, Admin) have deadlines: a hung node must not hang a
//! supervisor or a load generator. A Federation client's own calls have none (a
//! waiting SubmitTask lasts as long as its task); callers that use it directly
//! bound them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use polity_node::client::{AdminApiClient, BearerToken, Client, bearer};
use polity_proto::admin_client::AdminClient;
use polity_proto::federation_client::FederationClient;
use polity_proto::{
    Faults, GetStatusRequest, GetTaskRequest, NodeStatus, SubmitTaskRequest, TaskRecord,
    VerifyCertificateRequest, VerifyCertificateResponse, verify_certificate_request::Source,
};
use tonic::transport::{Channel, Endpoint};

/// File (in the testnet dir) holding the API token of a cluster that requires one.
pub const TOKEN_FILE: &str = "token";
/// How long connecting to a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Admin call may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply accepted: a record carries its whole certificate chain, which
/// outgrows tonic's 4 MiB default at many members.
const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A token file and its value.
#[derive(Debug, Clone)]
pub struct Token {
    pub path: PathBuf,
    pub value: String,
}

impl Token {
    /// Writes a fresh random token to `<dir>/token` (mode 0600), creating `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Token> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|error| anyhow::anyhow!("drawing a random token: {error}"))?;
        let value = hex::encode(bytes);
        let path = dir.join(TOKEN_FILE);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(value.as_bytes())?;
        Ok(Token { path, value })
    }

    pub fn read(path: &Path) -> anyhow::Result<Token> {
        let value = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?
            .trim()
            .to_string();
        Ok(Token {
            path: path.to_path_buf(),
            value,
        })
    }

    /// The node flag that makes a node require this token.
    pub fn node_arg(&self) -> String {
        format!("--api-token-file={}", self.path.display())
    }

    pub fn interceptor(&self) -> anyhow::Result<BearerToken> {
        interceptor(Some(&self.value))
    }
}

/// The interceptor that sends `token` (a token's value), or nothing.
pub fn interceptor(token: Option<&str>) -> anyhow::Result<BearerToken> {
    Ok(BearerToken(token.map(bearer).transpose()?))
}

/// A plaintext channel to `grpc`; `timeout` bounds every call made over it.
/// Each call opens its own HTTP/2 connection.
async fn channel(grpc: &str, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(grpc.to_string())
        .with_context(|| format!("bad endpoint {grpc:?}"))?;
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {grpc}"))
}

/// A Federation client for `grpc` that sends `token` (a token's value, if any). Its
/// calls have no deadline of their own (a waiting SubmitTask lasts as long as the
/// task): callers bound them.
pub async fn federation(grpc: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let interceptor = interceptor(token)?;
    Ok(
        FederationClient::with_interceptor(channel(grpc, None).await?, interceptor)
            .max_decoding_message_size(REPLY_BYTES_MAX),
    )
}

/// An Admin client for `grpc` that sends `token`; every call gives up after
/// [`ADMIN_TIMEOUT`] (a hung node must not hang the supervisor).
pub async fn admin(grpc: &str, token: &Token) -> anyhow::Result<AdminApiClient> {
    Ok(AdminClient::with_interceptor(
        channel(grpc, Some(ADMIN_TIMEOUT)).await?,
        token.interceptor()?,
    ))
}

/// A node's Admin status.
pub async fn node_status(grpc: &str, token: &Token) -> anyhow::Result<NodeStatus> {
    Ok(admin(grpc, token)
        .await?
        .get_status(GetStatusRequest {})
        .await?
        .into_inner())
}

/// A node's Admin status, or `None` when it cannot be read within `timeout`.
pub async fn node_status_within(
    grpc: &str,
    token: &Token,
    timeout: Duration,
) -> Option<NodeStatus> {
    tokio::time::timeout(timeout, node_status(grpc, token))
        .await
        .ok()
        .and_then(Result::ok)
}

/// Sets `faults` on a node and checks the node took them as sent.
pub async fn set_faults(grpc: &str, token: &Token, faults: Faults) -> anyhow::Result<()> {
    let mut client = admin(grpc, token).await?;
    let now = client
        .set_faults(faults.clone())
        .await
        .with_context(|| format!("Admin/SetFaults on {grpc}"))?
        .into_inner();
    if now != faults {
        bail!("Admin/SetFaults on {grpc}: sent {faults:?}, the node has {now:?} in force");
    }
    Ok(())
}

/// Why a submission brought no record back.
#[derive(Debug)]
pub enum SubmitError {
    /// The node answered with an error.
    Status(tonic::Status),
    /// No reply within this long (the client gave up).
    NoReply(Duration),
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
            SubmitError::NoReply(timeout) => write!(f, "no reply within {timeout:?}"),
        }
    }
}

/// Submits a task and waits at most `timeout` for its record.
pub async fn submit(
    client: &mut Client,
    request: tonic::Request<SubmitTaskRequest>,
    timeout: Duration,
) -> Result<TaskRecord, SubmitError> {
    match tokio::time::timeout(timeout, client.submit_task(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(SubmitError::Status(status)),
        Err(_elapsed) => Err(SubmitError::NoReply(timeout)),
    }
}

/// The node's stored record of a task, read back within `timeout`.
pub async fn get_task(
    client: &mut Client,
    task_id: &[u8],
    timeout: Duration,
) -> Result<TaskRecord, tonic::Status> {
    let request = GetTaskRequest {
        task_id: task_id.to_vec(),
    };
    tokio::time::timeout(timeout, client.get_task(request))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no reply")))
        .map(tonic::Response::into_inner)
}

/// The node's verification of a stored task's certificate chain, within `timeout`.
pub async fn verify_stored(
    client: &mut Client,
    task_id: &[u8],
    timeout: Duration,
) -> Result<VerifyCertificateResponse, tonic::Status> {
    let request = VerifyCertificateRequest {
        source: Some(Source::TaskId(task_id.to_vec())),
    };
    tokio::time::timeout(timeout, client.verify_certificate(request))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no reply")))
        .map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = Token::create(dir.path()).unwrap();
        let mode = std::fs::metadata(&token.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Token::read(&token.path).unwrap();
        assert_eq!(again.value, token.value);
        assert_eq!(token.value.len(), 48);
        assert!(token.interceptor().is_ok());
        assert!(token.node_arg().starts_with("--api-token-file="));
        // A second create replaces the token.
        let other = Token::create(dir.path()).unwrap();
        assert_ne!(other.value, token.value);
    }

    #[test]
    fn the_interceptor_sends_the_token_or_nothing() {
        let BearerToken(value) = interceptor(Some("s3cret\n")).unwrap();
        assert_eq!(value.unwrap(), "Bearer s3cret");
        assert!(interceptor(None).unwrap().0.is_none());
        assert!(interceptor(Some("bad\u{7f}token")).is_err());
    }

    #[test]
    fn a_submit_error_says_what_happened() {
        let status = SubmitError::Status(tonic::Status::unavailable("gone"));
        assert_eq!(status.to_string(), "Unavailable: gone");
        let silent = SubmitError::NoReply(Duration::from_secs(3));
        assert_eq!(silent.to_string(), "no reply within 3s");
    }
}
