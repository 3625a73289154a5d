use super::slots::{PAGE, decode_slot};
use super::*;
use std::os::unix::fs::MetadataExt;
use std::time::UNIX_EPOCH;

fn token(n: u64) -> Token {
    let issued = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123 + n);
    Token {
        access_token: Secret::new(format!("at-{n}")),
        token_type: "Bearer".into(),
        issued_at: issued,
        expires_at: issued + Duration::from_secs(60),
        refresh_token: Some(Secret::new(format!("rt-{n}"))),
    }
}

fn refresh_token(store: &StateStore) -> Option<String> {
    let cached = store.load("a").unwrap()?;
    Some(cached.token.refresh_token?.expose().to_string())
}

#[test]
fn round_trip_with_tight_modes_in_one_file_of_two_slots() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    fs::create_dir(&state_dir).unwrap();
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let store = StateStore::open(&state_dir).unwrap();
    assert_eq!(fs::metadata(&state_dir).unwrap().mode() & 0o777, 0o700);
    assert!(store.load("a").unwrap().is_none());
    let mut lock = store.try_lock("a").unwrap().unwrap();
    lock.prepare().unwrap();
    let inode = fs::metadata(state_dir.join("a.state")).unwrap().ino();
    for n in 1..=5 {
        lock.save("fp", Some("seed"), &token(n)).unwrap();
        let cached = store.load("a").unwrap().unwrap();
        assert_eq!(
            cached,
            CachedToken {
                fingerprint: "fp".into(),
                seed: Some("seed".into()),
                token: token(n)
            }
        );
    }
    let meta = fs::metadata(state_dir.join("a.state")).unwrap();
    assert_eq!(meta.ino(), inode, "saved in place");
    assert_eq!(meta.len(), 2 * PAGE as u64);
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(state_dir.join("a.lock")).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_torn_slot_falls_back_to_the_previous_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut lock = store.try_lock("a").unwrap().unwrap();
    lock.save("fp", None, &token(1)).unwrap();
    lock.save("fp", None, &token(2)).unwrap();
    // record 2 is in slot 1; tear it as a crash in mid-write would
    let path = dir.path().join("a.state");
    let mut bytes = fs::read(&path).unwrap();
    let at = PAGE + HEADER + 10;
    bytes[at] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    assert_eq!(refresh_token(&store).as_deref(), Some("rt-1"));
    // the next holder (a tear comes from a crash: a restarted process)
    // writes the torn slot, not over record 1
    drop(lock);
    let mut lock = store.try_lock("a").unwrap().unwrap();
    lock.save("fp", None, &token(3)).unwrap();
    assert_eq!(refresh_token(&store).as_deref(), Some("rt-3"));
    let bytes = fs::read(&path).unwrap();
    assert_eq!(decode_slot(&bytes[..PAGE]).map(|s| s.seq), Some(1));
    assert_eq!(decode_slot(&bytes[PAGE..]).map(|s| s.seq), Some(2));
}

#[test]
fn a_record_larger_than_its_slot_grows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut lock = store.try_lock("a").unwrap().unwrap();
    lock.save("fp", None, &token(1)).unwrap();
    let mut big = token(2);
    big.access_token = Secret::new("x".repeat(10_000));
    lock.save("fp", None, &big).unwrap();
    assert_eq!(store.load("a").unwrap().unwrap().token, big);
    let len = fs::metadata(dir.path().join("a.state")).unwrap().len();
    assert!(len >= 2 * 20_000, "{len}");
    // prepare keeps room for a record twice the current one
    lock.prepare().unwrap();
    lock.save("fp", None, &token(3)).unwrap();
    assert_eq!(refresh_token(&store).as_deref(), Some("rt-3"));
}

#[test]
fn a_new_file_left_by_a_killed_process_is_adopted_only_when_newer() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    {
        let mut lock = store.try_lock("a").unwrap().unwrap();
        lock.save("fp", None, &token(1)).unwrap();
    }
    let payload = |n| {
        let lock = StateFile {
            version: VERSION,
            fingerprint: "fp".into(),
            access_token: format!("at-{n}"),
            token_type: "Bearer".into(),
            issued_at_ms: 1,
            expires_at_ms: 2,
            refresh_token: Some(format!("rt-{n}")),
            seed: None,
        };
        serde_json::to_vec(&lock).unwrap()
    };
    let new = dir.path().join("a.state.new");
    // an older record (seq 1, like the file's): removed
    fs::write(&new, encode_slot(1, &payload(0), PAGE)).unwrap();
    drop(store.try_lock("a").unwrap().unwrap());
    assert!(!new.exists());
    assert_eq!(refresh_token(&store).as_deref(), Some("rt-1"));
    // a newer one, complete: adopted
    let mut image = encode_slot(2, &payload(9), PAGE);
    image.resize(2 * PAGE, b'\n');
    fs::write(&new, &image).unwrap();
    drop(store.try_lock("a").unwrap().unwrap());
    assert!(!new.exists());
    assert_eq!(refresh_token(&store).as_deref(), Some("rt-9"));
    // a half-written one: removed, the file stays
    fs::write(&new, &image[..HEADER + 5]).unwrap();
    drop(store.try_lock("a").unwrap().unwrap());
    assert!(!new.exists());
    assert_eq!(refresh_token(&store).as_deref(), Some("rt-9"));
}

#[test]
fn an_earlier_versions_state_and_its_newest_temp_file_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = |n: i64, rt: &str| {
        format!(
            r#"{{"version":1,"fingerprint":"fp","access_token":"at","token_type":"Bearer","issued_at_ms":{n},"expires_at_ms":99999999999999,"refresh_token":"{rt}"}}"#
        )
    };
    fs::write(dir.path().join("a.token.json"), legacy(1000, "rt-old")).unwrap();
    // a killed process wrote the rotated token whole but never renamed it
    fs::write(
        dir.path().join(".a.token.json.Xy12ab.tk-tmp"),
        legacy(2000, "rt-new"),
    )
    .unwrap();
    fs::write(dir.path().join(".a.token.json.Zz12ab.tk-tmp"), "{\"vers").unwrap();
    fs::write(dir.path().join(".status.json.Qq12ab.tk-tmp"), "{").unwrap();
    // before the migration, a read-only reader already sees the newest
    assert_eq!(
        refresh_token(&StateStore::at(dir.path())).as_deref(),
        Some("rt-new")
    );
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(refresh_token(&store).as_deref(), Some("rt-new"));
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a.lock", "a.state"]);
}

#[test]
fn one_holder_at_a_time_across_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let held = store.try_lock("a").unwrap().unwrap();
    // flock belongs to the open file: a second open conflicts, as another process would
    assert!(store.try_lock("a").unwrap().is_none());
    assert!(store.try_lock("b").unwrap().is_some(), "per client");
    drop(held);
    assert!(store.try_lock("a").unwrap().is_some());
}

#[tokio::test]
async fn a_waiter_gets_the_lock_when_the_holder_is_done_or_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let held = store.try_lock("a").unwrap().unwrap();
    let err = store
        .lock("a", Duration::from_millis(50))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("another tokenkeeper"), "{err}");
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.lock("a", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!waiter.is_finished());
    drop(held);
    assert!(waiter.await.unwrap().is_ok());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    fs::write(dir.path().join("a.token.json"), b"{nope").unwrap();
    assert!(store.load("a").is_err());
    fs::write(dir.path().join("b.state"), b"{nope").unwrap();
    assert!(store.load("b").unwrap().is_none());
}
