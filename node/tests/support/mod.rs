//! Starts the real `polity` binary on ephemeral ports and talks to it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use polity_node::runtime::start::EndpointsFile;
use polity_proto::federation_client::FederationClient;
use tonic::transport::Channel;

/// How long a node gets to start before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn polity_binary() -> &'static str {
    env!("CARGO_BIN_EXE_polity")
}

/// A `polity node` process; killed (SIGTERM, then SIGKILL) when dropped.
pub struct TestNode {
    pub data_dir: PathBuf,
    pub endpoints: EndpointsFile,
    child: Option<Child>,
    log_path: PathBuf,
}

impl TestNode {
    /// Starts a node on `data_dir` with ephemeral gRPC and HTTP ports plus `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> TestNode {
        let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
        std::fs::create_dir_all(data_dir).unwrap();
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(polity_binary());
        command
            .args(["node", "--data-dir"])
            .arg(data_dir)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            // Loopback only, no multicast: tests never send traffic off this machine.
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = command.spawn().expect("spawning polity node");
        let started = Instant::now();
        loop {
            if let Ok(endpoints) = EndpointsFile::read(data_dir)
                && endpoints.pid == child.id()
            {
                return TestNode {
                    data_dir: data_dir.to_path_buf(),
                    endpoints,
                    child: Some(child),
                    log_path,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "polity node exited with {status} before it was ready:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "node did not start in {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> FederationClient<Channel> {
        FederationClient::connect(self.endpoints.grpc.clone())
            .await
            .expect("connecting to the node")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoints.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops the node with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        terminate(&mut child);
        let status = wait_for_exit(&mut child, Duration::from_secs(15));
        assert!(
            status.success(),
            "node exited with {status} on SIGTERM:\n{}",
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&self.endpoints.http, path)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the `polity` CLI to completion.
pub fn polity(args: &[&str]) -> Output {
    Command::new(polity_binary())
        .args(args)
        .output()
        .expect("running polity")
}

/// A minimal HTTP/1.1 GET over a std TcpStream: status code and body.
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connecting to HTTP");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    (status, decode_chunked(body))
}

/// Undoes `Transfer-Encoding: chunked` when the body uses it.
fn decode_chunked(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size_line, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            return body.to_string();
        };
        if size == 0 {
            return out;
        }
        if after.len() < size {
            return body.to_string();
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}
