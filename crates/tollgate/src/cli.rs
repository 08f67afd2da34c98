//! Commands that talk to a running admin API: `apply`, `export` and the
//! `keys` shortcuts.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

use crate::AdminArgs;

/// Prints a line to standard output (the binary's one place for it).
#[allow(clippy::print_stdout)]
pub fn print(text: &str) {
    println!("{text}");
}

struct Admin {
    base: String,
    token: String,
    client: reqwest::Client,
}

fn admin(args: &AdminArgs) -> anyhow::Result<Admin> {
    let config = crate::load_config(&args.config)?;
    let base = match &args.admin_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let mut address = config.admin_listen;
            if address.ip().is_unspecified() {
                address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{address}")
        }
    };
    let token = match &args.token {
        Some(token) => token.clone(),
        None => match std::env::var("TOLLGATE_ADMIN_TOKEN") {
            Ok(token) if !token.is_empty() => token,
            _ => {
                let path = config.data_dir.join("admin-token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!("no admin token: pass --token, set TOLLGATE_ADMIN_TOKEN, or run where {} exists", path.display())
                    })?
                    .trim()
                    .to_owned()
            }
        },
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    Ok(Admin {
        base,
        token,
        client,
    })
}

async fn check(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let mut message = format!(
        "{} {}",
        status.as_u16(),
        body["detail"]
            .as_str()
            .unwrap_or("the admin API refused the request")
    );
    if let Some(errors) = body["errors"].as_array() {
        for error in errors {
            message.push_str(&format!(
                "\n  - {}: {}",
                error["field"].as_str().unwrap_or(""),
                error["message"].as_str().unwrap_or("")
            ));
        }
    }
    bail!(message)
}

pub async fn apply(
    file: &Path,
    prune: bool,
    dry_run: bool,
    args: &AdminArgs,
) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let document = parse_document_text(&text)
        .with_context(|| format!("{} is not valid YAML or JSON", file.display()))?;
    let admin = admin(args)?;
    let response = admin
        .client
        .post(format!(
            "{}/api/v1/config/apply?prune={prune}&dry_run={dry_run}",
            admin.base
        ))
        .bearer_auth(&admin.token)
        .json(&document)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", admin.base))?;
    let report = check(response).await?;
    let changes = report["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        print("no changes");
        return Ok(());
    }
    for change in &changes {
        let sign = match change["action"].as_str() {
            Some("create") => "+",
            Some("delete") => "-",
            _ => "~",
        };
        print(&format!(
            "{sign} {} {} {}",
            change["action"].as_str().unwrap_or(""),
            change["kind"].as_str().unwrap_or(""),
            change["key"].as_str().unwrap_or("")
        ));
        for field in change["fields"].as_array().into_iter().flatten() {
            print(&format!("    {}", field.as_str().unwrap_or("")));
        }
    }
    print(&format!(
        "{} change{}{}",
        changes.len(),
        if changes.len() == 1 { "" } else { "s" },
        if dry_run {
            " (dry run: nothing written)"
        } else {
            " applied"
        }
    ));
    Ok(())
}

pub async fn export(output: Option<&Path>, format: &str, args: &AdminArgs) -> anyhow::Result<()> {
    let admin = admin(args)?;
    let response = admin
        .client
        .get(format!("{}/api/v1/config/export", admin.base))
        .bearer_auth(&admin.token)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", admin.base))?;
    let document = check(response).await?;
    let text = match format {
        "yaml" => crate::yaml::to_string(&document),
        "json" => serde_json::to_string_pretty(&document)? + "\n",
        other => bail!("--format {other}: use yaml or json"),
    };
    match output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            #[allow(clippy::print_stdout)]
            {
                print!("{text}");
            }
        }
    }
    Ok(())
}

impl Admin {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        check(response).await
    }
}

/// What `tollgate keys` does.
pub enum KeysCommand {
    Create {
        app: String,
        name: Option<String>,
        env: Option<String>,
        scopes: Vec<String>,
        expires_at: Option<String>,
    },
    List {
        app: String,
    },
    Revoke {
        app: String,
        key_id: String,
    },
}

/// `tollgate keys create|list|revoke`: API keys of an app.
pub async fn keys(command: KeysCommand, args: &AdminArgs) -> anyhow::Result<()> {
    let admin = admin(args)?;
    match command {
        KeysCommand::Create {
            app,
            name,
            env,
            scopes,
            expires_at,
        } => {
            let mut body = serde_json::json!({"scopes": scopes});
            for (field, value) in [("name", name), ("env", env), ("expires_at", expires_at)] {
                if let Some(value) = value {
                    body[field] = serde_json::Value::String(value);
                }
            }
            let created = admin
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/apps/{app}/keys"),
                    Some(body),
                )
                .await?;
            print(created["key"].as_str().unwrap_or_default());
            eprintln_note(&format!(
                "key {} for app {app}: shown once, store it now (only its hash is kept)",
                created["id"].as_str().unwrap_or_default()
            ));
        }
        KeysCommand::List { app } => {
            let listed = admin
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/apps/{app}/keys?limit=500"),
                    None,
                )
                .await?;
            for key in listed["data"].as_array().into_iter().flatten() {
                let state = if key.get("revoked_at_ms").is_some() {
                    "revoked"
                } else {
                    "active"
                };
                print(&format!(
                    "{}\t{}\t{state}\t{}",
                    key["id"].as_str().unwrap_or_default(),
                    key["prefix"].as_str().unwrap_or_default(),
                    key["name"].as_str().unwrap_or("-"),
                ));
            }
        }
        KeysCommand::Revoke { app, key_id } => {
            admin
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/apps/{app}/keys/{key_id}"),
                    None,
                )
                .await?;
            eprintln_note(&format!("key {key_id} of app {app} revoked"));
        }
    }
    Ok(())
}

/// What `tollgate wallet` does.
pub enum WalletCommand {
    Show {
        team: String,
    },
    Ledger {
        team: String,
        kind: Option<String>,
        csv: bool,
    },
    /// A grant (`kind: "grants"`) or an adjustment (`"adjustments"`).
    Record {
        team: String,
        kind: &'static str,
        amount: String,
        reason: String,
        idempotency_key: Option<String>,
    },
}

/// `tollgate wallet show|ledger|grant|adjust`.
pub async fn wallet(command: WalletCommand, args: &AdminArgs) -> anyhow::Result<()> {
    let admin = admin(args)?;
    match command {
        WalletCommand::Show { team } => {
            let wallet = admin
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/teams/{team}/wallet"),
                    None,
                )
                .await?;
            print(&format!(
                "{} {}",
                wallet["balance"].as_str().unwrap_or_default(),
                wallet["currency"].as_str().unwrap_or_default()
            ));
        }
        WalletCommand::Ledger { team, kind, csv } => {
            let mut cursor: Option<String> = None;
            let mut first = true;
            loop {
                let mut path = format!("/api/v1/teams/{team}/wallet/ledger?limit=500");
                if let Some(kind) = &kind {
                    path.push_str(&format!("&kind={kind}"));
                }
                if let Some(cursor) = &cursor {
                    path.push_str(&format!("&cursor={cursor}"));
                }
                if csv {
                    path.push_str("&format=csv");
                    let response = admin
                        .client
                        .get(format!("{}{path}", admin.base))
                        .bearer_auth(&admin.token)
                        .send()
                        .await
                        .with_context(|| format!("cannot reach the admin API at {}", admin.base))?;
                    if !response.status().is_success() {
                        check(response).await?;
                        return Ok(());
                    }
                    let next = response
                        .headers()
                        .get("tollgate-next-cursor")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let text = response.text().await?;
                    // The header line once, then the rows of every page.
                    let body = if first {
                        text.as_str()
                    } else {
                        text.split_once("\r\n").map_or("", |(_, rows)| rows)
                    };
                    #[allow(clippy::print_stdout)]
                    {
                        print!("{body}");
                    }
                    first = false;
                    match next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                    continue;
                }
                let page = admin.call(reqwest::Method::GET, &path, None).await?;
                for entry in page["data"].as_array().into_iter().flatten() {
                    print(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        domain::access::format_time_ms(
                            entry["created_at_ms"].as_i64().unwrap_or(0)
                        ),
                        entry["kind"].as_str().unwrap_or_default(),
                        entry["amount"].as_str().unwrap_or_default(),
                        one_line(entry["actor"].as_str().unwrap_or_default()),
                        one_line(entry["idempotency_key"].as_str().unwrap_or_default()),
                        one_line(entry["reason"].as_str().unwrap_or("-")),
                    ));
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
        }
        WalletCommand::Record {
            team,
            kind,
            amount,
            reason,
            idempotency_key,
        } => {
            let mut body = serde_json::json!({"amount": amount, "reason": reason});
            if let Some(key) = idempotency_key {
                body["idempotency_key"] = serde_json::Value::String(key);
            }
            let result = admin
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/teams/{team}/wallet/{kind}"),
                    Some(body),
                )
                .await?;
            let currency = result["wallet"]["currency"].as_str().unwrap_or_default();
            print(&format!(
                "{} {currency}",
                result["wallet"]["balance"].as_str().unwrap_or_default()
            ));
            let what = if result["replayed"] == true {
                "already recorded with this idempotency key; nothing changed"
            } else {
                "recorded"
            };
            eprintln_note(&format!(
                "{} of {} {currency} for team {team}: {what}; balance now shown above",
                result["entry"]["kind"].as_str().unwrap_or_default(),
                result["entry"]["amount"].as_str().unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

/// A note for the person at the terminal, on standard error (standard
/// output carries only what scripts read).
#[allow(clippy::print_stderr)]
fn eprintln_note(text: &str) {
    eprintln!("{text}");
}

/// A document file's text, as JSON when it reads as JSON (the YAML parser
/// refuses some valid JSON, such as a `\ud83d\ude80` surrogate pair),
/// else as YAML, of which JSON is mostly a subset. Duplicate keys are
/// refused either way.
fn parse_document_text(text: &str) -> anyhow::Result<serde_json::Value> {
    use domain::strict::StrictValue;
    let yaml = || serde_norway::from_str::<StrictValue>(text).map(|document| document.0);
    if text.trim_start().starts_with(['{', '[']) {
        return match serde_json::from_str::<StrictValue>(text) {
            Ok(document) => Ok(document.0),
            // Flow-style YAML (`{teams: []}`) starts alike.
            Err(json) => yaml().map_err(|_| json.into()),
        };
    }
    Ok(yaml()?)
}

/// A field of a tab-separated line: tabs, line breaks and backslashes
/// escaped (`\t`, `\n`, `\r`, `\\`), so that an entry stays one line of
/// its columns whatever its text holds.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\t', '\n', '\r', '\\']) {
        return text.into();
    }
    let mut line = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => line.push_str("\\t"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\\' => line.push_str("\\\\"),
            c => line.push(c),
        }
    }
    line.into()
}
