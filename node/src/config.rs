//! Node configuration: command-line flags over an optional TOML file over defaults.
//!
//! Every field has a default that works on a laptop: a data dir under the current
//! directory, loopback listeners, region and continent "local", the builtin
//! executors for `echo`, `sha256` and `wordcount`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::member::executor::ExecutorSpec;

/// The smallest peer table a node may be given: a region's seats and a few
/// relays must fit.
const PEERS_MAX_MIN: usize = 16;

/// Everything a node needs to start, after merging defaults, file and flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where the identity key and the sled database live.
    pub data_dir: PathBuf,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// gRPC listen address; port 0 picks a free port (see `endpoints.json`).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for /health, /ready and /metrics.
    pub http_addr: SocketAddr,
    pub region: String,
    pub continent: String,
    /// The federation file (`polity genesis init`, or a chain exported with
    /// `GetEpochChain`); none: a one-member dev federation of this node.
    pub genesis: Option<PathBuf>,
    /// Multiaddrs of peers to join at start.
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Multiaddrs others can dial this node at from outside its network (a public
    /// IP and a forwarded port): announced as confirmed, without an AutoNAT probe.
    pub external_addresses: Vec<String>,
    /// Circuit relay v2: whether this node serves as a relay, and its limits.
    pub relay: RelayConfig,
    /// Capability name → executor spec (`builtin:NAME`, `exec:COMMAND`, `http:URL`).
    pub capabilities: BTreeMap<String, String>,
    pub api: ApiConfig,
    pub discovery: DiscoveryConfig,
    pub tls: TlsConfig,
    pub executor: ExecutorLimits,
    pub tasks: TaskLimits,
    /// Worker slots and the thresholds that grow and shrink them.
    pub workers: crate::member::workers::WorkersConfig,
    /// Faults injected on purpose (chaos runs; all off by default).
    pub faults: crate::chaos::FaultConfig,
    /// `text` or `json`.
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Client-facing limits of the gRPC API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// File holding the bearer token clients must send; none means no auth.
    pub token_file: Option<PathBuf>,
    /// Sustained requests per second allowed per client IP.
    pub rate_limit_per_second: u32,
    /// Requests a client may burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// Largest task payload accepted.
    pub payload_bytes_max: usize,
    /// Concurrent requests per connection.
    pub concurrency_per_connection_max: usize,
    /// Open gRPC connections at once; more are closed at once and counted.
    pub grpc_connections_max: usize,
    /// Open HTTP (/metrics, /health, /ready) connections at once.
    pub http_connections_max: usize,
}

/// The compatibility rule for choosing peers (the seed's defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// A peer must serve more than this share of the wanted capabilities.
    pub capability_overlap_min: f64,
    /// A peer's trust must be above this.
    pub trust_min: f64,
    /// A peer's measured round-trip time must be below this.
    pub rtt_ms_max: u64,
    /// Peers the network's peer table keeps at most (eviction: unverified first,
    /// then least recently seen; connected peers are never evicted).
    pub peers_max: usize,
}

/// Circuit relay v2 (`--relay-server`) and what a relay serves at most.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Serve as a relay for nodes behind NAT.
    pub serve: bool,
    pub reservations_max: usize,
    pub reservations_per_peer_max: usize,
    pub circuits_max: usize,
    pub circuits_per_peer_max: usize,
    /// A relayed circuit is closed after this long...
    pub circuit_duration_s: u64,
    /// ...or after this many bytes in each direction.
    pub circuit_bytes_max: u64,
    pub reservation_duration_s: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let limits = polity_net::RelayLimits::default();
        RelayConfig {
            serve: false,
            reservations_max: limits.reservations_max,
            reservations_per_peer_max: limits.reservations_per_peer_max,
            circuits_max: limits.circuits_max,
            circuits_per_peer_max: limits.circuits_per_peer_max,
            circuit_duration_s: limits.circuit_duration_s,
            circuit_bytes_max: limits.circuit_bytes_max,
            reservation_duration_s: limits.reservation_duration_s,
        }
    }
}

impl RelayConfig {
    /// The relay's limits, when this node serves as one.
    pub fn limits(&self) -> Option<polity_net::RelayLimits> {
        self.serve.then_some(polity_net::RelayLimits {
            reservations_max: self.reservations_max,
            reservations_per_peer_max: self.reservations_per_peer_max,
            circuits_max: self.circuits_max,
            circuits_per_peer_max: self.circuits_per_peer_max,
            circuit_duration_s: self.circuit_duration_s,
            circuit_bytes_max: self.circuit_bytes_max,
            reservation_duration_s: self.reservation_duration_s,
        })
    }
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            capability_overlap_min: 0.3,
            trust_min: polity_consensus::TRUST_FLOOR,
            rtt_ms_max: 100,
            peers_max: polity_net::PEERS_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the gRPC server; with `key`, enables TLS.
    pub cert: Option<PathBuf>,
    /// PEM private key of the gRPC server.
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorLimits {
    /// Time an executor may take for one task.
    pub timeout_ms: u64,
    /// Largest answer an executor may return.
    pub output_bytes_max: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskLimits {
    /// Deadline used when a client gives none.
    pub deadline_ms_default: u64,
    /// Largest deadline a client may ask for.
    pub deadline_ms_max: u64,
    /// Tasks being decided at once on this node; more get RESOURCE_EXHAUSTED.
    pub inflight_max: usize,
    /// Time a region group gets to decide (capped by what is left of the deadline).
    pub region_timeout_ms: u64,
    /// Time a continent group gets to decide.
    pub continent_timeout_ms: u64,
    /// Time the global group gets to decide.
    pub global_timeout_ms: u64,
    /// Members of each decided child group that represent it in its parent group.
    /// Two per child give a parent of two children four members: one fault tolerated
    /// on the bft path.
    pub representatives: usize,
    /// Extra replicas asked, one at a time, when a region group's members answered
    /// but no quorum agreed (as BOINC does).
    pub extra_replicas_max: u32,
    /// Group rounds this node takes part in at once, as a member; more are refused.
    pub member_rounds_max: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let mut capabilities = BTreeMap::new();
        for name in ["echo", "sha256", "wordcount"] {
            capabilities.insert(name.to_string(), format!("builtin:{name}"));
        }
        NodeConfig {
            data_dir: PathBuf::from("polity-data"),
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".to_string(),
                "/ip4/0.0.0.0/udp/0/quic-v1".to_string(),
            ],
            grpc_addr: "127.0.0.1:7001".parse().expect("valid address"),
            http_addr: "127.0.0.1:7002".parse().expect("valid address"),
            region: "local".to_string(),
            continent: "local".to_string(),
            genesis: None,
            bootstrap: Vec::new(),
            mdns: true,
            external_addresses: Vec::new(),
            relay: RelayConfig::default(),
            capabilities,
            api: ApiConfig::default(),
            discovery: DiscoveryConfig::default(),
            tls: TlsConfig::default(),
            executor: ExecutorLimits::default(),
            tasks: TaskLimits::default(),
            workers: crate::member::workers::WorkersConfig::default(),
            faults: crate::chaos::FaultConfig::default(),
            log_format: LogFormat::Text,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token_file: None,
            rate_limit_per_second: 1_000,
            rate_limit_burst: 2_000,
            payload_bytes_max: 1024 * 1024,
            concurrency_per_connection_max: 256,
            grpc_connections_max: 1024,
            http_connections_max: 256,
        }
    }
}

impl Default for ExecutorLimits {
    fn default() -> Self {
        ExecutorLimits {
            timeout_ms: 5_000,
            output_bytes_max: 1024 * 1024,
        }
    }
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            deadline_ms_default: 10_000,
            deadline_ms_max: 600_000,
            inflight_max: 4_096,
            region_timeout_ms: 4_000,
            continent_timeout_ms: 3_000,
            global_timeout_ms: 3_000,
            representatives: 2,
            extra_replicas_max: 2,
            member_rounds_max: 8_192,
        }
    }
}

/// `polity node` flags. Each one, when given, overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeFlags {
    /// TOML config file; flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// libp2p listen multiaddr (repeatable).
    #[arg(long = "listen")]
    pub listen: Vec<String>,
    /// gRPC listen address, e.g. 127.0.0.1:7001 (port 0 picks one).
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address for /health, /ready, /metrics.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub continent: Option<String>,
    /// The federation file this node belongs to; stake, region and seats come from
    /// its registry, never from a flag.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Multiaddr of a peer to join, e.g. /ip4/10.0.0.2/tcp/7100/p2p/12D3KooW... (repeatable).
    #[arg(long = "bootstrap")]
    pub bootstrap: Vec<String>,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Multiaddr others reach this node at from outside its network, e.g.
    /// /ip4/203.0.113.5/tcp/7100 (repeatable): announced as confirmed reachable.
    #[arg(long = "external-address")]
    pub external_addresses: Vec<String>,
    /// Serve as a circuit relay for nodes behind NAT (limits: `[relay]` in the
    /// config file).
    #[arg(long)]
    pub relay_server: bool,
    /// Peers the peer table keeps at most (default 1,000).
    #[arg(long)]
    pub peers_max: Option<usize>,
    /// NAME=EXECUTOR, e.g. sha256=builtin:sha256 or grep=exec:'grep -c x' (repeatable).
    /// Given at least once, it replaces the file's and the default capabilities.
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
    /// File holding the bearer token gRPC clients must send.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Sustained gRPC requests per second per client IP.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Largest task payload in bytes.
    #[arg(long)]
    pub payload_bytes_max: Option<usize>,
    /// PEM certificate for gRPC TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for gRPC TLS.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that client certificates must chain to (mutual TLS).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Executor timeout in milliseconds.
    #[arg(long)]
    pub executor_timeout_ms: Option<u64>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub faults: FaultFlags,
}

/// `--fault-*` flags: inject faults on purpose (chaos runs and tests). Each one,
/// when given, overrides the `[faults]` section; `Admin/SetFaults` replaces them at
/// run time.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultFlags {
    /// Probability in [0,1] that an execution answers wrong (ε).
    #[arg(long)]
    pub fault_error_rate: Option<f64>,
    /// Wrong answers differ per node (default: all faulty nodes agree on one).
    #[arg(long)]
    pub fault_distinct_wrong: bool,
    /// Probability in [0,1] that an execution hangs until the executor timeout.
    #[arg(long)]
    pub fault_timeout_rate: Option<f64>,
    /// Milliseconds added to every execution.
    #[arg(long)]
    pub fault_latency_ms: Option<u64>,
    /// Send two different signed observations (byzantine).
    #[arg(long)]
    pub fault_equivocate: bool,
    /// Send statements with broken signatures (byzantine).
    #[arg(long)]
    pub fault_forge_signatures: bool,
    /// Replay own statements of earlier tasks (byzantine).
    #[arg(long)]
    pub fault_replay: bool,
    /// As collector, never send reports or certificates (byzantine).
    #[arg(long)]
    pub fault_withhold: bool,
    /// Probability in [0,1] that an outbound peer request is dropped.
    #[arg(long)]
    pub fault_drop_rate: Option<f64>,
    /// Milliseconds added before every outbound peer request.
    #[arg(long)]
    pub fault_delay_ms: Option<u64>,
    /// Seed of the fault choices.
    #[arg(long)]
    pub fault_seed: Option<u64>,
}

impl FaultFlags {
    pub fn apply(&self, faults: &mut crate::chaos::FaultConfig) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut faults.error_rate, &self.fault_error_rate);
        set(&mut faults.timeout_rate, &self.fault_timeout_rate);
        set(&mut faults.added_latency_ms, &self.fault_latency_ms);
        set(&mut faults.message_drop_rate, &self.fault_drop_rate);
        set(&mut faults.message_delay_ms, &self.fault_delay_ms);
        set(&mut faults.seed, &self.fault_seed);
        faults.distinct_wrong |= self.fault_distinct_wrong;
        faults.equivocate |= self.fault_equivocate;
        faults.forge_signatures |= self.fault_forge_signatures;
        faults.replay_statements |= self.fault_replay;
        faults.withhold_as_collector |= self.fault_withhold;
    }
}

impl NodeConfig {
    /// Defaults, then the file named by `--config`, then the flags.
    pub fn load(flags: &NodeFlags) -> anyhow::Result<NodeConfig> {
        let mut config = match &flags.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        config.apply(flags)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    fn apply(&mut self, flags: &NodeFlags) -> anyhow::Result<()> {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut self.data_dir, &flags.data_dir);
        set(&mut self.grpc_addr, &flags.grpc_addr);
        set(&mut self.http_addr, &flags.http_addr);
        set(&mut self.region, &flags.region);
        set(&mut self.continent, &flags.continent);
        if flags.genesis.is_some() {
            self.genesis = flags.genesis.clone();
        }
        set(&mut self.api.rate_limit_per_second, &flags.rate_limit);
        set(&mut self.api.payload_bytes_max, &flags.payload_bytes_max);
        set(&mut self.executor.timeout_ms, &flags.executor_timeout_ms);
        set(&mut self.log_format, &flags.log_format);
        flags.faults.apply(&mut self.faults);
        if flags.api_token_file.is_some() {
            self.api.token_file = flags.api_token_file.clone();
        }
        if flags.tls_cert.is_some() {
            self.tls.cert = flags.tls_cert.clone();
        }
        if flags.tls_key.is_some() {
            self.tls.key = flags.tls_key.clone();
        }
        if flags.tls_client_ca.is_some() {
            self.tls.client_ca = flags.tls_client_ca.clone();
        }
        if !flags.listen.is_empty() {
            self.listen = flags.listen.clone();
        }
        if !flags.bootstrap.is_empty() {
            self.bootstrap = flags.bootstrap.clone();
        }
        if flags.no_mdns {
            self.mdns = false;
        }
        if !flags.external_addresses.is_empty() {
            self.external_addresses = flags.external_addresses.clone();
        }
        if flags.relay_server {
            self.relay.serve = true;
        }
        if let Some(peers_max) = flags.peers_max {
            self.discovery.peers_max = peers_max;
        }
        if !flags.capabilities.is_empty() {
            self.capabilities.clear();
            for entry in &flags.capabilities {
                let Some((name, spec)) = entry.split_once('=') else {
                    bail!(
                        "--capability {entry:?}: expected NAME=EXECUTOR, e.g. sha256=builtin:sha256"
                    );
                };
                self.capabilities.insert(name.to_string(), spec.to_string());
            }
        }
        Ok(())
    }

    /// The peer table's and the relay's limits.
    fn validate_network(&self) -> anyhow::Result<()> {
        if self.discovery.peers_max < PEERS_MAX_MIN {
            bail!(
                "discovery.peers_max must be at least {PEERS_MAX_MIN}, got {}",
                self.discovery.peers_max
            );
        }
        let relay = &self.relay;
        if relay.serve
            && [
                relay.reservations_max,
                relay.reservations_per_peer_max,
                relay.circuits_max,
                relay.circuits_per_peer_max,
            ]
            .contains(&0)
        {
            bail!("a relay needs at least one reservation and one circuit (relay.*_max)");
        }
        Ok(())
    }

    /// Checks what the types cannot: names, executor specs, TLS pairs, limits.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, spec) in &self.capabilities {
            validate_capability_name(name)
                .map_err(|reason| anyhow::anyhow!("capability {name:?}: {reason}"))?;
            ExecutorSpec::parse(spec).with_context(|| format!("capability {name:?}"))?;
        }
        for (what, value) in [("region", &self.region), ("continent", &self.continent)] {
            validate_label(value)
                .map_err(|reason| anyhow::anyhow!("{what} {value:?}: {reason}"))?;
        }
        for (what, addresses) in [
            ("listen", &self.listen),
            ("bootstrap", &self.bootstrap),
            ("external", &self.external_addresses),
        ] {
            for address in addresses {
                address.parse::<polity_net::Multiaddr>().map_err(|e| {
                    anyhow::anyhow!("{what} address {address:?} is not a multiaddr: {e}")
                })?;
            }
        }
        if self.listen.is_empty() {
            bail!("give at least one p2p listen address (--listen)");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)");
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            bail!("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
        }
        for (what, value) in [
            (
                "discovery.capability_overlap_min",
                self.discovery.capability_overlap_min,
            ),
            ("discovery.trust_min", self.discovery.trust_min),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bail!("{what} must be in [0,1], got {value}");
            }
        }
        self.validate_network()?;
        if self.api.grpc_connections_max == 0 || self.api.http_connections_max == 0 {
            bail!("api.grpc_connections_max and api.http_connections_max must be at least 1");
        }
        if self.api.rate_limit_per_second == 0 || self.api.rate_limit_burst == 0 {
            bail!("rate limits must be at least 1");
        }
        let tasks = &self.tasks;
        if self.executor.timeout_ms == 0
            || tasks.deadline_ms_default == 0
            || tasks.region_timeout_ms == 0
            || tasks.continent_timeout_ms == 0
            || tasks.global_timeout_ms == 0
        {
            bail!("timeouts must be at least 1 ms");
        }
        if tasks.representatives == 0 {
            bail!("tasks.representatives must be at least 1");
        }
        if tasks.member_rounds_max == 0 || tasks.inflight_max == 0 {
            bail!("tasks.inflight_max and tasks.member_rounds_max must be at least 1");
        }
        self.workers.validate().map_err(anyhow::Error::msg)?;
        self.faults
            .to_plan()
            .map_err(|reason| anyhow::anyhow!("faults: {reason}"))?;
        Ok(())
    }
}

/// Longest capability, region or continent name.
pub const NAME_BYTES_MAX: usize = 64;

/// Capability names: 1..=64 bytes of `[a-z0-9._-]`.
/// Why a capability, region or continent name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLabel {
    #[error("must not be empty")]
    Empty,
    #[error("longer than {NAME_BYTES_MAX} bytes")]
    TooLong,
    #[error("character {0:?} is not allowed (use a-z, 0-9, '.', '_', '-')")]
    Character(char),
}

pub fn validate_capability_name(name: &str) -> Result<(), InvalidLabel> {
    validate_label(name)
}

/// Region and continent labels follow the capability-name rule.
pub fn validate_label(name: &str) -> Result<(), InvalidLabel> {
    if name.is_empty() {
        return Err(InvalidLabel::Empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(InvalidLabel::TooLong);
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(InvalidLabel::Character(bad));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            r#"
region = "eu-west"
continent = "europe"
genesis = "f.pb"
[capabilities]
sha256 = "builtin:sha256"
[api]
rate_limit_per_second = 7
"#,
        )
        .unwrap();
        let flags = NodeFlags {
            config: Some(file),
            region: Some("eu-north".to_string()),
            ..NodeFlags::default()
        };
        let config = NodeConfig::load(&flags).unwrap();
        assert_eq!(config.region, "eu-north");
        assert_eq!(config.continent, "europe");
        assert_eq!(config.genesis, Some(PathBuf::from("f.pb")));
        assert_eq!(config.api.rate_limit_per_second, 7);
        assert_eq!(config.capabilities.len(), 1);
        assert_eq!(
            config.api.payload_bytes_max,
            ApiConfig::default().payload_bytes_max
        );
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let check = |flags: NodeFlags, expected: &str| {
            let error = format!("{:#}", NodeConfig::load(&flags).unwrap_err());
            assert!(
                error.contains(expected),
                "{error:?} does not mention {expected:?}"
            );
        };
        check(
            NodeFlags {
                capabilities: vec!["sha256".into()],
                ..Default::default()
            },
            "expected NAME=EXECUTOR",
        );
        check(
            NodeFlags {
                capabilities: vec!["x=magic:thing".into()],
                ..Default::default()
            },
            "unknown executor kind",
        );
        check(
            NodeFlags {
                capabilities: vec!["Big=builtin:echo".into()],
                ..Default::default()
            },
            "not allowed",
        );
        check(
            NodeFlags {
                tls_cert: Some("c.pem".into()),
                ..Default::default()
            },
            "both a certificate and a key",
        );
    }

    #[test]
    fn reachability_flags_and_relay_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "[relay]\ncircuits_max = 3\n[discovery]\npeers_max = 50\n",
        )
        .unwrap();
        let flags = NodeFlags {
            config: Some(file),
            external_addresses: vec!["/ip4/203.0.113.5/tcp/7100".into()],
            relay_server: true,
            ..Default::default()
        };
        let config = NodeConfig::load(&flags).unwrap();
        assert_eq!(config.external_addresses, ["/ip4/203.0.113.5/tcp/7100"]);
        assert_eq!(config.discovery.peers_max, 50);
        let limits = config.relay.limits().unwrap();
        assert_eq!(limits.circuits_max, 3);
        assert_eq!(
            limits.reservations_max,
            polity_net::RelayLimits::default().reservations_max
        );
        // Not a relay unless asked.
        assert!(NodeConfig::default().relay.limits().is_none());
        for (flags, expected) in [
            (
                NodeFlags {
                    external_addresses: vec!["203.0.113.5:7100".into()],
                    ..Default::default()
                },
                "external address",
            ),
            (
                NodeFlags {
                    peers_max: Some(3),
                    ..Default::default()
                },
                "peers_max",
            ),
        ] {
            let error = format!("{:#}", NodeConfig::load(&flags).unwrap_err());
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "regoin = \"typo\"\n").unwrap();
        let error = format!("{:#}", NodeConfig::from_file(&file).unwrap_err());
        assert!(error.contains("regoin"), "{error}");
    }
}
