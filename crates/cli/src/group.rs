//! `flo group`: list consumer groups, describe one (members, assignments, lag), reset an
//! inactive group's committed offsets.

use clap::Subcommand;
use flotilla_client::{Client, ResetTo, v1};
use serde_json::{Value, json};

use crate::output::{Output, Table, parse_utc, print_json, print_text, thousands, utc};

/// Group subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups with their state and member count.
    List,
    /// Show a group's members and, per partition, committed offset, log end and lag.
    ///
    /// Lag is counted in records (log end minus committed offset) and in time (the age of the
    /// oldest record not yet committed as processed).
    Describe {
        /// Group name.
        group: String,
    },
    /// Move an inactive group's committed offsets (stop its members first).
    #[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_time"])))]
    Reset {
        /// Group name.
        group: String,
        /// Reset only this topic (default: every topic the group has offsets for). Needed when
        /// the group has never committed.
        #[arg(long)]
        topic: Option<String>,
        /// To the first retained record: reprocess everything.
        #[arg(long)]
        to_earliest: bool,
        /// To the log end: skip the backlog.
        #[arg(long)]
        to_latest: bool,
        /// To this offset in every partition reset.
        #[arg(long, value_name = "OFFSET")]
        to_offset: Option<u64>,
        /// To the first record at or after this time: milliseconds since the Unix epoch, or a
        /// UTC time like 2026-11-25T10:00:00Z or "2026-11-25 10:00:00 UTC".
        #[arg(long, value_name = "TIME")]
        to_time: Option<String>,
    },
}

/// Runs a group subcommand.
pub async fn run(client: &Client, output: Output, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            match output {
                Output::Json => print_json(&Value::Array(groups.iter().map(summary_json).collect())),
                Output::Table => {
                    let mut table = Table::new(vec!["GROUP", "STATE", "MEMBERS", "TOPICS"]);
                    for group in &groups {
                        table.row(vec![
                            group.group.clone(),
                            group.state.clone(),
                            group.members.to_string(),
                            group.topics.join(","),
                        ]);
                    }
                    print_text(&table.render())
                }
            }
        }
        GroupCommand::Describe { group } => {
            let description = client.describe_group(&group).await?;
            match output {
                Output::Json => print_json(&describe_json(&description)),
                Output::Table => print_text(&describe_table(&description)),
            }
        }
        GroupCommand::Reset { group, topic, to_earliest, to_latest, to_offset, to_time } => {
            let to = match (to_earliest, to_latest, to_offset, to_time) {
                (true, ..) => ResetTo::Earliest,
                (_, true, ..) => ResetTo::Latest,
                (_, _, Some(offset), _) => ResetTo::Offset(offset),
                (_, _, _, Some(time)) => ResetTo::Timestamp(parse_time(&time)?),
                _ => anyhow::bail!("say where to reset to: --to-earliest, --to-latest, --to-offset or --to-time"),
            };
            let offsets = client.reset_group_offsets(&group, topic.as_deref(), to).await?;
            match output {
                Output::Json => print_json(&Value::Array(offsets.iter().map(committed_json).collect())),
                Output::Table => {
                    let mut table = Table::new(vec!["TOPIC", "PARTITION", "NEW OFFSET"]);
                    for offset in &offsets {
                        table.row(vec![offset.topic.clone(), offset.partition.to_string(), offset.offset.to_string()]);
                    }
                    print_text(&table.render())
                }
            }
        }
    }
}

/// `--to-time`: milliseconds since the epoch, or a UTC time.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    parse_utc(text).ok_or_else(|| {
        anyhow::anyhow!(
            "--to-time {text:?} is neither milliseconds since the Unix epoch nor a UTC time like 2026-11-25T10:00:00Z"
        )
    })
}

fn summary_json(group: &v1::GroupSummary) -> Value {
    json!({ "group": group.group, "state": group.state, "members": group.members, "topics": group.topics })
}

fn committed_json(offset: &v1::CommittedPartitionOffset) -> Value {
    json!({ "topic": offset.topic, "partition": offset.partition, "offset": offset.offset })
}

fn partitions_text(partitions: &[v1::TopicPartitions]) -> String {
    partitions
        .iter()
        .map(|tp| {
            let list: Vec<String> = tp.partitions.iter().map(u32::to_string).collect();
            format!("{}[{}]", tp.topic, list.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lag in milliseconds as people read it: "0s", "850ms", "12.3s", "4m05s", "2h13m".
fn age(ms: i64) -> String {
    match ms {
        ..=0 => "0s".to_string(),
        1..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

fn describe_table(description: &v1::DescribeGroupResponse) -> String {
    let summary = description.summary.clone().unwrap_or_default();
    let total: u64 = description.partitions.iter().map(|p| p.lag_records).sum();
    let mut text = format!(
        "group {}  state {}  members {}  epoch {}  total lag {} records\n\n",
        summary.group,
        summary.state,
        summary.members,
        description.group_epoch,
        thousands(total)
    );
    let mut members = Table::new(vec!["MEMBER", "CLIENT", "EPOCH", "LAST HEARTBEAT", "ASSIGNED", "REVOKING"]);
    for member in &description.members {
        members.row(vec![
            member.member_id.to_string(),
            member.client_id.clone(),
            member.member_epoch.to_string(),
            if member.last_heartbeat_ms_ago < 0 {
                "-".into()
            } else {
                format!("{} ago", age(member.last_heartbeat_ms_ago))
            },
            partitions_text(&member.assignment),
            partitions_text(&member.revoking),
        ]);
    }
    if !description.members.is_empty() {
        text.push_str(&members.render());
        text.push('\n');
    }
    let mut partitions =
        Table::new(vec!["TOPIC", "PARTITION", "MEMBER", "COMMITTED", "LOG END", "LAG", "LAG TIME", "COMMITTED AT"]);
    for p in &description.partitions {
        let unknown = |value: String| if p.log_known { value } else { "?".to_string() };
        partitions.row(vec![
            p.topic.clone(),
            p.partition.to_string(),
            if p.member_id == 0 { "-".into() } else { p.member_id.to_string() },
            p.committed_offset.map_or("-".to_string(), |o| o.to_string()),
            unknown(p.log_end_offset.to_string()),
            unknown(p.lag_records.to_string()),
            unknown(age(p.lag_ms)),
            if p.committed_offset.is_some() { utc(p.committed_at_ms) } else { "-".into() },
        ]);
    }
    text.push_str(&partitions.render());
    text
}

fn describe_json(description: &v1::DescribeGroupResponse) -> Value {
    let summary = description.summary.clone().unwrap_or_default();
    let wire = |list: &[v1::TopicPartitions]| -> Value {
        list.iter().map(|tp| json!({ "topic": tp.topic, "partitions": tp.partitions })).collect()
    };
    json!({
        "group": summary.group,
        "state": summary.state,
        "epoch": description.group_epoch,
        "members": description.members.iter().map(|m| json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "member_epoch": m.member_epoch,
            "topics": m.topics,
            "assignment": wire(&m.assignment),
            "revoking": wire(&m.revoking),
            "session_timeout_ms": m.session_timeout_ms,
            "last_heartbeat_ms_ago": m.last_heartbeat_ms_ago,
        })).collect::<Vec<_>>(),
        "partitions": description.partitions.iter().map(|p| json!({
            "topic": p.topic,
            "partition": p.partition,
            "member_id": if p.member_id == 0 { Value::Null } else { json!(p.member_id) },
            "committed_offset": p.committed_offset,
            "committed_at_ms": p.committed_offset.map(|_| p.committed_at_ms),
            "log_start_offset": p.log_start_offset,
            "log_end_offset": p.log_end_offset,
            "lag_records": p.lag_records,
            "lag_ms": p.lag_ms,
            "log_known": p.log_known,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_340), "12.3s");
        assert_eq!(age(245_000), "4m05s");
        assert_eq!(age(7_980_000), "2h13m");
    }

    #[test]
    fn reset_times_take_milliseconds_or_utc() {
        assert_eq!(parse_time("1700000000000").expect("ms"), 1_700_000_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").expect("rfc3339"), 1_000);
        let err = parse_time("last tuesday").expect_err("refused");
        assert!(err.to_string().contains("\"last tuesday\""), "{err}");
    }
}
