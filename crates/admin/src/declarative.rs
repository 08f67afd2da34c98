//! Declarative configuration: `POST /api/v1/config/apply` reconciles the
//! stored upstreams, services and routes with a document (JSON or YAML), in
//! one transaction: create what is missing, update what differs, and with
//! `prune` delete what the document does not name. `dry_run` reports the
//! same changes and writes nothing. `GET /api/v1/config/export` writes the
//! document that applying would reproduce.

use std::collections::{BTreeMap, HashSet};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use domain::access::{Plan, PlanSpec, Team, TeamSpec};
use domain::model::{Lifecycle, Route, RouteSpec, Service, ServiceSpec, UpstreamSpec};
use domain::strict::StrictValue;
use domain::validate::FieldErrors;
use serde::Serialize;
use serde_json::{Map, Value};
use store::WriteTx;

use crate::AdminState;
use crate::error::ApiError;
use crate::extract::{ListParams, RawBody, from_value, from_value_all};
use crate::ops;

/// A service as the document states it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceDocument {
    #[serde(flatten)]
    pub spec: ServiceSpec,
    /// Desired lifecycle; omitted leaves it as it is (new services: draft).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The service's plans; omitted leaves the stored plans as they are,
    /// a list makes them match it (plans it does not name are deleted,
    /// which is refused while subscriptions use them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plans: Option<Vec<PlanSpec>>,
}

/// The declarative document.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Document {
    /// Teams are created and updated, never deleted by `prune` (they own
    /// apps and members the document does not describe).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<TeamSpec>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSpec>,
    #[serde(default)]
    pub services: Vec<ServiceDocument>,
}

/// One change that apply made (or would make).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// `create`, `update`, `delete`, `publish`, `deprecate` or `retire`.
    pub action: &'static str,
    /// `team`, `upstream`, `service`, `route` or `plan`.
    pub kind: &'static str,
    /// The object: a slug, or `service/route` for routes.
    pub key: String,
    /// For updates: each changed field, `path: old -> new`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// The object's own audit entry, written beside the apply's.
    #[serde(skip)]
    #[schema(ignore)]
    pub record: Option<Recorded>,
}

/// An object as an applied change leaves it in the audit log: what
/// `GET /api/v1/audit?object_id=` finds, as a change through the object's
/// own endpoint would have.
#[derive(Debug, Clone)]
pub struct Recorded {
    id: String,
    team: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
}

fn recorded<B: Serialize, A: Serialize>(
    id: &str,
    team: Option<&str>,
    before: Option<&B>,
    after: Option<&A>,
) -> Option<Recorded> {
    Some(Recorded {
        id: id.to_owned(),
        team: team.map(str::to_owned),
        before: before.map(json),
        after: after.map(json),
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApplyReport {
    pub dry_run: bool,
    /// False when the store already matched the document.
    pub changed: bool,
    pub changes: Vec<Change>,
}

fn errors_within(prefix: &str, error: ApiError) -> ApiError {
    error.within(prefix)
}

/// Reads one item of a list named `prefix`: every shape problem, then,
/// once it reads, its own `check`, all added to `errors`. The item and
/// whether its check passed.
fn read_item<T: serde::de::DeserializeOwned>(
    item: Value,
    prefix: &str,
    check: impl Fn(&T) -> Result<(), FieldErrors>,
    errors: &mut FieldErrors,
) -> Option<(T, bool)> {
    let mut add = |error: ApiError| {
        for e in errors_within(prefix, error).errors {
            errors.add(e.field, e.message);
        }
    };
    let (spec, problems) = from_value_all::<T>(item);
    for problem in problems {
        add(problem);
    }
    let spec = spec?;
    let valid = match check(&spec) {
        Ok(()) => true,
        Err(problems) => {
            add(problems.into());
            false
        }
    };
    Some((spec, valid))
}

/// Parses and validates a document, reporting every problem at once.
pub fn parse_document(value: Value) -> Result<Document, ApiError> {
    let Value::Object(mut top) = value else {
        return Err(ApiError::field(
            "",
            "the document must be an object with 'teams', 'upstreams' and 'services'",
        ));
    };
    let mut errors = FieldErrors::new();
    for key in top.keys() {
        if !matches!(key.as_str(), "teams" | "upstreams" | "services") {
            errors.add(
                key.clone(),
                "is not a known field (expected teams, upstreams, services)",
            );
        }
    }
    let mut document = Document::default();
    let list = |top: &mut Map<String, Value>, name: &str, errors: &mut FieldErrors| match top
        .remove(name)
    {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.add(name, "must be a list");
            Vec::new()
        }
    };
    let collect = |error: ApiError, errors: &mut FieldErrors| {
        for e in error.errors {
            errors.add(e.field, e.message);
        }
    };
    let mut team_slugs = HashSet::new();
    for (index, item) in list(&mut top, "teams", &mut errors).into_iter().enumerate() {
        let prefix = format!("teams[{index}]");
        match from_value::<TeamSpec>(item) {
            Ok(spec) => {
                if let Err(e) = spec.validate() {
                    collect(errors_within(&prefix, e.into()), &mut errors);
                } else if !team_slugs.insert(spec.slug.clone()) {
                    errors.add(format!("{prefix}.slug"), "appears twice in the document");
                }
                document.teams.push(spec);
            }
            Err(e) => collect(errors_within(&prefix, e), &mut errors),
        }
    }
    let mut slugs = HashSet::new();
    for (index, item) in list(&mut top, "upstreams", &mut errors)
        .into_iter()
        .enumerate()
    {
        let prefix = format!("upstreams[{index}]");
        if let Some((spec, valid)) = read_item(item, &prefix, UpstreamSpec::validate, &mut errors) {
            if valid && !slugs.insert(spec.slug.clone()) {
                errors.add(format!("{prefix}.slug"), "appears twice in the document");
            }
            document.upstreams.push(spec);
        }
    }
    let mut service_slugs = HashSet::new();
    for (index, item) in list(&mut top, "services", &mut errors)
        .into_iter()
        .enumerate()
    {
        let prefix = format!("services[{index}]");
        let Value::Object(mut fields) = item else {
            errors.add(prefix, "must be an object");
            continue;
        };
        let lifecycle = match fields.remove("lifecycle") {
            None | Some(Value::Null) => None,
            Some(value) => match from_value::<Lifecycle>(value) {
                Ok(l) => Some(l),
                Err(_) => {
                    errors.add(
                        format!("{prefix}.lifecycle"),
                        "must be draft, published, deprecated or retired",
                    );
                    None
                }
            },
        };
        let sunset = match fields.remove("sunset") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => {
                if let Err(message) = domain::model::parse_sunset(&text) {
                    errors.add(format!("{prefix}.sunset"), message);
                }
                Some(text)
            }
            Some(_) => {
                errors.add(format!("{prefix}.sunset"), "must be a date string");
                None
            }
        };
        if sunset.is_some() && lifecycle != Some(Lifecycle::Deprecated) {
            // Only a deprecation has a sunset: dropped silently it would
            // read as set.
            errors.add(
                format!("{prefix}.sunset"),
                "is set only with 'lifecycle: deprecated'",
            );
        }
        let plans = match fields.remove("plans") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut plans = Vec::new();
                let mut plan_slugs = HashSet::new();
                for (plan_index, item) in items.into_iter().enumerate() {
                    let plan_prefix = format!("{prefix}.plans[{plan_index}]");
                    match from_value::<PlanSpec>(item) {
                        Ok(mut spec) => {
                            spec.normalize_amounts();
                            if let Err(e) = spec.validate() {
                                collect(errors_within(&plan_prefix, e.into()), &mut errors);
                            } else if !plan_slugs.insert(spec.slug.clone()) {
                                errors.add(
                                    format!("{plan_prefix}.slug"),
                                    "appears twice in this service",
                                );
                            }
                            plans.push(spec);
                        }
                        Err(e) => collect(errors_within(&plan_prefix, e), &mut errors),
                    }
                }
                Some(plans)
            }
            Some(_) => {
                errors.add(format!("{prefix}.plans"), "must be a list");
                None
            }
        };
        let route_items = list(&mut fields, "routes", &mut errors);
        let mut routes = Vec::new();
        let mut route_keys = HashSet::new();
        for (route_index, item) in route_items.into_iter().enumerate() {
            let route_prefix = format!("{prefix}.routes[{route_index}]");
            if let Some((spec, valid)) =
                read_item(item, &route_prefix, RouteSpec::validate, &mut errors)
            {
                if valid && !route_keys.insert(route_match_key(&spec)) {
                    errors.add(route_prefix, "names the same route as an earlier entry");
                }
                routes.push(spec);
            }
        }
        if let Some((spec, valid)) = read_item(
            Value::Object(fields),
            &prefix,
            ServiceSpec::validate,
            &mut errors,
        ) {
            if valid && !service_slugs.insert(spec.slug.clone()) {
                errors.add(format!("{prefix}.slug"), "appears twice in the document");
            }
            document.services.push(ServiceDocument {
                spec,
                lifecycle,
                sunset,
                routes,
                plans,
            });
        }
    }
    errors.into_result()?;
    Ok(document)
}

/// How a document route finds its stored counterpart: by name, else by
/// host, path and methods.
fn route_match_key(spec: &RouteSpec) -> String {
    match &spec.name {
        Some(name) => format!("name:{name}"),
        None => {
            let mut methods = spec.normalised_methods();
            methods.sort();
            format!(
                "path:{}|{}|{}",
                spec.host.as_deref().unwrap_or(""),
                spec.path,
                methods.join(",")
            )
        }
    }
}

/// A route as a comparison sees it: its method lists (and retry
/// statuses) are sets, so their order is no change.
fn as_sets(spec: &RouteSpec) -> RouteSpec {
    let mut spec = spec.clone();
    methods_as_set(&mut spec.methods);
    spec.retry = spec.retry.as_ref().map(retry_as_set);
    spec
}

/// An upstream as a comparison sees it: its targets are a set (a
/// target's health and its points on a hash ring go with its URL, not
/// its place in the list).
fn targets_as_set(spec: &UpstreamSpec) -> UpstreamSpec {
    let mut spec = spec.clone();
    spec.targets
        .sort_unstable_by(|a, b| (&a.url, a.weight).cmp(&(&b.url, b.weight)));
    spec
}

fn service_as_sets(spec: &ServiceSpec) -> ServiceSpec {
    let mut spec = spec.clone();
    spec.retry = retry_as_set(&spec.retry);
    spec
}

fn retry_as_set(retry: &domain::model::RetryPolicy) -> domain::model::RetryPolicy {
    let mut retry = retry.clone();
    methods_as_set(&mut retry.methods);
    retry.on_statuses.sort_unstable();
    retry
}

fn methods_as_set(methods: &mut [String]) {
    methods.sort_unstable();
}

/// `path: old -> new` for every leaf that differs.
pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into("", old, new, &mut out);
    out
}

fn diff_into(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff_into(
                    &child,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                diff_into(&format!("{path}[{index}]"), x, y, out);
            }
        }
        // A secret's values stay out of the report and the audit log
        // (stored ones are sealed, but say no more than that it changed).
        _ if old != new && (path == "secret" || path.ends_with(".secret")) => {
            out.push(format!("{path}: changed"));
        }
        _ if old != new => out.push(format!("{path}: {old} -> {new}")),
        _ => {}
    }
}

/// Refuses a document that gives an object another owner than the one it
/// has (naming no team names the platform): objects stay with the team
/// that created them, as `PUT` and `PATCH` say.
async fn keep_team(
    tx: &mut WriteTx,
    stored: Option<&str>,
    wanted: Option<&str>,
) -> Result<(), ApiError> {
    let same = match (stored, wanted) {
        (None, None) => true,
        (Some(stored), Some(wanted)) => {
            stored == wanted || {
                // Either side may name the team by slug or by id.
                let stored = tx.team(stored).await?.map(|team| team.id);
                stored.is_some() && stored == tx.team(wanted).await?.map(|team| team.id)
            }
        }
        _ => false,
    };
    if same {
        return Ok(());
    }
    // Said for the owner it has: the file must name that team, or name
    // none for a platform object.
    let fix = match stored {
        Some(team) => {
            format!("belongs to team '{team}' and stays with it: give `team: {team}` here")
        }
        None => "belongs to the platform and stays with it: leave 'team' out here".to_owned(),
    };
    Err(ApiError::field(
        "team",
        format!(
            "cannot change: the object {fix}, or delete the object and create it under the other owner"
        ),
    ))
}

/// The absent side of a recorded change.
const NO_OBJECT: Option<&()> = None;

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

async fn apply_document(
    tx: &mut WriteTx,
    secrets: &store::secrets::MasterKey,
    document: &Document,
    prune: bool,
) -> Result<Vec<Change>, ApiError> {
    let mut changes = Vec::new();
    for (index, spec) in document.teams.iter().enumerate() {
        let prefix = format!("teams[{index}]");
        match tx.team(&spec.slug).await? {
            None => {
                let now = domain::now_ms();
                let team = Team {
                    id: domain::id::new_id(),
                    spec: spec.clone(),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tx.put_team(&team)
                    .await
                    .map_err(|e| ApiError::from(e).within(&prefix))?;
                changes.push(Change {
                    action: "create",
                    kind: "team",
                    key: spec.slug.clone(),
                    fields: vec![],
                    record: recorded(&team.id, Some(&spec.slug), NO_OBJECT, Some(&team)),
                });
            }
            Some(existing) if existing.spec != *spec => {
                let fields = diff(&json(&existing.spec), &json(spec));
                let before = existing.clone();
                let team = Team {
                    spec: spec.clone(),
                    updated_at_ms: domain::now_ms(),
                    ..existing
                };
                tx.put_team(&team)
                    .await
                    .map_err(|e| ApiError::from(e).within(&prefix))?;
                changes.push(Change {
                    action: "update",
                    kind: "team",
                    key: spec.slug.clone(),
                    fields,
                    record: recorded(&team.id, Some(&spec.slug), Some(&before), Some(&team)),
                });
            }
            Some(_) => {}
        }
    }
    for (index, spec) in document.upstreams.iter().enumerate() {
        let prefix = format!("upstreams[{index}]");
        match tx.upstream(&spec.slug).await? {
            None => {
                let created = ops::create_upstream(tx, spec.clone())
                    .await
                    .map_err(|e| e.within(&prefix))?;
                changes.push(Change {
                    action: "create",
                    kind: "upstream",
                    key: spec.slug.clone(),
                    fields: vec![],
                    record: recorded(
                        &created.id,
                        created.spec.team.as_deref(),
                        NO_OBJECT,
                        Some(&created),
                    ),
                });
            }
            Some(existing) if targets_as_set(&existing.spec) != targets_as_set(spec) => {
                keep_team(tx, existing.spec.team.as_deref(), spec.team.as_deref())
                    .await
                    .map_err(|e| e.within(&prefix))?;
                let fields = diff(&json(&existing.spec), &json(spec));
                let updated = ops::update_upstream(tx, &existing, spec.clone())
                    .await
                    .map_err(|e| e.within(&prefix))?;
                changes.push(Change {
                    action: "update",
                    kind: "upstream",
                    key: spec.slug.clone(),
                    fields,
                    record: recorded(
                        &updated.id,
                        updated.spec.team.as_deref(),
                        Some(&existing),
                        Some(&updated),
                    ),
                });
            }
            Some(_) => {}
        }
    }
    // What the document no longer has goes first, so that what replaces
    // it (a service renamed, a route moved to another service) meets no
    // conflict with the old: services pruned, then every stale route.
    if prune {
        let wanted_services: HashSet<&str> = document
            .services
            .iter()
            .map(|s| s.spec.slug.as_str())
            .collect();
        for service in tx.all_services().await? {
            if !wanted_services.contains(service.spec.slug.as_str()) {
                // Subscriptions are consumers' data, not the file's: a
                // service they use is not pruned with them.
                let open = tx.open_subscriptions_of_service(&service.id).await?;
                if open > 0 {
                    return Err(ApiError::conflict(
                        "services",
                        format!(
                            "'{}' is not in the document but has {open} open subscription(s); prune deletes no service its consumers subscribe to. Retire it and let the subscriptions end (or cancel them), then prune.",
                            service.spec.slug
                        ),
                    ));
                }
                ops::delete_service(tx, &service, true).await?;
                changes.push(Change {
                    action: "delete",
                    kind: "service",
                    key: service.spec.slug.clone(),
                    fields: vec![],
                    record: recorded(
                        &service.id,
                        service.spec.team.as_deref(),
                        Some(&service),
                        NO_OBJECT,
                    ),
                });
            }
        }
    }
    // Services that lost routes here changed, as if in their own turn.
    let mut trimmed = HashSet::new();
    for wanted in &document.services {
        if let Some(service) = tx.service(&wanted.spec.slug).await? {
            let before = changes.len();
            remove_stale_routes(tx, &service, wanted, &mut changes).await?;
            if changes.len() > before {
                trimmed.insert(service.id);
            }
        }
    }
    for (index, wanted) in document.services.iter().enumerate() {
        let prefix = format!("services[{index}]");
        let slug = wanted.spec.slug.clone();
        let before = changes.len();
        let mut service = match tx.service(&slug).await? {
            None => {
                let created = ops::create_service(tx, secrets, wanted.spec.clone())
                    .await
                    .map_err(|e| e.within(&prefix))?;
                changes.push(Change {
                    action: "create",
                    kind: "service",
                    key: slug.clone(),
                    fields: vec![],
                    record: recorded(
                        &created.id,
                        created.spec.team.as_deref(),
                        NO_OBJECT,
                        Some(&created),
                    ),
                });
                created
            }
            Some(existing) => {
                keep_team(
                    tx,
                    existing.spec.team.as_deref(),
                    wanted.spec.team.as_deref(),
                )
                .await
                .map_err(|e| e.within(&prefix))?;
                let mut comparable = wanted.spec.clone();
                // The document may name the upstream by id; compare slugs.
                if let Some(key) = &comparable.upstream
                    && let Some(upstream) = tx.upstream(key).await?
                {
                    comparable.upstream = Some(upstream.spec.slug);
                }
                // A secret given in plaintext equals the one stored sealed.
                secrets.match_sealed_secrets(&mut comparable, &existing.spec);
                if service_as_sets(&existing.spec) != service_as_sets(&comparable) {
                    let updated = ops::update_service(tx, secrets, &existing, comparable)
                        .await
                        .map_err(|e| e.within(&prefix))?;
                    // Against what was stored: a new secret shows sealed,
                    // never as the document gave it.
                    let fields = diff(&json(&existing.spec), &json(&updated.spec));
                    changes.push(Change {
                        action: "update",
                        kind: "service",
                        key: slug.clone(),
                        fields,
                        record: recorded(
                            &updated.id,
                            updated.spec.team.as_deref(),
                            Some(&existing),
                            Some(&updated),
                        ),
                    });
                    updated
                } else {
                    existing
                }
            }
        };
        reconcile_routes(tx, &service, wanted, &prefix, &mut changes).await?;
        let content_changed = changes.len() > before || trimmed.contains(&service.id);
        if let Some(plans) = &wanted.plans {
            reconcile_plans(tx, &service, plans, &prefix, &mut changes).await?;
        }
        service = tx.service(&service.id).await?.unwrap_or(service);
        reconcile_lifecycle(tx, service, wanted, &prefix, content_changed, &mut changes).await?;
    }
    if prune {
        let wanted_upstreams: HashSet<&str> =
            document.upstreams.iter().map(|u| u.slug.as_str()).collect();
        for upstream in tx.all_upstreams().await? {
            if !wanted_upstreams.contains(upstream.spec.slug.as_str()) {
                ops::delete_upstream(tx, &upstream).await?;
                changes.push(Change {
                    action: "delete",
                    kind: "upstream",
                    key: upstream.spec.slug.clone(),
                    fields: vec![],
                    record: recorded(
                        &upstream.id,
                        upstream.spec.team.as_deref(),
                        Some(&upstream),
                        NO_OBJECT,
                    ),
                });
            }
        }
    }
    Ok(changes)
}

/// Deletes the routes of `service` that `wanted` does not list.
async fn remove_stale_routes(
    tx: &mut WriteTx,
    service: &Service,
    wanted: &ServiceDocument,
    changes: &mut Vec<Change>,
) -> Result<(), ApiError> {
    let wanted_keys: HashSet<String> = wanted.routes.iter().map(route_match_key).collect();
    let team = service.spec.team.as_deref();
    for route in tx.routes_of(&service.id).await? {
        if wanted_keys.contains(&route_match_key(&route.spec)) {
            continue;
        }
        ops::delete_route(tx, &route).await?;
        changes.push(Change {
            action: "delete",
            kind: "route",
            key: route_label(service, &route.spec),
            fields: vec![],
            record: recorded(&route.id, team, Some(&route), NO_OBJECT),
        });
    }
    Ok(())
}

/// A route as the report names it: `service/name`, or `service/METHODS path`.
fn route_label(service: &Service, spec: &RouteSpec) -> String {
    format!(
        "{}/{}",
        service.spec.slug,
        spec.name
            .clone()
            .unwrap_or_else(|| format!("{} {}", spec.methods.join(","), spec.path))
    )
}

async fn reconcile_routes(
    tx: &mut WriteTx,
    service: &Service,
    wanted: &ServiceDocument,
    prefix: &str,
    changes: &mut Vec<Change>,
) -> Result<(), ApiError> {
    let mut current: BTreeMap<String, Route> = tx
        .routes_of(&service.id)
        .await?
        .into_iter()
        .map(|route| (route_match_key(&route.spec), route))
        .collect();
    let label = |spec: &RouteSpec| route_label(service, spec);
    let team = service.spec.team.as_deref();
    // Deletions first, so a replacement route does not conflict with the old one.
    remove_stale_routes(tx, service, wanted, changes).await?;
    let wanted_keys: HashSet<String> = wanted.routes.iter().map(route_match_key).collect();
    current.retain(|key, _| wanted_keys.contains(key));
    for (index, spec) in wanted.routes.iter().enumerate() {
        let route_prefix = format!("{prefix}.routes[{index}]");
        match current.get(&route_match_key(spec)) {
            None => {
                let created = ops::create_route(tx, service, spec.clone())
                    .await
                    .map_err(|e| e.within(&route_prefix))?;
                changes.push(Change {
                    action: "create",
                    kind: "route",
                    key: label(spec),
                    fields: vec![],
                    record: recorded(&created.id, team, NO_OBJECT, Some(&created)),
                });
            }
            Some(existing) if as_sets(&existing.spec) != as_sets(spec) => {
                let fields = diff(&json(&existing.spec), &json(spec));
                let updated = ops::update_route(tx, service, existing, spec.clone())
                    .await
                    .map_err(|e| e.within(&route_prefix))?;
                changes.push(Change {
                    action: "update",
                    kind: "route",
                    key: label(spec),
                    fields,
                    record: recorded(&updated.id, team, Some(existing), Some(&updated)),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn reconcile_plans(
    tx: &mut WriteTx,
    service: &Service,
    wanted: &[PlanSpec],
    prefix: &str,
    changes: &mut Vec<Change>,
) -> Result<(), ApiError> {
    let label = |slug: &str| format!("{}/{slug}", service.spec.slug);
    let team = service.spec.team.as_deref();
    let current = tx.plans_of(&service.id).await?;
    for plan in &current {
        if !wanted.iter().any(|spec| spec.slug == plan.spec.slug) {
            tx.delete_plan(&plan.id)
                .await
                .map_err(|e| ApiError::from(e).within(&format!("{prefix}.plans")))?;
            changes.push(Change {
                action: "delete",
                kind: "plan",
                key: label(&plan.spec.slug),
                fields: vec![],
                record: recorded(&plan.id, team, Some(plan), NO_OBJECT),
            });
        }
    }
    for (index, spec) in wanted.iter().enumerate() {
        let plan_prefix = format!("{prefix}.plans[{index}]");
        spec.validate_for(service.spec.kind)
            .map_err(|e| ApiError::from(e).within(&plan_prefix))?;
        let now = domain::now_ms();
        match current.iter().find(|plan| plan.spec.slug == spec.slug) {
            None => {
                let plan = Plan {
                    id: domain::id::new_id(),
                    service_id: service.id.clone(),
                    spec: spec.clone(),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tx.put_plan(&plan)
                    .await
                    .map_err(|e| ApiError::from(e).within(&plan_prefix))?;
                changes.push(Change {
                    action: "create",
                    kind: "plan",
                    key: label(&spec.slug),
                    fields: vec![],
                    record: recorded(&plan.id, team, NO_OBJECT, Some(&plan)),
                });
            }
            Some(existing) if existing.spec != *spec => {
                let fields = diff(&json(&existing.spec), &json(spec));
                let plan = Plan {
                    spec: spec.clone(),
                    updated_at_ms: now,
                    ..existing.clone()
                };
                tx.put_plan(&plan)
                    .await
                    .map_err(|e| ApiError::from(e).within(&plan_prefix))?;
                changes.push(Change {
                    action: "update",
                    kind: "plan",
                    key: label(&spec.slug),
                    fields,
                    record: recorded(&plan.id, team, Some(existing), Some(&plan)),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn reconcile_lifecycle(
    tx: &mut WriteTx,
    service: Service,
    wanted: &ServiceDocument,
    prefix: &str,
    content_changed: bool,
    changes: &mut Vec<Change>,
) -> Result<(), ApiError> {
    let Some(desired) = wanted.lifecycle else {
        return Ok(());
    };
    let field = format!("{prefix}.lifecycle");
    let slug = service.spec.slug.clone();
    let (id, team) = (service.id.clone(), service.spec.team.clone());
    let change = |action| Change {
        action,
        kind: "service",
        key: slug.clone(),
        fields: vec![],
        record: recorded(&id, team.as_deref(), NO_OBJECT, NO_OBJECT),
    };
    let current = service.lifecycle;
    match desired {
        Lifecycle::Draft if current != Lifecycle::Draft => {
            return Err(ApiError::field(
                field,
                format!(
                    "service '{slug}' is {}; it cannot return to draft",
                    current.as_str()
                ),
            ));
        }
        Lifecycle::Draft => {}
        Lifecycle::Published | Lifecycle::Deprecated => {
            if current == Lifecycle::Retired {
                return Err(ApiError::field(
                    field,
                    format!("service '{slug}' is retired; it cannot serve again"),
                ));
            }
            if desired == Lifecycle::Published && current == Lifecycle::Deprecated {
                return Err(ApiError::field(
                    field,
                    format!("service '{slug}' is deprecated; it cannot return to published"),
                ));
            }
            let mut service = service;
            if current == Lifecycle::Draft || content_changed {
                service = ops::publish(tx, &service, Some("apply".into()))
                    .await
                    .map_err(|e| e.within(prefix))?
                    .0;
                changes.push(change("publish"));
            }
            if desired == Lifecycle::Deprecated
                && (service.lifecycle != Lifecycle::Deprecated || service.sunset != wanted.sunset)
            {
                ops::deprecate(tx, &service, wanted.sunset.clone(), true)
                    .await
                    .map_err(|e| e.within(prefix))?;
                let mut deprecated = change("deprecate");
                if service.sunset != wanted.sunset {
                    let shown = |sunset: &Option<String>| {
                        sunset
                            .as_deref()
                            .map_or("none".to_owned(), |s| format!("\"{s}\""))
                    };
                    deprecated.fields.push(format!(
                        "sunset: {} -> {}",
                        shown(&service.sunset),
                        shown(&wanted.sunset)
                    ));
                }
                changes.push(deprecated);
            }
        }
        Lifecycle::Retired => {
            let mut service = service;
            if current == Lifecycle::Draft {
                // A retired service restored into a new deployment (an
                // export applied elsewhere): it is published once, so it
                // has the release it was retired from, then retired.
                service = ops::publish(tx, &service, Some("apply".into()))
                    .await
                    .map_err(|e| e.within(prefix))?
                    .0;
                changes.push(change("publish"));
            }
            if current != Lifecycle::Retired {
                ops::retire(tx, &service).await?;
                changes.push(change("retire"));
            }
        }
    }
    Ok(())
}

/// Reads a JSON or YAML body (YAML when the content type says so).
fn document_value(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    // Media types are case-insensitive (RFC 9110 §8.3.1).
    if content_type.to_ascii_lowercase().contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::field("", "the YAML document is not UTF-8"))?;
        serde_norway::from_str::<StrictValue>(text)
            .map(|document| document.0)
            .map_err(|e| ApiError::field("", format!("malformed YAML: {e}")))
    } else {
        crate::extract::parse_json::<StrictValue>(body).map(|document| document.0)
    }
}

/// Apply a declarative document (JSON, or YAML with `Content-Type:
/// application/yaml`). `?dry_run=true` reports without writing;
/// `?prune=true` deletes what the document does not name.
#[utoipa::path(post, path = "/api/v1/config/apply", tag = "config",
    request_body(content((Document = "application/json"), (Document = "application/yaml"))),
    params(("dry_run" = Option<bool>, Query), ("prune" = Option<bool>, Query)),
    responses((status = 200, body = ApplyReport), (status = 400, body = crate::openapi::Problem)))]
pub async fn apply(
    State(state): State<AdminState>,
    caller: crate::access::Caller,
    params: ListParams,
    headers: HeaderMap,
    RawBody(body): RawBody<{ crate::extract::DOCUMENT_LIMIT_BYTES }>,
) -> Result<Response, ApiError> {
    // A document spans every team: only the platform applies one.
    caller.require_platform()?;
    params.only(&["dry_run", "prune"])?;
    let (dry_run, prune) = (params.flag("dry_run")?, params.flag("prune")?);
    if body.iter().all(u8::is_ascii_whitespace) {
        // An empty body must not read as an empty document: with `prune`
        // that would delete everything.
        return Err(ApiError::field(
            "",
            "the document is empty; send {\"upstreams\": [], \"services\": []} to mean an empty configuration",
        ));
    }
    let value = document_value(&headers, &body)?;
    if prune {
        // Pruning deletes what the document does not name: a document
        // that leaves a list out (`{}`, a file of services alone) must
        // not read as "delete them all".
        for list in ["upstreams", "services"] {
            if value.get(list).is_none_or(Value::is_null) {
                return Err(ApiError::field(
                    list,
                    format!(
                        "is missing; with prune=true the document must list its {list} (an empty list deletes them all)"
                    ),
                ));
            }
        }
    }
    let document = parse_document(value)?;
    let mut tx = state.store.begin().await?;
    let changes = apply_document(&mut tx, &state.secrets, &document, prune).await?;
    let changed = !changes.is_empty();
    if !dry_run && changed {
        let record = crate::access::Audit::new("config.apply", "config", "config", None);
        crate::access::audit(
            &mut tx,
            &caller,
            record,
            crate::access::NONE,
            Some(&changes),
        )
        .await?;
        // And each object's own entry, as its own endpoint would write.
        for change in &changes {
            if let Some(object) = &change.record {
                let action = format!("{}.{}", change.kind, change.action);
                let record = crate::access::Audit::new(
                    &action,
                    change.kind,
                    &object.id,
                    object.team.as_deref(),
                );
                crate::access::audit(
                    &mut tx,
                    &caller,
                    record,
                    object.before.as_ref(),
                    object.after.as_ref(),
                )
                .await?;
            }
        }
        tx.commit().await?;
        (state.on_change)();
    }
    Ok(axum::Json(ApplyReport {
        dry_run,
        changed,
        changes,
    })
    .into_response())
}

/// Export the configuration as a document that `apply` accepts.
#[utoipa::path(get, path = "/api/v1/config/export", tag = "config", responses((status = 200, body = Document)))]
pub async fn export(
    State(state): State<AdminState>,
    caller: crate::access::Caller,
) -> Result<Response, ApiError> {
    caller.require_platform()?;
    let data = state.store.load_all().await?;
    let teams: Vec<TeamSpec> = state
        .store
        .all_teams()
        .await?
        .into_iter()
        .map(|t| t.spec)
        .collect();
    let mut upstreams: Vec<UpstreamSpec> = data.upstreams.into_iter().map(|u| u.spec).collect();
    upstreams.sort_by(|a, b| a.slug.cmp(&b.slug));
    let mut services: Vec<ServiceDocument> = data
        .services
        .into_iter()
        .map(|service| ServiceDocument {
            routes: data
                .routes
                .iter()
                .filter(|r| r.service_id == service.id)
                .map(|r| r.spec.clone())
                .collect(),
            plans: {
                let plans: Vec<PlanSpec> = data
                    .plans
                    .iter()
                    .filter(|p| p.service_id == service.id)
                    .map(|p| p.spec.clone())
                    .collect();
                (!plans.is_empty()).then_some(plans)
            },
            // A retired service may keep the sunset of its deprecation;
            // the document says a sunset only with `deprecated`.
            sunset: service
                .sunset
                .filter(|_| service.lifecycle == Lifecycle::Deprecated),
            lifecycle: Some(service.lifecycle),
            spec: service.spec,
        })
        .collect();
    services.sort_by(|a, b| a.spec.slug.cmp(&b.spec.slug));
    Ok(axum::Json(Document {
        teams,
        upstreams,
        services,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_paths() {
        let old = serde_json::json!({"a": 1, "t": [{"w": 1}], "same": true});
        let new = serde_json::json!({"a": 2, "t": [{"w": 3}], "same": true, "b": "x"});
        assert_eq!(
            diff(&old, &new),
            vec!["a: 1 -> 2", "b: null -> \"x\"", "t[0].w: 1 -> 3"]
        );
    }

    #[test]
    fn documents_report_every_error() {
        let error = parse_document(serde_json::json!({
            "upstreams": [{"slug": "Bad Slug", "targets": [{"url": "ftp://x"}]}],
            "services": [{"slug": "s", "base_path": "nope", "upstream": "u", "routes": [{"path": "/a", "bogus": 1}]}],
            "extra": 1
        }))
        .unwrap_err();
        let fields: Vec<&str> = error.errors.iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "extra",
            "upstreams[0].slug",
            "upstreams[0].targets[0].url",
            "services[0].routes[0].bogus",
            "services[0].base_path",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {fields:?}"
            );
        }
    }
}
