//! `flo topic`: create, list, describe, alter and delete topics, trim a partition, and move a
//! partition's replica.

use clap::Subcommand;
use flotilla_client::{Client, v1};
use serde_json::{Value, json};

use crate::output::{Output, Table, bytes_human, print_json, print_text, utc, yes_no};

/// Topic subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1-249 characters of [a-zA-Z0-9._-], not "." or "..".
        name: String,
        /// Number of partitions.
        #[arg(short, long, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition. Default: 3, or the node count if smaller (the server
        /// picks).
        #[arg(short, long, value_name = "R")]
        replication_factor: Option<u32>,
        /// A configuration override, KEY=VALUE (repeatable): retention.ms, retention.bytes,
        /// max.message.bytes. `flo topic describe` shows every key's effective value.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
    },
    /// Change a topic's configuration.
    Alter {
        /// Topic name.
        name: String,
        /// Set KEY to VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// Return KEY to its default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_config: Vec<String>,
    },
    /// Delete a partition's records below an offset (the log start becomes that offset).
    Trim {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Records at offsets below this one are deleted; at most the high watermark.
        #[arg(long, value_name = "OFFSET")]
        before: u64,
    },
    /// List all topics.
    List,
    /// Show a topic's partitions: leader, replicas, offsets, and what each replica holds.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Check that every partition's replicas hold the same records: each replica hashes the
    /// range all of them still hold (FNV-1a over offset, key, value, headers and timestamp of
    /// every record). Exits with 1 if any replica disagrees or cannot answer.
    Verify {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its records.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Move a partition's replica from one node to another. Returns once the catalogue has the
    /// move; the partition's leader then copies the log to the new node and swaps it in (watch
    /// `flo topic describe`).
    MoveReplica {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// The node whose replica moves.
        #[arg(long, value_name = "NODE")]
        from: u64,
        /// The node that receives it: registered, and never a replica of this partition.
        #[arg(long, value_name = "NODE")]
        to: u64,
    },
}

/// Runs a topic subcommand.
pub async fn run(client: &Client, output: Output, command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create { name, partitions, replication_factor, config } => {
            let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let topic =
                client.create_topic_with_config(&name, partitions, replication_factor.unwrap_or(0), &config).await?;
            match output {
                Output::Json => print_json(&topic_json(&topic)),
                Output::Table => print_text(&format!(
                    "created topic {}: partitions {}, replication factor {}, id {}\n",
                    topic.name, topic.partitions, topic.replication_factor, topic.id
                )),
            }
        }
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            match output {
                Output::Json => print_json(&json!({ "topics": topics.iter().map(topic_json).collect::<Vec<_>>() })),
                Output::Table => {
                    let mut table = Table::new(vec!["TOPIC", "PARTITIONS", "REPLICATION FACTOR", "ID", "CREATED"]);
                    for topic in &topics {
                        table.row(vec![
                            topic.name.clone(),
                            topic.partitions.to_string(),
                            topic.replication_factor.to_string(),
                            topic.id.to_string(),
                            utc(topic.created_at_ms),
                        ]);
                    }
                    print_text(&table.render())
                }
            }
        }
        TopicCommand::Describe { name } => {
            let description = client.describe_topic(&name).await?;
            match output {
                Output::Json => print_json(&describe_json(&description)),
                Output::Table => print_text(&describe_table(&description)),
            }
        }
        TopicCommand::Alter { name, config, delete_config } => {
            if config.is_empty() && delete_config.is_empty() {
                anyhow::bail!("nothing to change: give --config KEY=VALUE or --delete-config KEY");
            }
            let set: Vec<(&str, &str)> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let delete: Vec<&str> = delete_config.iter().map(String::as_str).collect();
            let effective = client.alter_topic_config(&name, &set, &delete).await?;
            match output {
                Output::Json => print_json(&json!({ "topic": name, "config": config_json(&effective) })),
                Output::Table => print_text(&format!("altered topic {name}\n\n{}", config_table(&effective))),
            }
        }
        TopicCommand::Trim { topic, partition, before } => {
            let log_start = client.delete_records(&topic, partition, before).await?;
            match output {
                Output::Json => {
                    print_json(&json!({ "topic": topic, "partition": partition, "log_start_offset": log_start }))
                }
                Output::Table => print_text(&format!(
                    "trimmed {topic} partition {partition}: records below offset {log_start} are deleted\n"
                )),
            }
        }
        TopicCommand::Verify { name } => {
            let report = verify(client, &name).await?;
            match output {
                Output::Json => print_json(&report.json)?,
                Output::Table => print_text(&report.table.render())?,
            }
            if !report.agreed {
                anyhow::bail!("replicas of topic {name} disagree or did not answer (see above)");
            }
            Ok(())
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            match output {
                Output::Json => print_json(&json!({ "deleted": name })),
                Output::Table => print_text(&format!("deleted topic {name}\n")),
            }
        }
        TopicCommand::MoveReplica { topic, partition, from, to } => {
            client.move_replica(&topic, partition, from, to).await?;
            match output {
                Output::Json => print_json(&json!({ "topic": topic, "partition": partition, "from": from, "to": to })),
                Output::Table => print_text(&format!(
                    "moving {topic} partition {partition} from node {from} to node {to}: the catalogue has it; \
                     the replica catches up in the background (see `flo topic describe {topic}`)\n"
                )),
            }
        }
    }
}

/// What `flo topic verify` found.
struct Verification {
    table: Table,
    json: Value,
    agreed: bool,
}

/// Asks every replica of every partition of `name` for its digest of the range all of them
/// hold, and compares.
async fn verify(client: &Client, name: &str) -> anyhow::Result<Verification> {
    let description = client.describe_topic(name).await?;
    let nodes: std::collections::BTreeMap<u64, String> =
        client.cluster_status().await?.nodes.into_iter().map(|n| (n.id, n.client_address)).collect();
    let mut table = Table::new(vec!["PARTITION", "RANGE", "REPLICA", "DIGEST", "VERDICT"]);
    let mut partitions = Vec::new();
    let mut agreed = true;
    for partition in sorted_partitions(&description) {
        let reachable: Vec<&v1::ReplicaState> = partition.replica_states.iter().filter(|r| r.reachable).collect();
        let start = reachable.iter().map(|r| r.log_start_offset).max().unwrap_or(0);
        let end = reachable.iter().map(|r| r.log_end_offset).min().unwrap_or(0).max(start);
        let mut digests: Vec<(u64, Result<u64, String>)> = Vec::new();
        for node in &partition.replicas {
            let digest = match nodes.get(node) {
                Some(address) => client
                    .replica_digest(address, partition.group_id, Some(start), Some(end))
                    .await
                    .map(|d| d.digest)
                    .map_err(|e| e.to_string()),
                None => Err(format!("node {node} is not registered")),
            };
            digests.push((*node, digest));
        }
        let first = digests.iter().find_map(|(_, d)| d.as_ref().ok().copied());
        let partition_agrees = digests.iter().all(|(_, d)| d.as_ref().ok().copied() == first && first.is_some());
        agreed &= partition_agrees;
        for (i, (node, digest)) in digests.iter().enumerate() {
            table.row(vec![
                if i == 0 { partition.partition.to_string() } else { String::new() },
                if i == 0 { format!("{start}..{end}") } else { String::new() },
                node.to_string(),
                match digest {
                    Ok(d) => format!("{d:016x}"),
                    Err(_) => "-".to_string(),
                },
                match digest {
                    Ok(d) if Some(*d) == first && partition_agrees => "agrees".to_string(),
                    Ok(_) => "DIFFERS".to_string(),
                    Err(e) => format!("NO ANSWER: {e}"),
                },
            ]);
        }
        partitions.push(json!({
            "partition": partition.partition,
            "start_offset": start,
            "end_offset": end,
            "agree": partition_agrees,
            "replicas": digests.iter().map(|(node, d)| json!({
                "node_id": node,
                "digest": d.as_ref().ok().map(|d| format!("{d:016x}")),
                "error": d.as_ref().err(),
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(Verification { table, json: json!({ "topic": name, "agree": agreed, "partitions": partitions }), agreed })
}

/// Parses `KEY=VALUE`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE (for example retention.ms=60000)")),
    }
}

fn config_json(config: &[v1::ConfigEntry]) -> Value {
    config.iter().map(|e| (e.key.clone(), json!({ "value": e.value, "default": e.is_default }))).collect()
}

fn config_table(config: &[v1::ConfigEntry]) -> String {
    let mut table = Table::new(vec!["CONFIG", "VALUE", "SOURCE"]);
    for entry in config {
        table.row(vec![
            entry.key.clone(),
            entry.value.clone(),
            if entry.is_default { "default" } else { "topic" }.to_string(),
        ]);
    }
    table.render()
}

fn topic_json(topic: &v1::Topic) -> Value {
    json!({
        "name": topic.name,
        "id": topic.id,
        "partitions": topic.partitions,
        "replication_factor": topic.replication_factor,
        "created_at_ms": topic.created_at_ms,
    })
}

fn describe_json(description: &v1::DescribeTopicResponse) -> Value {
    let partitions: Vec<Value> = sorted_partitions(description)
        .into_iter()
        .map(|p| {
            let replica_states: Vec<Value> = p
                .replica_states
                .iter()
                .map(|r| {
                    json!({
                        "node_id": r.node_id,
                        "reachable": r.reachable,
                        "is_leader": r.is_leader,
                        "term": r.term,
                        "log_start_offset": r.log_start_offset,
                        "log_end_offset": r.log_end_offset,
                        "retained_bytes": r.retained_bytes,
                        "applied_index": r.applied_index,
                    })
                })
                .collect();
            json!({
                "partition": p.partition,
                "group_id": p.group_id,
                "leader_id": (p.leader_id != 0).then_some(p.leader_id),
                "replicas": p.replicas,
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
                "retained_bytes": p.retained_bytes,
                "replica_states": replica_states,
            })
        })
        .collect();
    json!({
        "topic": description.topic.as_ref().map(topic_json),
        "config": config_json(&description.config),
        "partitions": partitions,
    })
}

/// One row per replica; the partition's own columns (from its leader) fill only its first row,
/// so replicas of a partition sit together and their first and end offsets (FIRST, END) and
/// retained sizes line up for comparison.
fn describe_table(description: &v1::DescribeTopicResponse) -> String {
    let mut text = String::new();
    if let Some(topic) = &description.topic {
        text.push_str(&format!(
            "topic {}: id {}, partitions {}, replication factor {}, created {}\n\n",
            topic.name,
            topic.id,
            topic.partitions,
            topic.replication_factor,
            utc(topic.created_at_ms)
        ));
    }
    if !description.config.is_empty() {
        text.push_str(&config_table(&description.config));
        text.push('\n');
    }
    let mut table = Table::new(vec![
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "LOG START",
        "HIGH WATERMARK",
        "REPLICA",
        "REACHABLE",
        "ROLE",
        "TERM",
        "FIRST",
        "END",
        "SIZE",
        "APPLIED INDEX",
    ]);
    for partition in sorted_partitions(description) {
        let partition_cells = vec![
            partition.partition.to_string(),
            match partition.leader_id {
                0 => "none".to_string(),
                id => id.to_string(),
            },
            partition.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            partition.log_start_offset.to_string(),
            partition.high_watermark.to_string(),
        ];
        if partition.replica_states.is_empty() {
            table.row(partition_cells);
            continue;
        }
        for (i, replica) in partition.replica_states.iter().enumerate() {
            let mut cells = if i == 0 { partition_cells.clone() } else { vec![String::new(); partition_cells.len()] };
            cells.push(replica.node_id.to_string());
            cells.push(yes_no(replica.reachable));
            if replica.reachable {
                cells.push(if replica.is_leader { "leader" } else { "follower" }.to_string());
                cells.push(replica.term.to_string());
                cells.push(replica.log_start_offset.to_string());
                cells.push(replica.log_end_offset.to_string());
                cells.push(bytes_human(replica.retained_bytes));
                cells.push(replica.applied_index.to_string());
            } else {
                cells.extend(["-", "-", "-", "-", "-", "-"].map(String::from));
            }
            table.row(cells);
        }
    }
    text.push_str(&table.render());
    text
}

fn sorted_partitions(description: &v1::DescribeTopicResponse) -> Vec<&v1::PartitionDescription> {
    let mut partitions: Vec<&v1::PartitionDescription> = description.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition);
    partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_lists_every_replica_under_its_partition() {
        let replica = |node_id: u64, is_leader: bool, reachable: bool| v1::ReplicaState {
            node_id,
            reachable,
            is_leader,
            term: if reachable { 2 } else { 0 },
            log_end_offset: if reachable { 120 } else { 0 },
            applied_index: if reachable { 130 } else { 0 },
            log_start_offset: if reachable { 20 } else { 0 },
            retained_bytes: if reachable { 3 << 20 } else { 0 },
        };
        let description = v1::DescribeTopicResponse {
            topic: Some(v1::Topic {
                name: "orders".into(),
                id: 7,
                partitions: 1,
                replication_factor: 3,
                created_at_ms: 0,
            }),
            partitions: vec![v1::PartitionDescription {
                partition: 0,
                group_id: 1,
                leader_id: 1,
                replicas: vec![1, 2, 3],
                log_start_offset: 0,
                high_watermark: 120,
                replica_states: vec![replica(1, true, true), replica(2, false, true), replica(3, false, false)],
                retained_bytes: 3 << 20,
            }],
            config: vec![v1::ConfigEntry {
                key: "retention.bytes".into(),
                value: "16777216".into(),
                is_default: false,
            }],
        };
        let text = describe_table(&description);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("topic orders: id 7, partitions 1,"), "{text}");
        assert!(
            lines[3].starts_with("retention.bytes") && lines[3].contains("16777216") && lines[3].contains("topic"),
            "{text}"
        );
        assert!(lines[6].starts_with("0 ") && lines[6].contains("leader") && lines[6].contains("120"), "{text}");
        assert!(lines[6].contains("3.0 MiB"), "sizes are human-readable: {text}");
        assert!(lines[7].trim_start().starts_with("2 ") && lines[7].contains("follower"), "{text}");
        assert!(lines[8].trim_start().starts_with("3 ") && lines[8].contains(" no "), "{text}");
        let json = describe_json(&description);
        assert_eq!(json["partitions"][0]["replica_states"][2]["reachable"], false);
        assert_eq!(json["partitions"][0]["replica_states"][0]["log_start_offset"], 20);
        assert_eq!(json["topic"]["name"], "orders");
        assert_eq!(json["config"]["retention.bytes"]["value"], "16777216");
        assert_eq!(parse_key_value("retention.ms=60000").expect("valid"), ("retention.ms".into(), "60000".into()));
        assert!(parse_key_value("retention.ms").expect_err("no =").contains("KEY=VALUE"));
    }
}
