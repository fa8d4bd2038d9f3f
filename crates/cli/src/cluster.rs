//! `flo cluster`: membership and health.

use clap::Subcommand;
use flotilla_client::{Client, v1};
use serde_json::{Value, json};

use crate::output::{Output, Table, print_json, print_text, yes_no};

/// Cluster subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes with their addresses and liveness, and which node leads the metadata group.
    Status,
}

/// Runs a cluster subcommand.
pub async fn run(client: &Client, output: Output, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            match output {
                Output::Json => print_json(&status_json(&status)),
                Output::Table => print_text(&status_table(&status)),
            }
        }
    }
}

fn status_json(status: &v1::StatusResponse) -> Value {
    let nodes: Vec<Value> = status
        .nodes
        .iter()
        .map(|node| {
            json!({
                "id": node.id,
                "client_address": node.client_address,
                "peer_address": node.peer_address,
                "live": node.live,
                "last_seen_ms_ago": (node.last_seen_ms_ago >= 0).then_some(node.last_seen_ms_ago),
                "metadata_voter": node.metadata_voter,
                "metadata_leader": node.id == status.metadata_leader_id,
            })
        })
        .collect();
    json!({
        "metadata_leader_id": (status.metadata_leader_id != 0).then_some(status.metadata_leader_id),
        "metadata_term": status.metadata_term,
        "answered_by": status.answered_by,
        "nodes": nodes,
    })
}

fn status_table(status: &v1::StatusResponse) -> String {
    let mut table = Table::new(vec![
        "NODE",
        "CLIENT ADDRESS",
        "PEER ADDRESS",
        "LIVE",
        "LAST SEEN",
        "METADATA VOTER",
        "METADATA LEADER",
    ]);
    for node in &status.nodes {
        table.row(vec![
            node.id.to_string(),
            node.client_address.clone(),
            node.peer_address.clone(),
            yes_no(node.live),
            last_seen(node.last_seen_ms_ago),
            yes_no(node.metadata_voter),
            if node.id == status.metadata_leader_id { "leader".to_string() } else { String::new() },
        ]);
    }
    let leader = match status.metadata_leader_id {
        0 => "metadata leader: unknown".to_string(),
        id => format!("metadata leader: node {id} (term {})", status.metadata_term),
    };
    format!("{}\n{leader}; answered by node {}\n", table.render(), status.answered_by)
}

fn last_seen(ms_ago: i64) -> String {
    match ms_ago {
        ..0 => "never".to_string(),
        0..1000 => format!("{ms_ago} ms ago"),
        _ => format!("{:.1} s ago", ms_ago as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_marks_the_metadata_leader() {
        let node = |id: u64, live: bool, seen: i64| v1::Node {
            id,
            client_address: format!("127.0.0.1:710{id}"),
            peer_address: format!("127.0.0.1:720{id}"),
            live,
            last_seen_ms_ago: seen,
            metadata_voter: true,
        };
        let status = v1::StatusResponse {
            nodes: vec![node(1, true, 3), node(2, false, -1), node(3, true, 2500)],
            metadata_leader_id: 1,
            metadata_term: 4,
            answered_by: 2,
        };
        let text = status_table(&status);
        assert!(text.contains("metadata leader: node 1 (term 4); answered by node 2"), "{text}");
        assert!(text.contains("never") && text.contains("2.5 s ago") && text.contains("3 ms ago"), "{text}");
        let json = status_json(&status);
        assert_eq!(json["nodes"][0]["metadata_leader"], true);
        assert_eq!(json["nodes"][1]["last_seen_ms_ago"], Value::Null);
        assert_eq!(json["metadata_leader_id"], 1);
    }
}
