//! Consumer groups with real processes: two `flo consume --group` members split a topic's
//! partitions; when one is SIGKILLed the other takes its partitions over after the session
//! timeout and resumes exactly at the last committed offsets — nothing skipped, and only
//! records after the last commit delivered twice. `flo group describe` reports lag; reset works
//! only on an inactive group; bad group calls get errors naming the value.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use flotilla_client::{Client, ErrorCode, v1};
use flotilla_tests::{Cluster, FloProcess, record, stdout_of};
use flotilla_types::Clock;
use serde_json::Value;
use tokio::time::Instant;

/// Generous bound for each wait: CI machines are shared and slow. The hand-over time itself is
/// printed, not asserted (DESIGN: speed is measured, not tested).
const WAIT: Duration = Duration::from_secs(90);
const SESSION_TIMEOUT_MS: &str = "3000";

/// (partition, offset) of every record a `flo consume -o json` process printed.
fn printed(process: &FloProcess) -> anyhow::Result<Vec<(u32, u64)>> {
    process
        .lines()
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
            let partition = value["partition"].as_u64().with_context(|| format!("no partition: {line}"))?;
            let offset = value["offset"].as_u64().with_context(|| format!("no offset: {line}"))?;
            Ok((partition as u32, offset))
        })
        .collect()
}

/// Produces `count` keyed records and returns where each landed.
async fn produce(client: &Client, topic: &str, from: usize, count: usize) -> anyhow::Result<BTreeSet<(u32, u64)>> {
    let records: Vec<v1::Record> = (from..from + count).map(|i| record(&format!("k{i}"), format!("v{i}"))).collect();
    let acks = client.produce(topic, None, records).await?;
    Ok(acks.into_iter().map(|a| (a.partition, a.offset)).collect())
}

/// Partitions each member owns, by client id (`flo-PID` for `flo consume`), from
/// `flo group describe -o json`.
async fn owners(cluster: &Cluster, group: &str) -> anyhow::Result<BTreeMap<String, BTreeSet<u32>>> {
    let output = cluster.flo(&["group", "describe", group, "-o", "json"], None).await?;
    let description: Value = serde_json::from_str(&stdout_of(&output, "flo group describe")?)?;
    let mut out = BTreeMap::new();
    for member in description["members"].as_array().context("members")? {
        let id = member["client_id"].as_str().context("client_id")?.to_string();
        let mut partitions = BTreeSet::new();
        for tp in member["assignment"].as_array().context("assignment")? {
            for p in tp["partitions"].as_array().context("partitions")? {
                partitions.insert(p.as_u64().context("partition")? as u32);
            }
        }
        out.insert(id, partitions);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn members_split_partitions_and_a_survivor_resumes_after_the_last_commit() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic("orders", 6, 3).await?;
    let consume =
        ["consume", "orders", "--group", "g", "--follow", "-o", "json", "--session-timeout-ms", SESSION_TIMEOUT_MS];
    let mut first = cluster.spawn_flo(&consume)?;
    let second = cluster.spawn_flo(&consume)?;
    let split = cluster
        .wait_for("two members with three partitions each", WAIT, || async {
            let owners = owners(&cluster, "g").await?;
            let sizes: Vec<usize> = owners.values().map(BTreeSet::len).collect();
            ensure!(sizes == [3, 3], "assignment so far: {owners:?}");
            Ok(owners)
        })
        .await?;
    let mut expected = produce(&client, "orders", 0, 1200).await?;
    cluster
        .wait_for("every record printed once", WAIT, || async {
            let seen: BTreeSet<(u32, u64)> = printed(&first)?.into_iter().chain(printed(&second)?).collect();
            ensure!(seen == expected, "{} of {} records printed", seen.len(), expected.len());
            Ok(())
        })
        .await?;
    let (before_first, before_second) = (printed(&first)?, printed(&second)?);
    ensure!(
        before_first.len() + before_second.len() == expected.len(),
        "without failures every record is printed exactly once: {} + {} printed for {}",
        before_first.len(),
        before_second.len(),
        expected.len()
    );
    let first_partitions: BTreeSet<u32> = before_first.iter().map(|(p, _)| *p).collect();
    let second_partitions: BTreeSet<u32> = before_second.iter().map(|(p, _)| *p).collect();
    ensure!(
        split.get(&format!("flo-{}", first.pid())) == Some(&first_partitions)
            && split.get(&format!("flo-{}", second.pid())) == Some(&second_partitions),
        "each member prints exactly its own partitions: assigned {split:?}, printed {first_partitions:?} and {second_partitions:?}"
    );

    // Kill one member without a goodbye; its last commits are what the survivor must resume at.
    first.kill9()?;
    let killed_at = Instant::now();
    let committed: BTreeMap<u32, u64> =
        client.group_offsets("g").await?.into_iter().map(|c| (c.partition, c.offset)).collect();
    expected.extend(produce(&client, "orders", 1200, 1200).await?);

    cluster
        .wait_for("the survivor to own all six partitions", WAIT, || async {
            let owners = owners(&cluster, "g").await?;
            ensure!(owners.len() == 1 && owners.values().all(|p| p.len() == 6), "assignment so far: {owners:?}");
            Ok(())
        })
        .await?;
    println!("hand-over after SIGKILL took {:?} (session timeout {SESSION_TIMEOUT_MS} ms)", killed_at.elapsed());
    cluster
        .wait_for("every record printed by someone", WAIT, || async {
            let seen: BTreeSet<(u32, u64)> = before_first.iter().copied().chain(printed(&second)?).collect();
            ensure!(
                seen.is_superset(&expected),
                "{} of {} records printed",
                seen.intersection(&expected).count(),
                expected.len()
            );
            Ok(())
        })
        .await?;
    let after_second = printed(&second)?;
    for partition in &first_partitions {
        let resumed_at = after_second.iter().filter(|(p, _)| p == partition).map(|(_, o)| *o).min();
        let committed_at = committed.get(partition).copied().unwrap_or(0);
        ensure!(
            resumed_at == Some(committed_at),
            "partition {partition}: the survivor started at {resumed_at:?}, the dead member's last commit was {committed_at}"
        );
        let redelivered = before_first.iter().filter(|(p, o)| p == partition && *o >= committed_at).count();
        println!("partition {partition}: {redelivered} records re-delivered after the kill (after the last commit)");
    }
    let duplicates: usize = {
        let mut count: BTreeMap<(u32, u64), usize> = BTreeMap::new();
        for key in after_second.iter().chain(&before_first) {
            *count.entry(*key).or_default() += 1;
        }
        count.values().filter(|n| **n > 1).count()
    };
    let dead_uncommitted: usize =
        before_first.iter().filter(|(p, o)| *o >= committed.get(p).copied().unwrap_or(0)).count();
    ensure!(
        duplicates == dead_uncommitted,
        "{duplicates} records printed twice; only the {dead_uncommitted} after the last commits may be"
    );
    drop(second);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_reports_lag_and_reset_needs_an_inactive_group() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic("events", 1, 3).await?;
    let started_ms = flotilla_types::SystemClock.now_ms();
    let records: Vec<v1::Record> = (0..100).map(|i| record("k", format!("e{i}"))).collect();
    client.produce("events", Some(0), records).await?;

    // A member that prints 30 records, commits them and leaves.
    let output = cluster.flo(&["consume", "events", "--group", "audit", "-n", "30", "-o", "json"], None).await?;
    ensure!(stdout_of(&output, "flo consume --group -n 30")?.lines().count() == 30, "printed {:?}", output);
    let output = cluster.flo(&["group", "describe", "audit", "-o", "json"], None).await?;
    let description: Value = serde_json::from_str(&stdout_of(&output, "flo group describe")?)?;
    let partition = &description["partitions"][0];
    ensure!(description["state"] == "EMPTY", "the member left: {description}");
    ensure!(partition["committed_offset"] == 30, "{description}");
    ensure!(partition["log_end_offset"] == 100 && partition["lag_records"] == 70, "{description}");
    let lag_ms = partition["lag_ms"].as_i64().context("lag_ms")?;
    let upper = flotilla_types::SystemClock.now_ms() - started_ms + 1000;
    ensure!(
        lag_ms > 0 && lag_ms <= upper,
        "lag {lag_ms} ms: the oldest unprocessed record was produced at most {upper} ms ago"
    );
    let table = stdout_of(&cluster.flo(&["group", "describe", "audit"], None).await?, "describe table")?;
    ensure!(table.contains("total lag 70 records"), "{table}");

    // Reset is refused while a member is active, and names it.
    let follower = cluster.spawn_flo(&[
        "consume",
        "events",
        "--group",
        "audit",
        "--follow",
        "--session-timeout-ms",
        SESSION_TIMEOUT_MS,
    ])?;
    cluster
        .wait_for("the follower to join", WAIT, || async {
            ensure!(owners(&cluster, "audit").await?.len() == 1, "not joined yet");
            Ok(())
        })
        .await?;
    let output = cluster.flo(&["group", "reset", "audit", "--to-earliest"], None).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success() && stderr.contains("group \"audit\" has 1 active members"), "{stderr}");
    drop(follower);

    // Once the killed follower is evicted, resets work: by offset (checked against the log),
    // by time, to the end.
    cluster
        .wait_for("an inactive group to reset", WAIT, || async {
            let output = cluster.flo(&["group", "reset", "audit", "--to-offset", "40", "-o", "json"], None).await?;
            let reset: Value = serde_json::from_str(&stdout_of(&output, "flo group reset")?)?;
            ensure!(reset[0]["offset"] == 40, "{reset}");
            Ok(())
        })
        .await?;
    let output = cluster.flo(&["group", "reset", "audit", "--to-offset", "1000"], None).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success() && stderr.contains("offset 1000") && stderr.contains("0..=100"), "{stderr}");
    let fortieth = client.fetch("events", 0, 40, 1, 0, 0).await?.records[0].record.clone().context("record")?;
    let output = cluster
        .flo(&["group", "reset", "audit", "--to-time", &fortieth.timestamp_ms.to_string(), "-o", "json"], None)
        .await?;
    let reset: Value = serde_json::from_str(&stdout_of(&output, "flo group reset --to-time")?)?;
    // Records of one produce call share a timestamp: the first at or after it is offset 0.
    ensure!(reset[0]["offset"].as_u64().is_some_and(|o| o <= 40), "{reset}");
    let output = cluster.flo(&["group", "reset", "audit", "--to-latest", "-o", "json"], None).await?;
    let reset: Value = serde_json::from_str(&stdout_of(&output, "flo group reset --to-latest")?)?;
    ensure!(reset[0]["offset"] == 100, "{reset}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_group_calls_get_errors_naming_the_value() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic("t", 2, 3).await?;
    client.produce("t", Some(0), vec![record("k", "a"), record("k", "b")]).await?;
    let join = |topics: Vec<&str>| v1::JoinGroupRequest {
        group: "g".into(),
        topics: topics.into_iter().map(String::from).collect(),
        session_timeout_ms: 30_000,
        rebalance_timeout_ms: 0,
        client_id: "test".into(),
    };
    let expect =
        |what: &str, result: Result<(), flotilla_client::ClientError>, code: ErrorCode, needle: &str| match result {
            Ok(()) => bail!("{what}: expected {} but it succeeded", code.name()),
            Err(err) => {
                ensure!(err.code() == Some(code), "{what}: expected {}, got {err}", code.name());
                ensure!(err.to_string().contains(needle), "{what}: {err:?} does not mention {needle:?}");
                Ok(())
            }
        };
    expect(
        "join of an unknown topic",
        client.join_group(join(vec!["nope"])).await.map(|_| ()),
        ErrorCode::UnknownTopic,
        "\"nope\"",
    )?;
    let mut bad_name = join(vec!["t"]);
    bad_name.group = "a b".into();
    expect(
        "join with a bad group name",
        client.join_group(bad_name).await.map(|_| ()),
        ErrorCode::InvalidGroupName,
        "\"a b\"",
    )?;

    // Member 1 gets both partitions; member 2 joins; member 1 releases partition 1 in a
    // heartbeat, and member 2 gets it at a later epoch.
    let one = client.join_group(join(vec!["t"])).await?;
    let two = client.join_group(join(vec!["t"])).await?;
    let heartbeat = |member_id: u64, member_epoch: u64, owned: Vec<u32>| v1::HeartbeatRequest {
        group: "g".into(),
        member_id,
        member_epoch,
        owned: vec![v1::TopicPartitions { topic: "t".into(), partitions: owned }],
    };
    let beat = client.group_heartbeat(heartbeat(one.member_id, one.member_epoch, vec![0, 1])).await?;
    ensure!(!beat.revoking.is_empty(), "member 1 should be giving a partition up: {beat:?}");
    let kept: Vec<u32> = beat.assignment.iter().flat_map(|tp| tp.partitions.clone()).collect();
    let moved: u32 = beat.revoking[0].partitions[0];
    client.group_heartbeat(heartbeat(one.member_id, beat.member_epoch, kept.clone())).await?;
    let gained = client.group_heartbeat(heartbeat(two.member_id, two.member_epoch, vec![])).await?;
    ensure!(gained.assignment.iter().any(|tp| tp.partitions.contains(&moved)), "{gained:?}");
    let commit = |member_id: u64, member_epoch: u64, partition: u32, offset: u64| v1::CommitOffsetsRequest {
        group: "g".into(),
        member_id,
        member_epoch,
        offsets: vec![v1::PartitionOffset { topic: "t".into(), partition, offset }],
    };
    expect(
        "commit with an epoch from before the hand-over",
        client.commit_offsets(commit(two.member_id, gained.member_epoch - 1, moved, 0)).await,
        ErrorCode::StaleMemberEpoch,
        &format!("sent member epoch {}", gained.member_epoch - 1),
    )?;
    expect(
        "commit by the previous owner",
        client.commit_offsets(commit(one.member_id, beat.member_epoch + 1, moved, 0)).await,
        ErrorCode::PartitionNotAssigned,
        &format!("partition {moved}"),
    )?;
    let high_watermark = if moved == 0 { 2 } else { 0 };
    expect(
        "commit beyond the log end",
        client.commit_offsets(commit(two.member_id, gained.member_epoch, moved, high_watermark + 5)).await,
        ErrorCode::OffsetOutOfRange,
        &format!("offset {}", high_watermark + 5),
    )?;
    client.commit_offsets(commit(two.member_id, gained.member_epoch, moved, high_watermark)).await?;
    if high_watermark > 0 {
        expect(
            "commit moving backwards",
            client.commit_offsets(commit(two.member_id, gained.member_epoch, moved, 1)).await,
            ErrorCode::OffsetRegression,
            "backwards",
        )?;
    }
    expect(
        "commit by a member that left",
        {
            client.leave_group("g", one.member_id).await?;
            client.commit_offsets(commit(one.member_id, one.member_epoch, kept[0], 0)).await
        },
        ErrorCode::UnknownMember,
        &format!("member {}", one.member_id),
    )?;
    expect(
        "reset of an active group",
        client.reset_group_offsets("g", Some("t"), flotilla_client::ResetTo::Earliest).await.map(|_| ()),
        ErrorCode::GroupActive,
        "\"g\"",
    )?;
    expect(
        "describe of an unknown group",
        client.describe_group("nobody").await.map(|_| ()),
        ErrorCode::UnknownGroup,
        "\"nobody\"",
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_consumer_seeks_pauses_resumes_and_auto_commits() -> anyhow::Result<()> {
    use flotilla_client::{Consumer, ConsumerConfig, ConsumerRecord};

    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic("s", 2, 3).await?;
    for partition in 0..2 {
        let records = (0..100).map(|i| record("k", format!("p{partition}-{i}"))).collect();
        client.produce("s", Some(partition), records).await?;
    }
    let mut config = ConsumerConfig::new("sdk", vec!["s".to_string()]);
    config.auto_commit = Some(Duration::from_millis(100));
    let consumer = Consumer::new(client.clone(), config);
    // Polls until `want` records arrived (or the wait runs out).
    async fn collect(consumer: &Consumer, want: usize, wait: Duration) -> anyhow::Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            out.extend(consumer.poll(Duration::from_millis(200)).await?);
        }
        Ok(out)
    }
    let offsets_of = |records: &[ConsumerRecord], partition: u32| -> Vec<u64> {
        records.iter().filter(|r| r.partition == partition).map(|r| r.offset).collect()
    };
    let first = collect(&consumer, 200, WAIT).await?;
    ensure!(first.len() == 200, "got {} of 200 records", first.len());
    for partition in 0..2 {
        ensure!(offsets_of(&first, partition) == (0..100).collect::<Vec<_>>(), "partition {partition} out of order");
    }

    // Seek back: the records from offset 50 come again.
    consumer.seek("s", 0, 50)?;
    let again = collect(&consumer, 50, WAIT).await?;
    ensure!(offsets_of(&again, 0) == (50..100).collect::<Vec<_>>(), "after seek: {:?}", offsets_of(&again, 0));

    // Paused partitions deliver nothing until resumed.
    consumer.pause("s", 1)?;
    for partition in 0..2 {
        let records = (100..110).map(|i| record("k", format!("p{partition}-{i}"))).collect();
        client.produce("s", Some(partition), records).await?;
    }
    let while_paused = collect(&consumer, 20, Duration::from_secs(3)).await?;
    ensure!(offsets_of(&while_paused, 1).is_empty(), "a paused partition delivered {:?}", offsets_of(&while_paused, 1));
    ensure!(offsets_of(&while_paused, 0) == (100..110).collect::<Vec<_>>(), "{:?}", offsets_of(&while_paused, 0));
    consumer.resume("s", 1)?;
    let resumed = collect(&consumer, 10, WAIT).await?;
    ensure!(offsets_of(&resumed, 1) == (100..110).collect::<Vec<_>>(), "after resume: {:?}", offsets_of(&resumed, 1));

    // Auto-commit commits what poll returned; close leaves the group.
    consumer.close().await?;
    let committed: BTreeMap<u32, u64> =
        client.group_offsets("sdk").await?.into_iter().map(|c| (c.partition, c.offset)).collect();
    ensure!(committed == BTreeMap::from([(0, 110), (1, 110)]), "committed {committed:?}");
    let description = client.describe_group("sdk").await?;
    ensure!(description.members.is_empty(), "the member left: {description:?}");
    Ok(())
}
