//! Reading PostgreSQL rows into the store's records: one home for the column readers that
//! the inbox/jobs, review and alert code all use.

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::store::{JobRow, LedgerRow, StoreError};

/// Column `idx` of `r`. A value that does not fit the Rust type is a bug of ours or a
/// damaged row (`Internal`), not an outage ([`super::pg_error`] would call an error without
/// SQLSTATE a lost connection).
pub(super) fn col<'a, T: FromSql<'a>>(r: &'a Row, idx: usize) -> Result<T, StoreError> {
    r.try_get(idx)
        .map_err(|e| StoreError::Internal(format!("PostgreSQL row, column {idx}: {e}")))
}

/// An `INTEGER` column that holds a count or a number that is never negative.
pub(super) fn col_u32(r: &Row, idx: usize) -> Result<u32, StoreError> {
    let v: i32 = col(r, idx)?;
    u32::try_from(v)
        .map_err(|_| StoreError::Internal(format!("negative count {v} in column {idx}")))
}

/// A [`JobRow`] from the [`crate::store::JOB_COLUMNS`], in their order.
pub(super) fn job_row(r: &Row) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        id: col(r, 0)?,
        ipn_id: col(r, 1)?,
        integration: col(r, 2)?,
        target: col(r, 3)?,
        action: col(r, 4)?,
        order_key: col(r, 5)?,
        state: col(r, 6)?,
        attempts: col_u32(r, 7)?,
        needs_reconcile: col(r, 8)?,
        next_attempt_at: col(r, 9)?,
        created_at: col(r, 10)?,
        updated_at: col(r, 11)?,
        last_error: col(r, 12)?,
    })
}

/// A [`LedgerRow`] from the [`crate::store::LEDGER_COLUMNS`], its id lists decoded from
/// their JSON.
pub(super) fn ledger_row(r: &Row) -> Result<LedgerRow, StoreError> {
    let purchases: String = col(r, 8)?;
    let transactions: String = col(r, 9)?;
    Ok(LedgerRow {
        job_id: col(r, 0)?,
        integration: col(r, 1)?,
        ds24_order_id: col(r, 2)?,
        ds24_item: col(r, 3)?,
        ds24_transaction_id: col(r, 4)?,
        reference: col(r, 5)?,
        target_order_id: col(r, 6)?,
        target_customer_id: col(r, 7)?,
        purchase_ids: serde_json::from_str(&purchases)?,
        transaction_ids: serde_json::from_str(&transactions)?,
        created_at: col(r, 10)?,
        ds24_parent_transaction_id: col(r, 11)?,
    })
}
