//! Offering a Redis that came back the passes this instance knows (`SET NX`,
//! so nothing newer is overwritten). The link serves sessions while the
//! offer goes on: the passes go in pipelined batches of [`BATCH`], each
//! under its own deadline, and the task yields between batches, so a
//! memory of 100,000 passes never holds up one reconnect.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;

use super::seconds_left;
use crate::cache::{Entry, Known};

/// Passes offered per pipelined round trip.
pub(super) const BATCH: usize = 1_000;

/// The deadline of one batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The pipelines that offer `entries` under `prefix`, [`BATCH`] commands
/// at most each; passes that expired by `now` are left out.
pub(super) fn batches(
    entries: &[(IpAddr, Entry)],
    prefix: &str,
    retention: Duration,
    now: SystemTime,
) -> Vec<redis::Pipeline> {
    let mut pipelines = Vec::new();
    let mut pipe = redis::pipe();
    for (ip, entry) in entries {
        let Some(left) = seconds_left(entry, retention, now) else {
            continue;
        };
        pipe.cmd("SET")
            .arg(format!("{prefix}pass:{ip}"))
            .arg(entry.encode())
            .arg("EX")
            .arg(left)
            .arg("NX");
        if pipe.len() == BATCH {
            pipelines.push(std::mem::replace(&mut pipe, redis::pipe()));
        }
    }
    if !pipe.is_empty() {
        pipelines.push(pipe);
    }
    pipelines
}

/// Writes the passes in `known` that Redis lacks, batch by batch; how many
/// it took. Stops at the first batch that fails.
pub(super) async fn offer_back(
    connection: &mut MultiplexedConnection,
    known: &Known,
    prefix: &str,
    retention: Duration,
) -> usize {
    let entries: Vec<(IpAddr, Entry)> = known
        .lock()
        .map(|memory| {
            memory
                .iter()
                .map(|(ip, entry)| (*ip, entry.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut written = 0;
    for pipe in batches(&entries, prefix, retention, SystemTime::now()) {
        let replies = tokio::time::timeout(
            BATCH_TIMEOUT,
            pipe.query_async::<Vec<Option<String>>>(connection),
        )
        .await;
        match replies {
            Ok(Ok(replies)) => written += replies.iter().flatten().count(),
            _ => break,
        }
        tokio::task::yield_now().await;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_memory_goes_in_bounded_batches_without_expired_passes() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let mut live = Entry::default();
        live.record_gate("pregreet", now, hour);
        let mut expired = Entry::default();
        expired.record_gate("pregreet", now - 3 * hour, hour);
        let entries: Vec<(IpAddr, Entry)> = (0..2_500u32)
            .map(|n| {
                let entry = if n % 5 == 0 { &expired } else { &live };
                (
                    IpAddr::from((0xc000_0000u32 + n).to_be_bytes()),
                    entry.clone(),
                )
            })
            .collect();
        let pipelines = batches(&entries, "t:", hour, now);
        let sizes: Vec<usize> = pipelines.iter().map(redis::Pipeline::len).collect();
        assert_eq!(sizes, [1_000, 1_000], "2,000 live passes, 500 expired");
        let first = pipelines[0].cmd_iter().next().unwrap().get_packed_command();
        let text = String::from_utf8_lossy(&first);
        assert!(
            text.contains("t:pass:192.0.0.1") && text.contains("NX"),
            "{text}"
        );
        assert!(batches(&[], "t:", hour, now).is_empty());
    }
}
