//! Teams, users, memberships, admin tokens, sessions, apps, API keys, plans,
//! subscriptions, webhooks (with their delivery outbox) and the audit log.

use domain::access::{
    AdminToken, ApiKey, App, AppSpec, AuditEntry, DeliveryStatus, Membership, Plan, PlanSpec, Role,
    Subscription, SubscriptionStatus, Team, TeamSpec, User, Webhook, WebhookSpec,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use crate::objects::{fetch_limit, page_of};
use crate::{
    Page, Result, Store, StoreError, WriteTx, conflict_on, from_json, int, opt_text, text, to_json,
};

/// Which teams' objects a reader may see: every team, or a list of slugs.
/// Passed to SQL as one text parameter: `*`, or the slugs joined by commas
/// (slugs never contain a comma, `%` or `_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible(String);

impl Visible {
    pub fn all() -> Self {
        Self("*".into())
    }

    pub fn teams<'a>(slugs: impl IntoIterator<Item = &'a str>) -> Self {
        Self(slugs.into_iter().collect::<Vec<_>>().join(","))
    }

    pub fn is_all(&self) -> bool {
        self.0 == "*"
    }

    /// Whether `team` (an object's owner; `None`: platform-owned) is visible.
    pub fn includes(&self, team: Option<&str>) -> bool {
        self.is_all() || team.is_some_and(|team| self.0.split(',').any(|t| t == team))
    }

    pub fn param(&self) -> &str {
        &self.0
    }
}

/// The SQL test that column `$col` names a visible team, with the
/// [`Visible`] bound as parameter `$param`.
macro_rules! visible_sql {
    ($col:literal, $param:literal) => {
        concat!(
            "($",
            $param,
            " = '*' OR (',' || $",
            $param,
            " || ',') LIKE ('%,' || ",
            $col,
            " || ',%'))"
        )
    };
}
pub(crate) use visible_sql;

/// Who is behind an admin token or session.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user: User,
    /// Team slugs the token is limited to (`None`: all the user's teams).
    pub teams: Option<Vec<String>>,
    pub expires_at_ms: Option<i64>,
}

/// A console session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub csrf: String,
    pub expires_at_ms: i64,
}

/// A webhook delivery waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub event: String,
    pub payload: String,
    pub attempts: i64,
}

fn team_from(row: &AnyRow) -> Result<Team> {
    let mut spec: TeamSpec = from_json(&text(row, "spec")?, "team spec")?;
    spec.slug = text(row, "slug")?;
    Ok(Team {
        id: text(row, "id")?,
        spec,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

fn user_from(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: text(row, "id")?,
        email: text(row, "email")?,
        name: opt_text(row, "name")?,
        superadmin: int(row, "superadmin")? != 0,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

fn app_from(row: &AnyRow) -> Result<App> {
    let mut spec: AppSpec = from_json(&text(row, "spec")?, "app spec")?;
    spec.slug = text(row, "slug")?;
    spec.team = Some(text(row, "team")?);
    Ok(App {
        id: text(row, "id")?,
        spec,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

fn opt_int(row: &AnyRow, column: &str) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(column)?)
}

fn key_from(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: text(row, "id")?,
        app_id: text(row, "app_id")?,
        name: opt_text(row, "name")?,
        prefix: text(row, "prefix")?,
        scopes: from_json(&text(row, "scopes")?, "key scopes")?,
        expires_at_ms: opt_int(row, "expires_at_ms")?,
        revoked_at_ms: opt_int(row, "revoked_at_ms")?,
        created_at_ms: int(row, "created_at_ms")?,
        hash: text(row, "hash")?,
    })
}

/// A key as the gateway needs it, from the packed column of `load_access`
/// (`name` and `created_at_ms` are left out).
fn packed_key(packed: &str) -> Result<ApiKey> {
    let corrupt = || StoreError::Corrupt(format!("api key row '{packed}'"));
    let mut parts = packed.splitn(7, '|');
    let mut next = || parts.next().ok_or_else(corrupt);
    let (id, app_id, prefix, hash) = (next()?, next()?, next()?, next()?);
    let time = |text: &str| -> Result<Option<i64>> {
        if text.is_empty() {
            Ok(None)
        } else {
            text.parse().map(Some).map_err(|_| corrupt())
        }
    };
    let expires_at_ms = time(next()?)?;
    let revoked_at_ms = time(next()?)?;
    let scopes = match next()? {
        "[]" => Vec::new(),
        json => from_json(json, "key scopes")?,
    };
    Ok(ApiKey {
        id: id.to_owned(),
        app_id: app_id.to_owned(),
        name: None,
        prefix: prefix.to_owned(),
        scopes,
        expires_at_ms,
        revoked_at_ms,
        created_at_ms: 0,
        hash: hash.to_owned(),
    })
}

fn plan_from(row: &AnyRow) -> Result<Plan> {
    let mut spec: PlanSpec = from_json(&text(row, "spec")?, "plan spec")?;
    spec.slug = text(row, "slug")?;
    Ok(Plan {
        id: text(row, "id")?,
        service_id: text(row, "service_id")?,
        spec,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

/// `SELECT` of subscriptions with the slugs they refer to.
macro_rules! select_subscriptions {
    ($tail:literal) => {
        concat!(
            "SELECT x.*, a.slug AS app_slug, s.slug AS service_slug, p.slug AS plan_slug ",
            "FROM subscriptions x JOIN apps a ON a.id = x.app_id ",
            "JOIN services s ON s.id = x.service_id JOIN plans p ON p.id = x.plan_id ",
            $tail
        )
    };
}

fn subscription_from(row: &AnyRow) -> Result<Subscription> {
    let status = text(row, "status")?;
    Ok(Subscription {
        id: text(row, "id")?,
        app: text(row, "app_slug")?,
        app_id: text(row, "app_id")?,
        service: text(row, "service_slug")?,
        service_id: text(row, "service_id")?,
        plan: text(row, "plan_slug")?,
        plan_id: text(row, "plan_id")?,
        status: SubscriptionStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown subscription status '{status}'"))
        })?,
        reason: opt_text(row, "reason")?,
        consumer_team: text(row, "consumer_team")?,
        provider_team: opt_text(row, "provider_team")?,
        period_start_ms: opt_int(row, "period_start_ms")?,
        period_end_ms: opt_int(row, "period_end_ms")?,
        anchor_ms: opt_int(row, "anchor_ms")?,
        trial_end_ms: opt_int(row, "trial_end_ms")?,
        auto_renew: int(row, "auto_renew")? != 0,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

fn webhook_from(row: &AnyRow) -> Result<Webhook> {
    Ok(Webhook {
        id: text(row, "id")?,
        team: text(row, "team")?,
        spec: from_json(&text(row, "spec")?, "webhook spec")?,
        created_at_ms: int(row, "created_at_ms")?,
    })
}

fn audit_from(row: &AnyRow) -> Result<AuditEntry> {
    let json = |column: &str| -> Result<Option<serde_json::Value>> {
        opt_text(row, column)?
            .map(|text| from_json(&text, "audit entry"))
            .transpose()
    };
    Ok(AuditEntry {
        id: text(row, "id")?,
        at_ms: int(row, "at_ms")?,
        actor: text(row, "actor")?,
        action: text(row, "action")?,
        object_kind: text(row, "object_kind")?,
        object_id: text(row, "object_id")?,
        team: opt_text(row, "team")?,
        before: json("before")?,
        after: json("after")?,
        request_id: text(row, "request_id")?,
    })
}

fn membership_from(row: &AnyRow) -> Result<Membership> {
    let role = text(row, "role")?;
    Ok(Membership {
        team: text(row, "team_slug")?,
        user_id: text(row, "user_id")?,
        email: text(row, "email")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown role '{role}'")))?,
        created_at_ms: int(row, "created_at_ms")?,
    })
}

macro_rules! select_memberships {
    ($tail:literal) => {
        concat!(
            "SELECT m.user_id, m.role, m.created_at_ms, t.slug AS team_slug, u.email ",
            "FROM memberships m JOIN teams t ON t.id = m.team_id JOIN users u ON u.id = m.user_id ",
            $tail
        )
    };
}

// Reads shared by the pool and write transactions.

async fn team_by_key<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    key: &str,
) -> Result<Option<Team>> {
    let row = sqlx::query("SELECT * FROM teams WHERE id = $1 OR slug = $1")
        .bind(key)
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(team_from).transpose()
}

async fn user_by_key<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    key: &str,
) -> Result<Option<User>> {
    // Emails are stored lower-case (as ids are): a user is found whatever
    // case the address is written in, as at sign-up and login.
    let row = sqlx::query("SELECT * FROM users WHERE id = $1 OR email = $1")
        .bind(key.to_lowercase())
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(user_from).transpose()
}

async fn app_by_key<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    key: &str,
) -> Result<Option<App>> {
    let row = sqlx::query("SELECT * FROM apps WHERE id = $1 OR slug = $1")
        .bind(key)
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(app_from).transpose()
}

async fn plan_by_key<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    service_id: &str,
    key: &str,
) -> Result<Option<Plan>> {
    let row = sqlx::query("SELECT * FROM plans WHERE service_id = $1 AND (id = $2 OR slug = $2)")
        .bind(service_id)
        .bind(key)
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(plan_from).transpose()
}

async fn subscription_by_id<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    id: &str,
) -> Result<Option<Subscription>> {
    let row = sqlx::query(select_subscriptions!("WHERE x.id = $1"))
        .bind(id)
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(subscription_from).transpose()
}

async fn memberships_of_user<'e, E: Executor<'e, Database = Any>>(
    exec: E,
    user_id: &str,
) -> Result<Vec<Membership>> {
    let rows = sqlx::query(select_memberships!("WHERE m.user_id = $1 ORDER BY t.slug"))
        .bind(user_id)
        .fetch_all(exec)
        .await?;
    rows.iter().map(membership_from).collect()
}

/// Filters of [`Store::subscriptions`].
#[derive(Debug, Clone, Default)]
pub struct SubscriptionFilter<'a> {
    pub app_id: Option<&'a str>,
    pub service_id: Option<&'a str>,
    pub status: Option<SubscriptionStatus>,
}

/// Filters of [`Store::audit`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter<'a> {
    pub object_id: Option<&'a str>,
    pub action: Option<&'a str>,
    pub actor: Option<&'a str>,
}

impl Store {
    /// Seals webhook secrets stored in clear by earlier versions; returns
    /// how many.
    pub async fn seal_webhook_secrets(&self, secrets: &crate::secrets::MasterKey) -> Result<u64> {
        let rows = sqlx::query("SELECT id, secret FROM webhooks WHERE secret NOT LIKE 'v1:%'")
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        for row in &rows {
            let id = text(row, "id")?;
            let sealed = secrets
                .seal(&text(row, "secret")?, &id)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?;
            sqlx::query("UPDATE webhooks SET secret = $2 WHERE id = $1")
                .bind(&id)
                .bind(sealed)
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    pub async fn team(&self, key: &str) -> Result<Option<Team>> {
        team_by_key(&self.pool, key).await
    }

    pub async fn teams(
        &self,
        visible: &Visible,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Team>> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM teams WHERE id > $1 AND ",
            visible_sql!("slug", "2"),
            " ORDER BY id LIMIT $3"
        ))
        .bind(after.unwrap_or(""))
        .bind(visible.param())
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(team_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |t| &t.id))
    }

    pub async fn user(&self, key: &str) -> Result<Option<User>> {
        user_by_key(&self.pool, key).await
    }

    /// Every team, by slug (for export).
    pub async fn all_teams(&self) -> Result<Vec<Team>> {
        let rows = sqlx::query("SELECT * FROM teams ORDER BY slug")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(team_from).collect()
    }

    pub async fn users(&self, after: Option<&str>, limit: usize) -> Result<Page<User>> {
        let rows = sqlx::query("SELECT * FROM users WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or(""))
            .bind(fetch_limit(limit))
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(user_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |u| &u.id))
    }

    /// The user with this email and their password hash, for login.
    pub async fn user_for_login(&self, email: &str) -> Result<Option<(User, String)>> {
        let row = sqlx::query("SELECT * FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some((user_from(&row)?, text(&row, "password_hash")?))),
            None => Ok(None),
        }
    }

    pub async fn memberships_of_user(&self, user_id: &str) -> Result<Vec<Membership>> {
        memberships_of_user(&self.pool, user_id).await
    }

    pub async fn members(&self, team_id: &str) -> Result<Vec<Membership>> {
        let rows = sqlx::query(select_memberships!("WHERE m.team_id = $1 ORDER BY u.email"))
            .bind(team_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(membership_from).collect()
    }

    /// The owner of an admin token, by the token's SHA-256 (hex).
    pub async fn token_owner(&self, hash: &str) -> Result<Option<TokenOwner>> {
        let row = sqlx::query(
            "SELECT u.*, t.teams AS token_teams, t.expires_at_ms AS token_expires_at_ms \
             FROM admin_tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TokenOwner {
            user: user_from(&row)?,
            teams: opt_text(&row, "token_teams")?.map(|list| {
                list.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            expires_at_ms: opt_int(&row, "token_expires_at_ms")?,
        }))
    }

    pub async fn tokens_of_user(&self, user_id: &str) -> Result<Vec<AdminToken>> {
        let rows = sqlx::query("SELECT * FROM admin_tokens WHERE user_id = $1 ORDER BY id")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AdminToken {
                    id: text(row, "id")?,
                    user_id: text(row, "user_id")?,
                    name: opt_text(row, "name")?,
                    prefix: text(row, "prefix")?,
                    teams: opt_text(row, "teams")?.map(|list| {
                        list.split(',')
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned)
                            .collect()
                    }),
                    expires_at_ms: opt_int(row, "expires_at_ms")?,
                    created_at_ms: int(row, "created_at_ms")?,
                })
            })
            .collect()
    }

    pub async fn session(&self, hash: &str) -> Result<Option<Session>> {
        let row = sqlx::query("SELECT * FROM sessions WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Session {
                user_id: text(&row, "user_id")?,
                csrf: text(&row, "csrf")?,
                expires_at_ms: int(&row, "expires_at_ms")?,
            })
        })
        .transpose()
    }

    pub async fn app(&self, key: &str) -> Result<Option<App>> {
        app_by_key(&self.pool, key).await
    }

    pub async fn apps(
        &self,
        visible: &Visible,
        team: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<App>> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM apps WHERE id > $1 AND ($2 = '' OR team = $2) AND ",
            visible_sql!("team", "3"),
            " ORDER BY id LIMIT $4"
        ))
        .bind(after.unwrap_or(""))
        .bind(team.unwrap_or(""))
        .bind(visible.param())
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(app_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |a| &a.id))
    }

    pub async fn keys(
        &self,
        app_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ApiKey>> {
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE app_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(app_id)
        .bind(after.unwrap_or(""))
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(key_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |k| &k.id))
    }

    pub async fn key(&self, app_id: &str, key_id: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from).transpose()
    }

    pub async fn plans(&self, service_id: &str) -> Result<Vec<Plan>> {
        let rows = sqlx::query("SELECT * FROM plans WHERE service_id = $1 ORDER BY id")
            .bind(service_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(plan_from).collect()
    }

    pub async fn plan(&self, service_id: &str, key: &str) -> Result<Option<Plan>> {
        plan_by_key(&self.pool, service_id, key).await
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>> {
        subscription_by_id(&self.pool, id).await
    }

    /// Subscriptions whose consumer or provider team is visible.
    pub async fn subscriptions(
        &self,
        visible: &Visible,
        filter: &SubscriptionFilter<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Subscription>> {
        let rows = sqlx::query(concat!(
            select_subscriptions!("WHERE x.id > $1 AND ($2 = '' OR x.app_id = $2) "),
            "AND ($3 = '' OR x.service_id = $3) AND ($4 = '' OR x.status = $4) AND (",
            visible_sql!("x.consumer_team", "5"),
            " OR ",
            visible_sql!("x.provider_team", "5"),
            ") ORDER BY x.id LIMIT $6"
        ))
        .bind(after.unwrap_or(""))
        .bind(filter.app_id.unwrap_or(""))
        .bind(filter.service_id.unwrap_or(""))
        .bind(filter.status.map_or("", SubscriptionStatus::as_str))
        .bind(visible.param())
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(subscription_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |s| &s.id))
    }

    pub async fn webhooks(&self, team: &str) -> Result<Vec<Webhook>> {
        let rows = sqlx::query("SELECT * FROM webhooks WHERE team = $1 ORDER BY id")
            .bind(team)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(webhook_from).collect()
    }

    pub async fn webhook(&self, team: &str, id: &str) -> Result<Option<Webhook>> {
        let row = sqlx::query("SELECT * FROM webhooks WHERE team = $1 AND id = $2")
            .bind(team)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(webhook_from).transpose()
    }

    pub async fn deliveries(&self, webhook_id: &str, limit: usize) -> Result<Vec<DeliveryStatus>> {
        let rows = sqlx::query(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(webhook_id)
        .bind(i64::try_from(limit).unwrap_or(100))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeliveryStatus {
                    id: text(row, "id")?,
                    event: text(row, "event")?,
                    state: text(row, "state")?,
                    attempts: int(row, "attempts")?,
                    last_status: opt_int(row, "last_status")?,
                    last_error: opt_text(row, "last_error")?,
                    created_at_ms: int(row, "created_at_ms")?,
                    delivered_at_ms: opt_int(row, "delivered_at_ms")?,
                })
            })
            .collect()
    }

    /// Deliveries due now, oldest first, with their endpoint's secret
    /// opened with `secrets` (a secret stored before sealing existed is
    /// used as it is until [`Store::seal_webhook_secrets`] seals it).
    pub async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: i64,
        secrets: &crate::secrets::MasterKey,
    ) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT d.*, w.spec AS webhook_spec, w.secret FROM webhook_deliveries d \
             JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.state = 'pending' AND d.next_attempt_at_ms <= $1 ORDER BY d.next_attempt_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let spec: WebhookSpec = from_json(&text(row, "webhook_spec")?, "webhook spec")?;
            let webhook_id = text(row, "webhook_id")?;
            let stored = text(row, "secret")?;
            let secret = if crate::secrets::is_sealed(&stored) {
                match secrets.open(&stored, &webhook_id) {
                    Ok(secret) => secret,
                    Err(error) => {
                        // Left for a node that can open it: the other
                        // webhooks' deliveries go on. Said once per
                        // webhook, not at every poll.
                        static TOLD: std::sync::Mutex<Vec<String>> =
                            std::sync::Mutex::new(Vec::new());
                        let mut told = TOLD.lock().unwrap_or_else(|e| e.into_inner());
                        if !told.contains(&webhook_id) {
                            tracing::warn!(webhook = %webhook_id, %error, "a webhook's secret cannot be opened with this node's master key; its deliveries wait for a node that can");
                            told.push(webhook_id);
                        }
                        continue;
                    }
                }
            } else {
                stored
            };
            due.push(Delivery {
                id: text(row, "id")?,
                webhook_id,
                url: spec.url,
                secret,
                event: text(row, "event")?,
                payload: text(row, "payload")?,
                attempts: int(row, "attempts")?,
            });
        }
        Ok(due)
    }

    /// One stored secret sealed under the master key, and the context it
    /// was sealed for (a webhook's or a provider's id): a node checks at
    /// start that its key opens it. `None` when nothing is sealed yet.
    pub async fn sealed_sample(&self) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT secret, id FROM webhooks WHERE secret LIKE 'v1:%' \
             UNION ALL SELECT sealed, provider_id FROM provider_keys LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((text(&row, "secret")?, text(&row, "id")?)))
            .transpose()
    }

    /// Claims a due delivery for one attempt (several nodes poll the same
    /// outbox): pushes its next attempt `lease_ms` ahead so no other node
    /// takes it meanwhile. False when another node claimed it first.
    pub async fn claim_delivery(
        &self,
        delivery: &Delivery,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at_ms = $3 \
             WHERE id = $1 AND attempts = $2 AND state = 'pending' AND next_attempt_at_ms <= $4",
        )
        .bind(&delivery.id)
        .bind(delivery.attempts)
        .bind(now_ms + lease_ms)
        .bind(now_ms)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the outcome of one delivery attempt. `next_attempt_at_ms`:
    /// when to retry, `None` when delivered or given up (`failed`).
    pub async fn record_delivery(
        &self,
        id: &str,
        delivered: bool,
        status: Option<i64>,
        error: Option<&str>,
        next_attempt_at_ms: Option<i64>,
    ) -> Result<()> {
        let state = match (delivered, next_attempt_at_ms) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let now = domain::now_ms();
        // Through a write transaction like every write: on SQLite it takes
        // the write lock, so it cannot invalidate an admin transaction's
        // snapshot between its reads and its writes (SQLITE_BUSY_SNAPSHOT).
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $2, attempts = attempts + 1, last_status = $3, \
             last_error = $4, next_attempt_at_ms = $5, delivered_at_ms = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(status)
        .bind(error)
        .bind(next_attempt_at_ms.unwrap_or(now))
        .bind(delivered.then_some(now))
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Audit entries about visible teams (either side of a subscription),
    /// newest first.
    pub async fn audit(
        &self,
        visible: &Visible,
        filter: &AuditFilter<'_>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM audit WHERE ($1 = '' OR id < $1) AND ($2 = '' OR object_id = $2) ",
            "AND ($3 = '' OR action = $3) AND ($4 = '' OR actor = $4) AND (",
            visible_sql!("team", "5"),
            " OR ",
            visible_sql!("other_team", "5"),
            ") ORDER BY id DESC LIMIT $6"
        ))
        .bind(before.unwrap_or(""))
        .bind(filter.object_id.unwrap_or(""))
        .bind(filter.action.unwrap_or(""))
        .bind(filter.actor.unwrap_or(""))
        .bind(visible.param())
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(audit_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |a| &a.id))
    }
}

impl WriteTx {
    pub async fn team(&mut self, key: &str) -> Result<Option<Team>> {
        team_by_key(&mut *self.tx, key).await
    }

    pub async fn user(&mut self, key: &str) -> Result<Option<User>> {
        user_by_key(&mut *self.tx, key).await
    }

    pub async fn app(&mut self, key: &str) -> Result<Option<App>> {
        app_by_key(&mut *self.tx, key).await
    }

    pub async fn plan(&mut self, service_id: &str, key: &str) -> Result<Option<Plan>> {
        plan_by_key(&mut *self.tx, service_id, key).await
    }

    /// An app other than `except` that claims the JWT identity (`issuer`,
    /// `subject`): an identity authenticates as one app only.
    pub async fn jwt_claimant(
        &mut self,
        issuer: &str,
        subject: &str,
        except: &str,
    ) -> Result<Option<App>> {
        // The spec holds the subject JSON-encoded; the pattern only narrows
        // the scan (its `%` and `_` widen it), the check below decides.
        // A string always serialises.
        let encoded = serde_json::to_string(subject).unwrap_or_default();
        let rows = sqlx::query("SELECT * FROM apps WHERE id <> $1 AND spec LIKE $2")
            .bind(except)
            .bind(format!("%{encoded}%"))
            .fetch_all(&mut *self.tx)
            .await?;
        for row in &rows {
            let app = app_from(row)?;
            if app
                .spec
                .jwt
                .iter()
                .any(|identity| identity.issuer == issuer && identity.subject == subject)
            {
                return Ok(Some(app));
            }
        }
        Ok(None)
    }

    pub async fn plans_of(&mut self, service_id: &str) -> Result<Vec<Plan>> {
        let rows = sqlx::query("SELECT * FROM plans WHERE service_id = $1 ORDER BY id")
            .bind(service_id)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(plan_from).collect()
    }

    pub async fn subscription(&mut self, id: &str) -> Result<Option<Subscription>> {
        subscription_by_id(&mut *self.tx, id).await
    }

    pub async fn memberships_of_user(&mut self, user_id: &str) -> Result<Vec<Membership>> {
        memberships_of_user(&mut *self.tx, user_id).await
    }

    pub async fn put_team(&mut self, team: &Team) -> Result<()> {
        let retired = sqlx::query(
            "SELECT 1 FROM retired_team_slugs WHERE slug = $1 \
             AND NOT EXISTS (SELECT 1 FROM teams WHERE id = $2)",
        )
        .bind(&team.spec.slug)
        .bind(&team.id)
        .fetch_optional(&mut *self.tx)
        .await?;
        if retired.is_some() {
            return Err(StoreError::Conflict {
                field: "slug".into(),
                message: "belonged to a deleted team, whose calls, analytics and audit entries still carry it; choose another slug".into(),
            });
        }
        sqlx::query(
            "INSERT INTO teams (id, slug, spec, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&team.id)
        .bind(&team.spec.slug)
        .bind(to_json(&team.spec)?)
        .bind(team.created_at_ms)
        .bind(team.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on("slug", "a team with this slug already exists"))?;
        Ok(())
    }

    /// What a team still owns, as `kind slug` strings (a team that owns
    /// anything cannot be deleted).
    pub async fn team_belongings(&mut self, slug: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT 'service ' || slug AS what FROM services WHERE team = $1 \
             UNION ALL SELECT 'upstream ' || slug FROM upstreams WHERE team = $1 \
             UNION ALL SELECT 'app ' || slug FROM apps WHERE team = $1 \
             UNION ALL SELECT 'a wallet with ' || CAST(w.entries AS TEXT) || ' ledger entries (money records are kept)' \
             FROM wallets w JOIN teams t ON t.id = w.team_id WHERE t.slug = $1 AND w.entries > 0 ORDER BY 1",
        )
        .bind(slug)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>(0)?))
            .collect()
    }

    pub async fn delete_team(&mut self, id: &str, slug: &str) -> Result<()> {
        sqlx::query("DELETE FROM webhooks WHERE team = $1")
            .bind(slug)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM memberships WHERE team_id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM wallets WHERE team_id = $1 AND entries = 0")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM teams WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(
            "INSERT INTO retired_team_slugs (slug, team_id, retired_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (slug) DO NOTHING",
        )
        .bind(slug)
        .bind(id)
        .bind(domain::now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn insert_user(&mut self, user: &User, password_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, superadmin, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(user.name.as_deref())
        .bind(password_hash)
        .bind(i64::from(user.superadmin))
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on("email", "a user with this email already exists"))?;
        Ok(())
    }

    /// Updates name, superadmin flag and, when given, the password hash.
    pub async fn update_user(&mut self, user: &User, password_hash: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE users SET name = $2, superadmin = $3, updated_at_ms = $4, \
             password_hash = COALESCE($5, password_hash) WHERE id = $1",
        )
        .bind(&user.id)
        .bind(user.name.as_deref())
        .bind(i64::from(user.superadmin))
        .bind(user.updated_at_ms)
        .bind(password_hash)
        .execute(&mut *self.tx)
        .await?;
        if password_hash.is_some() {
            // A new password ends every session of the user.
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(&user.id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    pub async fn delete_user(&mut self, id: &str) -> Result<()> {
        for sql in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM admin_tokens WHERE user_id = $1",
            "DELETE FROM memberships WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            // Constant strings from the list above.
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Adds the membership or changes its role; returns when it began.
    pub async fn put_membership(
        &mut self,
        team_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<i64> {
        let created_at_ms: i64 = sqlx::query_scalar(
            "INSERT INTO memberships (team_id, user_id, role, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role \
             RETURNING created_at_ms",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(domain::now_ms())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(created_at_ms)
    }

    pub async fn delete_membership(&mut self, team_id: &str, user_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// How many owners a team has.
    pub async fn owner_count(&mut self, team_id: &str) -> Result<i64> {
        let row =
            sqlx::query("SELECT COUNT(*) FROM memberships WHERE team_id = $1 AND role = 'owner'")
                .bind(team_id)
                .fetch_one(&mut *self.tx)
                .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    pub async fn member_role(&mut self, team_id: &str, user_id: &str) -> Result<Option<Role>> {
        let row = sqlx::query("SELECT role FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(match row {
            Some(row) => Role::parse(&text(&row, "role")?),
            None => None,
        })
    }

    pub async fn insert_token(&mut self, token: &AdminToken, hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_tokens (id, user_id, name, prefix, hash, teams, expires_at_ms, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.id)
        .bind(&token.user_id)
        .bind(token.name.as_deref())
        .bind(&token.prefix)
        .bind(hash)
        .bind(token.teams.as_ref().map(|teams| teams.join(",")))
        .bind(token.expires_at_ms)
        .bind(token.created_at_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn delete_token(&mut self, user_id: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM admin_tokens WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_session(&mut self, hash: &str, session: &Session) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (hash, user_id, csrf, expires_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash)
        .bind(&session.user_id)
        .bind(&session.csrf)
        .bind(session.expires_at_ms)
        .bind(domain::now_ms())
        .execute(&mut *self.tx)
        .await?;
        // Expired sessions are swept whenever a new one starts.
        sqlx::query("DELETE FROM sessions WHERE expires_at_ms < $1")
            .bind(domain::now_ms())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn delete_session(&mut self, hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE hash = $1")
            .bind(hash)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn put_app(&mut self, app: &App) -> Result<()> {
        self.changed_config = true;
        let team = app.spec.team.as_deref().unwrap_or_default();
        sqlx::query(
            "INSERT INTO apps (id, slug, team, spec, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, spec = excluded.spec, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&app.id)
        .bind(&app.spec.slug)
        .bind(team)
        .bind(to_json(&app.spec)?)
        .bind(app.created_at_ms)
        .bind(app.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on("slug", "an app with this slug already exists"))?;
        Ok(())
    }

    pub async fn delete_app(&mut self, id: &str) -> Result<()> {
        self.changed_config = true;
        for sql in [
            "DELETE FROM subscriptions WHERE app_id = $1",
            "DELETE FROM api_keys WHERE app_id = $1",
            "DELETE FROM apps WHERE id = $1",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    pub async fn key(&mut self, app_id: &str, key_id: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(key_id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(key_from).transpose()
    }

    pub async fn insert_key(&mut self, key: &ApiKey) -> Result<()> {
        self.changed_keys.push(key.id.clone());
        sqlx::query(
            "INSERT INTO api_keys (id, app_id, name, prefix, hash, scopes, expires_at_ms, revoked_at_ms, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&key.id)
        .bind(&key.app_id)
        .bind(key.name.as_deref())
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(to_json(&key.scopes)?)
        .bind(key.expires_at_ms)
        .bind(key.revoked_at_ms)
        .bind(key.created_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on("key", "a key with this hash exists (retry)"))?;
        Ok(())
    }

    /// Renames a key or changes its expiry (a rotation's grace period).
    pub async fn update_key(&mut self, key: &ApiKey) -> Result<()> {
        self.changed_keys.push(key.id.clone());
        sqlx::query("UPDATE api_keys SET name = $2, expires_at_ms = $3 WHERE id = $1")
            .bind(&key.id)
            .bind(key.name.as_deref())
            .bind(key.expires_at_ms)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn revoke_key(&mut self, id: &str, at_ms: i64) -> Result<()> {
        self.changed_keys.push(id.to_owned());
        sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
        )
        .bind(id)
        .bind(at_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn delete_key(&mut self, id: &str) -> Result<()> {
        self.changed_keys.push(id.to_owned());
        sqlx::query("DELETE FROM api_keys WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn put_plan(&mut self, plan: &Plan) -> Result<()> {
        self.changed_config = true;
        sqlx::query(
            "INSERT INTO plans (id, service_id, slug, spec, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, spec = excluded.spec, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&plan.id)
        .bind(&plan.service_id)
        .bind(&plan.spec.slug)
        .bind(to_json(&plan.spec)?)
        .bind(plan.created_at_ms)
        .bind(plan.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on("slug", "this service already has a plan with this slug"))?;
        Ok(())
    }

    /// Deletes a plan; refuses while subscriptions use it.
    pub async fn delete_plan(&mut self, id: &str) -> Result<()> {
        self.changed_config = true;
        let row = sqlx::query("SELECT COUNT(*) FROM subscriptions WHERE plan_id = $1")
            .bind(id)
            .fetch_one(&mut *self.tx)
            .await?;
        let count = row.try_get::<i64, _>(0)?;
        if count > 0 {
            return Err(StoreError::Conflict {
                field: "plan".into(),
                message: format!(
                    "{count} subscriptions use this plan; close it to new subscribers instead (\"open\": false)"
                ),
            });
        }
        sqlx::query("DELETE FROM plans WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The open subscription (pending, active, suspended or past due) of an
    /// app to a service, if any.
    pub async fn open_subscription(
        &mut self,
        app_id: &str,
        service_id: &str,
    ) -> Result<Option<Subscription>> {
        let row = sqlx::query(select_subscriptions!(
            "WHERE x.app_id = $1 AND x.service_id = $2 \
             AND x.status IN ('pending', 'active', 'suspended', 'past_due')"
        ))
        .bind(app_id)
        .bind(service_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(subscription_from).transpose()
    }

    /// Whether an app has had a trial of a service: a subscription of it
    /// to the service, in any state, that began with one.
    pub async fn had_trial(&mut self, app_id: &str, service_id: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM subscriptions WHERE app_id = $1 AND service_id = $2 \
             AND trial_end_ms IS NOT NULL",
        )
        .bind(app_id)
        .bind(service_id)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// The open subscriptions (pending, active, suspended or past due) of
    /// an app (`by_app`) or to a service (its id).
    pub async fn open_subscriptions(
        &mut self,
        id: &str,
        by_app: bool,
    ) -> Result<Vec<Subscription>> {
        let sql = if by_app {
            select_subscriptions!(
                "WHERE x.app_id = $1 AND x.status IN ('pending', 'active', 'suspended', 'past_due') ORDER BY x.id"
            )
        } else {
            select_subscriptions!(
                "WHERE x.service_id = $1 AND x.status IN ('pending', 'active', 'suspended', 'past_due') ORDER BY x.id"
            )
        };
        let rows = sqlx::query(sql).bind(id).fetch_all(&mut *self.tx).await?;
        rows.iter().map(subscription_from).collect()
    }

    /// How many subscriptions to a service are open (pending, active,
    /// suspended or past due).
    pub async fn open_subscriptions_of_service(&mut self, service_id: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM subscriptions WHERE service_id = $1 \
             AND status IN ('pending', 'active', 'suspended', 'past_due')",
        )
        .bind(service_id)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    pub async fn put_subscription(&mut self, subscription: &Subscription) -> Result<()> {
        self.changed_config = true;
        sqlx::query(
            "INSERT INTO subscriptions (id, app_id, service_id, plan_id, status, reason, consumer_team, \
             provider_team, created_at_ms, updated_at_ms, period_start_ms, period_end_ms, anchor_ms, \
             trial_end_ms, auto_renew) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO UPDATE SET plan_id = excluded.plan_id, status = excluded.status, \
             reason = excluded.reason, updated_at_ms = excluded.updated_at_ms, \
             period_start_ms = excluded.period_start_ms, period_end_ms = excluded.period_end_ms, \
             anchor_ms = excluded.anchor_ms, trial_end_ms = excluded.trial_end_ms, \
             auto_renew = excluded.auto_renew",
        )
        .bind(&subscription.id)
        .bind(&subscription.app_id)
        .bind(&subscription.service_id)
        .bind(&subscription.plan_id)
        .bind(subscription.status.as_str())
        .bind(subscription.reason.as_deref())
        .bind(&subscription.consumer_team)
        .bind(subscription.provider_team.as_deref())
        .bind(subscription.created_at_ms)
        .bind(subscription.updated_at_ms)
        .bind(subscription.period_start_ms)
        .bind(subscription.period_end_ms)
        .bind(subscription.anchor_ms)
        .bind(subscription.trial_end_ms)
        .bind(i64::from(subscription.auto_renew))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records a webhook endpoint; `sealed_secret` is its signing secret
    /// sealed under the master key (context: the webhook's id).
    pub async fn insert_webhook(&mut self, webhook: &Webhook, sealed_secret: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhooks (id, team, spec, secret, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&webhook.id)
        .bind(&webhook.team)
        .bind(to_json(&webhook.spec)?)
        .bind(sealed_secret)
        .bind(webhook.created_at_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn delete_webhook(&mut self, team: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM webhooks WHERE team = $1 AND id = $2")
            .bind(team)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Queues a subscription event for both of its teams' webhooks.
    pub async fn notify_subscription(
        &mut self,
        event: &str,
        subscription: &Subscription,
    ) -> Result<()> {
        let payload = serde_json::json!({
            "id": domain::id::new_id(),
            "type": event,
            "created_at": domain::access::format_time_ms(domain::now_ms()),
            "data": {"subscription": subscription},
        })
        .to_string();
        self.enqueue_event(&subscription.consumer_team, event, &payload)
            .await?;
        if let Some(provider) = &subscription.provider_team
            && provider != &subscription.consumer_team
        {
            self.enqueue_event(provider, event, &payload).await?;
        }
        Ok(())
    }

    /// Queues `event` for every webhook of `team` that wants it.
    pub async fn enqueue_event(&mut self, team: &str, event: &str, payload: &str) -> Result<usize> {
        let rows = sqlx::query("SELECT * FROM webhooks WHERE team = $1")
            .bind(team)
            .fetch_all(&mut *self.tx)
            .await?;
        let now = domain::now_ms();
        let mut queued = 0;
        for webhook in rows.iter().map(webhook_from) {
            let webhook = webhook?;
            if !webhook.spec.wants(event) {
                continue;
            }
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, webhook_id, event, payload, state, attempts, \
                 next_attempt_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)",
            )
            .bind(domain::id::new_id())
            .bind(&webhook.id)
            .bind(event)
            .bind(payload)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
            queued += 1;
        }
        Ok(queued)
    }

    /// Appends an audit entry; `other_team` makes it visible to a second
    /// team too (the other side of a subscription).
    pub async fn insert_audit(
        &mut self,
        entry: &AuditEntry,
        other_team: Option<&str>,
    ) -> Result<()> {
        let json = |value: &Option<serde_json::Value>| value.as_ref().map(to_json).transpose();
        sqlx::query(
            "INSERT INTO audit (id, at_ms, actor, action, object_kind, object_id, team, other_team, \
             before, after, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&entry.id)
        .bind(entry.at_ms)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.object_kind)
        .bind(&entry.object_id)
        .bind(entry.team.as_deref())
        .bind(other_team)
        .bind(json(&entry.before)?)
        .bind(json(&entry.after)?)
        .bind(&entry.request_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

// Bulk reads for the gateway. sqlx hands rows over one at a time (SQLite's
// driver across a thread), which made a row per key take over a second for
// 100,000 keys. So the bulk reads pack each object into one text, and many
// texts into one row: `group_concat` (SQLite) or `string_agg` (PostgreSQL)
// joined by newlines, grouped into 256 buckets. No packed field holds a
// newline (JSON is written without raw newlines; free text has its
// newlines replaced) and only the last field of each may hold '|'.

/// Every key as one text, with its bucket.
macro_rules! packed_keys {
    () => {
        "SELECT id || '|' || app_id || '|' || prefix || '|' || hash || '|' || \
         COALESCE(CAST(expires_at_ms AS TEXT), '') || '|' || \
         COALESCE(CAST(revoked_at_ms AS TEXT), '') || '|' || scopes AS packed, \
         substr(hash, 1, 2) AS bucket FROM api_keys"
    };
}

/// Every app as one text (spec last), with its bucket.
macro_rules! packed_apps {
    () => {
        "SELECT id || '|' || slug || '|' || team || '|' || \
         CAST(created_at_ms AS TEXT) || '|' || CAST(updated_at_ms AS TEXT) || '|' || spec AS packed, \
         substr(id, 35, 2) AS bucket FROM apps"
    };
}

/// Every subscription as one text (the reason last, `$newline` replaced).
macro_rules! packed_subscriptions {
    ($newline:literal) => {
        concat!(
            "SELECT x.id || '|' || x.app_id || '|' || x.service_id || '|' || x.plan_id || '|' || ",
            "x.status || '|' || x.consumer_team || '|' || COALESCE(x.provider_team, '') || '|' || ",
            "CAST(x.created_at_ms AS TEXT) || '|' || CAST(x.updated_at_ms AS TEXT) || '|' || ",
            "COALESCE(CAST(x.period_start_ms AS TEXT), '') || '|' || ",
            "COALESCE(CAST(x.period_end_ms AS TEXT), '') || '|' || ",
            "COALESCE(CAST(x.anchor_ms AS TEXT), '') || '|' || ",
            "COALESCE(CAST(x.trial_end_ms AS TEXT), '') || '|' || CAST(x.auto_renew AS TEXT) || '|' || ",
            "a.slug || '|' || s.slug || '|' || p.slug || '|' || ",
            "replace(COALESCE(x.reason, ''), ",
            $newline,
            ", ' ') AS packed, substr(x.id, 35, 2) AS bucket ",
            "FROM subscriptions x JOIN apps a ON a.id = x.app_id ",
            "JOIN services s ON s.id = x.service_id JOIN plans p ON p.id = x.plan_id"
        )
    };
}

/// The bucketed query over `$packed` for each backend.
macro_rules! bucketed {
    (sqlite, $packed:expr) => {
        concat!(
            "SELECT group_concat(packed, char(10)) AS packed FROM (",
            $packed,
            ") GROUP BY bucket"
        )
    };
    (postgres, $packed:expr) => {
        concat!(
            "SELECT string_agg(packed, chr(10)) AS packed FROM (",
            $packed,
            ") AS t GROUP BY bucket"
        )
    };
}

/// Runs a bucketed query and parses each packed line with `parse`.
async fn unpack<T>(
    tx: &mut sqlx::Transaction<'static, Any>,
    sql: &'static str,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Vec<T>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut **tx)
        .await?;
    let mut items = Vec::new();
    for row in rows {
        if let Some(text) = opt_text(&row, "packed")? {
            for line in text.lines() {
                items.push(parse(line)?);
            }
        }
    }
    Ok(items)
}

fn corrupt(what: &str, packed: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} row '{packed}'"))
}

fn packed_app(packed: &str) -> Result<App> {
    let mut parts = packed.splitn(6, '|');
    let mut next = || parts.next().ok_or_else(|| corrupt("app", packed));
    let (id, slug, team) = (next()?, next()?, next()?);
    let created_at_ms = next()?.parse().map_err(|_| corrupt("app", packed))?;
    let updated_at_ms = next()?.parse().map_err(|_| corrupt("app", packed))?;
    let mut spec: AppSpec = from_json(next()?, "app spec")?;
    spec.slug = slug.to_owned();
    spec.team = Some(team.to_owned());
    Ok(App {
        id: id.to_owned(),
        spec,
        created_at_ms,
        updated_at_ms,
    })
}

fn packed_subscription(packed: &str) -> Result<Subscription> {
    let fields: Vec<&str> = packed.splitn(18, '|').collect();
    let [
        id,
        app_id,
        service_id,
        plan_id,
        status,
        consumer,
        provider,
        created,
        updated,
        period_start,
        period_end,
        anchor,
        trial_end,
        auto_renew,
        app,
        service,
        plan,
        reason,
    ] = fields[..]
    else {
        return Err(corrupt("subscription", packed));
    };
    let number = |text: &str| {
        text.parse::<i64>()
            .map_err(|_| corrupt("subscription", packed))
    };
    let optional = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let optional_number = |text: &str| (!text.is_empty()).then(|| number(text)).transpose();
    Ok(Subscription {
        id: id.to_owned(),
        app: app.to_owned(),
        app_id: app_id.to_owned(),
        service: service.to_owned(),
        service_id: service_id.to_owned(),
        plan: plan.to_owned(),
        plan_id: plan_id.to_owned(),
        status: SubscriptionStatus::parse(status).ok_or_else(|| corrupt("subscription", packed))?,
        reason: optional(reason),
        consumer_team: consumer.to_owned(),
        provider_team: optional(provider),
        period_start_ms: optional_number(period_start)?,
        period_end_ms: optional_number(period_end)?,
        anchor_ms: optional_number(anchor)?,
        trial_end_ms: optional_number(trial_end)?,
        auto_renew: number(auto_renew)? != 0,
        created_at_ms: number(created)?,
        updated_at_ms: number(updated)?,
    })
}

/// The access objects the gateway compiles: apps, keys, plans and
/// subscriptions (every one: the gateway answers a rejected or cancelled
/// subscription with its own code).
pub(crate) async fn load_access(
    tx: &mut sqlx::Transaction<'static, Any>,
    backend: crate::Backend,
) -> Result<(Vec<App>, Vec<ApiKey>, Vec<Plan>, Vec<Subscription>)> {
    let (apps_sql, keys_sql, subscriptions_sql) = match backend {
        crate::Backend::Sqlite => (
            bucketed!(sqlite, packed_apps!()),
            bucketed!(sqlite, packed_keys!()),
            bucketed!(sqlite, packed_subscriptions!("char(10)")),
        ),
        crate::Backend::Postgres => (
            bucketed!(postgres, packed_apps!()),
            bucketed!(postgres, packed_keys!()),
            bucketed!(postgres, packed_subscriptions!("chr(10)")),
        ),
    };
    let mut apps = unpack(tx, apps_sql, packed_app).await?;
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    let keys = unpack(tx, keys_sql, packed_key).await?;
    let plans = sqlx::query("SELECT * FROM plans ORDER BY id")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(plan_from)
        .collect::<Result<Vec<_>>>()?;
    let mut subscriptions = unpack(tx, subscriptions_sql, packed_subscription).await?;
    subscriptions.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((apps, keys, plans, subscriptions))
}

impl Store {
    /// The keys with these ids that still exist (as `load_all` returns
    /// them), for applying key changes.
    pub async fn keys_by_id(&self, ids: &[String]) -> Result<Vec<ApiKey>> {
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query(concat!(packed_keys!(), " WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                keys.push(packed_key(&text(&row, "packed")?)?);
            }
        }
        Ok(keys)
    }
}
