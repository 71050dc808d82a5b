//! The embedded store's own tests: records, batches, the records cap.

use super::*;

#[tokio::test]
async fn records_are_read_back_at_once_and_committed_with_the_passes() {
    let dir = tempfile::tempdir().expect("a folder");
    let path = dir.path().join("cache.redb");
    let store = Embedded::open(&path, 1000).expect("opened");
    let hour = Duration::from_secs(3600);
    store.keep_record("greylist:a", "1", hour);
    store.keep_record("user:b", "127.0.0.1:25", hour);
    store.put("192.0.2.1".parse().expect("ip"), Some(Entry::default()));
    assert_eq!(
        store.record("greylist:a").expect("read").as_deref(),
        Some("1")
    );
    store.flush().await.expect("one commit");
    assert!(store.pending_records.lock().expect("lock").is_empty());
    assert_eq!(
        store.record("user:b").expect("read").as_deref(),
        Some("127.0.0.1:25")
    );
    store.keep_record("gone", "x", Duration::ZERO);
    assert_eq!(store.record("gone").expect("read"), None, "expired");
    drop(store);
    let reopened = Embedded::open(&path, 1000).expect("reopened");
    assert_eq!(
        reopened.record("greylist:a").expect("read").as_deref(),
        Some("1")
    );
}

#[test]
fn a_failed_batch_goes_back_under_the_newer_writes() {
    let dir = tempfile::tempdir().expect("a folder");
    let store = Embedded::open(&dir.path().join("cache.redb"), 1000).expect("opened");
    let hour = Duration::from_secs(3600);
    let ip: IpAddr = "192.0.2.1".parse().expect("ip");
    let mut failed = Batch::default();
    failed.passes.insert(ip, None);
    failed
        .records
        .insert("old".into(), (0, "99999999999;failed".into()));
    failed
        .records
        .insert("both".into(), (1, "99999999999;failed".into()));
    // Written while the batch was committing: newer, so it stays.
    store.keep_record("both", "newer", hour);
    store.put_back(&failed);
    assert_eq!(
        store.record("both").expect("read").as_deref(),
        Some("newer")
    );
    assert_eq!(
        store.record("old").expect("read").as_deref(),
        Some("failed")
    );
    assert!(store.pending.lock().expect("lock").contains_key(&ip));
}

/// Records `from..to` as `key-<n>`, one hour each.
fn write_keys(store: &Embedded, from: u32, to: u32) {
    for n in from..to {
        store.keep_record(
            &format!("key-{n}"),
            &n.to_string(),
            Duration::from_secs(3600),
        );
    }
}

/// Which of `key-<from>`..`key-<to>` the store still answers.
fn kept(store: &Embedded, from: u32, to: u32) -> Vec<u32> {
    (from..to)
        .filter(|n| store.record(&format!("key-{n}")).expect("read").is_some())
        .collect()
}

#[tokio::test]
async fn writing_past_the_cap_evicts_the_oldest_records_first() {
    let dir = tempfile::tempdir().expect("a folder");
    let store = Embedded::open(&dir.path().join("cache.redb"), 100).expect("opened");
    // One batch larger than the cap: its own oldest go.
    write_keys(&store, 0, 150);
    store.flush().await.expect("commit");
    assert_eq!(store.record_count().expect("count"), 100);
    assert_eq!(kept(&store, 0, 150), (50..150).collect::<Vec<_>>());
    // Batch after batch: the table stays at the cap.
    for start in (150..400).step_by(25) {
        write_keys(&store, start, start + 25);
        store.flush().await.expect("commit");
        assert_eq!(store.record_count().expect("count"), 100, "after {start}");
    }
    assert_eq!(kept(&store, 0, 400), (300..400).collect::<Vec<_>>());
    // A rewritten record is young again: key-301 goes before it.
    store.keep_record("key-300", "again", Duration::from_secs(3600));
    write_keys(&store, 400, 401);
    store.flush().await.expect("commit");
    assert_eq!(
        store.record("key-300").expect("read").as_deref(),
        Some("again")
    );
    assert_eq!(store.record("key-301").expect("read"), None);
    assert_eq!(store.record_count().expect("count"), 100);
}

#[tokio::test]
async fn a_restart_keeps_the_cap_and_a_lowered_cap_trims_the_oldest() {
    let dir = tempfile::tempdir().expect("a folder");
    let path = dir.path().join("cache.redb");
    {
        let store = Embedded::open(&path, 100).expect("opened");
        write_keys(&store, 0, 100);
        store.flush().await.expect("commit");
    }
    {
        let store = Embedded::open(&path, 100).expect("reopened");
        assert_eq!(store.record_count().expect("count"), 100);
        write_keys(&store, 100, 130);
        store.flush().await.expect("commit");
        assert_eq!(store.record_count().expect("count"), 100);
        assert_eq!(kept(&store, 0, 130), (30..130).collect::<Vec<_>>());
    }
    let store = Embedded::open(&path, 10).expect("reopened with a lower cap");
    assert_eq!(store.record_count().expect("count"), 10);
    assert_eq!(kept(&store, 0, 130), (120..130).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_cleanup_drops_expired_records_and_their_place_in_the_order() {
    let dir = tempfile::tempdir().expect("a folder");
    let store = Embedded::open(&dir.path().join("cache.redb"), 5).expect("opened");
    store.keep_record("gone", "x", Duration::ZERO);
    write_keys(&store, 0, 3);
    store.flush().await.expect("commit");
    assert_eq!(store.record_count().expect("count"), 4);
    let now = SystemTime::now() + Duration::from_secs(1);
    store.cleanup(now, Duration::ZERO).await.expect("cleanup");
    assert_eq!(store.record_count().expect("count"), 3);
    // The order still counts right: 5 fit, the sixth evicts key-0.
    write_keys(&store, 3, 6);
    store.flush().await.expect("commit");
    assert_eq!(kept(&store, 0, 6), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn records_of_an_older_file_are_ordered_by_expiry_and_capped() {
    let dir = tempfile::tempdir().expect("a folder");
    let path = dir.path().join("cache.redb");
    {
        // A file as doorman wrote it before the cap: the records table alone.
        let database = redb::Database::create(&path).expect("created");
        let write = database.begin_write().expect("write");
        {
            let mut table = write.open_table(RECORDS).expect("table");
            for n in 0..20u64 {
                let stored = format!("{};{n}", 99_999_999_000 + n);
                table
                    .insert(format!("key-{n}").as_str(), stored.as_str())
                    .expect("insert");
            }
        }
        write.commit().expect("commit");
    }
    let store = Embedded::open(&path, 8).expect("opened");
    assert_eq!(store.record_count().expect("count"), 8);
    assert_eq!(kept(&store, 0, 20), (12..20).collect::<Vec<_>>());
    write_keys(&store, 20, 21);
    store.flush().await.expect("commit");
    assert_eq!(kept(&store, 0, 21), vec![13, 14, 15, 16, 17, 18, 19, 20]);
}

#[tokio::test]
async fn a_backends_state_is_never_evicted_by_a_flood_of_records() {
    let dir = tempfile::tempdir().expect("a folder");
    let path = dir.path().join("cache.redb");
    let drained = format!("{}192.0.2.25:25", crate::director::STATE_PREFIX);
    let ten_years = Duration::from_secs(10 * 365 * 86400);
    {
        // As the reviewed build wrote it: the state in the order, oldest.
        let database = redb::Database::create(&path).expect("created");
        let write = database.begin_write().expect("write");
        {
            let mut tables = RecordTables::open(&write).expect("tables");
            tables
                .insert(&drained, "99999999999;1;-;0")
                .expect("insert");
        }
        write.commit().expect("commit");
    }
    {
        let store = Embedded::open(&path, 10).expect("opened");
        write_keys(&store, 0, 100);
        store.flush().await.expect("commit");
        assert_eq!(store.record_count().expect("count"), 11, "10 and the state");
        assert_eq!(kept(&store, 0, 100), (90..100).collect::<Vec<_>>());
        store.keep_record(&drained, "1;3;0", ten_years);
        store.flush().await.expect("commit");
    }
    let store = Embedded::open(&path, 5).expect("reopened with a lower cap");
    assert_eq!(
        store.record(&drained).expect("read").as_deref(),
        Some("1;3;0"),
        "the drain survives the flood and the restart"
    );
    assert_eq!(kept(&store, 0, 100), (95..100).collect::<Vec<_>>());
    write_keys(&store, 100, 200);
    store.flush().await.expect("commit");
    assert_eq!(store.record_count().expect("count"), 6);
    assert!(store.record(&drained).expect("read").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_being_committed_is_always_read_back() {
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().expect("a folder");
    let store = Arc::new(Embedded::open(&dir.path().join("cache.redb"), 1000).expect("opened"));
    let latest = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    store.keep_record("key-0", "0", Duration::from_secs(3600));
    let reader = {
        let (store, latest, done) = (Arc::clone(&store), Arc::clone(&latest), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut misses = 0;
            while !done.load(Ordering::SeqCst) {
                let n = latest.load(Ordering::SeqCst);
                if store.record(&format!("key-{n}")).expect("read").is_none() {
                    misses += 1;
                }
            }
            misses
        })
    };
    for n in 1..3000u64 {
        store.flush().await.expect("commit");
        store.keep_record(&format!("key-{n}"), "x", Duration::from_secs(3600));
        latest.store(n, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    assert_eq!(
        reader.join().expect("reader"),
        0,
        "a written record read as absent"
    );
}
