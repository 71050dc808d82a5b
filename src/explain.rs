//! `doorman explain`: why a client would be let in or refused.
//!
//! It builds the configured gates as a connection meets them and asks each
//! one through the gate API: the connect hooks in order, every wait gate's
//! lookups at once until the greet wait ends (same resolver settings), and
//! each engine gate about the resulting score. It writes what each gate
//! says, the score and the verdict, judged by the runtime's own
//! [`Thresholds::judge`]. A gate written for a build of its own shows up
//! the same way. The greet test is behaviour, not data, so it is only
//! named.
//!
//! It builds gates as the runtime does but opens no listener and touches no
//! session or store of the running doorman.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use doorman_gate_api::{Client, DnsBudget, GateMetrics, Resources, Score};

use crate::cache::records::MemoryRecords;
use crate::config::{Config, BUILT_IN};
use crate::gates::{AtConnect, GateError, Pipeline};
use crate::metrics::Metrics;
use crate::verdict::{Judgement, Thresholds};

/// The report for `ip`, one finding a line.
pub async fn explain(config: &Config, ip: IpAddr) -> Result<String, GateError> {
    let ip = ip.to_canonical();
    let metrics = Arc::new(Metrics::default());
    let pipeline = Pipeline::build(
        config,
        &Resources {
            answer_store: None,
            record_store: Arc::new(MemoryRecords::new(64)),
            metrics: Arc::clone(&metrics) as Arc<dyn GateMetrics>,
            dns: DnsBudget::unlimited(),
        },
    )?;
    let client = Client {
        address: SocketAddr::new(ip, 0),
        destination: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 25),
        tlvs: Vec::new(),
    };
    let mut out = String::new();
    let mut line = |text: &str| {
        let _ = writeln!(out, "{text}");
    };
    line(&format!("client: {ip}"));
    for name in &config.gates {
        if !BUILT_IN.contains(&name.as_str()) && !pipeline.names().any(|built| built == name) {
            line(&format!("{name}: nothing configured"));
        }
    }
    for text in pipeline.explain_connect(&client) {
        line(&text);
    }
    let refused = match pipeline.connect(&client, &metrics) {
        AtConnect::Permit => {
            line("verdict: permit (ALLOWLISTED), handed off at once");
            return Ok(out);
        }
        AtConnect::Drop(rejection) => Some(rejection),
        AtConnect::Go(failures) => failures.into_iter().next(),
    };
    if pipeline.pregreet {
        let banner = config.greet_banner();
        line(&format!(
            "pregreet test: teaser \"220-{banner}\", wait {:?}, action {}",
            config.greet.wait, config.greet.action
        ));
    }
    // As a connection does: what is not in by the end of the greet wait
    // is no answer.
    let wait = config.greet.wait;
    let mut waits = pipeline.start_waits(&client, |_| true);
    let _ = tokio::time::timeout(wait, async {
        while !waits.is_complete() {
            waits.progress().await;
        }
    })
    .await;
    for text in waits.explain(wait) {
        line(&text);
    }
    let scores: Vec<Score> = waits.scores().into_iter().map(|(_, score)| score).collect();
    let thresholds = Thresholds {
        threshold: config.score.threshold,
        allowlist_threshold: config.score.allowlist_threshold,
    };
    let judgement = (!waits.is_empty()).then(|| thresholds.judge(&scores, ip));
    if let Some(judgement) = &judgement {
        line(&format!(
            "score: {} (threshold {}, allowlist threshold {}); {}",
            judgement.rank(),
            thresholds.threshold,
            thresholds.allowlist_threshold,
            remembered(judgement, &scores)
        ));
    }
    let score: i32 = scores.iter().map(Score::points).sum();
    let listed = matches!(judgement, Some(Judgement::Listed { .. }));
    for (name, text) in pipeline.explain_dialogue(score) {
        if refused.is_some() || listed {
            line(&format!("{name}: not asked: refused before"));
        } else {
            line(&format!("{name}: {text}"));
        }
    }
    let path = path(config, &pipeline, score);
    let verdict = match (refused, judgement) {
        (Some(rejection), _) => format!(
            "denylisted (DENYLISTED): {}, action {}",
            rejection.reply.after_code(),
            rejection.action
        ),
        (None, Some(Judgement::Listed { rank, reply })) => format!(
            "DNSBL rank {rank}: {}, action {}",
            reply.after_code(),
            config.score.action
        ),
        (None, Some(Judgement::Allowlisted { rank })) => {
            format!("allowlisted by DNSWL (rank {rank}): every test passes; {path}")
        }
        (None, Some(Judgement::Undecided { .. })) => {
            format!("not listed by the lists that answered, unless it pregreets; {path}; tested again next time")
        }
        (None, Some(_)) => format!("passes the score, unless it pregreets; {path}"),
        (None, None) => format!("no gate scores it, unless it pregreets; {path}"),
    };
    line(&format!("verdict: {verdict}"));
    Ok(out)
}

/// Where a client that passed the screening goes on its first visit, as
/// the session decides it: straight to a backend, or through the built-in
/// engine up to its first RCPT (deep tests due, an engine gate that wants
/// its dialogue at this score, or a default cluster whose clients all meet
/// the engine), then replayed.
fn path(config: &Config, pipeline: &Pipeline, score: i32) -> String {
    let mut why = Vec::new();
    let deep: Vec<&str> = config
        .deep_tests
        .enabled()
        .filter(|_| pipeline.deep)
        .map(|test| test.name())
        .collect();
    if !deep.is_empty() {
        why.push(format!("deep tests {}", deep.join(", ")));
    }
    let gates = pipeline.dialogue_gates(Some(score));
    if !gates.is_empty() {
        why.push(format!("at its RCPTs: {}", gates.join(", ")));
    }
    if config.by_recipient("").is_some() {
        why.push("routing by recipient".to_string());
    }
    if config
        .backends
        .iter()
        .any(|b| b.cluster.is_empty() && b.send_proxy == crate::config::SendProxy::Received)
    {
        why.push("relay mode".to_string());
    }
    if why.is_empty() {
        "handed off at once (the backend's own greeting)".to_string()
    } else {
        format!(
            "meets the built-in engine (its own 220; {}) up to its first RCPT, then is replayed into a backend",
            why.join("; ")
        )
    }
}

/// What the runtime remembers of a judgement: a pass is remembered only
/// when the score is complete and refuses nobody.
fn remembered(judgement: &Judgement, scores: &[Score]) -> String {
    match judgement {
        Judgement::Listed { .. } => "fails: nothing remembered".to_string(),
        Judgement::Undecided { .. } => {
            "a list did not answer: nothing remembered, tested in full next time".to_string()
        }
        Judgement::Allowlisted { .. } | Judgement::Clean { .. } => format!(
            "pass remembered for {}s",
            scores
                .iter()
                .filter_map(|score| score.ttl)
                .min()
                .unwrap_or_default()
                .as_secs()
        ),
    }
}

/// `doorman explain --rcpt ADDR`: the user `rcpt` belongs to and the
/// backend its key ranks first in each cluster balanced by recipient, by
/// the config's weights (health and a remembered assignment, which `doorman
/// user lookup` shows, can change that at run time).
pub fn recipient(config: &Config, rcpt: &str) -> String {
    use crate::config::Balance;
    use crate::handoff::balance::{order, Affinity, Candidate};
    let mut out = String::new();
    let routed = config.recipient_clusters();
    let mut any = false;
    for (cluster, section) in routed {
        any = true;
        let user = section.key.of(rcpt);
        let backends: Vec<_> = config
            .backends
            .iter()
            .filter(|b| &b.cluster == cluster)
            .collect();
        let candidates: Vec<Candidate> = backends
            .iter()
            .map(|backend| Candidate {
                key: backend.address.to_string(),
                weight: backend.weight,
                active: 0,
                usable: backend.weight > 0,
            })
            .collect();
        let ranked = order(Balance::Recipient, &candidates, Affinity::User(&user), 0);
        let ring: Vec<String> = ranked
            .iter()
            .map(|&i| backends[i].address.to_string())
            .collect();
        let _ = writeln!(
            out,
            "recipient <{rcpt}>: user {user} in cluster {cluster:?} -> {} (then {}; remembered for {}s after each use)",
            ring.first().map_or("no backend", String::as_str),
            if ring.len() > 1 { ring[1..].join(", ") } else { "none".to_string() },
            section.user_expire.as_secs()
        );
    }
    if !any {
        let _ = writeln!(
            out,
            "recipient <{rcpt}>: no cluster is balanced by recipient"
        );
    }
    out
}
