//! AI providers and their sealed key pools.

use domain::providers::{Provider, ProviderKey, ProviderModel};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::objects::{fetch_limit, page_of};
use crate::{Page, Result, Store, WriteTx, conflict_on, from_json, int, opt_text, text, to_json};

fn provider_from(row: &AnyRow) -> Result<Provider> {
    Ok(Provider {
        id: text(row, "id")?,
        spec: from_json(&text(row, "spec")?, "provider")?,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

impl WriteTx {
    /// Whether a provider with this slug exists (reference checks).
    pub async fn provider_exists(&mut self, slug: &str) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM providers WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.is_some())
    }

    /// A provider by slug with its own models (reference checks).
    pub async fn provider_with_models(
        &mut self,
        slug: &str,
    ) -> Result<Option<(Provider, Vec<ProviderModel>)>> {
        let Some(row) = sqlx::query("SELECT * FROM providers WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&mut *self.tx)
            .await?
        else {
            return Ok(None);
        };
        let provider = provider_from(&row)?;
        let models = sqlx::query("SELECT * FROM provider_models WHERE provider_id = $1")
            .bind(&provider.id)
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(model_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((provider, models)))
    }

    pub async fn put_provider(&mut self, provider: &Provider) -> Result<()> {
        self.changed_config = true;
        sqlx::query(
            "INSERT INTO providers (id, slug, spec, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, spec = excluded.spec, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&provider.id)
        .bind(&provider.spec.slug)
        .bind(to_json(&provider.spec)?)
        .bind(provider.created_at_ms)
        .bind(provider.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on("slug", "a provider with this slug already exists"))?;
        Ok(())
    }

    /// Deletes a provider with its keys and models.
    pub async fn delete_provider(&mut self, id: &str) -> Result<()> {
        self.changed_config = true;
        for sql in [
            "DELETE FROM provider_models WHERE provider_id = $1",
            "DELETE FROM provider_keys WHERE provider_id = $1",
            "DELETE FROM providers WHERE id = $1",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Adds a key, already sealed, to a provider's pool; refuses past
    /// `max` keys.
    pub async fn add_provider_key(
        &mut self,
        provider_id: &str,
        key: &ProviderKey,
        sealed: &str,
        max: usize,
    ) -> Result<()> {
        self.changed_config = true;
        let row = sqlx::query("SELECT COUNT(*) FROM provider_keys WHERE provider_id = $1")
            .bind(provider_id)
            .fetch_one(&mut *self.tx)
            .await?;
        if usize::try_from(row.try_get::<i64, _>(0)?).unwrap_or(usize::MAX) >= max {
            return Err(crate::StoreError::Conflict {
                field: "key".into(),
                message: format!("a provider holds at most {max} keys; remove one first"),
            });
        }
        sqlx::query(
            "INSERT INTO provider_keys (id, provider_id, label, sealed, hint, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(provider_id)
        .bind(key.label.as_deref())
        .bind(sealed)
        .bind(&key.hint)
        .bind(key.created_at_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Removes a key; false when the provider has no such key.
    pub async fn delete_provider_key(&mut self, provider_id: &str, key_id: &str) -> Result<bool> {
        self.changed_config = true;
        let done = sqlx::query("DELETE FROM provider_keys WHERE provider_id = $1 AND id = $2")
            .bind(provider_id)
            .bind(key_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl WriteTx {
    /// Adds a model to a provider or replaces its override.
    pub async fn put_provider_model(&mut self, model: &ProviderModel) -> Result<()> {
        self.changed_config = true;
        sqlx::query(
            "INSERT INTO provider_models (provider_id, model, spec, updated_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (provider_id, model) DO UPDATE SET spec = excluded.spec, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&model.provider_id)
        .bind(&model.model)
        .bind(to_json(&model.spec)?)
        .bind(model.updated_at_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Removes a provider's model (or override); false when there was none.
    pub async fn delete_provider_model(&mut self, provider_id: &str, model: &str) -> Result<bool> {
        self.changed_config = true;
        let done = sqlx::query("DELETE FROM provider_models WHERE provider_id = $1 AND model = $2")
            .bind(provider_id)
            .bind(model)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn model_from(row: &AnyRow) -> Result<ProviderModel> {
    Ok(ProviderModel {
        provider_id: text(row, "provider_id")?,
        model: text(row, "model")?,
        spec: from_json(&text(row, "spec")?, "provider model")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

fn key_from(row: &AnyRow) -> Result<(ProviderKey, String)> {
    Ok((
        ProviderKey {
            id: text(row, "id")?,
            label: opt_text(row, "label")?,
            hint: text(row, "hint")?,
            created_at_ms: int(row, "created_at_ms")?,
        },
        text(row, "sealed")?,
    ))
}

/// A provider with what the gateway needs of it: its own models and
/// overrides, and its keys still sealed (the binary opens them).
#[derive(Debug, Clone)]
pub struct ProviderData {
    pub provider: Provider,
    pub models: Vec<ProviderModel>,
    pub sealed_keys: Vec<(ProviderKey, String)>,
}

/// Every provider with its models and sealed keys, inside `load_all`'s
/// transaction.
pub(crate) async fn load_providers(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
) -> Result<Vec<ProviderData>> {
    let providers = sqlx::query("SELECT * FROM providers ORDER BY id")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(provider_from)
        .collect::<Result<Vec<_>>>()?;
    let models = sqlx::query("SELECT * FROM provider_models ORDER BY provider_id, model")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(model_from)
        .collect::<Result<Vec<_>>>()?;
    let key_rows =
        sqlx::query("SELECT * FROM provider_keys ORDER BY provider_id, created_at_ms, id")
            .fetch_all(&mut **tx)
            .await?;
    let mut keys = Vec::with_capacity(key_rows.len());
    for row in &key_rows {
        keys.push((text(row, "provider_id")?, key_from(row)?));
    }
    Ok(providers
        .into_iter()
        .map(|provider| ProviderData {
            models: models
                .iter()
                .filter(|m| m.provider_id == provider.id)
                .cloned()
                .collect(),
            sealed_keys: keys
                .iter()
                .filter(|(owner, _)| *owner == provider.id)
                .map(|(_, key)| key.clone())
                .collect(),
            provider,
        })
        .collect())
}

impl Store {
    /// A provider's own models and overrides, by name.
    pub async fn provider_models(&self, provider_id: &str) -> Result<Vec<ProviderModel>> {
        let rows =
            sqlx::query("SELECT * FROM provider_models WHERE provider_id = $1 ORDER BY model")
                .bind(provider_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(model_from).collect()
    }

    /// A provider by id or slug.
    pub async fn provider(&self, key: &str) -> Result<Option<Provider>> {
        let row = sqlx::query("SELECT * FROM providers WHERE id = $1 OR slug = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(provider_from).transpose()
    }

    pub async fn providers(&self, after: Option<&str>, limit: usize) -> Result<Page<Provider>> {
        let rows = sqlx::query("SELECT * FROM providers WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or(""))
            .bind(fetch_limit(limit))
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(provider_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |p| &p.id))
    }

    /// A provider's keys as shown (no secret), oldest first.
    pub async fn provider_keys(&self, provider_id: &str) -> Result<Vec<ProviderKey>> {
        Ok(self
            .sealed_provider_keys(provider_id)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// A provider's keys with their sealed secrets (for the gateway, which
    /// opens them with the master key), oldest first.
    pub async fn sealed_provider_keys(
        &self,
        provider_id: &str,
    ) -> Result<Vec<(ProviderKey, String)>> {
        let rows = sqlx::query(
            "SELECT * FROM provider_keys WHERE provider_id = $1 ORDER BY created_at_ms, id",
        )
        .bind(provider_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from).collect()
    }
}
