//! Payments through Stripe: the record of each credited Checkout session,
//! so that a later refund finds its team and never takes back more than
//! was paid. And x402 payments claimed by calls, so that every node
//! sharing the store serves one payment once.

use sqlx::Row;

use crate::{Result, Store, WriteTx};

impl Store {
    /// Claims the x402 payment `identity` until `until_ms`: true when this
    /// call has it, false when another call holds it (in flight or
    /// settled) and its claim has not run out at `now_ms`.
    pub async fn claim_x402_payment(
        &self,
        identity: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO x402_payments (identity, claimed_at_ms, until_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (identity) DO UPDATE SET claimed_at_ms = excluded.claimed_at_ms, \
             until_ms = excluded.until_ms WHERE x402_payments.until_ms <= $2",
        )
        .bind(identity)
        .bind(now_ms)
        .bind(until_ms)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives back a claim whose payment was not settled: it may serve a
    /// call again.
    pub async fn release_x402_payment(&self, identity: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM x402_payments WHERE identity = $1")
            .bind(identity)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Deletes claims that ran out before `now_ms`; returns how many.
    pub async fn sweep_x402_payments(&self, now_ms: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM x402_payments WHERE until_ms < $1")
            .bind(now_ms)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

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

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test]
    async fn an_x402_payment_is_claimed_once_until_given_back_or_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        assert!(store.claim_x402_payment("p", 0, 1_000).await.unwrap());
        assert!(
            !store.claim_x402_payment("p", 500, 2_000).await.unwrap(),
            "held"
        );
        assert!(
            store.claim_x402_payment("q", 500, 2_000).await.unwrap(),
            "another payment"
        );
        store.release_x402_payment("p").await.unwrap();
        assert!(
            store.claim_x402_payment("p", 600, 1_000).await.unwrap(),
            "given back"
        );
        assert!(
            store.claim_x402_payment("p", 1_000, 3_000).await.unwrap(),
            "ran out"
        );
        assert!(
            !store.claim_x402_payment("p", 2_999, 4_000).await.unwrap(),
            "the new claim holds"
        );
        assert_eq!(
            store.sweep_x402_payments(2_500).await.unwrap(),
            1,
            "q ran out"
        );
        assert!(
            !store.claim_x402_payment("p", 2_500, 4_000).await.unwrap(),
            "p kept"
        );
    }
}
