//! AI providers (`/api/v1/providers`) and their key pools, managed by
//! platform admins. A key is sealed under the master key as it arrives and
//! never shown again (only a hint of its last characters); the audit log
//! records that a key was added or removed, never the key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::now_ms;
use domain::providers::{
    ModelSpec, ModelView, PROVIDER_KEYS_MAX, Provider, ProviderKey, ProviderKeySpec, ProviderModel,
    ProviderSpec, effective_models, own_view, preset_of,
};
use serde::Serialize;

use crate::AdminState;
use crate::access::{Audit, Caller, NONE, audit};
use crate::error::ApiError;
use crate::extract::{Json, ListParams};
use crate::handlers::{ListResponse, commit, created, ok, patched};

/// A provider with its keys (as shown: never the keys).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    #[serde(flatten)]
    pub provider: Provider,
    /// Where requests go (the kind's own API unless `base_url` is set).
    pub effective_base_url: Option<String>,
    pub keys: Vec<ProviderKey>,
}

async fn provider_or_404(
    state: &AdminState,
    caller: &Caller,
    key: &str,
) -> Result<Provider, ApiError> {
    caller.require_platform()?;
    state
        .store
        .provider(key)
        .await?
        .ok_or_else(|| ApiError::not_found("provider", key))
}

async fn view(state: &AdminState, provider: Provider) -> Result<ProviderView, ApiError> {
    let keys = state.store.provider_keys(&provider.id).await?;
    Ok(ProviderView {
        effective_base_url: provider.spec.base_url(&state.catalog).map(str::to_owned),
        provider,
        keys,
    })
}

/// Checks a spec, its preset included.
fn check_spec(state: &AdminState, spec: &ProviderSpec) -> Result<(), ApiError> {
    spec.validate()?;
    if let Some(preset) = &spec.preset
        && !state.catalog.providers.iter().any(|p| &p.slug == preset)
    {
        return Err(ApiError::field(
            "preset",
            "is not a provider of the catalogue (see GET /api/v1/catalog/providers)",
        ));
    }
    Ok(())
}

fn provider_audit<'a>(action: &'a str, provider: &'a Provider) -> Audit<'a> {
    Audit::new(action, "provider", &provider.id, None)
}

/// Register a provider (platform admins).
#[utoipa::path(post, path = "/api/v1/providers", tag = "providers", request_body = ProviderSpec,
    responses((status = 201, body = ProviderView), (status = 400, body = crate::openapi::Problem),
        (status = 403, body = crate::openapi::Problem)))]
pub async fn create_provider(
    State(state): State<AdminState>,
    caller: Caller,
    Json(spec): Json<ProviderSpec>,
) -> Result<Response, ApiError> {
    caller.require_platform()?;
    check_spec(&state, &spec)?;
    let now = now_ms();
    let provider = Provider {
        id: domain::id::new_id(),
        spec,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let mut tx = state.store.begin().await?;
    tx.put_provider(&provider).await?;
    audit(
        &mut tx,
        &caller,
        provider_audit("provider.create", &provider),
        NONE,
        Some(&provider),
    )
    .await?;
    commit(&state, tx).await?;
    let location = format!("/api/v1/providers/{}", provider.id);
    Ok(created(&view(&state, provider).await?, location))
}

#[utoipa::path(get, path = "/api/v1/providers", tag = "providers",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<Provider>)))]
pub async fn list_providers(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    caller.require_platform()?;
    params.only(&[])?;
    let page = state
        .store
        .providers(params.after.as_deref(), params.limit)
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

#[utoipa::path(get, path = "/api/v1/providers/{provider}", tag = "providers",
    params(("provider" = String, Path, description = "slug or id")),
    responses((status = 200, body = ProviderView)))]
pub async fn get_provider(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let provider = provider_or_404(&state, &caller, &key).await?;
    Ok(ok(&view(&state, provider).await?))
}

/// Change a provider (JSON merge patch).
#[utoipa::path(patch, path = "/api/v1/providers/{provider}", tag = "providers", request_body = Object,
    params(("provider" = String, Path, description = "slug or id")),
    responses((status = 200, body = ProviderView)))]
pub async fn patch_provider(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let existing = provider_or_404(&state, &caller, &key).await?;
    let spec: ProviderSpec = patched(&existing.spec, patch)?;
    check_spec(&state, &spec)?;
    let provider = Provider {
        spec,
        updated_at_ms: now_ms(),
        ..existing.clone()
    };
    let mut tx = state.store.begin().await?;
    tx.put_provider(&provider).await?;
    audit(
        &mut tx,
        &caller,
        provider_audit("provider.update", &provider),
        Some(&existing),
        Some(&provider),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&view(&state, provider).await?))
}

/// Delete a provider and its keys.
#[utoipa::path(delete, path = "/api/v1/providers/{provider}", tag = "providers",
    params(("provider" = String, Path, description = "slug or id")), responses((status = 204)))]
pub async fn delete_provider(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let provider = provider_or_404(&state, &caller, &key).await?;
    let mut tx = state.store.begin().await?;
    tx.delete_provider(&provider.id).await?;
    audit(
        &mut tx,
        &caller,
        provider_audit("provider.delete", &provider),
        Some(&provider),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Add a key to the provider's pool. The key is sealed at once and never
/// shown again; the answer carries its hint.
#[utoipa::path(post, path = "/api/v1/providers/{provider}/keys", tag = "providers",
    request_body = ProviderKeySpec, params(("provider" = String, Path, description = "slug or id")),
    responses((status = 201, body = ProviderKey), (status = 409, body = crate::openapi::Problem)))]
pub async fn add_provider_key(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(spec): Json<ProviderKeySpec>,
) -> Result<Response, ApiError> {
    let provider = provider_or_404(&state, &caller, &key).await?;
    spec.validate()?;
    let entry = ProviderKey {
        id: domain::id::new_id(),
        label: spec.label.clone(),
        hint: spec.hint(),
        created_at_ms: now_ms(),
    };
    let sealed = state
        .secrets
        .seal(spec.key.trim(), &provider.id)
        .map_err(|_| ApiError::internal("sealing the key"))?;
    let mut tx = state.store.begin().await?;
    tx.add_provider_key(&provider.id, &entry, &sealed, PROVIDER_KEYS_MAX)
        .await?;
    let record = Audit::new("provider.key.add", "provider", &provider.id, None);
    audit(&mut tx, &caller, record, NONE, Some(&entry)).await?;
    commit(&state, tx).await?;
    Ok(created(
        &entry,
        format!("/api/v1/providers/{}/keys/{}", provider.id, entry.id),
    ))
}

/// Remove a key from the provider's pool.
#[utoipa::path(delete, path = "/api/v1/providers/{provider}/keys/{key}", tag = "providers",
    params(("provider" = String, Path, description = "slug or id"), ("key" = String, Path)),
    responses((status = 204)))]
pub async fn delete_provider_key(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let provider = provider_or_404(&state, &caller, &key).await?;
    let mut tx = state.store.begin().await?;
    if !tx.delete_provider_key(&provider.id, &key_id).await? {
        return Err(ApiError::not_found("provider key", &key_id));
    }
    let record = Audit::new("provider.key.delete", "provider", &provider.id, None);
    audit(
        &mut tx,
        &caller,
        record,
        Some(&serde_json::json!({"key": key_id})),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The built-in catalogue's provider presets.
#[utoipa::path(get, path = "/api/v1/catalog/providers", tag = "providers",
    responses((status = 200, body = ListResponse<domain::catalog::CatalogProvider>)))]
pub async fn catalog_providers(
    State(state): State<AdminState>,
    _caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only_unpaged(&["kind"])?;
    let kind = params.filter("kind");
    Ok(ok(&ListResponse {
        data: state
            .catalog
            .providers
            .iter()
            .filter(|p| {
                kind.is_none_or(|kind| {
                    serde_json::to_value(p.kind).is_ok_and(|value| value == kind)
                })
            })
            .cloned()
            .collect(),
        next_cursor: None,
    }))
}

/// The built-in catalogue's models with context windows, modalities and
/// list prices (USD per million tokens, each with its source and date).
#[utoipa::path(get, path = "/api/v1/catalog/models", tag = "providers",
    params(("provider" = Option<String>, Query, description = "a provider preset's slug"),
        ("q" = Option<String>, Query, description = "part of the model's name")),
    responses((status = 200, body = ListResponse<domain::catalog::CatalogModel>)))]
pub async fn catalog_models(
    State(state): State<AdminState>,
    _caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only_unpaged(&["provider", "q"])?;
    let provider = params.filter("provider");
    let q = params.filter("q").map(str::to_ascii_lowercase);
    if let Some(provider) = provider
        && !state.catalog.providers.iter().any(|p| p.slug == provider)
    {
        return Err(ApiError::field(
            "provider",
            "is not a provider of the catalogue (see GET /api/v1/catalog/providers)",
        ));
    }
    Ok(ok(&ListResponse {
        data: state
            .catalog
            .models
            .iter()
            .filter(|m| provider.is_none_or(|p| m.provider == p))
            .filter(|m| {
                q.as_deref()
                    .is_none_or(|q| m.model.to_ascii_lowercase().contains(q))
            })
            .cloned()
            .collect(),
        next_cursor: None,
    }))
}

/// The models a provider serves.
#[utoipa::path(get, path = "/api/v1/providers/{provider}/models", tag = "providers",
    params(("provider" = String, Path, description = "slug or id")),
    responses((status = 200, body = ListResponse<ModelView>)))]
pub async fn list_provider_models(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let provider = provider_or_404(&state, &caller, &key).await?;
    let own = state.store.provider_models(&provider.id).await?;
    Ok(ok(&ListResponse {
        data: effective_models(&state.catalog, &provider.spec, &own),
        next_cursor: None,
    }))
}

/// Add a model to the provider, or override a catalogue model's prices
/// (the model's name may hold slashes).
#[utoipa::path(put, path = "/api/v1/providers/{provider}/models/{model}", tag = "providers",
    request_body = ModelSpec,
    params(("provider" = String, Path, description = "slug or id"), ("model" = String, Path)),
    responses((status = 200, body = ModelView), (status = 400, body = crate::openapi::Problem)))]
pub async fn put_provider_model(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, model)): Path<(String, String)>,
    Json(spec): Json<ModelSpec>,
) -> Result<Response, ApiError> {
    let provider = provider_or_404(&state, &caller, &key).await?;
    spec.validate(&model)?;
    let base = preset_of(&provider.spec).and_then(|preset| state.catalog.model(preset, &model));
    if base.is_none() && (spec.context_window.is_none() || spec.modalities.is_none()) {
        return Err(ApiError::field(
            "context_window",
            "and modalities are required for a model the catalogue does not know",
        ));
    }
    let own = ProviderModel {
        provider_id: provider.id.clone(),
        model,
        spec,
        updated_at_ms: now_ms(),
    };
    let mut tx = state.store.begin().await?;
    tx.put_provider_model(&own).await?;
    let record = Audit::new("provider.model.put", "provider", &provider.id, None);
    audit(&mut tx, &caller, record, NONE, Some(&own)).await?;
    commit(&state, tx).await?;
    Ok(ok(&own_view(&own, base)))
}

/// Remove a model's override or an added model.
#[utoipa::path(delete, path = "/api/v1/providers/{provider}/models/{model}", tag = "providers",
    params(("provider" = String, Path, description = "slug or id"), ("model" = String, Path)),
    responses((status = 204)))]
pub async fn delete_provider_model(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, model)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let provider = provider_or_404(&state, &caller, &key).await?;
    let mut tx = state.store.begin().await?;
    if !tx.delete_provider_model(&provider.id, &model).await? {
        return Err(ApiError::not_found("model", &model));
    }
    let record = Audit::new("provider.model.delete", "provider", &provider.id, None);
    audit(
        &mut tx,
        &caller,
        record,
        Some(&serde_json::json!({"model": model})),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
