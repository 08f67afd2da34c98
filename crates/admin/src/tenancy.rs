//! Teams, members, users, personal tokens, console login and the audit log.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::access::{AdminToken, Membership, Role, Team, TeamSpec, User, UserSpec};
use domain::now_ms;
use serde::{Deserialize, Serialize};
use store::{AuditFilter, Session, WriteTx};

use crate::AdminState;
use crate::access::{Audit, Caller, NONE, audit};
use crate::auth::{SESSION_COOKIE, random_secret, token_digest};
use crate::error::ApiError;
use crate::extract::{Json, ListParams};
use crate::handlers::{ListResponse, commit, created, ok};
use crate::password;

pub(crate) async fn team_in(
    tx: &mut WriteTx,
    caller: &Caller,
    key: &str,
    needed: Role,
) -> Result<Team, ApiError> {
    let team = tx
        .team(key)
        .await?
        .ok_or_else(|| ApiError::not_found("team", key))?;
    caller.require(Some(&team.spec.slug), needed, "team", key)?;
    Ok(team)
}

pub(crate) async fn team_or_404(
    state: &AdminState,
    caller: &Caller,
    key: &str,
) -> Result<Team, ApiError> {
    let team = state
        .store
        .team(key)
        .await?
        .ok_or_else(|| ApiError::not_found("team", key))?;
    caller.require(Some(&team.spec.slug), Role::Viewer, "team", key)?;
    Ok(team)
}

// ------------------------------------------------------------------ teams

/// Create a team. A user who creates a team becomes its owner.
#[utoipa::path(post, path = "/api/v1/teams", tag = "teams", request_body = TeamSpec,
    responses((status = 201, body = Team), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_team(
    State(state): State<AdminState>,
    caller: Caller,
    Json(spec): Json<TeamSpec>,
) -> Result<Response, ApiError> {
    // A token limited to some teams acts within them: a team it made
    // would be outside its own scope, and its user's owner role there
    // more than the token was given.
    if caller.scope().is_some() && !caller.is_platform() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "A team-scoped token cannot create teams. Use the console, or a token not limited to teams.",
        ));
    }
    spec.validate()?;
    let now = now_ms();
    let team = Team {
        id: domain::id::new_id(),
        spec,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let mut tx = state.store.begin().await?;
    tx.put_team(&team).await?;
    if let Some(user_id) = caller.user_id() {
        tx.put_membership(&team.id, user_id, Role::Owner).await?;
    }
    let record = Audit::new("team.create", "team", &team.id, Some(&team.spec.slug));
    audit(&mut tx, &caller, record, NONE, Some(&team)).await?;
    commit(&state, tx).await?;
    Ok(created(&team, format!("/api/v1/teams/{}", team.spec.slug)))
}

/// List the teams the caller belongs to (every team for root and superadmins).
#[utoipa::path(get, path = "/api/v1/teams", tag = "teams",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<Team>)))]
pub async fn list_teams(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let page = state
        .store
        .teams(&caller.visible(), params.after.as_deref(), params.limit)
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

#[utoipa::path(get, path = "/api/v1/teams/{team}", tag = "teams",
    params(("team" = String, Path, description = "slug or id")),
    responses((status = 200, body = Team), (status = 404, body = crate::openapi::Problem)))]
pub async fn get_team(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(&team_or_404(&state, &caller, &key).await?))
}

/// Change a team's name or description (the slug is immutable).
#[utoipa::path(patch, path = "/api/v1/teams/{team}", tag = "teams", request_body = Object,
    params(("team" = String, Path)), responses((status = 200, body = Team)))]
pub async fn patch_team(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = team_in(&mut tx, &caller, &key, Role::Admin).await?;
    let spec: TeamSpec = crate::handlers::patched(&existing.spec, patch)?;
    if spec.slug != existing.spec.slug {
        return Err(ApiError::field(
            "slug",
            "cannot change: objects refer to their team by slug",
        ));
    }
    spec.validate()?;
    let team = Team {
        spec,
        updated_at_ms: now_ms(),
        ..existing.clone()
    };
    tx.put_team(&team).await?;
    let record = Audit::new("team.update", "team", &team.id, Some(&team.spec.slug));
    audit(&mut tx, &caller, record, Some(&existing), Some(&team)).await?;
    commit(&state, tx).await?;
    Ok(ok(&team))
}

/// Delete a team (owners only; refused while it owns services, upstreams or apps).
#[utoipa::path(delete, path = "/api/v1/teams/{team}", tag = "teams",
    params(("team" = String, Path)), responses((status = 204), (status = 409, body = crate::openapi::Problem)))]
pub async fn delete_team(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, &caller, &key, Role::Owner).await?;
    let belongings = tx.team_belongings(&team.spec.slug).await?;
    if !belongings.is_empty() {
        // Money records are never deleted: a team that has some stays, and
        // saying "delete them first" would send its owner looking for a
        // way that does not exist.
        let (kept, movable): (Vec<_>, Vec<_>) = belongings
            .iter()
            .partition(|item| item.starts_with("a wallet with"));
        let mut detail = String::new();
        if !movable.is_empty() {
            let movable: Vec<&str> = movable.iter().map(|item| item.as_str()).collect();
            detail = format!(
                "still owns {}; delete or move them first",
                movable.join(", ")
            );
        }
        if let Some(wallet) = kept.first() {
            if !detail.is_empty() {
                detail.push_str(". ");
            }
            detail.push_str(&format!(
                "It has {wallet}: the ledger is append-only and a team with money history cannot be deleted; remove its members and leave it unused instead"
            ));
        }
        return Err(ApiError::conflict("team", detail));
    }
    tx.delete_team(&team.id, &team.spec.slug).await?;
    let record = Audit::new("team.delete", "team", &team.id, Some(&team.spec.slug));
    audit(&mut tx, &caller, record, Some(&team), NONE).await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- members

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// The user's email or id.
    pub user: String,
    pub role: Role,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/members", tag = "teams",
    params(("team" = String, Path)), responses((status = 200, body = ListResponse<Membership>)))]
pub async fn list_members(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only_unpaged(&[])?;
    let team = team_or_404(&state, &caller, &key).await?;
    let members = state.store.members(&team.id).await?;
    Ok(ok(&ListResponse {
        data: members,
        next_cursor: None,
    }))
}

/// Only owners grant or take away the owner role; a team keeps at least one owner.
fn check_owner_change(
    caller: &Caller,
    team: &Team,
    from: Option<Role>,
    to: Option<Role>,
) -> Result<(), ApiError> {
    let touches_owner = from == Some(Role::Owner) || to == Some(Role::Owner);
    if touches_owner {
        caller.require(Some(&team.spec.slug), Role::Owner, "team", &team.spec.slug)?;
    }
    Ok(())
}

/// Refuses a change that took away a team's last owner (`owners_before`:
/// the count before it). A team made by root may start without one.
async fn keep_an_owner(tx: &mut WriteTx, team: &Team, owners_before: i64) -> Result<(), ApiError> {
    if owners_before > 0 && tx.owner_count(&team.id).await? == 0 {
        return Err(ApiError::conflict(
            "role",
            "a team needs at least one owner; make someone else owner first",
        ));
    }
    Ok(())
}

/// Gives `user` the role `role` in `team` (`before`: their role until
/// now), keeping the owner rules, and audits it.
async fn set_role(
    tx: &mut WriteTx,
    caller: &Caller,
    team: &Team,
    user: &User,
    before: Option<Role>,
    role: Role,
) -> Result<Membership, ApiError> {
    let owners_before = tx.owner_count(&team.id).await?;
    check_owner_change(caller, team, before, Some(role))?;
    let created_at_ms = tx.put_membership(&team.id, &user.id, role).await?;
    keep_an_owner(tx, team, owners_before).await?;
    let membership = Membership {
        team: team.spec.slug.clone(),
        user_id: user.id.clone(),
        email: user.email.clone(),
        role,
        created_at_ms,
    };
    let record = Audit::new(
        if before.is_some() {
            "member.update"
        } else {
            "member.add"
        },
        "membership",
        &user.id,
        Some(&team.spec.slug),
    );
    let before = before.map(|role| serde_json::json!({"role": role}));
    audit(tx, caller, record, before.as_ref(), Some(&membership)).await?;
    Ok(membership)
}

/// Add a member (409 if they already are one: change a role with PATCH).
#[utoipa::path(post, path = "/api/v1/teams/{team}/members", tag = "teams", request_body = MemberSpec,
    params(("team" = String, Path)), responses((status = 201, body = Membership)))]
pub async fn add_member(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(spec): Json<MemberSpec>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, &caller, &key, Role::Admin).await?;
    let user = tx
        .user(&spec.user)
        .await?
        .ok_or_else(|| ApiError::field("user", format!("no user '{}' exists", spec.user)))?;
    if let Some(role) = tx.member_role(&team.id, &user.id).await? {
        // Adding is not changing: a second add must not demote an admin.
        return Err(ApiError::conflict(
            "user",
            format!(
                "'{}' is already a member of '{}' (role '{}'); change the role with PATCH /api/v1/teams/{}/members/{}",
                spec.user,
                team.spec.slug,
                role.as_str(),
                team.spec.slug,
                user.id
            ),
        ));
    }
    let membership = set_role(&mut tx, &caller, &team, &user, None, spec.role).await?;
    commit(&state, tx).await?;
    Ok(created(
        &membership,
        format!("/api/v1/teams/{}/members/{}", team.spec.slug, user.id),
    ))
}

#[utoipa::path(patch, path = "/api/v1/teams/{team}/members/{user}", tag = "teams", request_body = RoleChange,
    params(("team" = String, Path), ("user" = String, Path, description = "email or id")),
    responses((status = 200, body = Membership)))]
pub async fn change_member(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, user_key)): Path<(String, String)>,
    Json(change): Json<RoleChange>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, &caller, &key, Role::Admin).await?;
    let user = tx
        .user(&user_key)
        .await?
        .ok_or_else(|| ApiError::not_found("member", &user_key))?;
    let Some(before) = tx.member_role(&team.id, &user.id).await? else {
        return Err(ApiError::not_found("member", &user_key));
    };
    let membership = set_role(&mut tx, &caller, &team, &user, Some(before), change.role).await?;
    commit(&state, tx).await?;
    Ok(ok(&membership))
}

#[utoipa::path(delete, path = "/api/v1/teams/{team}/members/{user}", tag = "teams",
    params(("team" = String, Path), ("user" = String, Path)), responses((status = 204)))]
pub async fn remove_member(
    State(state): State<AdminState>,
    caller: Caller,
    Path((key, user_key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let team = team_in(&mut tx, &caller, &key, Role::Viewer).await?;
    let user = tx
        .user(&user_key)
        .await?
        .ok_or_else(|| ApiError::not_found("member", &user_key))?;
    let Some(before) = tx.member_role(&team.id, &user.id).await? else {
        return Err(ApiError::not_found("member", &user_key));
    };
    // Anyone may leave a team; removing someone else takes an admin.
    if caller.user_id() != Some(user.id.as_str()) {
        caller.require(Some(&team.spec.slug), Role::Admin, "team", &key)?;
        check_owner_change(&caller, &team, Some(before), None)?;
    }
    let owners_before = tx.owner_count(&team.id).await?;
    tx.delete_membership(&team.id, &user.id).await?;
    keep_an_owner(&mut tx, &team, owners_before).await?;
    let record = Audit::new(
        "member.remove",
        "membership",
        &user.id,
        Some(&team.spec.slug),
    );
    audit(
        &mut tx,
        &caller,
        record,
        Some(&serde_json::json!({"role": before, "email": user.email})),
        NONE,
    )
    .await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------------ users

/// Create a user (root and superadmins).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = UserSpec,
    responses((status = 201, body = User), (status = 409, body = crate::openapi::Problem)))]
pub async fn create_user(
    State(state): State<AdminState>,
    caller: Caller,
    Json(spec): Json<UserSpec>,
) -> Result<Response, ApiError> {
    caller.require_platform()?;
    spec.validate()?;
    let hash = password::hash(&spec.password)?;
    let now = now_ms();
    let user = User {
        id: domain::id::new_id(),
        email: spec.email.to_lowercase(),
        name: spec.name,
        superadmin: spec.superadmin,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let mut tx = state.store.begin().await?;
    tx.insert_user(&user, &hash).await?;
    let record = Audit::new("user.create", "user", &user.id, None);
    audit(&mut tx, &caller, record, NONE, Some(&user)).await?;
    commit(&state, tx).await?;
    Ok(created(&user, format!("/api/v1/users/{}", user.id)))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<User>)))]
pub async fn list_users(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    caller.require_platform()?;
    params.only(&[])?;
    let page = state
        .store
        .users(params.after.as_deref(), params.limit)
        .await?;
    Ok(ok(&ListResponse::from(page)))
}

fn self_or_platform(caller: &Caller, user: &User, key: &str) -> Result<(), ApiError> {
    if caller.is_platform() || caller.user_id() == Some(user.id.as_str()) {
        Ok(())
    } else {
        Err(ApiError::not_found("user", key))
    }
}

#[utoipa::path(get, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "email or id")), responses((status = 200, body = User)))]
pub async fn get_user(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let user = state
        .store
        .user(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("user", &key))?;
    self_or_platform(&caller, &user, &key)?;
    Ok(ok(&user))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Required to change one's own password.
    #[serde(default)]
    pub current_password: Option<String>,
    /// Root and superadmins only.
    #[serde(default)]
    pub superadmin: Option<bool>,
}

/// Change a user's name, password or superadmin flag.
#[utoipa::path(patch, path = "/api/v1/users/{user}", tag = "users", request_body = UserChange,
    params(("user" = String, Path)), responses((status = 200, body = User)))]
pub async fn patch_user(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
    Json(change): Json<UserChange>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let existing = tx
        .user(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("user", &key))?;
    self_or_platform(&caller, &existing, &key)?;
    // A platform-only change: 403, as every action beyond one's role.
    if change.superadmin.is_some() {
        caller.require_platform()?;
    }
    let mut errors = domain::validate::FieldErrors::new();
    let mut hash = None;
    if let Some(new_password) = &change.password {
        domain::access::check_password(&mut errors, "password", new_password);
        if !caller.is_platform() {
            let current = change.current_password.as_deref().unwrap_or_default();
            let stored = state
                .store
                .user_for_login(&existing.email)
                .await?
                .map(|(_, h)| h)
                .unwrap_or_default();
            if !password::verify(current, &stored) {
                errors.add(
                    "current_password",
                    "does not match; send the current password to set a new one",
                );
            }
        }
        if errors.is_empty() {
            hash = Some(password::hash(new_password)?);
        }
    }
    errors.into_result()?;
    let user = User {
        name: change.name.or_else(|| existing.name.clone()),
        superadmin: change.superadmin.unwrap_or(existing.superadmin),
        updated_at_ms: now_ms(),
        ..existing.clone()
    };
    tx.update_user(&user, hash.as_deref()).await?;
    let record = Audit::new("user.update", "user", &user.id, None);
    audit(&mut tx, &caller, record, Some(&existing), Some(&user)).await?;
    commit(&state, tx).await?;
    Ok(ok(&user))
}

#[utoipa::path(delete, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path)), responses((status = 204)))]
pub async fn delete_user(
    State(state): State<AdminState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let user = tx
        .user(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("user", &key))?;
    // Another user does not exist for a team member; deleting one's own
    // account is the platform's call.
    self_or_platform(&caller, &user, &key)?;
    caller.require_platform()?;
    tx.delete_user(&user.id).await?;
    let record = Audit::new("user.delete", "user", &user.id, None);
    audit(&mut tx, &caller, record, Some(&user), NONE).await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----------------------------------------------------------------- tokens

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Limit the token to these teams (slugs); omitted: all the user's teams.
    #[serde(default)]
    pub teams: Option<Vec<String>>,
    /// RFC 3339 expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Root and superadmins: create the token for this user (email or id).
    #[serde(default)]
    pub user: Option<String>,
}

/// A token as created: the only time its secret is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: AdminToken,
    /// The token itself. Shown once; only its SHA-256 is stored.
    pub token_secret: String,
}

/// Create a personal admin token (shown once).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "users", request_body = TokenSpec,
    responses((status = 201, body = CreatedToken)))]
pub async fn create_token(
    State(state): State<AdminState>,
    caller: Caller,
    Json(spec): Json<TokenSpec>,
) -> Result<Response, ApiError> {
    let mut tx = state.store.begin().await?;
    let user = match (&spec.user, caller.user_id()) {
        (Some(key), own_id) => {
            let named = tx.user(key).await?;
            // Naming oneself is leaving `user` out; anyone else's token is
            // the platform's to mint (whether the user exists included).
            if named.as_ref().map(|user| user.id.as_str()) != own_id {
                caller.require_platform()?;
            }
            named.ok_or_else(|| ApiError::field("user", format!("no user '{key}' exists")))?
        }
        (None, Some(id)) => tx
            .user(id)
            .await?
            .ok_or_else(|| ApiError::not_found("user", id))?,
        (None, None) => {
            return Err(ApiError::field(
                "user",
                "the root token has no user: name the user the token is for",
            ));
        }
    };
    let mut errors = domain::validate::FieldErrors::new();
    // A team-scoped token mints tokens within its own scope only: by
    // default its own teams, never an unscoped (or superadmin) token.
    let mut spec = spec;
    if spec.teams.is_none()
        && let Some(scope) = caller.scope()
    {
        spec.teams = Some(scope.to_vec());
    }
    if !caller.covers_scope(spec.teams.as_deref()) {
        errors.add(
            "teams",
            "a team-scoped token can only create tokens for its own teams",
        );
    }
    if let Some(teams) = &spec.teams {
        let roles = tx.memberships_of_user(&user.id).await?;
        for (index, team) in teams.iter().enumerate() {
            if teams[..index].contains(team) {
                errors.add(
                    format!("teams[{index}]"),
                    format!("'{team}' is named twice; name each team once"),
                );
            } else if !roles.iter().any(|m| &m.team == team) {
                errors.add(
                    format!("teams[{index}]"),
                    format!("the user is not a member of '{team}'"),
                );
            }
        }
    }
    let expires_at_ms = match &spec.expires_at {
        Some(text) => match domain::access::parse_time_ms(text) {
            Ok(ms) if ms > now_ms() => Some(ms),
            Ok(_) => {
                errors.add("expires_at", "must be in the future");
                None
            }
            Err(message) => {
                errors.add("expires_at", message);
                None
            }
        },
        None => None,
    };
    errors.into_result()?;
    let random = random_secret(40);
    if random.is_empty() {
        return Err(ApiError::internal("no random source"));
    }
    let secret = format!("tgp_{random}");
    let token = AdminToken {
        id: domain::id::new_id(),
        user_id: user.id.clone(),
        name: spec.name,
        prefix: secret[..12].to_owned(),
        teams: spec.teams,
        expires_at_ms,
        created_at_ms: now_ms(),
    };
    tx.insert_token(&token, &token_digest(&secret)).await?;
    let record = Audit::new("token.create", "token", &token.id, None);
    audit(&mut tx, &caller, record, NONE, Some(&token)).await?;
    commit(&state, tx).await?;
    Ok(created(
        &CreatedToken {
            token,
            token_secret: secret,
        },
        "/api/v1/tokens".into(),
    ))
}

/// The caller's own tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "users", responses((status = 200, body = ListResponse<AdminToken>)))]
pub async fn list_tokens(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only_unpaged(&[])?;
    let mut tokens = match caller.user_id() {
        Some(id) => state.store.tokens_of_user(id).await?,
        None => Vec::new(),
    };
    tokens.retain(|token| caller.covers_scope(token.teams.as_deref()));
    Ok(ok(&ListResponse {
        data: tokens,
        next_cursor: None,
    }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{token}", tag = "users",
    params(("token" = String, Path, description = "token id")), responses((status = 204)))]
pub async fn delete_token(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(user_id) = caller.user_id() else {
        return Err(ApiError::not_found("token", &id));
    };
    let mut tx = state.store.begin().await?;
    // A scoped token sees (and so revokes) only tokens within its scope.
    if caller.scope().is_some() {
        let tokens = state.store.tokens_of_user(user_id).await?;
        if !tokens
            .iter()
            .any(|token| token.id == id && caller.covers_scope(token.teams.as_deref()))
        {
            return Err(ApiError::not_found("token", &id));
        }
    }
    if !tx.delete_token(user_id, &id).await? {
        return Err(ApiError::not_found("token", &id));
    }
    let record = Audit::new("token.delete", "token", &id, None);
    audit(&mut tx, &caller, record, NONE, NONE).await?;
    commit(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------------ login

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginAnswer {
    pub user: User,
    /// Send as `X-CSRF-Token` on every change made with the session cookie.
    pub csrf_token: String,
    pub expires_at_ms: i64,
}

const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// Log in to the console: sets the session cookie (HttpOnly, Secure,
/// SameSite=Strict) and returns the CSRF token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "users", request_body = Login,
    responses((status = 200, body = LoginAnswer), (status = 401, body = crate::openapi::Problem),
        (status = 429, body = crate::openapi::Problem, description = "Too many failed logins for this email")), security(()))]
pub async fn login(
    State(state): State<AdminState>,
    Json(login): Json<Login>,
) -> Result<Response, ApiError> {
    let email = login.email.to_lowercase();
    let now = now_ms();
    if let Some(wait_s) = state.login_failures.locked_for_s(&email, now) {
        let mut refused = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("Too many failed logins for this email; try again in {wait_s} s."),
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&wait_s.to_string()) {
            refused.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(refused);
    }
    let found = state.store.user_for_login(&email).await?;
    let stored = found
        .as_ref()
        .map_or(password::decoy_hash(), |(_, hash)| hash.as_str());
    let matches = password::verify(&login.password, stored);
    let Some((user, _)) = found.filter(|_| matches) else {
        tracing::info!(email = %login.email, "failed console login");
        state.login_failures.failed(&email, now);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The email or password is wrong.",
        ));
    };
    state.login_failures.succeeded(&email);
    let session_id = random_secret(43);
    let csrf = random_secret(32);
    if session_id.is_empty() || csrf.is_empty() {
        return Err(ApiError::internal("no random source"));
    }
    let expires_at_ms = now_ms() + SESSION_TTL_MS;
    let mut tx = state.store.begin().await?;
    tx.insert_session(
        &token_digest(&session_id),
        &Session {
            user_id: user.id.clone(),
            csrf: csrf.clone(),
            expires_at_ms,
        },
    )
    .await?;
    tx.commit().await?;
    let cookie = format!(
        "{SESSION_COOKIE}={session_id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_TTL_MS / 1000
    );
    let mut response = ok(&LoginAnswer {
        user,
        csrf_token: csrf,
        expires_at_ms,
    });
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// End the console session.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "users", responses((status = 204)))]
pub async fn logout(
    State(state): State<AdminState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let cookie = crate::auth::session_cookie(request.headers()).map(str::to_owned);
    if let Some(cookie) = cookie {
        let mut tx = state.store.begin().await?;
        tx.delete_session(&token_digest(&cookie)).await?;
        tx.commit().await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "tollgate_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// `root` or `user:<email>`.
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    pub platform: bool,
    /// Team slug → role.
    pub teams: Vec<TeamRole>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamRole {
    pub team: String,
    pub role: Role,
}

/// Who the caller is and their role in each team.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "users", responses((status = 200, body = Me)))]
pub async fn me(caller: Caller) -> Result<Response, ApiError> {
    let (user, teams) = match &caller {
        Caller::Root => (None, Vec::new()),
        Caller::User(user) => (
            Some(user.user.clone()),
            user.roles
                .iter()
                .map(|(team, role)| TeamRole {
                    team: team.clone(),
                    role: *role,
                })
                .collect(),
        ),
    };
    Ok(ok(&Me {
        actor: caller.actor(),
        user,
        platform: caller.is_platform(),
        teams,
    }))
}

// ------------------------------------------------------------------ audit

/// The audit log, newest first: every change to the caller's teams.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query),
        ("object_id" = Option<String>, Query), ("action" = Option<String>, Query), ("actor" = Option<String>, Query)),
    responses((status = 200, body = ListResponse<domain::access::AuditEntry>)))]
pub async fn list_audit(
    State(state): State<AdminState>,
    caller: Caller,
    params: ListParams,
) -> Result<Response, ApiError> {
    params.only(&["object_id", "action", "actor"])?;
    let filter = AuditFilter {
        object_id: params.filter("object_id"),
        action: params.filter("action"),
        actor: params.filter("actor"),
    };
    let page = state
        .store
        .audit(
            &caller.visible(),
            &filter,
            params.after.as_deref(),
            params.limit,
        )
        .await?;
    Ok(ok(&ListResponse::from(page)))
}
