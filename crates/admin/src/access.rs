//! Who is calling the admin API and what they may do: the [`Caller`] (root,
//! or a user with a role per team), the role checks every handler makes,
//! and the audit log every change writes.
//!
//! The rule (docs/access.md has the full matrix): an object belongs to a
//! team; a caller without a role in that team gets 404 (the object does not
//! exist for them), a caller whose role is too low gets 403. Root and
//! superadmins act as owners of every team.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use domain::access::{AuditEntry, Role, User};
use serde::Serialize;
use store::{Visible, WriteTx};

use crate::error::{ApiError, REQUEST_ID};

/// The authenticated caller of an admin request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The root token: the platform operator.
    Root,
    User(UserCaller),
}

#[derive(Debug, Clone)]
pub struct UserCaller {
    pub user: User,
    /// Team slug → role, already narrowed to the token's teams.
    pub roles: Vec<(String, Role)>,
    /// Superadmin, and not narrowed by a team-scoped token.
    pub platform: bool,
    /// The teams a team-scoped token is limited to (`None`: a console
    /// session or an unscoped token).
    pub scope: Option<Vec<String>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Send an admin token as 'Authorization: Bearer <token>' or log in.",
            )
        })
    }
}

impl Caller {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        match self {
            Caller::Root => "root".into(),
            Caller::User(user) => format!("user:{}", user.user.email),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            Caller::Root => None,
            Caller::User(user) => Some(&user.user.id),
        }
    }

    /// Root or an unscoped superadmin: sees and changes everything.
    pub fn is_platform(&self) -> bool {
        match self {
            Caller::Root => true,
            Caller::User(user) => user.platform,
        }
    }

    /// The caller's role over objects of `team` (`None`: platform-owned
    /// objects, which only platform callers reach).
    pub fn role(&self, team: Option<&str>) -> Option<Role> {
        if self.is_platform() {
            return Some(Role::Owner);
        }
        let Caller::User(user) = self else {
            return None;
        };
        let team = team?;
        user.roles.iter().find(|(t, _)| t == team).map(|(_, r)| *r)
    }

    /// The teams whose objects this caller sees.
    pub fn visible(&self) -> Visible {
        match self {
            _ if self.is_platform() => Visible::all(),
            Caller::User(user) => Visible::teams(user.roles.iter().map(|(t, _)| t.as_str())),
            Caller::Root => Visible::all(),
        }
    }

    /// Checks that the caller holds at least `needed` over an object of
    /// `team`: 404 when the caller has no role there (the object does not
    /// exist for them), 403 when the role is too low.
    pub fn require(
        &self,
        team: Option<&str>,
        needed: Role,
        kind: &str,
        key: &str,
    ) -> Result<(), ApiError> {
        match self.role(team) {
            None => Err(ApiError::not_found(kind, key)),
            Some(role) if role < needed => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "This needs the role '{}' in team '{}'; you are '{}'. Ask {} of the team.",
                    needed.as_str(),
                    team.unwrap_or("-"),
                    role.as_str(),
                    if needed == Role::Owner {
                        "an owner"
                    } else {
                        "an owner or admin"
                    }
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The teams a team-scoped token is limited to.
    pub fn scope(&self) -> Option<&[String]> {
        match self {
            Caller::Root => None,
            Caller::User(user) => user.scope.as_deref(),
        }
    }

    /// Whether this caller may see or manage a token scoped to `teams`:
    /// a scoped caller only tokens within its own scope (so it cannot
    /// widen itself by minting or keep a wider token from being revoked).
    pub fn covers_scope(&self, teams: Option<&[String]>) -> bool {
        match (self.scope(), teams) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(scope), Some(teams)) => teams.iter().all(|team| scope.contains(team)),
        }
    }

    /// 403 unless the caller is root or a superadmin.
    pub fn require_platform(&self) -> Result<(), ApiError> {
        if self.is_platform() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Only the root token or a superadmin may do this.",
            ))
        }
    }

    /// The team a new object goes to: the one named (which must exist and
    /// where the caller holds `needed`), or, when none is named, the
    /// caller's only team with that role. Platform callers may leave it
    /// empty (a platform-owned object).
    pub async fn team_for_new(
        &self,
        tx: &mut WriteTx,
        named: Option<&str>,
        needed: Role,
    ) -> Result<Option<String>, ApiError> {
        if let Some(slug) = named {
            // Someone who may not act in the team learns nothing more of
            // it, not even whether it exists: the same 404 either way.
            if !self.is_platform() {
                self.require(Some(slug), needed, "team", slug)?;
            }
            if tx.team(slug).await?.is_none() {
                return Err(ApiError::field(
                    "team",
                    format!("no team '{slug}' exists; create it first (POST /api/v1/teams)"),
                ));
            }
            self.require(Some(slug), needed, "team", slug)?;
            return Ok(Some(slug.to_owned()));
        }
        match self {
            _ if self.is_platform() => Ok(None),
            Caller::User(user) => {
                let mut eligible = user.roles.iter().filter(|(_, role)| *role >= needed);
                match (eligible.next(), eligible.next()) {
                    (Some((team, _)), None) => Ok(Some(team.clone())),
                    (None, _) => Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "Creating this needs the role '{}' in a team; you have it in none.",
                            needed.as_str()
                        ),
                    )),
                    (Some(_), Some(_)) => Err(ApiError::field(
                        "team",
                        "is required: you belong to several teams; name the one that owns this object",
                    )),
                }
            }
            Caller::Root => Ok(None),
        }
    }
}

/// Refuses moving an object to another team through an update.
pub fn keep_team(existing: Option<&String>, new: &mut Option<String>) -> Result<(), ApiError> {
    match (existing, new.as_ref()) {
        (_, None) => {
            new.clone_from(&existing.cloned());
            Ok(())
        }
        (Some(old), Some(new)) if old == new => Ok(()),
        (None, Some(_)) | (Some(_), Some(_)) => Err(ApiError::field(
            "team",
            "cannot change: an object stays with the team that created it",
        )),
    }
}

/// One audit record in the making.
pub struct Audit<'a> {
    pub action: &'a str,
    pub kind: &'a str,
    pub id: &'a str,
    pub team: Option<&'a str>,
    /// The other side (a subscription's consumer or provider team).
    pub other_team: Option<&'a str>,
}

impl<'a> Audit<'a> {
    /// A change to an object of one team (or of the platform: `None`).
    pub fn new(action: &'a str, kind: &'a str, id: &'a str, team: Option<&'a str>) -> Self {
        Self {
            action,
            kind,
            id,
            team,
            other_team: None,
        }
    }
}

fn json<T: Serialize>(value: Option<&T>) -> Option<serde_json::Value> {
    value.and_then(|v| serde_json::to_value(v).ok())
}

/// Appends to the audit log inside the change's own transaction, so the
/// log holds exactly the changes that happened.
pub async fn audit<B: Serialize, A: Serialize>(
    tx: &mut WriteTx,
    caller: &Caller,
    record: Audit<'_>,
    before: Option<&B>,
    after: Option<&A>,
) -> Result<(), ApiError> {
    let entry = AuditEntry {
        id: domain::id::new_id(),
        at_ms: domain::now_ms(),
        actor: caller.actor(),
        action: record.action.to_owned(),
        object_kind: record.kind.to_owned(),
        object_id: record.id.to_owned(),
        team: record.team.map(str::to_owned),
        before: json(before),
        after: json(after),
        request_id: REQUEST_ID.try_with(Clone::clone).unwrap_or_default(),
    };
    tx.insert_audit(&entry, record.other_team).await?;
    Ok(())
}

/// A value that serialises to nothing: the absent side of an audit entry.
pub const NONE: Option<&()> = None;
