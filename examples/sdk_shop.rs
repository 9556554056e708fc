//! The Rust SDK, both sides: a worker with in-process handlers, and a client that spawns,
//! waits and maps over them.
//!
//! ```sh
//! hopper serve &                                           # a server on 127.0.0.1:7433
//! cargo run -p hopper-sdk --example sdk_shop               # or pass the server's URL
//! ```

use std::time::Duration;

use futures_util::StreamExt;
use hopper_sdk::{Client, FunctionOptions, MapOptions, Worker};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Quote {
    item: String,
    total_cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7433".into());
    let client = Client::new(&url, std::env::var("HOPPER_TOKEN").ok())?;

    // The worker: typed async handlers, one input at a time or in batches.
    let worker = Worker::new(client.clone(), "shop")
        .function_with(
            "quote",
            FunctionOptions {
                max_retries: 2,
                concurrency: 32,
                ..FunctionOptions::default()
            },
            |order: Order| async move {
                if order.quantity == 0 {
                    return Err(format!("cannot quote zero {}", order.item));
                }
                Ok::<_, String>(Quote {
                    total_cents: 250 * order.quantity as u64,
                    item: order.item,
                })
            },
        )
        .batched(
            "shout",
            64,
            Duration::from_millis(20),
            |words: Vec<String>| async move {
                words
                    .into_iter()
                    .map(|w| Ok::<_, String>(w.to_uppercase()))
                    .collect::<Vec<_>>()
            },
        );
    worker.deploy().await?;
    let stop = CancellationToken::new();
    let serving = tokio::spawn(worker.run(stop.clone()));

    // The client: spawn and wait for one call.
    let call = client
        .spawn(
            "shop.quote",
            serde_json::json!({"item": "tea", "quantity": 3}),
            None,
        )
        .await?;
    let done = client.wait(&call.id, Duration::from_secs(30)).await?;
    println!("{} → {:?}", call.id, done.output);

    // Map over many inputs, results streamed back in order.
    let words = futures_util::stream::iter((0..1_000).map(|i| format!("word {i}")));
    let mut results = client
        .map::<String, String, _>("shop.shout", words, MapOptions::default())
        .await?;
    let mut n = 0;
    while let Some(item) = results.next().await {
        let item = item?;
        if item.index < 3 {
            println!("{} → {:?}", item.index, item.result);
        }
        n += 1;
    }
    println!("{n} results");

    stop.cancel();
    serving.await??;
    Ok(())
}
