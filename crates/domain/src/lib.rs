//! The domain model of Tollgate: plain Rust types shared by the control plane
//! (`admin`, `store`) and the data plane (`gateway`).
//!
//! - [`model`] holds the configuration objects: [`model::Upstream`] (a set of
//!   [`model::Target`]s with a [`model::BalancePolicy`] and health checks),
//!   [`model::Service`] (what is published, with a [`model::Lifecycle`]),
//!   [`model::Route`] (methods + path pattern under a service's base path) and
//!   [`model::Release`] (a snapshot of a service and its routes).
//! - [`code`] is the closed list of refusal codes ([`code::Code`]) with their
//!   HTTP status and title: the one table every refusal is mapped through.
//! - [`id`] makes ids (UUID v7 text) and checks slugs.
//! - [`access`] holds tenancy and access: [`access::Team`], [`access::User`]
//!   with a [`access::Role`] per team, [`access::App`] with its
//!   [`access::ApiKey`]s, [`access::Plan`] (rate limits), [`access::Subscription`]
//!   and its state machine, webhooks and [`access::AuditEntry`].
//! - [`money`]: amounts in nano-units (parse and format decimal strings)
//!   and the ledger's [`money::LedgerEntry`].
//! - [`billing`]: subscription periods (calendar or anniversary), budget
//!   periods and proration.
//! - [`alerts`]: alert rules ([`alerts::AlertRuleSpec`]: a metric, a
//!   window and a threshold) and where each subject stands.
//! - [`catalog`]: the built-in AI catalogue (provider presets, models
//!   and list prices with their sources), embedded from `catalog/`.
//! - [`calls`]: the call log entry ([`calls::CallEntry`]) and the latency
//!   buckets shared by rollups and metrics.
//! - [`ai`]: what an AI service offers (models, aliases with fallbacks,
//!   markup, timeouts) and plan token prices.
//! - [`providers`]: AI providers ([`providers::ProviderSpec`]) and the
//!   write-only keys of their pools.
//! - [`problems`]: the plain-words cause, fix and prevention of each code.
//! - [`net`] parses CIDR blocks for IP rules and trusted proxies.
//! - [`strict`]: documents read into JSON values with a key given twice
//!   in one mapping refused (the config file, declarative documents).
//! - [`validate`] collects field errors ([`validate::FieldErrors`]) so that every
//!   problem in an input is reported at once, each naming its field.
//!
//! The serde derives here describe the *storage* shape (the JSON held in the
//! store); the admin API owns its own wire types and converts explicitly.

pub mod access;
pub mod ai;
pub mod alerts;
pub mod billing;
pub mod calls;
pub mod catalog;
pub mod code;
pub mod id;
pub mod model;
pub mod money;
pub mod net;
pub mod path;
pub mod percent;
pub mod problems;
pub mod prompt;
pub mod providers;
pub mod strict;
pub mod validate;

/// Milliseconds since the Unix epoch; how every time is stored.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
