//! A tailing consumer: follows its share of the partitions from offset 0, recording every
//! fetch (the offsets asked for and returned, and the high watermark) so the checker can
//! judge contiguity and watermark monotonicity as consumers see them during faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flotilla_client::{Client, ErrorCode};

use super::error_chain;
use crate::checker::{Fetch, PartitionKey};
use crate::shared::Shared;

/// Records asked for per fetch.
const FETCH_RECORDS: u32 = 200;
/// Pause between two rounds over the assigned partitions.
const ROUND_PAUSE: Duration = Duration::from_millis(50);
/// Pause after a failed fetch.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

pub struct Consumer {
    id: u32,
    /// Assigned partitions and the next offset to read in each.
    positions: Vec<(PartitionKey, u64)>,
    client: Client,
    shared: Arc<Shared>,
}

impl Consumer {
    pub fn new(id: u32, partitions: Vec<PartitionKey>, client: Client, shared: Arc<Shared>) -> Consumer {
        Consumer { id, positions: partitions.into_iter().map(|p| (p, 0)).collect(), client, shared }
    }

    /// Tails the partitions until `stop` is set.
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            for (partition, next) in &mut self.positions {
                let sent_ms = self.shared.now().as_millis() as u64;
                match self.client.fetch(&partition.topic, partition.partition, *next, FETCH_RECORDS, 0, 0).await {
                    Ok(response) => {
                        let records: Vec<(u64, String)> = response
                            .records
                            .into_iter()
                            .map(|fetched| {
                                let value = fetched.record.map(|r| super::label(&r.value)).unwrap_or_default();
                                (fetched.offset, value)
                            })
                            .collect();
                        let from = *next;
                        if let Some((last, _)) = records.last() {
                            *next = last + 1;
                        }
                        self.shared.history.lock().fetches.push(Fetch {
                            consumer: self.id,
                            partition: partition.clone(),
                            from,
                            sent_ms,
                            high_watermark: response.high_watermark,
                            records,
                        });
                    }
                    Err(err) if err.code() == Some(ErrorCode::OffsetOutOfRange) => {
                        // Retention removed the records from here: go on at the log start.
                        let log_start = match self.client.list_offsets(&partition.topic).await {
                            Ok(all) => {
                                all.iter().find(|o| o.partition == partition.partition).map(|o| o.log_start_offset)
                            }
                            Err(_) => None,
                        };
                        match log_start {
                            Some(start) if start > *next => {
                                self.shared.note(format!(
                                    "consumer {} {partition}: offset {next} is below the log start {start}; skipping to it",
                                    self.id
                                ));
                                *next = start;
                            }
                            _ => tokio::time::sleep(ERROR_PAUSE).await,
                        }
                    }
                    Err(err) => {
                        self.shared.note(format!(
                            "consumer {} fetch {partition}@{next}: {}",
                            self.id,
                            error_chain(&err)
                        ));
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}
