//! Node processes: spawn `polity node`, wait until it has written its
//! `endpoints.json`, connect over gRPC, stop with SIGTERM (SIGKILL after a grace
//! period). A [`NodeProcess`] kills its child when dropped, so no test or demo leaves
//! a node behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use polity_proto::federation_client::FederationClient;
use serde::Deserialize;
use tonic::transport::Channel;

/// How long a node gets to write its endpoints file.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node gets to exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a running node writes into `<data dir>/endpoints.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    pub peer_id: String,
    pub public_key: String,
    /// p2p listen addresses with /p2p/<peer id>, usable as --bootstrap.
    pub p2p: Vec<String>,
    pub grpc: String,
    pub http: String,
    pub pid: u32,
}

/// The `polity` binary next to the running executable (both are built into the
/// same target dir), or `POLITY_BIN` when set.
pub fn polity_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("POLITY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating polity-testnet")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live one level down, in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("polity");
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "no polity binary at {}; build it (cargo build --bins) or set POLITY_BIN",
            candidate.display()
        )
    }
}

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub data_dir: PathBuf,
    pub region: String,
    pub continent: String,
    pub extra_args: Vec<String>,
}

/// A running `polity node`.
pub struct NodeProcess {
    pub spec: NodeSpec,
    pub endpoints: Endpoints,
    child: Option<Child>,
}

impl NodeProcess {
    /// Spawns the node and waits until it is serving.
    pub fn start(binary: &Path, spec: NodeSpec) -> anyhow::Result<NodeProcess> {
        Starting::spawn(binary, spec)?.wait()
    }

    pub async fn client(&self) -> anyhow::Result<FederationClient<Channel>> {
        FederationClient::connect(self.endpoints.grpc.clone())
            .await
            .with_context(|| {
                format!(
                    "connecting to node {} at {}",
                    self.spec.name, self.endpoints.grpc
                )
            })
    }

    /// SIGTERM, then waits; SIGKILL if the node overstays [`STOP_GRACE`].
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("could not signal node {}", self.spec.name);
        }
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("node {} exited with {status} on SIGTERM", self.spec.name);
                }
                return Ok(());
            }
            if started.elapsed() > STOP_GRACE {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "node {} ignored SIGTERM for {STOP_GRACE:?}; killed",
                    self.spec.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where a node listens: gRPC and HTTP socket addresses, libp2p multiaddrs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub grpc: String,
    pub http: String,
    pub p2p: Vec<String>,
}

impl Listen {
    /// Free ports picked by the kernel (TCP and QUIC on loopback).
    pub fn ephemeral() -> Listen {
        Listen {
            grpc: "127.0.0.1:0".into(),
            http: "127.0.0.1:0".into(),
            p2p: vec![
                "/ip4/127.0.0.1/tcp/0".into(),
                "/ip4/127.0.0.1/udp/0/quic-v1".into(),
            ],
        }
    }

    /// The addresses a running node bound, so a restart can bind them again and
    /// its peers' address books stay right. `None` when an endpoint does not parse.
    pub fn of(endpoints: &Endpoints) -> Option<Listen> {
        let socket = |url: &str| {
            let address = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .unwrap_or(url)
                .trim_end_matches('/');
            address
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.to_string())
        };
        let p2p: Vec<String> = endpoints
            .p2p
            .iter()
            .map(|address| match address.find("/p2p/") {
                Some(at) => address[..at].to_string(),
                None => address.clone(),
            })
            .collect();
        if p2p.is_empty() {
            return None;
        }
        Some(Listen {
            grpc: socket(&endpoints.grpc)?,
            http: socket(&endpoints.http)?,
            p2p,
        })
    }
}

/// A node process that has been spawned but may not be serving yet. Spawning many
/// and then waiting for each lets them start in parallel.
pub struct Starting {
    spec: NodeSpec,
    /// Taken by `wait` when the node is up; killed on drop otherwise.
    child: Option<Child>,
    endpoints_path: PathBuf,
    log_path: PathBuf,
    started: Instant,
}

impl Starting {
    pub fn spawn(binary: &Path, spec: NodeSpec) -> anyhow::Result<Starting> {
        Starting::spawn_on(binary, spec, &Listen::ephemeral())
    }

    /// Spawns the node listening on `listen` (e.g. the ports it had before a restart).
    pub fn spawn_on(binary: &Path, spec: NodeSpec, listen: &Listen) -> anyhow::Result<Starting> {
        std::fs::create_dir_all(&spec.data_dir)
            .with_context(|| format!("creating {}", spec.data_dir.display()))?;
        let endpoints_path = spec.data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints_path);
        let log_path = spec.data_dir.join("node.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .arg("node")
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--grpc-addr", &listen.grpc, "--http-addr", &listen.http])
            .args(["--region", &spec.region, "--continent", &spec.continent])
            // Loopback only, no multicast: a local testnet never leaves this machine.
            .args(
                listen
                    .p2p
                    .iter()
                    .flat_map(|address| ["--listen", address.as_str()]),
            )
            .arg("--no-mdns")
            .args(&spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        Ok(Starting {
            spec,
            child: Some(child),
            endpoints_path,
            log_path,
            started: Instant::now(),
        })
    }

    /// Waits until the node has written its endpoints file (it is serving).
    pub fn wait(mut self) -> anyhow::Result<NodeProcess> {
        let Some(child) = self.child.as_mut() else {
            bail!("node {} was already handed out", self.spec.name);
        };
        loop {
            if let Some(endpoints) = read_endpoints(&self.endpoints_path)
                && endpoints.pid == child.id()
            {
                return Ok(NodeProcess {
                    spec: self.spec.clone(),
                    endpoints,
                    child: self.child.take(),
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "node {} exited with {status} while starting; its log ({}):\n{}",
                    self.spec.name,
                    self.log_path.display(),
                    std::fs::read_to_string(&self.log_path).unwrap_or_default()
                );
            }
            if self.started.elapsed() > START_TIMEOUT {
                bail!(
                    "node {} did not start within {START_TIMEOUT:?}",
                    self.spec.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        // A child still here was never handed out (or failed to start): never leave
        // it running.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl NodeProcess {
    /// Leaves the process running after this handle is gone (`up --detach`).
    pub fn detach(mut self) {
        self.child = None;
    }

    /// The OS process id while this handle owns the process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Resident set size of `pid`, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").args([name, &pid.to_string()]).status();
}

/// SIGTERM.
pub fn terminate(pid: u32) {
    signal(pid, "-TERM");
}

/// SIGKILL.
pub fn kill(pid: u32) {
    signal(pid, "-KILL");
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_endpoints(path: &Path) -> Option<Endpoints> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// SIGSTOP: the process stays connected but goes silent (a hung node).
pub fn pause(pid: u32) {
    signal(pid, "-STOP");
}

/// SIGCONT: a paused process goes on.
pub fn resume(pid: u32) {
    signal(pid, "-CONT");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_of_a_running_node() {
        let endpoints = Endpoints {
            peer_id: "12D3KooWabc".into(),
            public_key: "00".into(),
            p2p: vec![
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc".into(),
                "/ip4/127.0.0.1/udp/4002/quic-v1/p2p/12D3KooWabc".into(),
            ],
            grpc: "http://127.0.0.1:7001".into(),
            http: "http://127.0.0.1:7002".into(),
            pid: 1,
        };
        assert_eq!(
            Listen::of(&endpoints),
            Some(Listen {
                grpc: "127.0.0.1:7001".into(),
                http: "127.0.0.1:7002".into(),
                p2p: vec![
                    "/ip4/127.0.0.1/tcp/4001".into(),
                    "/ip4/127.0.0.1/udp/4002/quic-v1".into()
                ],
            })
        );
        let broken = Endpoints {
            grpc: "nowhere".into(),
            ..endpoints.clone()
        };
        assert_eq!(Listen::of(&broken), None);
        let silent = Endpoints {
            p2p: vec![],
            ..endpoints
        };
        assert_eq!(Listen::of(&silent), None);
    }
}
