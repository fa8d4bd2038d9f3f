//! Ordered processing per key, in parallel across keys. Records with the same key land in the
//! same partition (murmur2 of the key, as Kafka does) and a partition is consumed in offset
//! order, so one member sees each key's records in the order they were produced. To process
//! in parallel without losing that order, this member routes each record by its key to one of
//! a fixed set of worker lanes (one task each): a key always goes to the same lane, lanes run
//! concurrently, and the batch is committed only when every lane has finished its share.
//!
//! The example produces "account" events (an idempotent producer: retries never reorder or
//! duplicate them), consumes them in lanes, and checks that every account's events arrive in
//! sequence. Run against the local cluster (`make cluster`):
//! `cargo run --release --example ordered_per_key`.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_client::{
    Client, ClientConfig, ClientError, Consumer, ConsumerConfig, ErrorCode, ProducerConfig, ProducerRecord,
};
use flotilla_types::murmur2;
use tokio::sync::{mpsc, oneshot};

const TOPIC: &str = "ordered-example";
const ACCOUNTS: u32 = 20;
const EVENTS_PER_ACCOUNT: u32 = 50;
const LANES: usize = 4;

/// One unit of work for a lane: an account's event, or a barrier that answers once the lane
/// has processed everything sent before it.
enum Work {
    Event { account: String, sequence: u32 },
    Barrier(oneshot::Sender<()>),
}

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect_from_env(ClientConfig::default())?;
    match client.create_topic(TOPIC, 4, 0).await {
        Ok(_) => {}
        Err(error) if error.code() == Some(ErrorCode::TopicExists) => {}
        Err(error) => return Err(error),
    }

    // Produce: account-N's events carry sequence numbers 0, 1, 2, ... in order.
    let producer = client.producer(ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for sequence in 0..EVENTS_PER_ACCOUNT {
        for account in 0..ACCOUNTS {
            let record = ProducerRecord::new(TOPIC, sequence.to_string()).key(format!("account-{account}"));
            deliveries.push(producer.send_nowait(record).await?);
        }
    }
    producer.flush().await;
    for delivery in deliveries {
        delivery.await?;
    }
    producer.close().await;

    // Consume in lanes. A fresh group name per run, so each run reads the topic from the start.
    let group = format!("ordered-example-{}", std::process::id());
    let consumer = Consumer::new(client, ConsumerConfig::new(group, vec![TOPIC.to_string()]));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, u32)>();
    let lanes: Vec<mpsc::UnboundedSender<Work>> = (0..LANES)
        .map(|_| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
            let done = done_tx.clone();
            tokio::spawn(async move {
                while let Some(work) = rx.recv().await {
                    match work {
                        Work::Event { account, sequence } => {
                            // The "processing": here it only reports what it saw, in order.
                            let _ = done.send((account, sequence));
                        }
                        Work::Barrier(reply) => {
                            let _ = reply.send(());
                        }
                    }
                }
            });
            tx
        })
        .collect();

    let total = u64::from(ACCOUNTS * EVENTS_PER_ACCOUNT);
    let mut next_expected: BTreeMap<String, u32> = BTreeMap::new();
    let mut seen = 0u64;
    while seen < total {
        let records = consumer.poll(Duration::from_secs(5)).await?;
        if records.is_empty() {
            println!("waiting for records ({seen} of {total} so far)");
            continue;
        }
        for record in records {
            let key = record.key.clone().unwrap_or_default();
            let lane = murmur2(&key) as usize % LANES;
            let account = String::from_utf8_lossy(&key).into_owned();
            let sequence: u32 = String::from_utf8_lossy(&record.value).parse().unwrap_or(u32::MAX);
            let _ = lanes[lane].send(Work::Event { account, sequence });
        }
        // Wait for every lane to finish this batch, then commit it.
        let mut barriers = Vec::new();
        for lane in &lanes {
            let (tx, rx) = oneshot::channel();
            let _ = lane.send(Work::Barrier(tx));
            barriers.push(rx);
        }
        for barrier in barriers {
            let _ = barrier.await;
        }
        while let Ok((account, sequence)) = done_rx.try_recv() {
            let expected = next_expected.entry(account.clone()).or_insert(0);
            if sequence != *expected {
                eprintln!("{account}: event {sequence} arrived where {expected} was due");
                std::process::exit(1);
            }
            *expected += 1;
            seen += 1;
        }
        consumer.commit().await?;
    }
    consumer.close().await?;
    println!("{seen} events of {ACCOUNTS} accounts processed in {LANES} lanes, each account in order");
    Ok(())
}
