//! Alert rules and the state of each of their subjects.

use domain::alerts::{AlertRule, AlertState};
use sqlx::any::AnyRow;

use crate::access::visible_sql;
use crate::objects::{fetch_limit, page_of};
use crate::{Page, Result, Store, Visible, WriteTx, conflict_on, from_json, int, text, to_json};

fn rule_from(row: &AnyRow) -> Result<AlertRule> {
    Ok(AlertRule {
        id: text(row, "id")?,
        spec: from_json(&text(row, "spec")?, "alert rule")?,
        created_at_ms: int(row, "created_at_ms")?,
        updated_at_ms: int(row, "updated_at_ms")?,
    })
}

impl WriteTx {
    /// Inserts or replaces a rule.
    pub async fn put_alert(&mut self, rule: &AlertRule) -> Result<()> {
        sqlx::query(
            "INSERT INTO alert_rules (id, slug, team, spec, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, \
             spec = excluded.spec, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&rule.id)
        .bind(&rule.spec.slug)
        .bind(&rule.spec.team)
        .bind(to_json(&rule.spec)?)
        .bind(rule.created_at_ms)
        .bind(rule.updated_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(conflict_on(
            "slug",
            "an alert rule with this slug already exists",
        ))?;
        Ok(())
    }

    /// Deletes a rule and its states.
    pub async fn delete_alert(&mut self, id: &str) -> Result<()> {
        for sql in [
            "DELETE FROM alert_states WHERE rule_id = $1",
            "DELETE FROM alert_rules WHERE id = $1",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Moves a subject to `firing`; true when this call changed it (the
    /// caller then announces the transition). A subject seen for the first
    /// time counts as resolved before.
    pub async fn set_alert_state(
        &mut self,
        rule_id: &str,
        subject: &str,
        firing: bool,
        value: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let firing = i64::from(firing);
        sqlx::query(
            "INSERT INTO alert_states (rule_id, subject, firing, value, changed_at_ms) \
             VALUES ($1, $2, 0, '', $3) ON CONFLICT (rule_id, subject) DO NOTHING",
        )
        .bind(rule_id)
        .bind(subject)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        let done = sqlx::query(
            "UPDATE alert_states SET firing = $3, value = $4, changed_at_ms = $5 \
             WHERE rule_id = $1 AND subject = $2 AND firing <> $3",
        )
        .bind(rule_id)
        .bind(subject)
        .bind(firing)
        .bind(value)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Store {
    /// A rule by id or slug.
    pub async fn alert(&self, key: &str) -> Result<Option<AlertRule>> {
        let row = sqlx::query("SELECT * FROM alert_rules WHERE id = $1 OR slug = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rule_from).transpose()
    }

    /// The visible rules, by id, after `after`.
    pub async fn alerts(
        &self,
        visible: &Visible,
        team: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<AlertRule>> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM alert_rules WHERE id > $1 AND ($4 = '' OR team = $4) AND ",
            visible_sql!("team", "2"),
            " ORDER BY id LIMIT $3"
        ))
        .bind(after.unwrap_or(""))
        .bind(visible.param())
        .bind(fetch_limit(limit))
        .bind(team.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(rule_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |rule| &rule.id))
    }

    /// Every rule (for the evaluator).
    pub async fn all_alerts(&self) -> Result<Vec<AlertRule>> {
        let rows = sqlx::query("SELECT * FROM alert_rules ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rule_from).collect()
    }

    /// The subjects of a rule and where they stand.
    pub async fn alert_states(&self, rule_id: &str) -> Result<Vec<AlertState>> {
        let rows = sqlx::query("SELECT * FROM alert_states WHERE rule_id = $1 ORDER BY subject")
            .bind(rule_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AlertState {
                    subject: text(row, "subject")?,
                    firing: int(row, "firing")? != 0,
                    value: text(row, "value")?,
                    changed_at_ms: int(row, "changed_at_ms")?,
                })
            })
            .collect()
    }
}
