//! A reliable producer: the SDK's idempotent, batching `Producer`, first one record at a time
//! (each `send` waits for its acknowledgement), then pipelined (`send_nowait` in a loop and
//! one `flush`), printing where each record landed.
//!
//! Run against the local cluster (`make cluster`):
//! `cargo run --release --example reliable_producer`; set `FLOTILLA_BROKERS` to point
//! elsewhere (default `127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103`).

use std::time::Duration;

use flotilla_client::{Client, ClientConfig, ClientError, ErrorCode, ProducerConfig, ProducerRecord};

const TOPIC: &str = "reliable-example";

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect_from_env(ClientConfig::default())?;
    match client.create_topic(TOPIC, 3, 0).await {
        Ok(_) => println!("created topic {TOPIC}"),
        Err(error) if error.code() == Some(ErrorCode::TopicExists) => {}
        Err(error) => return Err(error),
    }

    // Idempotent by default: a batch resent after a timeout or a leader change is appended once.
    let producer =
        client.producer(ProducerConfig { linger: Duration::from_millis(2), ..ProducerConfig::default() }).await?;
    println!("producer id {:?}", producer.producer_id());

    // One at a time: `send` resolves once the record is committed by a quorum.
    for i in 0..3 {
        let record = ProducerRecord::new(TOPIC, format!("sync {i}")).key(format!("user-{i}"));
        let ack = producer.send(record).await?;
        println!("sync {i}: partition {} offset {}", ack.partition, ack.offset);
    }

    // Pipelined: queue many records, then collect the acknowledgements. Records with the same
    // key land in the same partition in send order.
    let mut deliveries = Vec::new();
    for i in 0..1000 {
        let record = ProducerRecord::new(TOPIC, format!("pipelined {i}")).key(format!("user-{}", i % 10));
        deliveries.push(producer.send_nowait(record).await?);
    }
    producer.flush().await;
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let ack = delivery.await?;
        if i % 100 == 0 {
            println!("pipelined {i}: partition {} offset {}", ack.partition, ack.offset);
        }
    }
    let stats = producer.stats();
    println!("{} records in {} batches ({} requests)", stats.records, stats.batches, stats.requests);
    producer.close().await;
    Ok(())
}
