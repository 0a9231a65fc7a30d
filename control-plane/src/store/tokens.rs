//! API tokens: only a SHA-256 of each secret is stored. Tokens are 256 random bits, so a fast
//! hash is enough (there is nothing to brute-force); a slow password hash would only add latency
//! to every request.

use cellfleet_api::{CellName, Role, TokenView};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};

use super::{Result, from_millis, millis, parse_column};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub role: Role,
    pub cell: Option<CellName>,
    pub description: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    pub fn view(&self) -> TokenView {
        TokenView {
            id: self.id.clone(),
            role: self.role,
            cell: self.cell.clone(),
            description: self.description.clone(),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        }
    }
}

const COLUMNS: &str =
    "SELECT id, role, cell, description, created_by, created_at, revoked_at FROM tokens";

fn token_row(row: &AnyRow) -> Result<TokenRow> {
    Ok(TokenRow {
        id: row.try_get("id")?,
        role: parse_column("token role", &row.try_get::<String, _>("role")?)?,
        cell: row
            .try_get::<Option<String>, _>("cell")?
            .map(|c| parse_column("token cell", &c))
            .transpose()?,
        description: row.try_get("description")?,
        created_by: row.try_get("created_by")?,
        created_at: from_millis(row.try_get("created_at")?),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(from_millis),
    })
}

pub async fn insert_token(conn: &mut AnyConnection, t: &TokenRow, hash: &str) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO tokens (id, role, cell, hash, description, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.id.clone())
        .bind(t.role.as_str())
        .bind(t.cell.as_ref().map(|c| c.to_string()))
        .bind(hash.to_owned())
        .bind(t.description.clone())
        .bind(t.created_by.clone())
        .bind(millis(t.created_at)),
    )
    .await?;
    Ok(())
}

/// The live (not revoked) token with this secret hash.
pub async fn token_by_hash(conn: &mut AnyConnection, hash: &str) -> Result<Option<TokenRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE hash = $1 AND revoked_at IS NULL"
    )))
    .bind(hash.to_owned())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(token_row).transpose()
}

pub async fn get_token(conn: &mut AnyConnection, id: &str) -> Result<Option<TokenRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE id = $1")))
        .bind(id.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(token_row).transpose()
}

pub async fn list_tokens(conn: &mut AnyConnection) -> Result<Vec<TokenRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} ORDER BY created_at, id"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(token_row).collect()
}

pub async fn count_tokens(conn: &mut AnyConnection) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM tokens")
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("n")?)
}

pub async fn revoke_token(conn: &mut AnyConnection, id: &str, now: DateTime<Utc>) -> Result<bool> {
    let done = conn
        .execute(
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(millis(now))
                .bind(id.to_owned()),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}
