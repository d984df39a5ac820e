//! Executors: how a node turns a task payload into an answer.
//!
//! - `builtin:NAME`: deterministic helpers shipped with the node (see [`Builtin`]);
//! - `exec:COMMAND`: `sh -c COMMAND` with the payload on stdin and the answer from
//!   stdout; a non-zero exit, a timeout or an oversized answer is an error answer,
//!   and on timeout the whole process group is killed;
//! - `http:URL`: POST the payload, the response body is the answer (2xx only).
//!
//! An executor never panics on its input: whatever the payload, the result is an
//! answer or an [`ExecError`].

use std::process::Stdio;
use std::time::Duration;

use anyhow::bail;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Limits applied to every run.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    pub timeout: Duration,
    pub output_bytes_max: usize,
}

/// Why an executor produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("answer larger than {0} bytes")]
    OutputTooLarge(usize),
    #[error("exited with {status}: {stderr}")]
    Failed { status: String, stderr: String },
    #[error("could not start: {0}")]
    Spawn(String),
    #[error("http: {0}")]
    Http(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// A deterministic helper shipped with the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// The payload itself.
    Echo,
    /// Lower-case hex SHA-256 of the payload.
    Sha256,
    /// Number of whitespace-separated words (UTF-8, lossy), in decimal.
    Wordcount,
    /// The payload in upper case (ASCII letters only).
    Uppercase,
    /// Sum of the whitespace-separated decimal integers in the payload.
    Sum,
}

impl Builtin {
    pub const ALL: [(&'static str, Builtin); 5] = [
        ("echo", Builtin::Echo),
        ("sha256", Builtin::Sha256),
        ("wordcount", Builtin::Wordcount),
        ("uppercase", Builtin::Uppercase),
        ("sum", Builtin::Sum),
    ];

    pub fn run(self, payload: &[u8]) -> Result<Vec<u8>, ExecError> {
        Ok(match self {
            Builtin::Echo => payload.to_vec(),
            Builtin::Sha256 => hex::encode(Sha256::digest(payload)).into_bytes(),
            Builtin::Wordcount => String::from_utf8_lossy(payload)
                .split_whitespace()
                .count()
                .to_string()
                .into_bytes(),
            Builtin::Uppercase => payload.to_ascii_uppercase(),
            Builtin::Sum => {
                let text = std::str::from_utf8(payload)
                    .map_err(|_| ExecError::InvalidInput("payload is not UTF-8".into()))?;
                let mut sum: i128 = 0;
                for word in text.split_whitespace() {
                    let number: i64 = word.parse().map_err(|_| {
                        ExecError::InvalidInput(format!("{word:?} is not an integer"))
                    })?;
                    sum = sum
                        .checked_add(i128::from(number))
                        .ok_or_else(|| ExecError::InvalidInput("sum overflows".into()))?;
                }
                sum.to_string().into_bytes()
            }
        })
    }
}

/// A parsed executor spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorSpec {
    Builtin(Builtin),
    Exec(String),
    Http(String),
}

impl ExecutorSpec {
    pub fn parse(spec: &str) -> anyhow::Result<ExecutorSpec> {
        let Some((kind, rest)) = spec.split_once(':') else {
            bail!("executor {spec:?}: expected builtin:NAME, exec:COMMAND or http:URL");
        };
        match kind {
            "builtin" => match Builtin::ALL.iter().find(|(name, _)| *name == rest) {
                Some((_, builtin)) => Ok(ExecutorSpec::Builtin(*builtin)),
                None => {
                    let names: Vec<&str> = Builtin::ALL.iter().map(|(name, _)| *name).collect();
                    bail!(
                        "unknown builtin {rest:?}; builtins are {}",
                        names.join(", ")
                    )
                }
            },
            "exec" if !rest.trim().is_empty() => Ok(ExecutorSpec::Exec(rest.to_string())),
            "exec" => bail!("exec: needs a command"),
            "http" => {
                let url = reqwest::Url::parse(rest)
                    .map_err(|e| anyhow::anyhow!("http: bad URL {rest:?}: {e}"))?;
                if url.scheme() != "http" {
                    bail!("http: only http:// URLs are supported, got {rest:?}");
                }
                Ok(ExecutorSpec::Http(rest.to_string()))
            }
            other => bail!("unknown executor kind {other:?} (use builtin, exec or http)"),
        }
    }
}

/// An executor ready to run, with its limits.
#[derive(Debug, Clone)]
pub struct Executor {
    spec: ExecutorSpec,
    http: Option<reqwest::Client>,
}

impl Executor {
    pub fn new(spec: ExecutorSpec) -> Executor {
        let http = matches!(spec, ExecutorSpec::Http(_)).then(reqwest::Client::new);
        Executor { spec, http }
    }

    pub fn spec(&self) -> &ExecutorSpec {
        &self.spec
    }

    /// Runs the executor once on `payload`, within `limits`.
    pub async fn run(&self, payload: &[u8], limits: RunLimits) -> Result<Vec<u8>, ExecError> {
        let timeout_ms = limits.timeout.as_millis() as u64;
        let answer = match &self.spec {
            ExecutorSpec::Builtin(builtin) => builtin.run(payload)?,
            ExecutorSpec::Exec(command) => run_command(command, payload, limits).await?,
            ExecutorSpec::Http(url) => {
                let client = self.http.as_ref().expect("http executors carry a client");
                tokio::time::timeout(limits.timeout, post(client, url, payload, limits))
                    .await
                    .map_err(|_| ExecError::Timeout(timeout_ms))??
            }
        };
        if answer.len() > limits.output_bytes_max {
            return Err(ExecError::OutputTooLarge(limits.output_bytes_max));
        }
        Ok(answer)
    }
}

/// Bytes of stderr kept for the error message.
const STDERR_BYTES_MAX: usize = 4 * 1024;

async fn run_command(
    command: &str,
    payload: &[u8],
    limits: RunLimits,
) -> Result<Vec<u8>, ExecError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the command and its children.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Spawn(e.to_string()))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let payload = payload.to_vec();
    let work = async move {
        // Feed stdin concurrently with reading stdout so neither pipe can fill up and
        // deadlock; a command that does not read its input is fine (broken pipe).
        let feed = async move {
            let _ = stdin.write_all(&payload).await;
            drop(stdin);
        };
        let (_, out, err) = tokio::join!(
            feed,
            read_bounded(stdout, limits.output_bytes_max),
            read_bounded(stderr, STDERR_BYTES_MAX)
        );
        let status = child
            .wait()
            .await
            .map_err(|e| ExecError::Spawn(e.to_string()))?;
        Ok::<_, ExecError>((out, err, status))
    };
    match tokio::time::timeout(limits.timeout, work).await {
        Ok(Ok((Ok(out), err, status))) => {
            if status.success() {
                Ok(out)
            } else {
                let stderr = err.map(|e| String::from_utf8_lossy(&e).trim().to_string());
                Err(ExecError::Failed {
                    status: status.to_string(),
                    stderr: stderr.unwrap_or_default(),
                })
            }
        }
        Ok(Ok((Err(too_large), _, _))) => {
            kill_group(pid);
            Err(too_large)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => {
            kill_group(pid);
            Err(ExecError::Timeout(limits.timeout.as_millis() as u64))
        }
    }
}

/// Kills the process group led by `pid` (the `sh` we spawned, and all it started).
#[allow(unsafe_code)]
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill(2) has no memory effects; a negative pid addresses the process
    // group we created with process_group(0), so no unrelated process is signalled.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Reads at most `limit` bytes; more is an error (the rest is not read).
async fn read_bounded<R: AsyncRead + Unpin>(reader: R, limit: usize) -> Result<Vec<u8>, ExecError> {
    let mut buffer = Vec::new();
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut buffer)
        .await
        .map_err(|e| ExecError::Spawn(e.to_string()))?;
    if read > limit {
        return Err(ExecError::OutputTooLarge(limit));
    }
    Ok(buffer)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    payload: &[u8],
    limits: RunLimits,
) -> Result<Vec<u8>, ExecError> {
    let mut response = client
        .post(url)
        .body(payload.to_vec())
        .send()
        .await
        .map_err(|e| ExecError::Http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(ExecError::Http(format!("status {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ExecError::Http(e.to_string()))?
    {
        if body.len() + chunk.len() > limits.output_bytes_max {
            return Err(ExecError::OutputTooLarge(limits.output_bytes_max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RunLimits = RunLimits {
        timeout: Duration::from_secs(5),
        output_bytes_max: 1024,
    };

    async fn check(spec: &str, payload: &[u8], limits: RunLimits) -> Result<Vec<u8>, ExecError> {
        Executor::new(ExecutorSpec::parse(spec).unwrap())
            .run(payload, limits)
            .await
    }

    #[tokio::test]
    async fn builtins_are_deterministic_helpers() {
        assert_eq!(check("builtin:echo", b"hi", LIMITS).await.unwrap(), b"hi");
        assert_eq!(
            check("builtin:sha256", b"hello", LIMITS).await.unwrap(),
            b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            check("builtin:wordcount", b" a b\n c ", LIMITS)
                .await
                .unwrap(),
            b"3"
        );
        assert_eq!(
            check("builtin:uppercase", b"abC1", LIMITS).await.unwrap(),
            b"ABC1"
        );
        assert_eq!(
            check("builtin:sum", b"1 2 -5", LIMITS).await.unwrap(),
            b"-2"
        );
        assert!(matches!(
            check("builtin:sum", b"1 two", LIMITS).await,
            Err(ExecError::InvalidInput(_))
        ));
        assert!(matches!(
            check("builtin:echo", &[0u8; 2048], LIMITS).await,
            Err(ExecError::OutputTooLarge(1024))
        ));
    }

    #[tokio::test]
    async fn exec_reads_stdin_and_writes_stdout() {
        assert_eq!(
            check("exec:tr a-z A-Z", b"shout", LIMITS).await.unwrap(),
            b"SHOUT"
        );
        // A command that ignores its stdin still answers.
        assert_eq!(
            check("exec:printf ok", &[7u8; 200_000], LIMITS)
                .await
                .unwrap(),
            b"ok"
        );
    }

    #[tokio::test]
    async fn exec_failures_are_error_answers() {
        let error = check("exec:echo boom >&2; exit 3", b"", LIMITS)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExecError::Failed { stderr, .. } if stderr == "boom"),
            "{error:?}"
        );
        let error = check("exec:head -c 5000 /dev/zero", b"", LIMITS)
            .await
            .unwrap_err();
        assert_eq!(error, ExecError::OutputTooLarge(1024));
    }

    #[tokio::test]
    async fn exec_overrunning_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let command = format!("exec:sleep 30 & echo $! > {}; wait", pid_file.display());
        let limits = RunLimits {
            timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let error = check(&command, b"", limits).await.unwrap_err();
        assert_eq!(error, ExecError::Timeout(300));
        // The grandchild `sleep` was killed with its group: it is gone or a zombie.
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_string();
        let mut alive = true;
        for _ in 0..50 {
            alive = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) => !stat.contains(") Z "),
                Err(_) => false,
            };
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive, "sleep (pid {pid}) survived the timeout");
    }

    #[tokio::test]
    async fn http_posts_the_payload_and_bounds_the_answer() {
        use axum::{Router, routing::post};
        let app = Router::new()
            .route(
                "/reverse",
                post(|body: axum::body::Bytes| async move {
                    body.iter().rev().copied().collect::<Vec<u8>>()
                }),
            )
            .route("/big", post(|| async { vec![b'x'; 4096] }))
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "late"
                }),
            )
            .route(
                "/fail",
                post(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "no") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let url = |path: &str| format!("http:{base}{path}");
        assert_eq!(
            check(&url("/reverse"), b"abc", LIMITS).await.unwrap(),
            b"cba"
        );
        assert_eq!(
            check(&url("/big"), b"", LIMITS).await.unwrap_err(),
            ExecError::OutputTooLarge(1024)
        );
        assert!(matches!(
            check(&url("/fail"), b"", LIMITS).await,
            Err(ExecError::Http(_))
        ));
        let limits = RunLimits {
            timeout: Duration::from_millis(200),
            ..LIMITS
        };
        assert_eq!(
            check(&url("/slow"), b"", limits).await.unwrap_err(),
            ExecError::Timeout(200)
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for (spec, reason) in [
            ("sha256", "expected builtin:NAME"),
            ("builtin:nope", "unknown builtin"),
            ("exec:  ", "needs a command"),
            ("http:not a url", "bad URL"),
            ("http:https://example.invalid/x", "only http://"),
            ("ftp:x", "unknown executor kind"),
        ] {
            let error = ExecutorSpec::parse(spec).unwrap_err().to_string();
            assert!(error.contains(reason), "{spec}: {error}");
        }
    }
}
