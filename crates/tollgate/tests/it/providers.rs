//! AI providers and their key pools: platform admins only, keys sealed
//! under the master key (generated into the data dir, mode 0600, kept
//! across restarts), never shown or stored in clear.

use reqwest::Method;
use serde_json::Value;

use crate::*;

const SECRET: &str = "gsk_live_Sup3rS3cretKey_9f8e7d6c5b4a";

#[tokio::test]
async fn provider_keys_are_sealed_and_never_shown() {
    let data = tempfile::tempdir().unwrap();
    let options = test_support::tollgate::Options::in_dir(data.path());
    let tollgate = Tollgate::start_with(BIN, options.clone()).await;
    // The master key was generated, private to the process's user.
    let key_path = data.path().join("master-key");
    let master = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(master.trim().len(), 44, "32 bytes in base64");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Bad input names the field.
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/providers",
            Some(json!({"slug": "groq", "kind": "openai_compatible"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("base_url"), "{body}");
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/providers",
            Some(json!({"slug": "groq", "kind": "grok"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let provider = tollgate
        .create(
            "/api/v1/providers",
            json!({"slug": "groq", "kind": "openai_compatible", "base_url": "https://api.groq.com/openai/v1"}),
        )
        .await;
    assert_eq!(
        provider["effective_base_url"],
        "https://api.groq.com/openai/v1"
    );
    let openai = tollgate
        .create(
            "/api/v1/providers",
            json!({"slug": "openai", "kind": "openai"}),
        )
        .await;
    assert_eq!(openai["effective_base_url"], "https://api.openai.com/v1");

    let added = tollgate
        .create(
            "/api/v1/providers/groq/keys",
            json!({"key": SECRET, "label": "primary"}),
        )
        .await;
    assert_eq!(added["hint"], "…5b4a");
    assert_eq!(added["label"], "primary");
    assert!(!added.to_string().contains(SECRET));
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/providers/groq/keys",
            Some(json!({"key": "short"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, shown) = tollgate
        .admin(Method::GET, "/api/v1/providers/groq", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["keys"][0]["hint"], "…5b4a");
    assert!(!shown.to_string().contains(SECRET));
    let (_, audit) = tollgate
        .admin(Method::GET, "/api/v1/audit?action=provider.key.add", None)
        .await;
    assert_eq!(audit["data"].as_array().unwrap().len(), 1);
    assert!(!audit.to_string().contains(SECRET), "{audit}");
    let stored = crate::database_text(&tollgate);
    assert!(
        !stored.contains(SECRET),
        "the key reached the database in clear"
    );
    assert!(
        !stored.contains("Sup3rS3cret"),
        "part of the key reached the database"
    );

    // Only platform admins manage providers.
    let (_, token) = tollgate.user_with_token("dev@acme.test").await;
    let (status, _) = tollgate
        .admin_as(&token, Method::GET, "/api/v1/providers", None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = tollgate
        .admin_as(
            &token,
            Method::POST,
            "/api/v1/providers/groq/keys",
            Some(json!({"key": "sk-someone-elses-key"})),
        )
        .await;
    assert_eq!(status, 403);

    // The sealed key opens with the master key, bound to its provider.
    let store = store::Store::open(&format!("sqlite://{}/tollgate.db", data.path().display()))
        .await
        .unwrap();
    let sealer = store::secrets::MasterKey::from_base64(&master).unwrap();
    let provider_id = provider["id"].as_str().unwrap();
    let sealed = store.sealed_provider_keys(provider_id).await.unwrap();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealer.open(&sealed[0].1, provider_id).unwrap(), SECRET);
    assert!(
        sealer
            .open(&sealed[0].1, openai["id"].as_str().unwrap())
            .is_err()
    );
    store.close().await;

    // A restart keeps the master key.
    let key_id = added["id"].as_str().unwrap().to_owned();
    tollgate.stop().await;
    let tollgate = Tollgate::start_with(BIN, options).await;
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), master);
    let (status, _) = tollgate
        .admin(
            Method::DELETE,
            &format!("/api/v1/providers/groq/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, shown) = tollgate
        .admin(Method::GET, "/api/v1/providers/groq", None)
        .await;
    assert_eq!(shown["keys"], Value::Array(vec![]));
}

#[test]
fn a_bad_master_key_is_refused_at_start() {
    let stderr =
        crate::process::serve_fails_with(&[("TOLLGATE_SECRETS__MASTER_KEY", "c2hvcnQ=")], None);
    assert!(stderr.contains("secrets.master_key"), "{stderr}");
}

/// The built-in catalogue through the API: OpenAI-compatible presets and
/// models with prices, each price with its source and date; any signed-in
/// user may read it.
#[tokio::test]
async fn the_catalogue_lists_presets_and_priced_models() {
    let tollgate = Tollgate::start(BIN).await;
    let (_, token) = tollgate.user_with_token("reader@acme.test").await;
    let (status, presets) = tollgate
        .admin_as(
            &token,
            Method::GET,
            "/api/v1/catalog/providers?kind=openai_compatible",
            None,
        )
        .await;
    assert_eq!(status, 200, "{presets}");
    let presets = presets["data"].as_array().unwrap();
    assert!(presets.len() >= 30, "{} presets", presets.len());
    assert!(presets.iter().all(|p| p["kind"] == "openai_compatible"));
    let (status, all) = tollgate
        .admin(Method::GET, "/api/v1/catalog/models", None)
        .await;
    assert_eq!(status, 200);
    let all = all["data"].as_array().unwrap();
    assert!(all.len() >= 500, "{} models", all.len());
    for model in all {
        let price = &model["price"];
        assert!(
            price["source"].as_str().unwrap().starts_with("https://"),
            "{model}"
        );
        assert_eq!(price["as_of"].as_str().unwrap().len(), 10, "{model}");
        assert!(price["input_per_million"].is_string(), "{model}");
    }
    let (status, openai) = tollgate
        .admin(
            Method::GET,
            "/api/v1/catalog/models?provider=openai&q=GPT-4O",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let openai = openai["data"].as_array().unwrap();
    assert!(!openai.is_empty());
    assert!(openai.iter().all(|m| {
        m["provider"] == "openai"
            && m["model"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("gpt-4o")
    }));
    let (status, body) = tollgate
        .admin(Method::GET, "/api/v1/catalog/models?provider=nobody", None)
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("provider"), "{body}");
}

/// A provider made from a catalogue preset takes its base URL and models;
/// operators override prices and add models (names with slashes too).
#[tokio::test]
async fn provider_models_come_from_the_catalogue_with_overrides() {
    let tollgate = Tollgate::start(BIN).await;
    let (status, body) = tollgate
        .admin(
            Method::POST,
            "/api/v1/providers",
            Some(json!({"slug": "x", "kind": "openai_compatible", "preset": "no-such-preset"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("preset"), "{body}");
    let provider = tollgate
        .create(
            "/api/v1/providers",
            json!({"slug": "my-groq", "kind": "openai_compatible", "preset": "groq"}),
        )
        .await;
    let (_, presets) = tollgate
        .admin(Method::GET, "/api/v1/catalog/providers", None)
        .await;
    let groq = presets["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["slug"] == "groq")
        .unwrap()
        .clone();
    assert_eq!(provider["effective_base_url"], groq["base_url"]);
    let (_, catalogue) = tollgate
        .admin(Method::GET, "/api/v1/catalog/models?provider=groq", None)
        .await;
    let catalogue = catalogue["data"].as_array().unwrap().clone();
    assert!(!catalogue.is_empty());
    let listed = provider_models(&tollgate).await;
    assert_eq!(listed.len(), catalogue.len());
    assert!(
        listed
            .iter()
            .all(|m| m["origin"] == "catalog" && m["source"].is_string())
    );

    // Override one catalogue model's prices.
    let name = catalogue[0]["model"].as_str().unwrap().to_owned();
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            &format!("/api/v1/providers/my-groq/models/{name}"),
            Some(json!({"input_per_million": "0.5", "output_per_million": "0.9"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["origin"], "override");
    assert_eq!(body["context_window"], catalogue[0]["context_window"]);
    // Bad prices and unknown models without their window are refused.
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/providers/my-groq/models/acme/custom-7b",
            Some(json!({"input_per_million": "1.0000000001", "output_per_million": "1"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("input_per_million"), "{body}");
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/providers/my-groq/models/acme/custom-7b",
            Some(json!({"input_per_million": "0.1", "output_per_million": "0.2"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("context_window"), "{body}");
    let (status, body) = tollgate
        .admin(
            Method::PUT,
            "/api/v1/providers/my-groq/models/acme/custom-7b",
            Some(
                json!({"input_per_million": "0.1", "output_per_million": "0.2",
                "context_window": 32768, "modalities": {"input": ["text"], "output": ["text"]}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["origin"], "custom");
    let listed = provider_models(&tollgate).await;
    assert_eq!(listed.len(), catalogue.len() + 1);
    let find = |name: &str| listed.iter().find(|m| m["model"] == name).unwrap().clone();
    assert_eq!(find(&name)["input_per_million"], "0.5");
    assert_eq!(find(&name)["origin"], "override");
    assert_eq!(find("acme/custom-7b")["context_window"], 32768);

    // Removing the override brings the catalogue's price back.
    let (status, _) = tollgate
        .admin(
            Method::DELETE,
            &format!("/api/v1/providers/my-groq/models/{name}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let listed = provider_models(&tollgate).await;
    let restored = listed.iter().find(|m| m["model"] == name.as_str()).unwrap();
    assert_eq!(restored["origin"], "catalog");
    assert_eq!(
        restored["input_per_million"],
        catalogue[0]["price"]["input_per_million"]
    );
}

async fn provider_models(tollgate: &Tollgate) -> Vec<Value> {
    let (status, body) = tollgate
        .admin(Method::GET, "/api/v1/providers/my-groq/models", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}
