//! API tokens: create (shown once), list, revoke, authenticate, and the bootstrap admin token.

use std::io::Write;
use std::path::{Path, PathBuf};

use cellfleet_api::{CreateTokenRequest, Role, TokenCreated, TokenView};
use serde_json::json;

use super::{Error, Registry, Result, not_found};
use crate::auth::{Principal, generate_token, hash_token, new_token_id};
use crate::store::{self, Caller, TokenRow, Tx};

/// What start-up did about the bootstrap admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The registry had no token; an admin token was written to this file.
    Written(PathBuf),
    /// Tokens exist already; nothing was written.
    NotNeeded,
}

impl Registry {
    pub async fn create_token(
        &self,
        caller: &Caller,
        req: &CreateTokenRequest,
    ) -> Result<TokenCreated> {
        let mut tx = self.store.begin(caller).await?;
        let created = insert_token(&mut tx, req).await?;
        self.commit(tx).await?;
        Ok(created)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        let mut conn = self.store.read().await?;
        Ok(store::list_tokens(&mut conn)
            .await?
            .iter()
            .map(TokenRow::view)
            .collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<TokenView> {
        let mut tx = self.store.begin(caller).await?;
        let token = store::get_token(tx.conn(), id)
            .await?
            .ok_or_else(|| not_found("token", id))?;
        if token.revoked_at.is_some() {
            return Err(Error::Conflict(format!("token {id} is already revoked")));
        }
        let now = tx.now;
        store::revoke_token(tx.conn(), id, now).await?;
        tx.audit(
            "token.revoke",
            &format!("token/{id}"),
            json!({ "role": token.role, "cell": token.cell }),
        );
        let view = store::get_token(tx.conn(), id)
            .await?
            .ok_or_else(|| not_found("token", id))?
            .view();
        self.commit(tx).await?;
        Ok(view)
    }

    /// The principal a bearer secret belongs to, if it is a live token.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>> {
        let mut conn = self.store.read().await?;
        Ok(store::token_by_hash(&mut conn, &hash_token(secret))
            .await?
            .map(|t| Principal {
                token_id: t.id,
                role: t.role,
                cell: t.cell,
            }))
    }

    /// Whether the token `id` still exists and is not revoked (long-polls ask again before they
    /// answer, so a token revoked while a request waited gets nothing more).
    pub async fn token_is_live(&self, id: &str) -> Result<bool> {
        let mut conn = self.store.read().await?;
        Ok(store::get_token(&mut conn, id)
            .await?
            .is_some_and(|t| t.revoked_at.is_none()))
    }

    /// On an empty registry (no token at all), creates an admin token and writes it to `path`
    /// (mode 0600). Serialised with every other mutation, so two replicas starting together
    /// cannot both bootstrap.
    pub async fn bootstrap_admin(&self, path: &Path) -> Result<Bootstrap> {
        let mut tx = self.store.begin(&Caller::system("bootstrap")).await?;
        if store::count_tokens(tx.conn()).await? > 0 {
            return Ok(Bootstrap::NotNeeded);
        }
        let created = insert_token(
            &mut tx,
            &CreateTokenRequest {
                role: Role::Admin,
                cell: None,
                description: Some("bootstrap admin token".to_owned()),
            },
        )
        .await?;
        write_secret_file(path, &created.token)?;
        self.commit(tx).await?;
        Ok(Bootstrap::Written(path.to_owned()))
    }
}

async fn insert_token(tx: &mut Tx, req: &CreateTokenRequest) -> Result<TokenCreated> {
    match (&req.role, &req.cell) {
        (Role::Agent, None) => {
            return Err(Error::Invalid(
                "an agent token must be bound to a cell (--cell CELL)".into(),
            ));
        }
        (Role::Agent, Some(cell)) => {
            if store::get_cell(tx.conn(), cell).await?.is_none() {
                return Err(not_found("cell", cell));
            }
        }
        (role, Some(_)) => {
            return Err(Error::Invalid(format!(
                "only agent tokens are bound to a cell, not {role} tokens"
            )));
        }
        (_, None) => {}
    }
    if let Some(d) = &req.description
        && d.chars().count() > 200
    {
        return Err(Error::Invalid("description: at most 200 characters".into()));
    }
    let (secret, hash) = generate_token();
    let row = TokenRow {
        id: new_token_id(),
        role: req.role,
        cell: req.cell.clone(),
        description: req.description.clone(),
        created_by: tx.caller.actor.clone(),
        created_at: tx.now,
        revoked_at: None,
    };
    store::insert_token(tx.conn(), &row, &hash).await?;
    tx.audit(
        "token.create",
        &format!("token/{}", row.id),
        json!({ "role": row.role, "cell": row.cell, "description": row.description }),
    );
    Ok(TokenCreated {
        id: row.id,
        role: row.role,
        cell: row.cell,
        token: secret,
    })
}

/// Writes a secret to a new file readable only by its owner. An existing file is never
/// overwritten (it may hold another secret someone still needs): that is an error naming it.
pub(crate) fn write_secret_file(path: &Path, secret: &str) -> Result<()> {
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Io(format!(
                "{} already exists: not overwriting it with a new token; move it away or name another file",
                path.display()
            ))
        } else {
            Error::Io(format!("cannot write a token to {}: {e}", path.display()))
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    writeln!(file, "{secret}").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}
