//! Alert rules (`/api/v1/alerts`): a team's admins create, change and
//! delete them (audited); its members read them with the state of each
//! subject. The binary's evaluator fires `alert.firing` / `alert.resolved`
//! to the team's webhooks.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::access::Role;
use domain::alerts::{AlertRule, AlertRuleSpec, AlertState};
use domain::now_ms;
use serde::Serialize;

use crate::AdminState;
use crate::access::{Audit, Caller, NONE, audit};
use crate::error::ApiError;
use crate::extract::{Json, ListParams};
use crate::handlers::{ListResponse, commit, created, ok, patched};

/// A rule with where each of its subjects stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertView {
    #[serde(flatten)]
    pub rule: AlertRule,
    pub states: Vec<AlertState>,
}

/// The rule `key`, if the caller holds `needed` in its team.
async fn rule_or_404(
    state: &AdminState,
    caller: &Caller,
    key: &str,
    needed: Role,
) -> Result<AlertRule, ApiError> {
    let rule = state
        .store
        .alert(key)
        .await?
        .ok_or_else(|| ApiError::not_found("alert", key))?;
    caller.require(Some(&rule.spec.team), needed, "alert", key)?;
    Ok(rule)
}

/// Checks what a rule names: its team exists and the caller administers
/// it; its service belongs to that team.
async fn check_references(
    state: &AdminState,
    caller: &Caller,
    spec: &AlertRuleSpec,
) -> Result<(), ApiError> {
    spec.validate()?;
    // Whether a team exists is told only to those who may see it.
    if !caller.is_platform() {
        caller.require(Some(&spec.team), Role::Admin, "team", &spec.team)?;
    }
    let team = state.store.team(&spec.team).await?;
    if team.is_none() {
        return Err(ApiError::field("team", "no such team"));
    }
    caller.require(Some(&spec.team), Role::Admin, "team", &spec.team)?;
    if let Some(slug) = &spec.service {
        let service = state.store.service(slug).await?;
        let team = spec.team.as_str();
        let known = match &service {
            None => false,
            // Calls by the team's apps: a service they subscribe to.
            Some(service) if spec.as_consumer => {
                let filter = store::SubscriptionFilter {
                    service_id: Some(&service.id),
                    ..Default::default()
                };
                let page = state
                    .store
                    .subscriptions(&store::Visible::teams([team]), &filter, None, 500)
                    .await?;
                service.spec.team.as_deref() == Some(team)
                    || page.items.iter().any(|s| s.consumer_team == team)
            }
            Some(service) => service.spec.team.as_deref() == Some(team),
        };
        if !known {
            return Err(ApiError::field(
                "service",
                if spec.as_consumer {
                    format!("the apps of team '{team}' have no subscription to a service '{slug}'")
                } else {
                    format!("the team '{team}' has no service '{slug}'")
                },
            ));
        }
    }
    Ok(())
}

fn rule_audit<'a>(action: &'a str, rule: &'a AlertRule) -> Audit<'a> {
    Audit::new(action, "alert", &rule.id, Some(&rule.spec.team))
}

/// Create an alert rule.
#[utoipa::path(post, path = "/api/v1/alerts", tag = "observability", request_body = AlertRuleSpec,
    responses((status = 201, body = AlertRule), (status = 400, body = crate::openapi::Problem)))]
pub async fn create_alert(
    State(state): State<AdminState>,
    caller: Caller,
    Json(mut spec): Json<AlertRuleSpec>,
) -> Result<Response, ApiError> {
    if spec.team.is_empty() {
        // Like every object: the caller's only team where it may do this.
        let mut tx = state.store.begin().await?;
        if let Some(team) = caller.team_for_new(&mut tx, None, Role::Admin).await? {
            spec.team = team;
        }
    }
    check_references(&state, &caller, &spec).await?;
    let now = now_ms();
    let rule = AlertRule {
        id: domain::id::new_id(),
        spec,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let mut tx = state.store.begin().await?;
    tx.put_alert(&rule).await?;
    audit(
        &mut tx,
        &caller,
        rule_audit("alert.create", &rule),
        NONE,
        Some(&rule),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(created(&rule, format!("/api/v1/alerts/{}", rule.id)))
}

/// The alert rules of the caller's teams.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "observability",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query), ("team" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<AlertRule>)))]
pub async fn list_alerts(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["team"])?;
    let page = state
        .store
        .alerts(
            &caller.visible(),
            params.filter("team"),
            params.after.as_deref(),
            params.limit,
        )
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

/// A rule and where each of its subjects stands.
#[utoipa::path(get, path = "/api/v1/alerts/{alert}", tag = "observability",
    params(("alert" = String, Path, description = "slug or id")),
    responses((status = 200, body = AlertView)))]
pub async fn get_alert(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let rule = rule_or_404(&state, &caller, &key, Role::Viewer).await?;
    let states = state.store.alert_states(&rule.id).await?;
    Ok(ok(&AlertView { rule, states }))
}

/// Change a rule (JSON merge patch). Its team cannot change.
#[utoipa::path(patch, path = "/api/v1/alerts/{alert}", tag = "observability", request_body = Object,
    params(("alert" = String, Path, description = "slug or id")),
    responses((status = 200, body = AlertRule)))]
pub async fn patch_alert(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let existing = rule_or_404(&state, &caller, &key, Role::Admin).await?;
    let spec: AlertRuleSpec = patched(&existing.spec, patch)?;
    if spec.team != existing.spec.team {
        return Err(ApiError::field("team", "cannot change: make a new rule"));
    }
    check_references(&state, &caller, &spec).await?;
    let rule = AlertRule {
        spec,
        updated_at_ms: now_ms(),
        ..existing.clone()
    };
    let mut tx = state.store.begin().await?;
    tx.put_alert(&rule).await?;
    audit(
        &mut tx,
        &caller,
        rule_audit("alert.update", &rule),
        Some(&existing),
        Some(&rule),
    )
    .await?;
    commit(&state, tx).await?;
    Ok(ok(&rule))
}

/// Delete a rule.
#[utoipa::path(delete, path = "/api/v1/alerts/{alert}", tag = "observability",
    params(("alert" = String, Path, description = "slug or id")), responses((status = 204)))]
pub async fn delete_alert(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let rule = rule_or_404(&state, &caller, &key, Role::Admin).await?;
    let firing: Vec<_> = state
        .store
        .alert_states(&rule.id)
        .await?
        .into_iter()
        .filter(|s| s.firing)
        .collect();
    let mut tx = state.store.begin().await?;
    // What it had firing resolves, as when a rule is disabled: receivers
    // close what they opened.
    for subject in &firing {
        let (event, payload) = domain::alerts::event(
            &rule,
            (&subject.subject, false, ""),
            serde_json::json!({"reason": "the rule was deleted"}),
            now_ms(),
        );
        tx.enqueue_event(&rule.spec.team, event, &payload).await?;
    }
    tx.delete_alert(&rule.id).await?;
    audit(
        &mut tx,
        &caller,
        rule_audit("alert.delete", &rule),
        Some(&rule),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
