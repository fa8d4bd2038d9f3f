//! A consumer-group member with manual commits: poll, process, commit, repeat. Run it twice
//! (in two terminals) and the two members split the topic's partitions; stop one (Ctrl-C
//! leaves at once, kill -9 after its session timeout) and the other takes its partitions over,
//! resuming after the last commit. Nothing is skipped; records after the last commit of a
//! dead member are processed again (at-least-once), so processing should be idempotent.
//!
//! Run against the local cluster (`make cluster`), after `reliable_producer` has written some
//! records: `cargo run --release --example manual_commit_consumer`. `FLOTILLA_BROKERS` points
//! elsewhere.

use std::time::Duration;

use flotilla_client::{Client, ClientConfig, ClientError, Consumer, ConsumerConfig};

const TOPIC: &str = "reliable-example";
const GROUP: &str = "manual-commit-example";

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect_from_env(ClientConfig::default())?;

    let mut config = ConsumerConfig::new(GROUP, vec![TOPIC.to_string()]);
    config.client_id = format!("example-{}", std::process::id());
    config.session_timeout = Duration::from_secs(10);
    let consumer = Consumer::new(client, config);

    let mut processed = 0u64;
    loop {
        tokio::select! {
            polled = consumer.poll(Duration::from_secs(1)) => {
                let records = polled?;
                if records.is_empty() {
                    println!("idle; assigned {:?}", consumer.assignment());
                    continue;
                }
                for record in &records {
                    // Process the record. It may come again after a crash, so make this
                    // idempotent (e.g. an upsert keyed by topic/partition/offset).
                    processed += 1;
                    if processed.is_multiple_of(100) {
                        println!(
                            "{processed} processed; latest {}/{}@{}: {}",
                            record.topic,
                            record.partition,
                            record.offset,
                            String::from_utf8_lossy(&record.value)
                        );
                    }
                }
                // Only now are they done: commit, then poll again. A partition moving to
                // another member is handed over at the next poll, after this commit.
                consumer.commit().await?;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    consumer.commit().await?;
    consumer.close().await?;
    println!("left group {GROUP} after processing {processed} records");
    Ok(())
}
