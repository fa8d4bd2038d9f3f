//! The conformance suite every [`Engine`] passes. Engines call [`run_all`] from their own
//! tests with a factory that opens a fresh, empty engine.

use crate::{Direction, Engine, Space, WriteBatch, group_key, group_range};

/// Opens a fresh, empty engine.
pub type EngineFactory<'a> = &'a dyn Fn() -> Box<dyn Engine>;

/// Runs every check against engines from `factory`. Panics with the check's name on failure.
pub fn run_all(factory: EngineFactory<'_>) {
    writes_are_visible_at_once(factory().as_ref());
    spaces_are_independent(factory().as_ref());
    batches_apply_in_order(factory().as_ref());
    delete_range_is_half_open(factory().as_ref());
    scans_respect_bounds_direction_and_limit(factory().as_ref());
    sync_succeeds_on_a_healthy_engine(factory().as_ref());
    views_see_exactly_the_writes_before_them(factory().as_ref());
}

fn put(engine: &dyn Engine, space: Space, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(space, key.to_vec(), value.to_vec());
    engine.write(batch).expect("conformance: write");
}

fn writes_are_visible_at_once(engine: &dyn Engine) {
    put(engine, Space::RaftLog, b"k", b"v1");
    assert_eq!(engine.get(Space::RaftLog, b"k").expect("get"), Some(b"v1".to_vec()), "visible after write");
    put(engine, Space::RaftLog, b"k", b"v2");
    assert_eq!(engine.get(Space::RaftLog, b"k").expect("get"), Some(b"v2".to_vec()), "overwrite");
    assert_eq!(engine.get(Space::RaftLog, b"missing").expect("get"), None, "absent key");
}

fn spaces_are_independent(engine: &dyn Engine) {
    for space in Space::ALL {
        put(engine, space, b"same-key", space.name().as_bytes());
    }
    for space in Space::ALL {
        assert_eq!(
            engine.get(space, b"same-key").expect("get"),
            Some(space.name().as_bytes().to_vec()),
            "space {} kept its own value",
            space.name()
        );
    }
}

fn batches_apply_in_order(engine: &dyn Engine) {
    let mut batch = WriteBatch::new();
    batch.put(Space::StateMachine, b"a".to_vec(), b"1".to_vec());
    batch.delete(Space::StateMachine, b"a".to_vec());
    batch.put(Space::StateMachine, b"b".to_vec(), b"1".to_vec());
    batch.put(Space::StateMachine, b"b".to_vec(), b"2".to_vec());
    engine.write(batch).expect("write");
    assert_eq!(engine.get(Space::StateMachine, b"a").expect("get"), None, "delete after put in one batch");
    assert_eq!(engine.get(Space::StateMachine, b"b").expect("get"), Some(b"2".to_vec()), "last put wins");
}

fn delete_range_is_half_open(engine: &dyn Engine) {
    for group in [1u64, 2] {
        for index in 0..10u64 {
            put(engine, Space::RaftLog, &group_key(group, &index.to_be_bytes()), b"e");
        }
    }
    let range = group_range(1, b"", 3, 7);
    let mut batch = WriteBatch::new();
    batch.delete_range(Space::RaftLog, range.start, range.end);
    engine.write(batch).expect("write");
    for index in 0..10u64 {
        let present = engine.get(Space::RaftLog, &group_key(1, &index.to_be_bytes())).expect("get").is_some();
        assert_eq!(present, !(3..7).contains(&index), "group 1 index {index} after delete_range [3,7)");
        let other = engine.get(Space::RaftLog, &group_key(2, &index.to_be_bytes())).expect("get").is_some();
        assert!(other, "group 2 index {index} untouched by group 1's delete_range");
    }
}

fn scans_respect_bounds_direction_and_limit(engine: &dyn Engine) {
    for index in 0..20u64 {
        put(engine, Space::RaftLog, &group_key(9, &index.to_be_bytes()), &index.to_be_bytes());
    }
    put(engine, Space::RaftLog, &group_key(10, &0u64.to_be_bytes()), b"other group");
    let range = group_range(9, b"", 5, 15);
    let forward = engine.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Forward, 100).expect("scan");
    let indexes: Vec<u64> =
        forward.iter().map(|(_, v)| u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))).collect();
    assert_eq!(indexes, (5..15).collect::<Vec<_>>(), "forward scan of [5,15)");
    let reverse = engine.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Reverse, 3).expect("scan");
    let indexes: Vec<u64> =
        reverse.iter().map(|(_, v)| u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))).collect();
    assert_eq!(indexes, vec![14, 13, 12], "reverse scan with limit 3");
    let empty = engine.scan(Space::RaftLog, &range.end[..]..&range.start[..], Direction::Forward, 10).expect("scan");
    assert!(empty.is_empty(), "inverted range scans nothing");
    // An inverted delete range is a no-op, not an error that fails the whole batch.
    let mut batch = WriteBatch::new();
    batch.delete_range(Space::RaftLog, range.end.clone(), range.start.clone());
    batch.put(Space::RaftLog, b"after-inverted".to_vec(), b"1".to_vec());
    engine.write(batch).expect("a batch with an inverted delete range still applies");
    assert_eq!(engine.get(Space::RaftLog, b"after-inverted").expect("get"), Some(b"1".to_vec()));
    let still = engine.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Forward, 100).expect("scan");
    assert_eq!(still.len(), 10, "inverted delete range removed nothing");
}

fn sync_succeeds_on_a_healthy_engine(engine: &dyn Engine) {
    put(engine, Space::Node, b"id", b"1");
    engine.sync().expect("sync on a healthy engine");
    assert_eq!(engine.get(Space::Node, b"id").expect("get"), Some(b"1".to_vec()), "readable after sync");
}

fn views_see_exactly_the_writes_before_them(engine: &dyn Engine) {
    for index in 0..10u64 {
        put(engine, Space::RaftLog, &group_key(4, &index.to_be_bytes()), b"before");
    }
    put(engine, Space::StateMachine, b"state", b"old");
    let view = engine.view();
    // After the view: an overwrite, a new key, a point delete and a range delete.
    put(engine, Space::StateMachine, b"state", b"new");
    put(engine, Space::StateMachine, b"later", b"x");
    let mut batch = WriteBatch::new();
    batch.delete(Space::RaftLog, group_key(4, &9u64.to_be_bytes()));
    let range = group_range(4, b"", 0, 5);
    batch.delete_range(Space::RaftLog, range.start, range.end);
    engine.write(batch).expect("write");

    assert_eq!(view.get(Space::StateMachine, b"state").expect("get"), Some(b"old".to_vec()), "view keeps old value");
    assert_eq!(view.get(Space::StateMachine, b"later").expect("get"), None, "view misses later keys");
    let all = group_range(4, b"", 0, u64::MAX);
    let seen = view.scan(Space::RaftLog, &all.start[..]..&all.end[..], Direction::Forward, 100).expect("scan");
    assert_eq!(seen.len(), 10, "the view still sees entries deleted after it was taken");
    let reverse = view.scan(Space::RaftLog, &all.start[..]..&all.end[..], Direction::Reverse, 1).expect("scan");
    assert_eq!(reverse[0].0, group_key(4, &9u64.to_be_bytes()), "reverse scans of a view");
    // The engine itself moved on.
    let now = engine.scan(Space::RaftLog, &all.start[..]..&all.end[..], Direction::Forward, 100).expect("scan");
    assert_eq!(now.len(), 4, "entries 5..=8 remain");
    assert_eq!(engine.get(Space::StateMachine, b"state").expect("get"), Some(b"new".to_vec()));
    // A view taken now sees the new state.
    assert_eq!(engine.view().get(Space::StateMachine, b"state").expect("get"), Some(b"new".to_vec()));
}
