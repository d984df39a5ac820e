//! The signature-bound limit of a benchmark run: what a signature costs on this
//! machine, how many every decision made and checked across all the nodes, and so the
//! most decisions per second these cores could sustain if they did nothing but sign
//! and verify. `polity-testnet bench --dir` prints it next to the measured rate; the
//! ratio of the two is how much of the machine the rest of the node (networking,
//! encoding, storage, scheduling) costs.
//!
//! Counts come from the nodes' `/metrics` (`polity_signatures_signed_total`,
//! `polity_signatures_verified_total{mode}`), read before and after the run and
//! summed over the nodes; costs are measured in this process with the same signature
//! rule the nodes use (`polity_consensus::statement`), on the same cores, in the same
//! run.

use std::time::Instant;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use polity_proto::StatementKind;

/// Signatures made and checked, summed over the nodes (one scrape).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub signed: f64,
    pub verified: f64,
}

/// Seconds of one core per signature operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub sign_s: f64,
    pub verify_s: f64,
    /// Per signature when a certificate's statements are checked together.
    pub verify_in_set_s: f64,
}

/// A run's signature-bound limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub signed_per_decision: f64,
    pub verified_per_decision: f64,
    /// Core-seconds of signature work per decision.
    pub cpu_s_per_decision: f64,
    pub cores: usize,
    /// Decisions per second if the cores did nothing but this signature work.
    pub decisions_per_s: f64,
    pub cost: Cost,
}

/// The most of one `/metrics` response read.
const METRICS_BYTES_MAX: u64 = 16 << 20;
/// How many statements are signed and checked per measurement.
const SAMPLES: usize = 2_000;

/// Times signing, checking one statement, and checking a set of statements, with the
/// nodes' own code. Every statement is checked once: the process remembers good
/// signatures, and a second check of one would time the memo, not the curve.
pub fn measure_cost() -> Cost {
    let key = SigningKey::from_bytes(&[7; 32]);
    let body = vec![0x5a; 160]; // about an observation's size
    let started = Instant::now();
    let statements: Vec<_> = (0..2 * SAMPLES)
        .map(|i| {
            let mut body = body.clone();
            body[..8].copy_from_slice(&(i as u64).to_le_bytes());
            polity_consensus::sign_statement(&key, StatementKind::Observation, body)
        })
        .collect();
    let sign_s = started.elapsed().as_secs_f64() / (2 * SAMPLES) as f64;
    let (singles, sets) = statements.split_at(SAMPLES);
    let started = Instant::now();
    let single_ok = singles
        .iter()
        .all(|statement| polity_consensus::verify_statement(statement).is_ok());
    let verify_s = started.elapsed().as_secs_f64() / SAMPLES as f64;
    let started = Instant::now();
    let set_ok = sets
        .chunks(16)
        .all(|set| polity_consensus::verify_statements_batch(set).is_ok());
    let verify_in_set_s = started.elapsed().as_secs_f64() / SAMPLES as f64;
    debug_assert!(single_ok && set_ok, "our own signatures verify");
    Cost {
        sign_s,
        verify_s,
        verify_in_set_s,
    }
}

/// Sums the signature counters of every node's `/metrics` (`http` endpoints such as
/// `http://127.0.0.1:8080`).
pub async fn scrape(http: &[String]) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    for endpoint in http {
        let text = http_get(&format!("{endpoint}/metrics"))
            .await
            .with_context(|| format!("reading {endpoint}/metrics"))?;
        let node = parse(&text);
        counts.signed += node.signed;
        counts.verified += node.verified;
    }
    Ok(counts)
}

/// The signature counters of one `/metrics` exposition.
pub fn parse(text: &str) -> Counts {
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Counts {
        signed: sum("polity_signatures_signed_total"),
        // Checks answered from the cache did no curve work.
        verified: sum("polity_signatures_verified_total{mode=\"single\"}")
            + sum("polity_signatures_verified_total{mode=\"batch\"}"),
    }
}

/// The limit of a run that made `decisions` decisions between the two scrapes, on
/// `cores` cores; `None` when nothing was decided.
pub fn limit(
    before: Counts,
    after: Counts,
    decisions: u64,
    cost: Cost,
    cores: usize,
) -> Option<Limit> {
    if decisions == 0 || cores == 0 {
        return None;
    }
    let signed_per_decision = (after.signed - before.signed).max(0.0) / decisions as f64;
    let verified_per_decision = (after.verified - before.verified).max(0.0) / decisions as f64;
    let cpu_s_per_decision =
        signed_per_decision * cost.sign_s + verified_per_decision * cost.verify_s;
    let decisions_per_s = if cpu_s_per_decision > 0.0 {
        cores as f64 / cpu_s_per_decision
    } else {
        f64::INFINITY
    };
    Some(Limit {
        signed_per_decision,
        verified_per_decision,
        cpu_s_per_decision,
        cores,
        decisions_per_s,
        cost,
    })
}

impl Limit {
    /// The lines `bench` prints under its table, with the measured rate's share.
    pub fn table(&self, measured_per_s: f64) -> String {
        format!(
            "signatures    {:.1} signed + {:.1} verified per decision, all nodes \
             (sign {:.1} us, verify {:.1} us, in a set {:.1} us per signature)\n\
             limit         {:.0} decisions/s on {} core(s) doing only signature work; \
             measured {:.1}/s = {:.1} % of it\n",
            self.signed_per_decision,
            self.verified_per_decision,
            self.cost.sign_s * 1e6,
            self.cost.verify_s * 1e6,
            self.cost.verify_in_set_s * 1e6,
            self.decisions_per_s,
            self.cores,
            measured_per_s,
            100.0 * measured_per_s / self.decisions_per_s,
        )
    }
}

/// A plain HTTP/1.0 GET on loopback, without an HTTP client dependency.
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// endpoints"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // A node's /metrics is a few tens of KiB; an endpoint that sends more is cut.
    let mut response = String::new();
    stream
        .take(METRICS_BYTES_MAX)
        .read_to_string(&mut response)
        .await?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: no HTTP body"))?;
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_of_an_exposition() {
        let text = "# TYPE polity_signatures_signed counter\n\
                    polity_signatures_signed_total 12\n\
                    polity_signatures_verified_total{mode=\"single\"} 30\n\
                    polity_signatures_verified_total{mode=\"batch\"} 70\n\
                    polity_signatures_verified_total{mode=\"cached\"} 900\n\
                    polity_other_total 5\n";
        assert_eq!(
            parse(text),
            Counts {
                signed: 12.0,
                verified: 100.0
            }
        );
    }

    #[test]
    fn the_limit_is_cores_over_signature_seconds_per_decision() {
        let cost = Cost {
            sign_s: 20e-6,
            verify_s: 40e-6,
            verify_in_set_s: 40e-6,
        };
        let before = Counts::default();
        let after = Counts {
            signed: 1_000.0,
            verified: 2_000.0,
        };
        let limit = limit(before, after, 100, cost, 2).unwrap();
        // 10 signed and 20 verified per decision: 200 + 800 us = 1 ms of one core.
        assert!((limit.cpu_s_per_decision - 1e-3).abs() < 1e-12);
        assert!((limit.decisions_per_s - 2_000.0).abs() < 1e-6);
        assert!(super::limit(before, after, 0, cost, 2).is_none());
    }
}
