//! Payments through Stripe: the record of each credited Checkout session,
//! so that a later refund finds its team and never takes back more than
//! was paid.

use sqlx::Row;

use crate::{Result, WriteTx};

/// A credited Stripe payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripePayment {
    pub payment_intent: String,
    pub session_id: String,
    pub team_id: String,
    pub amount_nanos: i64,
    pub refunded_nanos: i64,
}

impl WriteTx {
    /// Records a credited payment (once: a replay changes nothing).
    pub async fn record_stripe_payment(
        &mut self,
        payment: &StripePayment,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO stripe_payments (payment_intent, session_id, team_id, amount_nanos, \
             refunded_nanos, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (payment_intent) DO NOTHING",
        )
        .bind(&payment.payment_intent)
        .bind(&payment.session_id)
        .bind(&payment.team_id)
        .bind(payment.amount_nanos)
        .bind(payment.refunded_nanos)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The payment made through `payment_intent`, if it was credited,
    /// locked until the transaction ends (so two refund reports of one
    /// payment are applied one after the other).
    pub async fn stripe_payment(&mut self, payment_intent: &str) -> Result<Option<StripePayment>> {
        let row = sqlx::query(
            "UPDATE stripe_payments SET refunded_nanos = refunded_nanos WHERE payment_intent = $1 \
             RETURNING *",
        )
        .bind(payment_intent)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|row| {
            Ok(StripePayment {
                payment_intent: row.try_get("payment_intent")?,
                session_id: row.try_get("session_id")?,
                team_id: row.try_get("team_id")?,
                amount_nanos: row.try_get("amount_nanos")?,
                refunded_nanos: row.try_get("refunded_nanos")?,
            })
        })
        .transpose()
    }

    /// Sets what was refunded of a payment so far.
    pub async fn set_stripe_refunded(
        &mut self,
        payment_intent: &str,
        refunded_nanos: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE stripe_payments SET refunded_nanos = $2 WHERE payment_intent = $1")
            .bind(payment_intent)
            .bind(refunded_nanos)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}
