//! Fetches the JWKS documents that services' JWT issuers name, and keeps
//! the gateway's copy fresh: new URLs within a second of a configuration
//! change, every URL every five minutes, and early (at most every three
//! seconds per URL) when a token names a key id the gateway does not hold.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gateway::{Gateway, JwkSet};
use tokio::sync::watch;

const REFRESH: Duration = Duration::from_secs(300);
const EARLY_REFRESH_GAP: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);
/// A JWKS document larger than this is refused.
const BODY_LIMIT_BYTES: usize = 1 << 20;

async fn fetch(client: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() > BODY_LIMIT_BYTES {
        return Err("document too large".into());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("not a JWKS document: {e}"))
}

pub fn spawn(gateway: Gateway, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot build the JWKS client");
                return;
            }
        };
        // URL → when it was last fetched (successfully or not).
        let mut fetched: HashMap<String, Instant> = HashMap::new();
        let mut early = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = gateway.jwks_wanted() => early = true,
                _ = shutdown.changed() => return,
            }
            let urls = gateway.jwks_urls();
            fetched.retain(|url, _| urls.contains(url));
            for url in urls {
                let due = match fetched.get(&url) {
                    None => true,
                    Some(at) => {
                        at.elapsed() >= REFRESH || (early && at.elapsed() >= EARLY_REFRESH_GAP)
                    }
                };
                if !due {
                    continue;
                }
                fetched.insert(url.clone(), Instant::now());
                match fetch(&client, &url).await {
                    Ok(set) => {
                        let usable = gateway.set_jwks(&url, &set);
                        tracing::info!(%url, keys = usable, "JWKS refreshed");
                    }
                    Err(error) => {
                        tracing::warn!(%url, %error, "cannot fetch JWKS; keeping the last keys")
                    }
                }
            }
            early = false;
        }
    })
}
