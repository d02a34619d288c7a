//! The cache under crashes, corruption, races and eviction.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime};

use lazypull_converter::{Digest, Error};

use super::*;

fn chunk(seed: u32, len: usize) -> (Digest, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8 ^ seed as u8)
        .collect();
    (Digest::of(&data), data)
}

/// A cache with no memory tier, so every `get` goes to disk.
fn disk_only(dir: &Path, max_bytes: u64) -> ChunkCache {
    ChunkCache::open(CacheOptions {
        dir: dir.to_path_buf(),
        max_bytes,
        memory_bytes: 0,
    })
    .unwrap()
}

fn is_mismatch(e: &Error) -> bool {
    matches!(e.root(), Error::DigestMismatch { .. })
}

/// Sum of the chunk files' sizes and their count, straight from the directory.
fn files_on_disk(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut count) = (0, 0);
    for fan in fs::read_dir(dir.join("chunks")).unwrap() {
        for f in fs::read_dir(fan.unwrap().path()).unwrap() {
            bytes += f.unwrap().metadata().unwrap().len();
            count += 1;
        }
    }
    (bytes, count)
}

#[test]
fn is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ChunkCache>();
}

#[test]
fn round_trip_through_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap();
    let (d, data) = chunk(1, 5000);
    assert!(!cache.contains(&d));
    assert!(cache.get(&d).is_none());
    cache.put(&d, &data).unwrap();
    assert!(cache.contains(&d));
    assert_eq!(&*cache.get(&d).unwrap(), &data[..]);
    let hex = d.hex();
    let file = dir.path().join("chunks").join(&hex[..2]).join(&hex);
    assert_eq!(fs::read(file).unwrap(), data);
    // Inserting again changes nothing.
    cache.put(&d, &data).unwrap();
    let s = cache.stats();
    assert_eq!((s.inserts, s.entries, s.bytes_on_disk), (1, 1, 5000));
    assert_eq!((s.memory_hits, s.disk_hits, s.misses), (1, 0, 1));
    // The empty chunk is a chunk like any other.
    let empty = Digest::of(&[]);
    cache.put(&empty, &[]).unwrap();
    assert_eq!(cache.get(&empty).unwrap().len(), 0);
}

#[test]
fn put_refuses_bytes_that_do_not_match_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap();
    let (d, _) = chunk(1, 100);
    let (_, other) = chunk(2, 100);
    let err = cache.put(&d, &other).unwrap_err();
    assert!(is_mismatch(&err), "{err}");
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    assert!(!cache.contains(&d));
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn memory_tier_serves_repeat_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap();
    let (d, data) = chunk(1, 1000);
    cache.put(&d, &data).unwrap();
    for _ in 0..3 {
        assert!(cache.get(&d).is_some());
    }
    let s = cache.stats();
    assert_eq!((s.memory_hits, s.disk_hits), (3, 0));
    assert_eq!((s.memory_entries, s.memory_bytes), (1, 1000));

    // Without a memory tier every read is a verified disk read.
    let cold = disk_only(dir.path(), 1 << 20);
    for _ in 0..3 {
        assert!(cold.get(&d).is_some());
    }
    let s = cold.stats();
    assert_eq!((s.memory_hits, s.disk_hits, s.memory_entries), (0, 3, 0));
}

#[test]
fn a_reopened_directory_keeps_its_entries_and_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..3).map(|i| chunk(i, 100)).collect();
    {
        let cache = ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap();
        for (d, data) in &chunks {
            cache.put(d, data).unwrap();
        }
    }
    // Last use as a previous process left it: chunk 1 oldest, then 2, then 0.
    let base = SystemTime::now() - Duration::from_secs(3600);
    for (i, age) in [(1, 0), (2, 10), (0, 20)] {
        let hex = chunks[i].0.hex();
        let f = fs::File::open(dir.path().join("chunks").join(&hex[..2]).join(&hex)).unwrap();
        f.set_modified(base + Duration::from_secs(age)).unwrap();
    }
    let cache = disk_only(dir.path(), 1 << 20);
    let s = cache.stats();
    assert_eq!((s.entries, s.bytes_on_disk), (3, 300));
    assert_eq!(
        cache.disk.order(),
        vec![chunks[1].0, chunks[2].0, chunks[0].0]
    );
    for (d, data) in &chunks {
        assert_eq!(&*cache.get(d).unwrap(), &data[..]);
    }
    assert_eq!(cache.stats().disk_hits, 3);
}

#[test]
fn open_evicts_when_the_bound_was_lowered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = disk_only(dir.path(), 1 << 20);
        for i in 0..10 {
            let (d, data) = chunk(i, 100);
            cache.put(&d, &data).unwrap();
        }
    }
    let cache = disk_only(dir.path(), 450);
    let s = cache.stats();
    assert_eq!((s.entries, s.bytes_on_disk, s.evictions), (4, 400, 6));
    assert_eq!(files_on_disk(dir.path()), (400, 4));
}

#[test]
fn eviction_stays_under_the_bound_and_drops_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = disk_only(dir.path(), 300);
    let [a, b, c, e] = [1, 2, 3, 4].map(|i| chunk(i, 100));
    cache.put(&a.0, &a.1).unwrap();
    cache.put(&b.0, &b.1).unwrap();
    cache.put(&c.0, &c.1).unwrap();
    assert!(cache.get(&a.0).is_some()); // a is now the most recent; b the least
    assert_eq!(cache.disk.order(), vec![b.0, c.0, a.0]);
    cache.put(&e.0, &e.1).unwrap();
    assert!(!cache.contains(&b.0));
    assert!(cache.get(&b.0).is_none());
    assert_eq!(cache.disk.order(), vec![c.0, a.0, e.0]);
    let s = cache.stats();
    assert_eq!((s.bytes_on_disk, s.entries, s.evictions), (300, 3, 1));
    assert_eq!(files_on_disk(dir.path()), (300, 3));

    // A memory hit counts as a use on disk too.
    let warm = ChunkCache::open(CacheOptions::new(dir.path(), 300)).unwrap();
    assert!(warm.get(&c.0).is_some()); // disk hit, now in memory
    assert!(warm.get(&a.0).is_some());
    assert!(warm.get(&e.0).is_some());
    assert!(warm.get(&c.0).is_some()); // memory hit: c becomes the most recent
    assert_eq!(warm.disk.order(), vec![a.0, e.0, c.0]);
    warm.put(&b.0, &b.1).unwrap();
    assert!(!warm.disk.indexed(&a.0));
    assert_eq!(warm.trim().unwrap(), 0);
}

#[test]
fn a_chunk_larger_than_the_bound_is_served_but_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = disk_only(dir.path(), 100);
    let (d, data) = chunk(1, 101);
    let got = cache.get_or_fetch(&d, || Ok(data.clone())).unwrap();
    assert_eq!(&*got, &data[..]);
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(files_on_disk(dir.path()), (0, 0));
}

#[test]
fn corrupt_or_truncated_files_are_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = disk_only(dir.path(), 1 << 20);
    let (d1, data1) = chunk(1, 4096);
    let (d2, data2) = chunk(2, 4096);
    cache.put(&d1, &data1).unwrap();
    cache.put(&d2, &data2).unwrap();
    let flipped = cache.disk.path_of(&d1);
    let mut bytes = fs::read(&flipped).unwrap();
    bytes[1234] ^= 0x40;
    fs::write(&flipped, bytes).unwrap();
    let truncated = cache.disk.path_of(&d2);
    fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(4000)
        .unwrap();

    assert!(cache.get(&d1).is_none());
    assert!(cache.get(&d2).is_none());
    assert!(!flipped.exists() && !truncated.exists());
    let s = cache.stats();
    assert_eq!(
        (s.corrupt_dropped, s.misses, s.entries, s.bytes_on_disk),
        (2, 2, 0, 0)
    );

    // The next read fetches again and heals the entry.
    let got = cache.get_or_fetch(&d1, || Ok(data1.clone())).unwrap();
    assert_eq!(&*got, &data1[..]);
    assert_eq!(fs::read(&flipped).unwrap(), data1);
}

#[test]
fn a_file_swapped_in_by_another_writer_is_adopted_only_if_it_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cache = disk_only(dir.path(), 1 << 20);
    let (d, data) = chunk(7, 300);
    // Another process sharing the directory publishes d after we opened.
    let other = disk_only(dir.path(), 1 << 20);
    other.put(&d, &data).unwrap();
    assert!(cache.contains(&d));
    assert_eq!(&*cache.get(&d).unwrap(), &data[..]);
    assert_eq!(cache.stats().entries, 1);
    // A directory where a chunk file should be is an I/O error: a miss, left alone.
    let (d2, _) = chunk(8, 10);
    fs::create_dir_all(cache.disk.path_of(&d2)).unwrap();
    assert!(cache.get(&d2).is_none());
    assert_eq!(cache.stats().read_errors, 1);
}

#[test]
fn open_removes_temp_files_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = chunk(1, 100);
    let tmp = {
        let cache = disk_only(dir.path(), 1 << 20);
        cache.disk.temp_dir().to_path_buf()
    };
    // A put that crashed after writing its temp file and before the rename: named by a pid that
    // cannot run (above Linux's pid_max), holding a complete, valid chunk.
    let dead = tmp.join(format!("4294967295-0-{}", d.hex()));
    fs::write(&dead, &data).unwrap();
    let junk = tmp.join("not-a-temp-name");
    fs::write(&junk, b"x").unwrap();
    // A temp file of a live writer (this process) stays: it may be mid-put.
    let live = tmp.join(format!("{}-99-{}", std::process::id(), d.hex()));
    fs::write(&live, &data).unwrap();

    let cache = disk_only(dir.path(), 1 << 20);
    // The interrupted put left no visible entry.
    assert!(!cache.contains(&d));
    assert!(cache.get(&d).is_none());
    assert!(!dead.exists() && !junk.exists());
    assert!(live.exists());
    assert_eq!(cache.stats().temps_removed, 2);
    assert_eq!(cache.stats().entries, 0);

    // An old one is removed whatever its name says.
    let f = fs::File::options().write(true).open(&live).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let cache = disk_only(dir.path(), 1 << 20);
    assert!(!live.exists());
    assert_eq!(cache.stats().temps_removed, 1);
}

#[test]
fn single_flight_fetches_once_for_sixteen_readers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap());
    let (d, data) = chunk(1, 10_000);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(16));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (cache, calls, start, data) =
                (cache.clone(), calls.clone(), start.clone(), data.clone());
            thread::spawn(move || {
                start.wait();
                cache
                    .get_or_fetch(&d, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Long enough that every reader arrives while the fetch is in flight.
                        thread::sleep(Duration::from_millis(200));
                        Ok(data.clone())
                    })
                    .unwrap()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(&*r.join().unwrap(), &data[..]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!((s.fetches, s.inserts, s.entries), (1, 1, 1));
}

#[test]
fn wrong_fetched_bytes_are_a_mismatch_for_every_waiter_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap());
    let (d, data) = chunk(1, 1000);
    let (_, wrong) = chunk(2, 1000);
    let start = Arc::new(Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (cache, start, wrong) = (cache.clone(), start.clone(), wrong.clone());
            thread::spawn(move || {
                start.wait();
                cache.get_or_fetch(&d, || {
                    thread::sleep(Duration::from_millis(100));
                    Ok(wrong.clone())
                })
            })
        })
        .collect();
    for r in readers {
        let err = r.join().unwrap().unwrap_err();
        assert!(is_mismatch(&err), "{err}");
        assert!(err.to_string().contains(&d.to_string()), "{err}");
    }
    assert!(!cache.contains(&d));
    let s = cache.stats();
    assert_eq!((s.entries, s.memory_entries, s.inserts), (0, 0, 0));
    assert_eq!(files_on_disk(dir.path()), (0, 0));
    // Not cached: the next call fetches again.
    let got = cache.get_or_fetch(&d, || Ok(data.clone())).unwrap();
    assert_eq!(&*got, &data[..]);
}

#[test]
fn bad_bytes_are_fetched_again_and_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap();
    let (d, data) = chunk(1, 1000);
    let (_, wrong) = chunk(2, 1000);
    // Damaged once, then right: the read succeeds with the right bytes.
    let mut calls = 0;
    let got = cache
        .get_or_fetch(&d, || {
            calls += 1;
            Ok(if calls == 1 {
                wrong.clone()
            } else {
                data.clone()
            })
        })
        .unwrap();
    assert_eq!((&*got, calls), (&data[..], 2));
    let s = cache.stats();
    assert_eq!((s.fetched_mismatches, s.refetches, s.inserts), (1, 1, 1));
    // Undecodable every time: three attempts, then the decoder's error.
    let (d, _) = chunk(3, 1000);
    let mut calls = 0;
    let err = cache
        .get_or_fetch(&d, || {
            calls += 1;
            Err(Error::format("decompressing: corrupt deflate stream"))
        })
        .unwrap_err();
    assert_eq!(calls, 1 + REFETCHES);
    assert!(err.to_string().contains("corrupt deflate"), "{err}");
    assert!(!cache.contains(&d));
}

#[test]
fn fetch_errors_reach_every_waiter_and_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap());
    let (d, data) = chunk(1, 1000);
    let start = Arc::new(Barrier::new(4));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (cache, start) = (cache.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                cache.get_or_fetch(&d, || {
                    thread::sleep(Duration::from_millis(100));
                    Err(Error::io(
                        "range request",
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "registry timed out"),
                    ))
                })
            })
        })
        .collect();
    for r in readers {
        let err = r.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("registry timed out"), "{err}");
        assert!(matches!(err.root(), Error::Io { .. }), "{err}");
    }
    let got = cache.get_or_fetch(&d, || Ok(data.clone())).unwrap();
    assert_eq!(&*got, &data[..]);
    assert_eq!(cache.stats().fetches, 2);
}

#[test]
fn a_panicking_fetch_releases_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(CacheOptions::new(dir.path(), 1 << 20)).unwrap());
    let (d, data) = chunk(1, 100);
    let started = Arc::new(Barrier::new(2));
    let leader = {
        let (cache, started) = (cache.clone(), started.clone());
        thread::spawn(move || {
            cache.get_or_fetch(&d, || -> lazypull_converter::Result<Vec<u8>> {
                started.wait();
                thread::sleep(Duration::from_millis(100));
                panic!("fetcher bug")
            })
        })
    };
    started.wait();
    let waited = cache.get_or_fetch(&d, || Ok(data.clone()));
    assert!(leader.join().is_err());
    // The waiter either joined the doomed flight (an error naming the panic) or came after it
    // and fetched itself; it never hangs.
    match waited {
        Ok(got) => assert_eq!(&*got, &data[..]),
        Err(e) => assert!(e.to_string().contains("panicked"), "{e}"),
    }
    assert_eq!(
        &*cache.get_or_fetch(&d, || Ok(data.clone())).unwrap(),
        &data[..]
    );
}

#[test]
fn concurrent_puts_gets_and_fetches_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about a third of the chunks on disk and a few in memory, so both tiers evict.
    let cache = Arc::new(
        ChunkCache::open(CacheOptions {
            dir: dir.path().to_path_buf(),
            max_bytes: 10 * 1000,
            memory_bytes: 4 * 1000,
        })
        .unwrap(),
    );
    let chunks: Arc<Vec<_>> = Arc::new((0..32).map(|i| chunk(i, 1000)).collect());
    let workers: Vec<_> = (0..8u32)
        .map(|t| {
            let (cache, chunks) = (cache.clone(), chunks.clone());
            thread::spawn(move || {
                for i in 0..150u32 {
                    let (d, data) = &chunks[((i * 7 + t * 13) % 32) as usize];
                    match (i + t) % 3 {
                        0 => cache.put(d, data).unwrap(),
                        1 => {
                            if let Some(got) = cache.get(d) {
                                assert_eq!(&*got, &data[..]);
                            }
                        }
                        _ => {
                            let got = cache.get_or_fetch(d, || Ok(data.clone())).unwrap();
                            assert_eq!(&*got, &data[..]);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let s = cache.stats();
    assert!(s.bytes_on_disk <= 10 * 1000, "{s:?}");
    assert!(s.memory_bytes <= 4 * 1000, "{s:?}");
    assert_eq!(s.corrupt_dropped, 0);
    // The index agrees with the directory, and nothing is left in tmp/.
    assert_eq!(files_on_disk(dir.path()), (s.bytes_on_disk, s.entries));
    assert_eq!(fs::read_dir(cache.disk.temp_dir()).unwrap().count(), 0);
    for (d, data) in chunks.iter() {
        if let Some(got) = cache.get(d) {
            assert_eq!(&*got, &data[..]);
        }
    }
}
