//! The CLI's gRPC client: `polity submit|get|watch|info|peers|verify`.
//!
//! Human-readable output by default, `--json` for scripts. `verify FILE` runs fully
//! offline: it needs no node, only the certificate's bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use polity_consensus::registry::Epoch;
use polity_consensus::{TaskId, certificate_json};
use polity_proto::admin_client::AdminClient;
use polity_proto::federation_client::FederationClient;
use polity_proto::{
    Aggregation, Certificate, ConsensusPath, GetNodeInfoRequest, GetNodeInfoResponse,
    GetTaskRequest, GetTopologyRequest, GetTrustRequest, Level, ListPeersRequest, RiskPolicy,
    Scope, SubmitTaskRequest, TaskEventKind, TaskRecord, TaskState, VerifyCertificateRequest,
    VerifyCertificateResponse, WatchTaskRequest,
};
use prost::Message;
use serde_json::json;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate as TlsCertificate, Channel, ClientTlsConfig, Identity as TlsIdentity,
};

use crate::entry::{level_name, path_name};

pub mod genesis;
pub mod propose;

/// How to reach a node.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The node's gRPC endpoint: `host:port` (http://, or https:// when a TLS flag is
    /// given) or a URL with its scheme.
    #[arg(
        long,
        env = "POLITY_ADDR",
        default_value = "http://127.0.0.1:7001",
        global = true
    )]
    pub addr: String,
    /// File holding the bearer token, when the node requires one.
    #[arg(long, env = "POLITY_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA to trust for an https:// endpoint.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for nodes that require mutual TLS.
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM client key, for nodes that require mutual TLS.
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Server name to expect in the node's certificate (default: the host of --addr).
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct BearerToken(pub Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

pub type Client = FederationClient<InterceptedService<Channel, BearerToken>>;

/// A client of a node's `polity.v1.Admin` service.
pub type AdminApiClient = AdminClient<InterceptedService<Channel, BearerToken>>;

/// An endpoint as given on a command line, as a URL: one with a scheme
/// (`http://…`, `https://…`) stays as it is; a bare `host:port` (`127.0.0.1:7001`,
/// `[::1]:7001`, `node.example:7001`) gets `https://` when `tls` (a TLS flag was
/// given) and `http://` otherwise.
pub fn endpoint_url(addr: &str, tls: bool) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

impl Connection {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let (channel, token) = self.channel().await?;
        Ok(
            FederationClient::with_interceptor(channel, BearerToken(token))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
    }

    pub async fn connect_admin(&self) -> anyhow::Result<AdminApiClient> {
        let (channel, token) = self.channel().await?;
        Ok(AdminClient::with_interceptor(channel, BearerToken(token)))
    }

    /// Whether any TLS flag is given (then a bare `host:port` means https://).
    fn tls_flags(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_domain.is_some()
    }

    /// `--addr` as a URL (see [`endpoint_url`]).
    pub fn url(&self) -> String {
        endpoint_url(&self.addr, self.tls_flags())
    }

    async fn channel(&self) -> anyhow::Result<(Channel, Option<AsciiMetadataValue>)> {
        let url = self.url();
        let mut endpoint =
            Channel::from_shared(url.clone()).with_context(|| format!("bad --addr {url:?}"))?;
        if url.starts_with("https://") || self.tls_ca.is_some() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(TlsCertificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                tls = tls.identity(TlsIdentity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let token = match &self.token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("reading token file {}", path.display()))?;
                Some(bearer(&token)?)
            }
            None => None,
        };
        Ok((channel, token))
    }
}

/// The `authorization` value for an API token. Public so that every gRPC client of
/// a node (this CLI, `polity-testnet`) sends the token the same way; surrounding
/// whitespace (a token file's newline) is not part of the token.
pub fn bearer(token: &str) -> anyhow::Result<AsciiMetadataValue> {
    format!("Bearer {}", token.trim())
        .parse()
        .context("the token must be printable ASCII")
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `polity submit` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// Capability to run, e.g. sha256.
    #[arg(long)]
    pub capability: String,
    /// Payload as a UTF-8 string.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Payload read from a file ("-" for stdin).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// region[:NAME], continent[:NAME] or global (default: the entry node's region).
    #[arg(long)]
    pub scope: Option<String>,
    /// Members per region group.
    #[arg(long, default_value_t = 1)]
    pub replication: u32,
    /// majority, tally, median or first-valid.
    #[arg(long, default_value = "majority")]
    pub aggregation: String,
    /// Force a consensus path: bft, raft or stake.
    #[arg(long)]
    pub path: Option<String>,
    /// Adversarial risk in [0,1] (> 0.7 selects bft).
    #[arg(long, default_value_t = 0.0)]
    pub adversarial_risk: f64,
    /// Consistency requirement in [0,1] (> 0.8 selects raft).
    #[arg(long, default_value_t = 0.0)]
    pub consistency: f64,
    /// Time budget in milliseconds (0: the node's default).
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u64,
    /// Nonce: the same task with another nonce is another task.
    #[arg(long, default_value_t = 0)]
    pub nonce: u64,
    /// Return at once with the task id instead of waiting for the decision.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How to show a task record.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write the root certificate's exact protobuf bytes to this file (for `polity verify`).
    #[arg(long)]
    pub certificate_out: Option<PathBuf>,
    /// Write the certificate chain's JSON export (see SIGNING.md) to this file.
    #[arg(long)]
    pub certificate_json_out: Option<PathBuf>,
}

pub fn parse_scope(text: &str) -> anyhow::Result<Scope> {
    let (kind, name) = match text.split_once(':') {
        Some((kind, name)) => (kind, name.to_string()),
        None => (text, String::new()),
    };
    let level = match kind {
        "region" => Level::Region,
        "continent" => Level::Continent,
        "global" if name.is_empty() => Level::Global,
        "global" => bail!("a global scope has no name"),
        other => bail!("scope {other:?}: use region[:NAME], continent[:NAME] or global"),
    };
    Ok(Scope {
        level: level as i32,
        name,
    })
}

pub fn parse_aggregation(text: &str) -> anyhow::Result<Aggregation> {
    Ok(match text {
        "majority" => Aggregation::Majority,
        "tally" => Aggregation::Tally,
        "median" => Aggregation::Median,
        "first-valid" => Aggregation::FirstValid,
        other => bail!("aggregation {other:?}: use majority, tally, median or first-valid"),
    })
}

pub fn parse_path(text: &str) -> anyhow::Result<ConsensusPath> {
    Ok(match text {
        "bft" => ConsensusPath::Bft,
        "raft" => ConsensusPath::Raft,
        "stake" => ConsensusPath::Stake,
        other => bail!("path {other:?}: use bft, raft or stake"),
    })
}

impl SubmitArgs {
    pub fn request(&self) -> anyhow::Result<SubmitTaskRequest> {
        let payload = match (&self.payload, &self.payload_file) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(path)) if path.as_os_str() == "-" => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
                bytes
            }
            (None, Some(path)) => read(path)?,
            (None, None) => Vec::new(),
        };
        Ok(SubmitTaskRequest {
            capability: self.capability.clone(),
            payload,
            scope: self.scope.as_deref().map(parse_scope).transpose()?,
            replication: self.replication,
            aggregation: parse_aggregation(&self.aggregation)? as i32,
            policy: Some(RiskPolicy {
                adversarial_risk: self.adversarial_risk,
                consistency: self.consistency,
                path_override: match &self.path {
                    Some(path) => parse_path(path)? as i32,
                    None => ConsensusPath::Unspecified as i32,
                },
            }),
            deadline_ms: self.deadline_ms,
            nonce: self.nonce,
            wait: !self.no_wait,
        })
    }
}

pub async fn submit(connection: &Connection, args: &SubmitArgs) -> anyhow::Result<()> {
    let request = args.request()?;
    let mut client = connection.connect().await?;
    let record = client
        .submit_task(request.clone())
        .await
        .map_err(status_error)?
        .into_inner();
    if let Some(certificate) = &record.certificate {
        check_task_is_mine(&request, &certificate.task)?;
    }
    show_record(&record, &args.output)
}

/// The certificate answers the task this client asked for, not one an entry node
/// put in its place: capability, payload, nonce and policy are the request's (the
/// node may only fill in defaults).
fn check_task_is_mine(request: &SubmitTaskRequest, task: &[u8]) -> anyhow::Result<()> {
    let spec = polity_proto::TaskSpec::decode(task).context("the certificate's task")?;
    let same = spec.capability == request.capability
        && spec.payload == request.payload
        && spec.nonce == request.nonce
        && (request.policy.is_none() || spec.policy == request.policy)
        && (request.replication == 0 || spec.replication == request.replication);
    if !same {
        bail!("the entry node certified another task than the one submitted; do not trust it");
    }
    Ok(())
}

pub fn parse_task_id(text: &str) -> anyhow::Result<TaskId> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("task id {text:?} is not 64 hex digits"))
}

pub async fn get(connection: &Connection, id: &str, output: &OutputArgs) -> anyhow::Result<()> {
    let id = parse_task_id(id)?;
    let mut client = connection.connect().await?;
    let record = client
        .get_task(GetTaskRequest {
            task_id: id.as_bytes().to_vec(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    show_record(&record, output)
}

pub async fn watch(connection: &Connection, id: &str, json: bool) -> anyhow::Result<()> {
    let id = parse_task_id(id)?;
    let mut client = connection.connect().await?;
    let mut stream = client
        .watch_task(WatchTaskRequest {
            task_id: id.as_bytes().to_vec(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut first_ms = None;
    while let Some(event) = stream.message().await.map_err(status_error)? {
        let kind = TaskEventKind::try_from(event.kind).unwrap_or(TaskEventKind::Unspecified);
        let since_ms = event
            .at_ms
            .saturating_sub(*first_ms.get_or_insert(event.at_ms));
        if json {
            let mut line = json!({
                "kind": kind.as_str_name(),
                "at_ms": event.at_ms,
                "level": Level::try_from(event.level).map(level_name).unwrap_or("unspecified"),
                "group": event.group,
                "member": event.member,
                "detail": event.detail,
            });
            if let Some(record) = &event.record {
                line["record"] = record_json(record);
            }
            println!("{line}");
        } else {
            let level = match Level::try_from(event.level) {
                Ok(Level::Unspecified) | Err(_) => "",
                Ok(level) => level_name(level),
            };
            let what = kind.as_str_name().trim_start_matches("TASK_EVENT_KIND_");
            println!(
                "+{since_ms:>6} ms  {what:<16} {level:<9} {:<12} {}",
                event.group,
                if event.member.is_empty() {
                    event.detail.clone()
                } else {
                    format!("{}: {}", short(&event.member), event.detail)
                }
            );
            if let Some(record) = &event.record {
                show_record(record, &OutputArgs::default())?;
            }
        }
    }
    Ok(())
}

pub async fn info(connection: &Connection, json: bool) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let response = client
        .get_node_info(GetNodeInfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let info = response.info.clone().unwrap_or_default();
    let value = json!({
        "peer_id": info.peer_id,
        "public_key": hex::encode(&info.public_key),
        "region": info.region,
        "continent": info.continent,
        "capabilities": info.capabilities,
        "registry_epoch": info.registry_epoch,
        "registry_digest": hex::encode(&info.registry_digest),
        "grpc": info.grpc_endpoint,
        "version": info.version,
        "uptime_ms": response.uptime_ms,
        "tasks_stored": response.tasks_stored,
        "listen_addrs": info.listen_addrs,
        "confirmed_addrs": response.confirmed_addrs,
        "relayed_addrs": response.relayed_addrs,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("peer id       {}", info.peer_id);
        println!("public key    {}", hex::encode(&info.public_key));
        println!("region        {} ({})", info.region, info.continent);
        println!("capabilities  {}", info.capabilities.join(", "));
        println!(
            "registry      epoch {} ({})",
            info.registry_epoch,
            hex::encode(&info.registry_digest)
        );
        println!("version       {}", info.version);
        println!("uptime        {} s", response.uptime_ms / 1000);
        println!("tasks stored  {}", response.tasks_stored);
        print_addresses(&info.listen_addrs, &response);
    }
    Ok(())
}

/// Each address with what is known of its reachability: confirmed from outside
/// (AutoNAT or the operator), through a relay, or only bound locally.
fn print_addresses(listen_addrs: &[String], response: &GetNodeInfoResponse) {
    for address in listen_addrs {
        let reach = if response.confirmed_addrs.contains(address) {
            "confirmed reachable"
        } else if response.relayed_addrs.contains(address) {
            "through a relay"
        } else {
            "bound (not confirmed from outside)"
        };
        println!("address       {address}  [{reach}]");
    }
}

/// `polity peers` filters.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PeersArgs {
    /// Only peers serving this capability.
    #[arg(long)]
    pub capability: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub continent: Option<String>,
    /// Only peers that pass the compatibility rule, best first (needs --capability).
    #[arg(long)]
    pub compatible: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn peers(connection: &Connection, args: &PeersArgs) -> anyhow::Result<()> {
    let json = args.json;
    let mut client = connection.connect().await?;
    let peers = client
        .list_peers(ListPeersRequest {
            capability: args.capability.clone().unwrap_or_default(),
            region: args.region.clone().unwrap_or_default(),
            continent: args.continent.clone().unwrap_or_default(),
            compatible_only: args.compatible,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .peers;
    let rows: Vec<_> = peers
        .iter()
        .map(|peer| {
            let info = peer.info.clone().unwrap_or_default();
            json!({
                "peer_id": peer.peer_id, "region": info.region, "continent": info.continent,
                "capabilities": info.capabilities, "trust": peer.trust, "rtt_ms": peer.rtt_ms,
                "connected": peer.connected, "circuit_open": peer.circuit_open,
                "grpc": info.grpc_endpoint, "listen_addrs": info.listen_addrs,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no peers known");
    } else {
        println!(
            "{:<54} {:<12} {:<12} {:>6} {:>7} connected",
            "peer", "region", "continent", "trust", "rtt ms"
        );
        for peer in &peers {
            let info = peer.info.clone().unwrap_or_default();
            println!(
                "{:<54} {:<12} {:<12} {:>6.3} {:>7} {}",
                peer.peer_id, info.region, info.continent, peer.trust, peer.rtt_ms, peer.connected
            );
        }
    }
    Ok(())
}

pub async fn trust(
    connection: &Connection,
    peer_id: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let response = client
        .get_trust(GetTrustRequest {
            peer_id: peer_id.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let entries: Vec<_> = response
            .entries
            .iter()
            .map(|e| json!({"peer_id": e.peer_id, "score": e.score, "updated_at_ms": e.updated_at_ms}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"floor": response.floor, "prior": response.prior, "entries": entries})
            )?
        );
    } else {
        println!(
            "prior {:.3}, floor {:.3} (peers at or below the floor are not chosen)",
            response.prior, response.floor
        );
        if response.entries.is_empty() {
            println!("no peer has a trust history yet (every peer is at the prior)");
        }
        for entry in &response.entries {
            println!("{:<54} {:.3}", entry.peer_id, entry.score);
        }
    }
    Ok(())
}

pub async fn topology(connection: &Connection, json: bool) -> anyhow::Result<()> {
    let mut client = connection.connect().await?;
    let topology = client
        .get_topology(GetTopologyRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let continents: Vec<_> = topology
            .continents
            .iter()
            .map(|continent| {
                json!({"name": continent.name, "regions": continent.regions.iter().map(|region| json!({
                    "name": region.name,
                    "nodes": region.nodes.iter().map(|node| json!({
                        "peer_id": node.peer_id, "capabilities": node.capabilities, "grpc": node.grpc_endpoint,
                        "trust": node.trust, "connected": node.connected, "self": node.is_self,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&continents)?);
        return Ok(());
    }
    for continent in &topology.continents {
        println!("{}", continent.name);
        for region in &continent.regions {
            println!("  {}", region.name);
            for node in &region.nodes {
                println!(
                    "    {}{} [{}] trust {:.2}",
                    node.peer_id,
                    if node.is_self { " (this node)" } else { "" },
                    node.capabilities.join(","),
                    node.trust
                );
            }
        }
    }
    Ok(())
}

/// Where `polity verify` finds the certificate, and what it checks it against.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// A certificate file (exact protobuf bytes, as written by --certificate-out).
    /// Checked offline, without any node.
    #[arg(conflicts_with = "task")]
    pub file: Option<PathBuf>,
    /// The trust anchor: a federation file (its genesis, and the epoch changes
    /// since, e.g. from `polity genesis export`). Without it, who signed is checked
    /// but not whether they had the right to: exit code 3.
    #[arg(long)]
    pub federation: Option<PathBuf>,
    /// Instead, ask the node at --addr to verify the certificate of this task
    /// against its own registry.
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// What `polity verify` concluded; the caller turns it into the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The chain verifies, answers its task, and its members are the registry's.
    Valid,
    /// The chain verifies and answers its task, but no trust anchor was given.
    Unanchored,
    Invalid,
}

pub async fn verify(connection: &Connection, args: &VerifyArgs) -> anyhow::Result<Verdict> {
    let (response, verdict) = match (&args.file, &args.task) {
        (Some(path), _) => verify_file(path, args.federation.as_deref(), args.json)?,
        (None, Some(task)) => {
            let id = parse_task_id(task)?;
            let mut client = connection.connect().await?;
            let response = client
                .verify_certificate(VerifyCertificateRequest {
                    source: Some(polity_proto::verify_certificate_request::Source::TaskId(
                        id.as_bytes().to_vec(),
                    )),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let verdict = if response.valid {
                Verdict::Valid
            } else {
                Verdict::Invalid
            };
            (response, verdict)
        }
        (None, None) => bail!("give a certificate FILE or --task ID"),
    };
    show_verification(&response, args.json)?;
    if verdict == Verdict::Unanchored && !args.json {
        println!(
            "membership NOT checked: no --federation given, so nothing says these signers \
             had the right to sign"
        );
    }
    Ok(verdict)
}

/// Verifies a certificate file offline, against a federation file when given, and
/// prints (unless `json`) the epoch and every certificate's group and members.
fn verify_file(
    path: &Path,
    federation: Option<&Path>,
    json: bool,
) -> anyhow::Result<(VerifyCertificateResponse, Verdict)> {
    let bytes = read(path)?;
    if bytes.len() > crate::api::federation::CERTIFICATE_BYTES_MAX {
        bail!(
            "{} is larger than {} bytes",
            path.display(),
            crate::api::federation::CERTIFICATE_BYTES_MAX
        );
    }
    let certificate = Certificate::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a polity.v1.Certificate", path.display()))?;
    let Some(federation) = federation else {
        let result = polity_consensus::verify_task_chain(&certificate, None);
        let verdict = match result {
            Ok(_) => Verdict::Unanchored,
            Err(_) => Verdict::Invalid,
        };
        if !json {
            describe_chain(&certificate, None, 0);
        }
        let response = crate::api::federation::verification(&certificate, result);
        return Ok((response, verdict));
    };
    let chain = crate::registry::read_chain(federation)?;
    let anchor = polity_consensus::Anchor::from_chain(chain)
        .with_context(|| format!("{} is not a valid federation", federation.display()))?;
    let result = polity_consensus::verify_in(&anchor, &certificate, None);
    if !json {
        let epoch = anchor.epoch_named(&certificate.registry_digest);
        match epoch {
            Some(epoch) => println!(
                "federation {:?}, registry epoch {} ({})",
                epoch.registry().federation,
                epoch.number(),
                hex::encode(epoch.digest())
            ),
            None => println!(
                "registry epoch {}: not in {}",
                hex::encode(&certificate.registry_digest),
                federation.display()
            ),
        }
        describe_chain(&certificate, epoch, 0);
    }
    let verdict = if result.is_ok() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    };
    let result = result.map(|(summary, _)| summary);
    Ok((
        crate::api::federation::verification(&certificate, result),
        verdict,
    ))
}

/// One line per certificate of a chain, root first: level, group, path,
/// aggregation, and members with their weights (and regions, when the epoch is
/// known), and on the raft path the commit's leader, term and index.
fn describe_chain(certificate: &Certificate, epoch: Option<&Epoch>, depth: usize) {
    let Some(slot) = certificate.slot.as_ref() else {
        return;
    };
    let aggregation = certificate
        .report
        .as_ref()
        .and_then(|statement| polity_proto::Report::decode(statement.body.as_slice()).ok())
        .and_then(|report| polity_proto::Aggregation::try_from(report.aggregation).ok())
        .map_or("?", |aggregation| aggregation.as_str_name());
    println!(
        "{}{} {:?}: path {}, aggregation {}",
        "  ".repeat(depth),
        Level::try_from(slot.level).map(level_name).unwrap_or("?"),
        slot.group,
        ConsensusPath::try_from(certificate.path)
            .map(path_name)
            .unwrap_or("?"),
        aggregation
            .trim_start_matches("AGGREGATION_")
            .to_lowercase(),
    );
    for member in &certificate.members {
        let key = hex::encode(&member.public_key);
        let place = polity_consensus::PublicKey::from_slice(&member.public_key)
            .ok()
            .and_then(|key| epoch.and_then(|epoch| epoch.member(&key)))
            .map_or_else(
                || match epoch {
                    Some(_) => "not a registry member".to_string(),
                    None => "membership not checked".to_string(),
                },
                |m| format!("{}/{}, stake {}", m.continent, m.region, m.stake),
            );
        println!(
            "{}  member {} weight {} ({place})",
            "  ".repeat(depth),
            short(&key),
            member.weight
        );
    }
    if let Some(statement) = &certificate.raft_commit
        && let Ok(commit) = polity_proto::RaftCommit::decode(statement.body.as_slice())
    {
        println!(
            "{}  raft commit by leader {}, term {}, index {}, attested by {} of {} members",
            "  ".repeat(depth),
            short(&hex::encode(&statement.signer)),
            commit.term,
            commit.commit_index,
            certificate.attestations.len(),
            certificate.members.len()
        );
    }
    if depth + 1 < polity_consensus::certificate::LEVELS_MAX {
        let mut seen = std::collections::BTreeSet::new();
        for bytes in &certificate.children {
            if seen.insert(bytes.as_slice())
                && let Ok(child) = Certificate::decode(bytes.as_slice())
            {
                describe_chain(&child, epoch, depth + 1);
            }
        }
    }
}

fn show_verification(response: &VerifyCertificateResponse, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            json!({
                "valid": response.valid, "error": response.error,
                "certificates": response.certificates, "signatures": response.signatures,
                "value": String::from_utf8_lossy(&response.value), "value_hex": hex::encode(&response.value),
                "root_digest": response.root_digest,
            })
        );
    } else if response.valid {
        println!(
            "valid: {} certificate(s), {} signature(s) checked; value {}; root digest {}",
            response.certificates,
            response.signatures,
            printable(&response.value),
            response.root_digest
        );
    } else {
        println!(
            "INVALID: {} (root digest {})",
            response.error, response.root_digest
        );
    }
    Ok(())
}

/// A gRPC status as an error message a person can read.
fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn short(hex_key: &str) -> &str {
    &hex_key[..hex_key.len().min(12)]
}

/// The value as text when it is printable UTF-8, else as hex.
pub fn printable(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\n') => format!("{text:?}"),
        _ => format!("0x{}", hex::encode(value)),
    }
}

pub fn record_json(record: &TaskRecord) -> serde_json::Value {
    let state = TaskState::try_from(record.state).unwrap_or(TaskState::Unspecified);
    let spec = record.spec.clone().unwrap_or_default();
    json!({
        "task_id": hex::encode(&record.task_id),
        "state": state.as_str_name().trim_start_matches("TASK_STATE_"),
        "value": String::from_utf8_lossy(&record.value),
        "value_hex": hex::encode(&record.value),
        "error": record.error,
        "degraded_reason": record.degraded_reason,
        "entry_node": record.entry_node,
        "submitted_at_ms": record.submitted_at_ms,
        "finished_at_ms": record.finished_at_ms,
        "spec": {
            "capability": spec.capability,
            "payload_bytes": spec.payload.len(),
            "replication": spec.replication,
            "deadline_ms": spec.deadline_ms,
            "nonce": spec.nonce,
        },
        "groups": record.groups.iter().map(|group| json!({
            "level": Level::try_from(group.level).map(level_name).unwrap_or("unspecified"),
            "group": group.group,
            "path": ConsensusPath::try_from(group.path).map(path_name).unwrap_or("unspecified"),
            "agreed": group.agreed, "disagreed": group.disagreed, "timed_out": group.timed_out,
            "latency_ms": group.latency_ms, "rounds": group.rounds,
        })).collect::<Vec<_>>(),
        "certificate": record.certificate.as_ref().map(certificate_json),
    })
}

fn show_record(record: &TaskRecord, output: &OutputArgs) -> anyhow::Result<()> {
    if let Some(certificate) = &record.certificate {
        if let Some(path) = &output.certificate_out {
            std::fs::write(path, certificate.encode_to_vec())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &output.certificate_json_out {
            std::fs::write(
                path,
                serde_json::to_vec_pretty(&certificate_json(certificate))?,
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
    } else if output.certificate_out.is_some() || output.certificate_json_out.is_some() {
        bail!(
            "task {} has no certificate (yet)",
            hex::encode(&record.task_id)
        );
    }
    if output.json {
        println!("{}", serde_json::to_string_pretty(&record_json(record))?);
        return Ok(());
    }
    let state = TaskState::try_from(record.state).unwrap_or(TaskState::Unspecified);
    println!("task         {}", hex::encode(&record.task_id));
    println!(
        "state        {}",
        state.as_str_name().trim_start_matches("TASK_STATE_")
    );
    if !record.error.is_empty() {
        println!("error        {}", record.error);
    }
    if !record.degraded_reason.is_empty() {
        println!("degraded     {}", record.degraded_reason);
    }
    if state == TaskState::Decided || state == TaskState::Degraded {
        println!("value        {}", printable(&record.value));
    }
    for group in &record.groups {
        println!(
            "group        {} {:?}: {} agreed, {} disagreed, {} timed out; {} ms, {} round(s), path {}",
            Level::try_from(group.level).map(level_name).unwrap_or("?"),
            group.group,
            group.agreed.len(),
            group.disagreed.len(),
            group.timed_out.len(),
            group.latency_ms,
            group.rounds,
            ConsensusPath::try_from(group.path)
                .map(path_name)
                .unwrap_or("?"),
        );
    }
    if let Some(certificate) = &record.certificate {
        let checked = polity_consensus::verify_task_chain(certificate, None);
        let verification = crate::api::federation::verification(certificate, checked);
        println!(
            "certificate  {} ({}; {} signature(s))",
            verification.root_digest,
            if verification.valid {
                "verifies".to_string()
            } else {
                format!("INVALID: {}", verification.error)
            },
            verification.signatures,
        );
        println!(
            "path         {} ({})",
            ConsensusPath::try_from(certificate.path)
                .map(path_name)
                .unwrap_or("?"),
            certificate.path_reason
        );
    }
    Ok(())
}

/// `polity faults` options: the whole fault plan to put in force.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    #[command(flatten)]
    pub flags: crate::config::FaultFlags,
    /// Public key (hex) of a peer to block: one side of a partition (repeatable).
    #[arg(long = "block")]
    pub blocked: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

/// Replaces the node's faults with exactly what the flags say (no flag: a healthy
/// node again).
pub async fn faults(connection: &Connection, args: &FaultArgs) -> anyhow::Result<()> {
    let mut config = crate::chaos::FaultConfig {
        blocked_peers: args.blocked.clone(),
        ..crate::chaos::FaultConfig::default()
    };
    args.flags.apply(&mut config);
    let plan = config.to_plan().map_err(anyhow::Error::msg)?;
    let now = connection
        .connect_admin()
        .await?
        .set_faults(plan)
        .await?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&faults_json(&now))?);
    } else {
        println!("faults in force: {}", faults_summary(&now));
    }
    Ok(())
}

/// Shows the node's load, worker slots, faults and recovery record.
pub async fn status(connection: &Connection, json: bool) -> anyhow::Result<()> {
    let status = connection
        .connect_admin()
        .await?
        .get_status(polity_proto::GetStatusRequest {})
        .await?
        .into_inner();
    let faults = status.faults.clone().unwrap_or_default();
    if json {
        let recovery: Vec<serde_json::Value> = status
            .recovery
            .iter()
            .map(|r| {
                serde_json::json!({
                    "failure": r.failure, "failures": r.failures, "recoveries": r.recoveries,
                    "recovery_ms_ewma": r.recovery_ms_ewma,
                    "success_rate_ewma": r.success_rate_ewma, "open": r.open,
                })
            })
            .collect();
        let value = serde_json::json!({
            "worker_slots": status.worker_slots,
            "workers_busy": status.workers_busy,
            "load": status.load,
            "workers_spawned": status.workers_spawned,
            "workers_retired": status.workers_retired,
            "reliability": status.reliability,
            "scale_signal": status.scale_signal,
            "faults": faults_json(&faults),
            "recovery": recovery,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "workers      {} slots, {} busy, load {:.2} ({} spawned, {} retired)",
        status.worker_slots,
        status.workers_busy,
        status.load,
        status.workers_spawned,
        status.workers_retired
    );
    println!(
        "reliability  {:.3} (scale signal {:+})",
        status.reliability, status.scale_signal
    );
    println!("faults       {}", faults_summary(&faults));
    for r in &status.recovery {
        println!(
            "recovery     {:<17} {} failed, {} recovered, {} open, ewma {:.0} ms, success {:.2}",
            r.failure, r.failures, r.recoveries, r.open, r.recovery_ms_ewma, r.success_rate_ewma
        );
    }
    Ok(())
}

fn faults_json(plan: &polity_proto::Faults) -> serde_json::Value {
    serde_json::json!({
        "error_rate": plan.error_rate,
        "distinct_wrong": plan.distinct_wrong,
        "timeout_rate": plan.timeout_rate,
        "added_latency_ms": plan.added_latency_ms,
        "equivocate": plan.equivocate,
        "forge_signatures": plan.forge_signatures,
        "replay_statements": plan.replay_statements,
        "withhold_as_collector": plan.withhold_as_collector,
        "message_drop_rate": plan.message_drop_rate,
        "message_delay_ms": plan.message_delay_ms,
        "blocked_peers": plan.blocked_peers.iter().map(hex::encode).collect::<Vec<_>>(),
        "seed": plan.seed,
    })
}

/// One line: the faults that are on.
pub fn faults_summary(plan: &polity_proto::Faults) -> String {
    let mut on = Vec::new();
    if plan.error_rate > 0.0 {
        let kind = if plan.distinct_wrong {
            "distinct"
        } else {
            "colluding"
        };
        on.push(format!("error rate {} ({kind})", plan.error_rate));
    }
    if plan.timeout_rate > 0.0 {
        on.push(format!("timeout rate {}", plan.timeout_rate));
    }
    if plan.added_latency_ms > 0 {
        on.push(format!("+{} ms per execution", plan.added_latency_ms));
    }
    for (flag, name) in [
        (plan.equivocate, "equivocate"),
        (plan.forge_signatures, "forge signatures"),
        (plan.replay_statements, "replay statements"),
        (plan.withhold_as_collector, "withhold as collector"),
    ] {
        if flag {
            on.push(name.to_string());
        }
    }
    if plan.message_drop_rate > 0.0 {
        on.push(format!("drop {} of messages", plan.message_drop_rate));
    }
    if plan.message_delay_ms > 0 {
        on.push(format!("+{} ms per message", plan.message_delay_ms));
    }
    if !plan.blocked_peers.is_empty() {
        on.push(format!("{} peer(s) blocked", plan.blocked_peers.len()));
    }
    if on.is_empty() {
        "none".to_string()
    } else {
        format!("{} (seed {})", on.join(", "), plan.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_substituted_task_is_refused_and_filled_defaults_are_not() {
        let request = SubmitTaskRequest {
            capability: "sha256".into(),
            payload: b"mine".to_vec(),
            nonce: 7,
            ..SubmitTaskRequest::default()
        };
        let spec = |payload: &[u8]| {
            polity_proto::TaskSpec {
                capability: "sha256".into(),
                payload: payload.to_vec(),
                nonce: 7,
                replication: 1,
                deadline_ms: 30_000,
                ..polity_proto::TaskSpec::default()
            }
            .encode_to_vec()
        };
        check_task_is_mine(&request, &spec(b"mine")).unwrap();
        let error = check_task_is_mine(&request, &spec(b"theirs")).unwrap_err();
        assert!(error.to_string().contains("another task"), "{error}");
    }

    #[test]
    fn a_bare_host_and_port_is_an_http_url_or_https_with_tls_flags() {
        let cases = [
            ("127.0.0.1:7001", false, "http://127.0.0.1:7001"),
            ("127.0.0.1:7001", true, "https://127.0.0.1:7001"),
            ("[::1]:7001", false, "http://[::1]:7001"),
            (" node.example:7001\n", true, "https://node.example:7001"),
            ("http://127.0.0.1:7001", true, "http://127.0.0.1:7001"),
            ("https://127.0.0.1:7001", false, "https://127.0.0.1:7001"),
        ];
        for (addr, tls, url) in cases {
            assert_eq!(endpoint_url(addr, tls), url, "{addr:?} tls={tls}");
        }
        let connection = |tls_domain: Option<&str>| Connection {
            addr: "127.0.0.1:7001".into(),
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: tls_domain.map(String::from),
        };
        assert_eq!(connection(None).url(), "http://127.0.0.1:7001");
        assert_eq!(connection(Some("node")).url(), "https://127.0.0.1:7001");
    }
}
