//! `doorman explain`: why a client would be let in or refused.
//!
//! It runs the access list and every DNSBL lookup for one address, exactly
//! as a connection would (same resolver settings, answers only until the
//! greet wait ends), and writes what each step found, the score and the
//! verdict, judged by the runtime's own [`Thresholds::judge`]. The greet test is behaviour, not
//! data, so it is only named.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use doorman_access::Access;
use doorman_dnsbl::gate::findings;
use doorman_dnsbl::{Answer, Dnsbl, ResolverError, Settings};

use crate::screen::{Judgement, Thresholds};
use doorman_gate_api::{Action, Score};
use doorman_rdns::{Found, RdnsGate};

use crate::config::Config;
use crate::gates::rdns_settings;

/// The report for `ip`, one finding a line.
pub async fn explain(config: &Config, ip: IpAddr) -> Result<String, ResolverError> {
    let ip = ip.to_canonical();
    let mut out = String::new();
    let _ = writeln!(out, "client: {ip}");
    let mut denied = None;
    match &config.access_list {
        None => {
            let _ = writeln!(out, "access list: none configured");
        }
        Some(list) => match list.lookup(ip) {
            None => {
                let _ = writeln!(out, "access list: no match (dunno)");
            }
            Some(found) => {
                let _ = writeln!(
                    out,
                    "access list: line {}: {}",
                    found.line,
                    match found.access {
                        Access::Permit => "permit",
                        Access::Reject => "reject",
                        Access::Dunno => "dunno",
                    }
                );
                match found.access {
                    Access::Permit => {
                        let _ = writeln!(out, "verdict: permit (ALLOWLISTED), handed off at once");
                        return Ok(out);
                    }
                    Access::Reject => denied = Some(Action::from(config.access.action)),
                    Access::Dunno => {}
                }
            }
        },
    }
    let banner = config.greet_banner();
    if banner.is_empty() {
        let _ = writeln!(out, "pregreet test: off (empty banner)");
    } else {
        let _ = writeln!(
            out,
            "pregreet test: teaser \"220-{banner}\", wait {:?}, action {}",
            config.greet.wait,
            Action::from(config.greet.action)
        );
    }
    let mut scores = Vec::new();
    if config.dnsbl_sites.is_empty() {
        let _ = writeln!(out, "dnsbl: no sites configured");
    } else {
        let dnsbl = Arc::new(Dnsbl::new(Settings {
            sites: config.dnsbl_sites.clone(),
            min_ttl: config.dnsbl.min_ttl,
            max_ttl: config.dnsbl.max_ttl,
            timeout: config.dnsbl.timeout,
            nameservers: config.dnsbl.nameservers.clone(),
            cache_size: 64,
        })?);
        // As a connection does: what is not in by the end of the greet wait
        // is no answer.
        let mut done = dnsbl.start(ip);
        let wait = config.greet.wait;
        let _ = tokio::time::timeout(wait, async { while done.next().await {} }).await;
        for zone in dnsbl.zones() {
            let found = match done.answers().get(zone) {
                Some(Answer::Listed { addresses, ttl }) => format!(
                    "listed as {} (ttl {}s)",
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    ttl.as_secs()
                ),
                Some(Answer::NotListed { ttl }) => format!("not listed (ttl {}s)", ttl.as_secs()),
                Some(Answer::Failed { error }) => format!("lookup failed: {error}"),
                None => format!("no answer within the greet wait ({wait:?})"),
            };
            let _ = writeln!(out, "dnsbl {zone}: {found}");
        }
        for site in dnsbl.sites() {
            let matched = matches!(
                done.answers().get(&site.domain),
                Some(Answer::Listed { addresses, .. }) if site.matches(addresses)
            );
            let _ = writeln!(
                out,
                "site {site}: {}",
                if matched {
                    format!("matches, {:+}", site.weight)
                } else {
                    "no match".to_string()
                }
            );
        }
        let found = findings(&done, &config.dnsbl.reply_map);
        scores.push(found);
    }
    if config.gates.iter().any(|gate| gate == "rdns") {
        explain_rdns(config, ip, &mut out, &mut scores).await?;
    }
    let thresholds = Thresholds {
        threshold: config.dnsbl.threshold,
        allowlist_threshold: config.dnsbl.allowlist_threshold,
    };
    let mut outcome = None;
    if !scores.is_empty() {
        // The runtime's own judgement: a pass is remembered only when the
        // score is complete and refuses nobody.
        let judgement = thresholds.judge(&scores, ip);
        let remembered = match judgement {
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
        };
        let _ = writeln!(
            out,
            "score: {} (threshold {}, allowlist threshold {}); {remembered}",
            judgement.rank(),
            thresholds.threshold,
            thresholds.allowlist_threshold,
        );
        outcome = Some(judgement);
    }
    if config.gates.iter().any(|gate| gate == "greylist") {
        let score: i32 = scores.iter().map(Score::points).sum();
        let threshold = config.greylist.threshold;
        let line = if denied.is_some() || score >= thresholds.threshold {
            "not greylisted: refused before".to_string()
        } else if score >= threshold {
            format!(
                "doubtful (score {score} >= {threshold}): greylisted at RCPT, then replayed once a retry is accepted"
            )
        } else {
            format!("not doubtful (score {score} < {threshold}): never greylisted")
        };
        let _ = writeln!(out, "greylist: {line}");
    }
    let verdict = match (denied, outcome) {
        (Some(action), _) => {
            format!("denylisted (DENYLISTED): 5.3.2 Service currently unavailable, action {action}")
        }
        (None, Some(Judgement::Listed { rank, reply_text })) => format!(
            "DNSBL rank {rank}: {reply_text}, action {}",
            Action::from(config.dnsbl.action)
        ),
        (None, Some(Judgement::Allowlisted { rank })) => {
            format!("allowlisted by DNSWL (rank {rank}): every test passes, handed off")
        }
        (None, Some(Judgement::Undecided { .. })) => {
            "not listed by the lists that answered; handed off unless it pregreets, and tested again next time".to_string()
        }
        _ => "passes the DNSBL test; handed off unless it pregreets".to_string(),
    };
    let _ = writeln!(out, "verdict: {verdict}");
    Ok(out)
}

/// The reverse-DNS gate's lookups for `ip`: the PTR names, the forward
/// result, and the finding with its weight.
async fn explain_rdns(
    config: &Config,
    ip: IpAddr,
    out: &mut String,
    scores: &mut Vec<Score>,
) -> Result<(), ResolverError> {
    let gate = RdnsGate::new(rdns_settings(config))?;
    let wait = config.greet.wait;
    let outcome = match tokio::time::timeout(wait, gate.check(ip)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(failed)) => {
            let _ = writeln!(out, "rdns: lookup failed: {} (no opinion)", failed.0);
            return Ok(());
        }
        Err(_) => {
            // Unfinished at the end of the wait: the runtime remembers
            // nothing of such a connection.
            let _ = writeln!(out, "rdns: no answer within the greet wait ({wait:?})");
            scores.push(Score {
                findings: Vec::new(),
                ttl: None,
                complete: false,
            });
            return Ok(());
        }
    };
    let names = if outcome.names.is_empty() {
        "none".to_string()
    } else {
        outcome.names.join(", ")
    };
    let _ = writeln!(
        out,
        "rdns PTR names: {names} (ttl {}s)",
        outcome.ttl.as_secs()
    );
    let forward = match &outcome.found {
        Found::NoPtr => "no name to confirm".to_string(),
        Found::NotConfirmed { .. } => format!("no name resolves back to {ip}"),
        Found::Generic { name } | Found::Confirmed { name } => {
            format!("{name} resolves back to {ip}")
        }
    };
    let _ = writeln!(out, "rdns forward: {forward}");
    let findings = gate.findings(&outcome);
    match findings.first() {
        Some(finding) => {
            let _ = writeln!(
                out,
                "rdns check {}: fires, {:+}",
                finding.name, finding.weight
            );
        }
        None => {
            let _ = writeln!(out, "rdns checks: none fires");
        }
    }
    let clamped = outcome.ttl.clamp(
        config.dnsbl.min_ttl,
        config.dnsbl.max_ttl.max(config.dnsbl.min_ttl),
    );
    scores.push(Score {
        findings,
        ttl: Some(clamped),
        complete: true,
    });
    Ok(())
}
